//! The conformance suite every [`Snapshotter`] must pass: in process for
//! each driver, and again over gRPC through the client.
//!
//! It has the 21 cases of containerd's snapshotter suite, written for this
//! project (see [`Case`]). Each case runs with umask 0, in a fresh temporary
//! directory that holds `root/` (given to the factory, which builds the
//! snapshotter under test) and `work/` (mount points and scratch trees).
//! Prepares and views carry the label `containerd.io/gc.root=<time>`, as
//! containerd's suite sets.
//!
//! Cases that write files mount the returned mounts with
//! [`crate::mount::TempMount`], change the tree through the mount, and
//! compare each committed layer's view with a flat directory that had the
//! same changes applied ([`fstest`]). Driver differences are read from
//! [`crate::Capabilities`], never from a driver's name.
//!
//! A failing case panics with what went wrong and prints a listing of its
//! directory; mounting cases run as a non-root user fail with
//! "must run as root (mounts)".
//!
//! # Use
//! ```text
//! fn factory(root: PathBuf) -> strata_snapshotter::testsuite::FactoryFuture {
//!     Box::pin(async move { my_driver::open(&root) })
//! }
//! strata_snapshotter::conformance_suite!(my_driver, factory);
//! ```
//! expands to a module `my_driver` with one `#[test]` per case.

pub mod fstest;
mod cases;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::{Capabilities, Labels, Snapshotter};

/// What a factory returns: the snapshotter under test, built on its way.
pub type FactoryFuture = BoxFuture<'static, crate::Result<Arc<dyn Snapshotter>>>;

/// Builds the snapshotter under test on a fresh, empty root directory.
pub type Factory = fn(PathBuf) -> FactoryFuture;

/// One conformance case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// The whole lifecycle: prepare, write, commit, prepare on top, view,
    /// list, remove (a parent with a child cannot be removed).
    Basic,
    /// Stat of a new active snapshot.
    StatActive,
    /// Stat of a committed snapshot.
    StatCommitted,
    /// A child's parent is the committed name; the grandparent is reachable.
    Transitivity,
    /// A key taken by a prepare or view cannot be taken again.
    PrepareViewFailing,
    /// Update of labels on every kind; Created stays, Updated moves;
    /// an immutable field path is `InvalidArgument`.
    Update,
    /// Keys and names can be reused after removal.
    Remove,
    /// List with ten filter expressions.
    Walk,
    /// A file rewritten and re-moded in a child layer.
    LayerFileUpdate,
    /// A lower directory removed and re-created hides its old content.
    RemoveDirectoryInLowerLayer,
    /// chown of lower files and directories sticks.
    Chown,
    /// Owners and modes of directories across three layers.
    DirectoryPermissionOnCommit,
    /// A snapshot with a child cannot be removed; top-down removal works.
    RemoveIntermediateSnapshot,
    /// A file deleted in a child stays deleted in its descendants.
    DeletedFilesInChildSnapshot,
    /// Hard-linking a lower file elsewhere and deleting the original.
    MoveFileFromLowerLayer,
    /// Writes into a mounted view fail when views are read-only.
    ViewReadonly,
    /// Stat of every listed snapshot equals its listed info.
    StatInWalk,
    /// Closing twice is harmless.
    CloseTwice,
    /// The root of a new active snapshot is mode 0755.
    RootPermission,
    /// Renames in a child layer (a lower directory only when the driver
    /// declares `rename_lower_dir`).
    Rename,
    /// A chain of 128 layers, each checked against a flat directory.
    Layers128Mount,
}

impl Case {
    /// Every case, in the order containerd's suite runs them.
    pub const ALL: [Case; 21] = [
        Case::Basic,
        Case::StatActive,
        Case::StatCommitted,
        Case::Transitivity,
        Case::PrepareViewFailing,
        Case::Update,
        Case::Remove,
        Case::Walk,
        Case::LayerFileUpdate,
        Case::RemoveDirectoryInLowerLayer,
        Case::Chown,
        Case::DirectoryPermissionOnCommit,
        Case::RemoveIntermediateSnapshot,
        Case::DeletedFilesInChildSnapshot,
        Case::MoveFileFromLowerLayer,
        Case::ViewReadonly,
        Case::StatInWalk,
        Case::CloseTwice,
        Case::RootPermission,
        Case::Rename,
        Case::Layers128Mount,
    ];

    /// The case's name, as containerd's suite spells it (without its typos).
    pub fn name(self) -> &'static str {
        match self {
            Case::Basic => "Basic",
            Case::StatActive => "StatActive",
            Case::StatCommitted => "StatCommitted",
            Case::Transitivity => "Transitivity",
            Case::PrepareViewFailing => "PrepareViewFailing",
            Case::Update => "Update",
            Case::Remove => "Remove",
            Case::Walk => "Walk",
            Case::LayerFileUpdate => "LayerFileUpdate",
            Case::RemoveDirectoryInLowerLayer => "RemoveDirectoryInLowerLayer",
            Case::Chown => "Chown",
            Case::DirectoryPermissionOnCommit => "DirectoryPermissionOnCommit",
            Case::RemoveIntermediateSnapshot => "RemoveIntermediateSnapshot",
            Case::DeletedFilesInChildSnapshot => "DeletedFilesInChildSnapshot",
            Case::MoveFileFromLowerLayer => "MoveFileFromLowerLayer",
            Case::ViewReadonly => "ViewReadonly",
            Case::StatInWalk => "StatInWalk",
            Case::CloseTwice => "CloseTwice",
            Case::RootPermission => "RootPermission",
            Case::Rename => "Rename",
            Case::Layers128Mount => "128LayersMount",
        }
    }

    /// Whether the case mounts snapshots (and so needs root).
    pub fn mounts(self) -> bool {
        !matches!(
            self,
            Case::Update | Case::Remove | Case::Walk | Case::StatInWalk | Case::CloseTwice
        )
    }
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a case failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(String);

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Failure(message.into())
    }
    /// The same failure with `context: ` before its message.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        Failure(format!("{context}: {}", self.0))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Adds what was being done to any error, turning it into a [`Failure`].
pub trait Context<T> {
    fn ctx(self, what: impl std::fmt::Display) -> Result<T, Failure>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: impl std::fmt::Display) -> Result<T, Failure> {
        self.map_err(|e| Failure(format!("{what}: {e}")))
    }
}

/// The result of one case.
pub type CaseResult = Result<(), Failure>;

/// Formats a time as RFC 3339 in UTC, seconds precision
/// (`2006-01-02T15:04:05Z`), as containerd's suite labels snapshots.
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The labels every prepare and view of the suite carries.
pub fn default_labels() -> Labels {
    Labels::from([("containerd.io/gc.root".to_string(), rfc3339(SystemTime::now()))])
}

/// What a case gets: the snapshotter, its capabilities, and a scratch
/// directory for mount points and flat trees.
pub struct CaseContext {
    pub snapshotter: Arc<dyn Snapshotter>,
    pub capabilities: Capabilities,
    pub work: PathBuf,
}

/// Mount points below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = crate::mount::mount_points()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    points.reverse();
    points
}

/// Runs one case against a snapshotter made by `factory`, panicking with a
/// report if it fails. Used by [`conformance_suite!`](crate::conformance_suite).
pub fn run_case<F>(case: Case, factory: F)
where
    F: Fn(PathBuf) -> FactoryFuture,
{
    // The suite's file modes are exact: containerd's suite clears the umask too.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    if case.mounts() && !nix::unistd::geteuid().is_root() {
        panic!("{case}: must run as root (mounts)");
    }
    let base = match tempfile::Builder::new()
        .prefix(&format!("strata-suite-{}-", case.name()))
        .tempdir()
    {
        Ok(dir) => dir,
        Err(e) => panic!("{case}: create the case directory: {e}"),
    };
    let base_path = std::fs::canonicalize(base.path()).unwrap_or_else(|_| base.path().to_path_buf());
    let root = base_path.join("root");
    let work = base_path.join("work");
    for dir in [&root, &work] {
        if let Err(e) = std::fs::create_dir(dir) {
            panic!("{case}: create {}: {e}", dir.display());
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => panic!("{case}: build a tokio runtime: {e}"),
    };

    let body = async {
        let snapshotter = factory(root.clone()).await.ctx("create the snapshotter")?;
        let cx = CaseContext { capabilities: snapshotter.capabilities(), snapshotter, work: work.clone() };
        let result = cases::run(case, &cx).await;
        let closed = cx.snapshotter.close().await.ctx("close the snapshotter");
        result.and(closed)
    };
    let outcome = runtime.block_on(AssertUnwindSafe(body).catch_unwind());
    drop(runtime);

    let failed = !matches!(outcome, Ok(Ok(())));
    if failed {
        eprintln!("--- {case}: state of {} ---\n{}", base_path.display(), fstest::dump_tree(&base_path));
    }
    // Never delete through a mount a failed case left behind.
    let mut leftover = Vec::new();
    for point in mounts_under(&base_path) {
        if let Err(e) = crate::mount::unmount(&point) {
            leftover.push(format!("{}: {e}", point.display()));
        }
    }
    let mut cleanup_problem = None;
    if leftover.is_empty() {
        if let Err(e) = base.close() {
            cleanup_problem = Some(format!("remove {}: {e}", base_path.display()));
        }
    } else {
        let kept = base.keep();
        cleanup_problem = Some(format!(
            "mounts left behind (directory {} kept): {}",
            kept.display(),
            leftover.join("; ")
        ));
    }

    match outcome {
        Ok(Ok(())) => {
            if let Some(problem) = cleanup_problem {
                panic!("{case}: passed, but cleaning up failed: {problem}");
            }
        }
        Ok(Err(failure)) => panic!("{case} failed: {failure}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Expands to a module `$module` with one `#[test]` per conformance case,
/// each calling [`testsuite::run_case`](crate::testsuite::run_case) with
/// `$factory` (a [`Factory`](crate::testsuite::Factory) or a closure of that
/// shape). Items of the enclosing module are visible to `$factory`.
#[macro_export]
macro_rules! conformance_suite {
    ($module:ident, $factory:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            $crate::conformance_suite!(@cases $factory;
                basic => Basic,
                stat_active => StatActive,
                stat_committed => StatCommitted,
                transitivity => Transitivity,
                prepare_view_failing => PrepareViewFailing,
                update => Update,
                remove => Remove,
                walk => Walk,
                layer_file_update => LayerFileUpdate,
                remove_directory_in_lower_layer => RemoveDirectoryInLowerLayer,
                chown => Chown,
                directory_permission_on_commit => DirectoryPermissionOnCommit,
                remove_intermediate_snapshot => RemoveIntermediateSnapshot,
                deleted_files_in_child_snapshot => DeletedFilesInChildSnapshot,
                move_file_from_lower_layer => MoveFileFromLowerLayer,
                view_readonly => ViewReadonly,
                stat_in_walk => StatInWalk,
                close_twice => CloseTwice,
                root_permission => RootPermission,
                rename => Rename,
                layers_128_mount => Layers128Mount,
            );
        }
    };
    (@cases $factory:expr; $($test:ident => $case:ident,)*) => {
        $(
            #[test]
            fn $test() {
                $crate::testsuite::run_case($crate::testsuite::Case::$case, $factory);
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_136_214_245);
        assert_eq!(rfc3339(t), "2006-01-02T15:04:05Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn case_names_are_unique() {
        let mut names: Vec<_> = Case::ALL.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 21);
    }
}
