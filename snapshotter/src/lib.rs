//! # strata-snapshotter
//!
//! The snapshotter layer that every driver and both daemons stand on.
//!
//! # Layout
//! - [`snapshotter`]: the [`Snapshotter`] trait, the contract (read its doc).
//! - [`types`] and [`error`]: the domain types ([`Kind`], [`Info`], [`Usage`],
//!   [`Mount`], [`Capabilities`]) and error kinds; no transport type.
//! - [`filter`]: containerd's filter language, as used by `List`.
//! - [`store`]: the transactional metadata store every driver reuses, with the
//!   crash-safe create / commit / remove protocol.
//! - [`grpc`]: the server adapter (several drivers on one socket, dispatched by
//!   the request's `snapshotter` field) and a client that itself implements
//!   [`Snapshotter`]. The only module that knows `strata-proto`.
//! - `testsuite` (feature `testsuite`): the conformance suite run by every
//!   driver, in process and over gRPC.
#![forbid(unsafe_code)]

pub mod error;
pub mod filter;
pub mod grpc;
pub mod mount;
pub mod snapshotter;
pub mod store;
pub mod types;
#[cfg(feature = "testsuite")]
pub mod testsuite;

pub use error::{Error, ErrorKind, Result};
pub use snapshotter::Snapshotter;
pub use types::{validate_labels, Capabilities, Info, Kind, Labels, Mount, Usage, MAX_LABEL_BYTES};
