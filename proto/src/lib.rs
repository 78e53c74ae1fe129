//! # strata-proto
//!
//! The containerd snapshots API (`containerd.services.snapshots.v1`) and the
//! `containerd.types.Mount` message, generated at build time from the files in
//! `proto/`. Only this crate and the gRPC adapter in `strata-snapshotter`
//! know the wire format; drivers never see these types.
#![forbid(unsafe_code)]
#![allow(clippy::all, missing_docs, rust_2018_idioms)]

/// Modules laid out like the protobuf packages, so generated paths resolve.
pub mod containerd {
    /// `containerd.types`
    pub mod types {
        tonic::include_proto!("containerd.types");
    }
    pub mod services {
        pub mod snapshots {
            /// `containerd.services.snapshots.v1`
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
    }
}

pub use containerd::services::snapshots::v1 as snapshots;
pub use containerd::types;

/// The fully qualified gRPC service name, as containerd dials it.
pub const SNAPSHOTS_SERVICE: &str = "containerd.services.snapshots.v1.Snapshots";
