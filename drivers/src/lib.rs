//! # strata-drivers
//!
//! # Layout
//! - `sys`: the only module with `unsafe` and raw syscalls (mount, loop,
//!   reflink, ioctls); each block carries a `// SAFETY:` comment.
//! - `overlay`: overlayfs layers, whole-file copy-up.
//! - `vfs`: full copies of the parent, the portable fallback.
//! - `registry`: the one table that wires driver names to constructors.
#![deny(unsafe_code)]
pub mod blockcow;
