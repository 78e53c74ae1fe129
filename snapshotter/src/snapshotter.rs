//! The [`Snapshotter`] contract.

use async_trait::async_trait;

use crate::error::Result;
use crate::types::{Capabilities, Info, Labels, Mount, Usage};

/// A snapshotter manages a tree of filesystem snapshots.
///
/// # Glossary
/// - **key**: the identifier of an *active* snapshot or a *view*, chosen by
///   the caller. Keys are opaque strings: containerd sends
///   `<namespace>/<seq>/<key>` with `/`, `:` and spaces in them, so a driver
///   never uses one as a file name.
/// - **name**: the identifier of a *committed* snapshot. Keys and names share
///   one namespace per driver: a string is taken once.
/// - **parent**: the name of a committed snapshot a new one starts from; the
///   empty string means "no parent". Only committed snapshots can be parents.
///
/// # Lifecycle
/// [`prepare`](Self::prepare) creates an *active* snapshot (writable);
/// [`view`](Self::view) creates a *view* (read-only). An active snapshot is
/// turned into a committed one by [`commit`](Self::commit), which creates the
/// name and removes the key: active snapshots never become committed in place,
/// and committed snapshots never become active. Views cannot be committed.
/// [`remove`](Self::remove) deletes a snapshot that has no children; removing
/// a parent fails with `FailedPrecondition`.
///
/// # Example: importing a layer
/// 1. `prepare("extract-1 sha256:L1", "")` returns mounts; the caller mounts
///    them, unpacks the layer tarball, unmounts.
/// 2. `commit("sha256:L1", "extract-1 sha256:L1")`.
/// 3. The next layer: `prepare("extract-2 sha256:L2", "sha256:L1")`, unpack,
///    `commit("sha256:L2", ...)`.
///
/// # Example: running a container
/// `prepare("ctr-1", "sha256:L2")` gives a writable root filesystem; after the
/// container exits, `commit("sha256:new", "ctr-1")` turns its changes into a
/// new layer, or `remove("ctr-1")` discards them.
///
/// # Errors
/// Every method reports failures as [`crate::Error`] classified by
/// [`crate::ErrorKind`]: unknown keys are `NotFound`, taken keys
/// `AlreadyExists`, wrong states `FailedPrecondition`, bad input
/// `InvalidArgument`. A failed call changes nothing.
#[async_trait]
pub trait Snapshotter: Send + Sync + 'static {
    /// Returns the info of the snapshot with this key or name.
    async fn stat(&self, key: &str) -> Result<Info>;

    /// Updates the mutable fields of a snapshot (its labels) and returns the
    /// new info. `fieldpaths` empty, or `["labels"]`, replaces all labels;
    /// `labels.<k>` sets (or, with an empty or absent value, deletes) one
    /// label; any other path is `InvalidArgument`.
    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info>;

    /// Returns the disk usage of the snapshot, excluding its parents.
    async fn usage(&self, key: &str) -> Result<Usage>;

    /// Returns the mounts of an active snapshot or a view.
    async fn mounts(&self, key: &str) -> Result<Vec<Mount>>;

    /// Creates an active snapshot `key` on top of `parent` ("" for none) and
    /// returns its mounts, which are writable.
    async fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>>;

    /// Creates a read-only view `key` of `parent` ("" for an empty one) and
    /// returns its mounts.
    async fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>>;

    /// Commits the active snapshot `key` as `name`. The key disappears; the
    /// committed snapshot keeps the active snapshot's parent and takes
    /// `labels` as its labels.
    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()>;

    /// Removes a snapshot that has no children.
    async fn remove(&self, key: &str) -> Result<()>;

    /// Returns the info of every snapshot matching any of `filters`
    /// (containerd filter syntax; no filters means all).
    async fn list(&self, filters: &[String]) -> Result<Vec<Info>>;

    /// Releases disk space no snapshot refers to any more.
    async fn cleanup(&self) -> Result<()>;

    /// Releases resources. Calling it twice is harmless.
    async fn close(&self) -> Result<()> {
        Ok(())
    }

    /// What this driver can do.
    fn capabilities(&self) -> Capabilities;
}
