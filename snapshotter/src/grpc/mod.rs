//! The gRPC adapter: containerd's snapshots API (`containerd.services.snapshots.v1`)
//! in front of any [`Snapshotter`](crate::Snapshotter), and a client that is
//! itself a [`Snapshotter`](crate::Snapshotter).
//!
//! # Layout
//! - [`server`]: [`server::serve`] answers the `Snapshots` service on a unix
//!   socket for a table of drivers, dispatched by each request's
//!   `snapshotter` field.
//! - [`client`]: [`client::RemoteSnapshotter`], the trait over a unix-socket
//!   channel.
//! - [`convert`]: every translation between domain and wire types, and the
//!   one error mapping in each direction ([`status_from_error`],
//!   [`error_from_status`]).
//!
//! Architecture invariant: this is the only module of the crate that knows
//! `strata-proto` and tonic; nothing above or below it sees a wire type.

pub mod client;
pub mod convert;
pub mod server;

pub use client::RemoteSnapshotter;
pub use convert::{error_from_status, status_from_error};

/// Metadata header containerd adds to every proxied call. It is accepted and
/// ignored: keys already carry the namespace, and garbage-collection calls
/// come without it.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";

/// The largest message either side sends or accepts (containerd's default).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
