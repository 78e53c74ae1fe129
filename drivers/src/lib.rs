//! # strata-drivers
//!
//! # Layout
//! - `sys`: the only module with `unsafe` and raw syscalls (reflink, loop
//!   ioctls, extended attributes); each block carries a `// SAFETY:` comment.
//! - `fsutil`: disk usage of a tree and the metadata-preserving tree copy.
//! - `overlay`: overlayfs layers, whole-file copy-up.
//! - `vfs`: full copies of the parent, the portable fallback.
//! - `blockcow`: block-level copy-on-write snapshots in a pool file.
//! - `registry`: the one table that wires driver names to constructors.
//!
//! Every driver keeps its metadata in a
//! [`strata_snapshotter::store::MetaStore`] in its root and only describes
//! mounts; whoever uses a snapshot mounts it.
#![deny(unsafe_code)]

pub mod blockcow;
pub mod fsutil;
pub mod overlay;
pub mod registry;
#[allow(unsafe_code)]
pub mod sys;
pub mod vfs;
