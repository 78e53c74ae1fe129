//! The 21 conformance cases.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::fstest::{self, chown, create_dir, create_file, link, remove_all, rename, Applier};
use super::{default_labels, Case, CaseContext, CaseResult, Context, Failure};
use crate::mount::TempMount;
use crate::{ErrorKind, Info, Kind, Labels, Mount};

/// Fails the case with a formatted message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(Failure::new(format!($($msg)+)));
        }
    };
}

/// Fails the case unless `left == right`, showing both.
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($msg:tt)+) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err(Failure::new(format!("{}: expected {:?}, got {:?}", format!($($msg)+), r, l)));
        }
    }};
}

pub(super) async fn run(case: Case, cx: &CaseContext) -> CaseResult {
    match case {
        Case::Basic => basic(cx).await,
        Case::StatActive => stat_active(cx).await,
        Case::StatCommitted => stat_committed(cx).await,
        Case::Transitivity => transitivity(cx).await,
        Case::PrepareViewFailing => prepare_view_failing(cx).await,
        Case::Update => update(cx).await,
        Case::Remove => remove(cx).await,
        Case::Walk => walk(cx).await,
        Case::LayerFileUpdate => layer_file_update(cx).await,
        Case::RemoveDirectoryInLowerLayer => remove_directory_in_lower_layer(cx).await,
        Case::Chown => chown_case(cx).await,
        Case::DirectoryPermissionOnCommit => directory_permission_on_commit(cx).await,
        Case::RemoveIntermediateSnapshot => remove_intermediate_snapshot(cx).await,
        Case::DeletedFilesInChildSnapshot => deleted_files_in_child_snapshot(cx).await,
        Case::MoveFileFromLowerLayer => move_file_from_lower_layer(cx).await,
        Case::ViewReadonly => view_readonly(cx).await,
        Case::StatInWalk => stat_in_walk(cx).await,
        Case::CloseTwice => close_twice(cx).await,
        Case::RootPermission => root_permission(cx).await,
        Case::Rename => rename_case(cx).await,
        Case::Layers128Mount => layers_128_mount(cx).await,
    }
}

// ---- helpers ----

impl CaseContext {
    /// A key under the work directory: an absolute path, as containerd's
    /// suite uses, so keys with `/` in them are exercised.
    fn key(&self, name: &str) -> String {
        self.work.join(name).to_string_lossy().into_owned()
    }

    /// Top-level names a fresh filesystem of the driver may contain.
    fn ignored(&self) -> &'static [&'static str] {
        if self.capabilities.block_device {
            &["lost+found"]
        } else {
            &[]
        }
    }

    fn mount(&self, mounts: &[Mount], what: &str) -> Result<TempMount, Failure> {
        ensure!(!mounts.is_empty(), "{what}: expected mounts to have entries");
        TempMount::new_in(mounts, &self.work).ctx(format!("mount {what}"))
    }

    /// Compares a mounted tree with the flat one.
    fn compare(&self, flat: &Path, mounted: &Path, what: &str) -> CaseResult {
        fstest::check_directory_equal(flat, mounted, self.ignored()).map_err(|e| Failure::new(format!("{what}: {e}")))
    }

    /// A new, empty directory under the work directory.
    fn scratch_dir(&self, prefix: &str) -> Result<PathBuf, Failure> {
        let dir = self.work.join(unique(prefix));
        std::fs::create_dir(&dir).ctx(format!("create {}", dir.display()))?;
        Ok(dir)
    }
}

fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{nanos}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Fails unless `result` is an error of `kind`; returns its message.
fn expect_error<T: std::fmt::Debug>(result: crate::Result<T>, kind: ErrorKind, what: &str) -> Result<String, Failure> {
    match result {
        Ok(value) => Err(Failure::new(format!("{what}: expected a {kind:?} error, got Ok({value:?})"))),
        Err(e) if e.kind() == kind => Ok(e.message().to_string()),
        Err(e) => Err(Failure::new(format!("{what}: expected a {kind:?} error, got {:?}: {e}", e.kind()))),
    }
}

/// Prepares `key` on `parent`, mounts it, applies `applier` through the
/// mount, unmounts.
async fn prepare_and_apply(cx: &CaseContext, key: &str, parent: &str, applier: &Applier) -> CaseResult {
    let mounts = cx.snapshotter.prepare(key, parent, default_labels()).await.ctx(format!("prepare {key}"))?;
    let m = cx.mount(&mounts, key)?;
    let applied = applier.apply(m.path()).map_err(|e| Failure::new(format!("apply to {key}: {e}")));
    m.unmount().ctx(format!("unmount {key}"))?;
    applied
}

/// Prepares on `parent`, applies `applier`, commits under a new name.
async fn create_snapshot(cx: &CaseContext, parent: &str, applier: &Applier) -> Result<String, Failure> {
    let name = unique("layer");
    let key = format!("{name}-prepare");
    prepare_and_apply(cx, &key, parent, applier).await?;
    cx.snapshotter.commit(&name, &key, default_labels()).await.ctx(format!("commit {key} as {name}"))?;
    Ok(name)
}

/// Mounts a view of `name` and compares it with the flat tree.
async fn check_snapshot(cx: &CaseContext, name: &str, flat: &Path) -> CaseResult {
    let view = format!("{name}-view");
    let mounts = cx.snapshotter.view(&view, name, default_labels()).await.ctx(format!("view {name}"))?;
    let checked = match cx.mount(&mounts, &view) {
        Ok(m) => {
            let compared = cx.compare(flat, m.path(), &format!("view of {name}"));
            m.unmount().ctx(format!("unmount {view}")).and(compared)
        }
        Err(e) => Err(e),
    };
    let removed = cx.snapshotter.remove(&view).await.ctx(format!("remove {view}"));
    checked.and(removed)
}

/// Builds a chain of layers, one per applier, and checks each layer's view
/// against a flat tree with the appliers so far applied.
async fn check_snapshots(cx: &CaseContext, appliers: &[Applier]) -> CaseResult {
    let flat = cx.scratch_dir("flat")?;
    let mut parent = String::new();
    for (i, applier) in appliers.iter().enumerate() {
        let n = i + 1;
        let name = create_snapshot(cx, &parent, applier).await.map_err(|f| f.context(format!("layer {n}")))?;
        applier.apply(&flat).map_err(|e| Failure::new(format!("layer {n}: apply to the flat tree: {e}")))?;
        check_snapshot(cx, &name, &flat).await.map_err(|f| f.context(format!("layer {n}")))?;
        parent = name;
    }
    std::fs::remove_dir_all(&flat).ctx(format!("remove {}", flat.display()))
}

fn ensure_info(info: &Info, name: &str, kind: Kind, parent: &str) -> CaseResult {
    ensure_eq!(info.name, name, "name of {name}");
    ensure_eq!(info.kind, kind, "kind of {name}");
    ensure_eq!(info.parent, parent, "parent of {name}");
    Ok(())
}

// ---- cases ----

async fn basic(cx: &CaseContext) -> CaseResult {
    let sn = &cx.snapshotter;
    let initial = Applier::from(vec![
        create_file("/foo", b"foo\n", 0o777),
        create_dir("/a", 0o755),
        create_dir("/a/b", 0o755),
        create_dir("/a/b/c", 0o755),
    ]);
    let diff = Applier::from(vec![
        create_file("/bar", b"bar\n", 0o777),
        create_file("/foo", b"bar\n", 0o777),
        remove_all("/a/b"),
    ]);

    let preparing = cx.key("preparing");
    prepare_and_apply(cx, &preparing, "", &initial).await?;
    let committed = cx.key("committed");
    sn.commit(&committed, &preparing, default_labels()).await.ctx("commit")?;
    let si = sn.stat(&committed).await.ctx("stat committed")?;
    ensure_info(&si, &committed, Kind::Committed, "")?;
    expect_error(sn.stat(&preparing).await, ErrorKind::NotFound, "stat of the committed key")?;

    let flat = cx.scratch_dir("flat")?;
    initial.apply(&flat).map_err(Failure::new)?;
    let next = cx.key("nextlayer");
    let mounts = sn.prepare(&next, &committed, default_labels()).await.ctx("prepare nextlayer")?;
    let m = cx.mount(&mounts, &next)?;
    let step = cx
        .compare(&flat, m.path(), "nextlayer before changes")
        .and_then(|()| diff.apply(m.path()).map_err(Failure::new));
    m.unmount().ctx("unmount nextlayer")?;
    step?;

    let ni = sn.stat(&next).await.ctx("stat nextlayer")?;
    ensure_info(&ni, &next, Kind::Active, &committed)?;
    let next_committed = cx.key("committed-next");
    sn.commit(&next_committed, &next, default_labels()).await.ctx("commit nextlayer")?;
    let si2 = sn.stat(&next_committed).await.ctx("stat committed-next")?;
    ensure_info(&si2, &next_committed, Kind::Committed, &committed)?;
    expect_error(sn.stat(&next).await, ErrorKind::NotFound, "stat of the second committed key")?;

    let listed = sn.list(&[]).await.ctx("list")?;
    for expected in [&si, &si2] {
        let found = listed.iter().find(|i| i.name == expected.name);
        ensure!(found.is_some(), "list: {} missing", expected.name);
        ensure_eq!(found.cloned(), Some(expected.clone()), "listed info of {}", expected.name);
    }

    diff.apply(&flat).map_err(Failure::new)?;
    let nextnext = cx.key("nextnextlayer");
    let mounts = sn.view(&nextnext, &next_committed, default_labels()).await.ctx("view nextnextlayer")?;
    let m = cx.mount(&mounts, &nextnext)?;
    let compared = cx.compare(&flat, m.path(), "view of committed-next");
    m.unmount().ctx("unmount view")?;
    compared?;
    sn.remove(&nextnext).await.ctx("remove view")?;

    let message =
        expect_error(sn.remove(&committed).await, ErrorKind::FailedPrecondition, "remove of a parent with a child")?;
    ensure!(message.contains("remove"), "remove of a parent: message {message:?} should say \"remove\"");
    sn.remove(&next_committed).await.ctx("remove committed-next")?;
    sn.remove(&committed).await.ctx("remove committed")?;
    ensure!(sn.list(&[]).await.ctx("list")?.is_empty(), "snapshots left after removing all");
    Ok(())
}

async fn stat_active(cx: &CaseContext) -> CaseResult {
    let sn = &cx.snapshotter;
    let preparing = cx.key("preparing");
    prepare_and_apply(cx, &preparing, "", &Applier::from(vec![create_file("/foo", b"foo\n", 0o777)])).await?;
    let si = sn.stat(&preparing).await.ctx("stat")?;
    ensure_info(&si, &preparing, Kind::Active, "")
}

async fn stat_committed(cx: &CaseContext) -> CaseResult {
    let sn = &cx.snapshotter;
    let preparing = cx.key("preparing");
    prepare_and_apply(cx, &preparing, "", &Applier::from(vec![create_file("/foo", b"foo\n", 0o777)])).await?;
    let committed = cx.key("committed");
    sn.commit(&committed, &preparing, default_labels()).await.ctx("commit")?;
    let si = sn.stat(&committed).await.ctx("stat")?;
    ensure_info(&si, &committed, Kind::Committed, "")
}

async fn transitivity(cx: &CaseContext) -> CaseResult {
    let sn = &cx.snapshotter;
    let preparing = cx.key("preparing");
    prepare_and_apply(cx, &preparing, "", &Applier::from(vec![create_file("/foo", b"foo\n", 0o777)])).await?;
    let snap_a = cx.key("snapA");
    sn.commit(&snap_a, &preparing, default_labels()).await.ctx("commit snapA")?;
    let next = cx.key("next");
    prepare_and_apply(cx, &next, &snap_a, &Applier::from(vec![create_file("/foo", b"foo bar\n", 0o777)])).await?;
    let snap_b = cx.key("snapB");
    sn.commit(&snap_b, &next, default_labels()).await.ctx("commit snapB")?;

    let si_a = sn.stat(&snap_a).await.ctx("stat snapA")?;
    let si_b = sn.stat(&snap_b).await.ctx("stat snapB")?;
    let si_parent_b = sn.stat(&si_b.parent).await.ctx("stat the parent of snapB")?;
    ensure_eq!(si_a.parent, "", "parent of snapA");
    ensure_eq!(si_b.parent, snap_a, "parent of snapB");
    ensure_eq!(si_parent_b.parent, "", "parent of snapB's parent");
    ensure_eq!(si_parent_b, si_a, "stat of snapB's parent");
    Ok(())
}

async fn prepare_view_failing(cx: &CaseContext) -> CaseResult {
    let sn = &cx.snapshotter;
    let preparing = cx.key("preparing");
    prepare_and_apply(cx, &preparing, "", &Applier::default()).await?;
    let snap_a = cx.key("snapA");
    sn.commit(&snap_a, &preparing, default_labels()).await.ctx("commit snapA")?;

    let new_layer = cx.key("newlayer");
    sn.prepare(&new_layer, &snap_a, default_labels()).await.ctx("prepare newlayer")?;
    expect_error(sn.view(&new_layer, &snap_a, default_labels()).await, ErrorKind::AlreadyExists, "view with a prepared key")?;

    let prep_layer = cx.key("prepLayer");
    sn.prepare(&prep_layer, &snap_a, default_labels()).await.ctx("prepare prepLayer")?;
    expect_error(sn.prepare(&prep_layer, &snap_a, default_labels()).await, ErrorKind::AlreadyExists, "second prepare")?;

    let view_layer = cx.key("viewLayer");
    sn.view(&view_layer, &snap_a, default_labels()).await.ctx("view viewLayer")?;
    expect_error(sn.view(&view_layer, &snap_a, default_labels()).await, ErrorKind::AlreadyExists, "second view")?;

    expect_error(
        sn.prepare(&snap_a, "", default_labels()).await,
        ErrorKind::AlreadyExists,
        "prepare with a committed name",
    )?;
    // The failed calls changed nothing.
    ensure_eq!(sn.stat(&new_layer).await.ctx("stat newlayer")?.kind, Kind::Active, "kind of newlayer");
    ensure_eq!(sn.stat(&view_layer).await.ctx("stat viewLayer")?.kind, Kind::View, "kind of viewLayer");
    ensure_eq!(sn.list(&[]).await.ctx("list")?.len(), 4, "number of snapshots");
    Ok(())
}

/// c1 (committed), c2 (committed on c1), a1 (active on c2), a2 (active),
/// v1 (view of c2), v2 (empty view).
async fn base_test_snapshots(cx: &CaseContext) -> CaseResult {
    let sn = &cx.snapshotter;
    sn.prepare("c1-a", "", default_labels()).await.ctx("prepare c1-a")?;
    sn.commit("c1", "c1-a", default_labels()).await.ctx("commit c1")?;
    sn.prepare("c2-a", "c1", default_labels()).await.ctx("prepare c2-a")?;
    sn.commit("c2", "c2-a", default_labels()).await.ctx("commit c2")?;
    sn.prepare("a1", "c2", default_labels()).await.ctx("prepare a1")?;
    sn.prepare("a2", "", default_labels()).await.ctx("prepare a2")?;
    sn.view("v1", "c2", default_labels()).await.ctx("view v1")?;
    sn.view("v2", "", default_labels()).await.ctx("view v2")?;
    Ok(())
}

fn ensure_labels(actual: &Labels, expected: &Labels, what: &str) -> CaseResult {
    ensure_eq!(actual, expected, "labels of {what}");
    Ok(())
}

async fn update(cx: &CaseContext) -> CaseResult {
    let sn = &cx.snapshotter;
    let t1 = SystemTime::now();
    base_test_snapshots(cx).await?;
    let t2 = SystemTime::now();

    let cases = [
        ("c1", Kind::Committed, ""),
        ("c2", Kind::Committed, "c1"),
        ("a1", Kind::Active, "c2"),
        ("a2", Kind::Active, ""),
        ("v1", Kind::View, "c2"),
        ("v2", Kind::View, ""),
    ];
    for (name, kind, parent) in cases {
        let st = sn.stat(name).await.ctx(format!("stat {name}"))?;
        ensure!(
            st.created >= t1 && st.created <= t2,
            "{name}: created {:?} not between {t1:?} and {t2:?}",
            st.created
        );
        ensure_eq!(st.updated, st.created, "{name}: updated time of a new snapshot");
        ensure_info(&st, name, kind, parent)?;
        let created = st.created;

        let root_time = super::rfc3339(SystemTime::now());
        let expected = labels(&[("l1", "v1"), ("l2", "v2"), ("l3", "v3"), ("containerd.io/gc.root", &root_time)]);
        let mut change = st.clone();
        change.parent = "doesnotexist".into();
        change.labels = expected.clone();
        let u1 = SystemTime::now();
        let st = sn.update(change, &[]).await.ctx(format!("update {name}"))?;
        let u2 = SystemTime::now();
        ensure_eq!(st.created, created, "{name}: created time after update");
        ensure!(
            st.updated >= u1 && st.updated <= u2,
            "{name}: updated {:?} not between {u1:?} and {u2:?}",
            st.updated
        );
        ensure_info(&st, name, kind, parent)?;
        ensure_labels(&st.labels, &expected, name)?;
        ensure_eq!(sn.stat(name).await.ctx(format!("stat {name}"))?, st, "{name}: stat after update");

        let expected = labels(&[("l1", "updated"), ("l3", "v3"), ("containerd.io/gc.root", &root_time)]);
        let mut change = st.clone();
        change.labels = labels(&[("l1", "updated"), ("l4", "v4")]);
        let st = sn
            .update(change, &["labels.l1".to_string(), "labels.l2".to_string()])
            .await
            .ctx(format!("update {name} labels.l1 labels.l2"))?;
        ensure_labels(&st.labels, &expected, name)?;

        let expected = labels(&[("l4", "v4"), ("containerd.io/gc.root", &root_time)]);
        let mut change = st.clone();
        change.labels = expected.clone();
        let st = sn.update(change, &["labels".to_string()]).await.ctx(format!("update {name} labels"))?;
        ensure_labels(&st.labels, &expected, name)?;

        let mut change = st.clone();
        change.parent = "doesnotexist".into();
        expect_error(
            sn.update(change, &["parent".to_string()]).await,
            ErrorKind::InvalidArgument,
            &format!("{name}: update of the parent field path"),
        )?;
        ensure_eq!(sn.stat(name).await.ctx(format!("stat {name}"))?, st, "{name}: stat after a refused update");
    }
    Ok(())
}

async fn remove(cx: &CaseContext) -> CaseResult {
    let sn = &cx.snapshotter;
    sn.prepare("committed-a", "", default_labels()).await.ctx("prepare committed-a")?;
    sn.commit("committed-1", "committed-a", default_labels()).await.ctx("commit committed-1")?;
    sn.prepare("reuse-1", "committed-1", default_labels()).await.ctx("prepare reuse-1")?;
    sn.remove("reuse-1").await.ctx("remove reuse-1 (active)")?;
    expect_error(sn.stat("reuse-1").await, ErrorKind::NotFound, "stat of a removed key")?;
    sn.view("reuse-1", "committed-1", default_labels()).await.ctx("view reuse-1")?;
    sn.remove("reuse-1").await.ctx("remove reuse-1 (view)")?;
    sn.prepare("reuse-1", "", default_labels()).await.ctx("prepare reuse-1 again")?;
    sn.remove("committed-1").await.ctx("remove committed-1")?;
    sn.commit("committed-1", "reuse-1", default_labels()).await.ctx("commit reuse-1 as committed-1")?;
    let info = sn.stat("committed-1").await.ctx("stat committed-1")?;
    ensure_info(&info, "committed-1", Kind::Committed, "")?;
    expect_error(sn.remove("reuse-1").await, ErrorKind::NotFound, "remove of a committed key")?;
    Ok(())
}

async fn walk(cx: &CaseContext) -> CaseResult {
    let sn = &cx.snapshotter;
    let gc = ("containerd.io/gc.root", "check-walk");
    let plain = labels(&[gc]);
    sn.prepare("a-np", "", plain.clone()).await.ctx("prepare a-np")?;
    sn.prepare("p-tmp", "", plain.clone()).await.ctx("prepare p-tmp")?;
    sn.commit("p", "p-tmp", plain.clone()).await.ctx("commit p")?;
    sn.prepare("a", "p", plain.clone()).await.ctx("prepare a")?;
    sn.view("v", "p", plain.clone()).await.ctx("view v")?;
    sn.prepare("p-wl-tmp", "", plain.clone()).await.ctx("prepare p-wl-tmp")?;
    sn.commit("p-wl", "p-wl-tmp", labels(&[("l", "1"), gc])).await.ctx("commit p-wl")?;
    sn.prepare("a-wl", "p-wl", labels(&[("l", "2"), gc])).await.ctx("prepare a-wl")?;
    sn.view("v-wl", "p-wl", labels(&[("l", "3"), gc])).await.ctx("view v-wl")?;
    sn.prepare("a-np-wl", "", labels(&[("l", "2"), gc])).await.ctx("prepare a-np-wl")?;

    let table: [(&[&str], &[&str]); 10] = [
        (&["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"], &[r#"labels."containerd.io/gc.root"==check-walk"#]),
        (&["a-np", "a", "a-wl", "a-np-wl"], &[r#"kind==active,labels."containerd.io/gc.root"==check-walk"#]),
        (&["v", "v-wl"], &[r#"kind==view,labels."containerd.io/gc.root"==check-walk"#]),
        (&["p", "p-wl"], &[r#"kind==committed,labels."containerd.io/gc.root"==check-walk"#]),
        (&["p", "a-np-wl"], &["name==p", "name==a-np-wl"]),
        (&["a-wl"], &["name==a-wl,labels.l"]),
        (&["a", "v"], &["parent==p"]),
        (&["a", "v", "a-wl", "v-wl"], &[r#"parent!="",labels."containerd.io/gc.root"==check-walk"#]),
        (&["p-wl", "a-wl", "v-wl", "a-np-wl"], &["labels.l"]),
        (&["a-wl", "a-np-wl"], &["labels.l==2"]),
    ];
    for (i, (matches, filters)) in table.iter().enumerate() {
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let listed = sn.list(&filters).await.ctx(format!("[{i}] list {filters:?}"))?;
        let actual: Vec<&str> = listed.iter().map(|info| info.name.as_str()).collect();
        let mut sorted = actual.clone();
        sorted.sort_unstable();
        let mut expected = matches.to_vec();
        expected.sort_unstable();
        ensure_eq!(sorted, expected, "[{i}] list {filters:?}");
    }
    Ok(())
}

async fn layer_file_update(cx: &CaseContext) -> CaseResult {
    let l1 = Applier::from(vec![
        create_dir("/etc", 0o700),
        create_file("/etc/hosts", b"mydomain 10.0.0.1", 0o644),
        create_file("/etc/profile", b"PATH=/usr/bin", 0o644),
    ]);
    let l2 = Applier::from(vec![
        create_file("/etc/hosts", b"mydomain 10.0.0.2", 0o644),
        create_file("/etc/profile", b"PATH=/usr/bin", 0o666),
        create_dir("/root", 0o700),
        create_file("/root/.bashrc", b"PATH=/usr/sbin:/usr/bin", 0o644),
    ]);
    // Five rounds, each starting on a new second, to catch changes that
    // only show up when timestamps differ (or do not).
    for round in 1..=5 {
        check_snapshots(cx, &[l1.clone(), l2.clone()]).await.map_err(|f| f.context(format!("round {round}")))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        if round < 5 {
            tokio::time::sleep(Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos()))).await;
        }
    }
    Ok(())
}

async fn remove_directory_in_lower_layer(cx: &CaseContext) -> CaseResult {
    check_snapshots(
        cx,
        &[
            Applier::from(vec![create_dir("/lib", 0o700), create_file("/lib/hidden", b"", 0o644)]),
            Applier::from(vec![
                remove_all("/lib"),
                create_dir("/lib", 0o700),
                create_file("/lib/not-hidden", b"", 0o644),
            ]),
            Applier::from(vec![create_file("/lib/newfile", b"", 0o644)]),
        ],
    )
    .await
}

async fn chown_case(cx: &CaseContext) -> CaseResult {
    check_snapshots(
        cx,
        &[
            Applier::from(vec![
                create_dir("/opt", 0o700),
                create_dir("/opt/a", 0o700),
                create_dir("/opt/a/b", 0o700),
                create_file("/opt/a/b/file.txt", b"hello", 0o644),
            ]),
            Applier::from(vec![
                chown("/opt", 1, 1),
                chown("/opt/a", 1, 1),
                chown("/opt/a/b", 1, 1),
                chown("/opt/a/b/file.txt", 1, 1),
            ]),
        ],
    )
    .await
}

async fn directory_permission_on_commit(cx: &CaseContext) -> CaseResult {
    check_snapshots(
        cx,
        &[
            Applier::from(vec![
                create_dir("/dir1", 0o700),
                create_dir("/dir2", 0o700),
                create_dir("/dir3", 0o700),
                create_dir("/dir4", 0o700),
                create_file("/dir4/f1", b"...", 0o644),
                create_dir("/dir5", 0o700),
                create_file("/dir5/f1", b"...", 0o644),
                chown("/dir1", 1, 1),
                chown("/dir2", 1, 1),
                chown("/dir3", 1, 1),
                chown("/dir5", 1, 1),
                chown("/dir5/f1", 1, 1),
            ]),
            Applier::from(vec![
                chown("/dir2", 0, 0),
                remove_all("/dir3"),
                chown("/dir4", 1, 1),
                chown("/dir4/f1", 1, 1),
            ]),
            Applier::from(vec![
                create_dir("/dir3", 0o700),
                chown("/dir3", 1, 1),
                remove_all("/dir5"),
                create_dir("/dir5", 0o700),
                chown("/dir5", 1, 1),
            ]),
        ],
    )
    .await
}

async fn remove_intermediate_snapshot(cx: &CaseContext) -> CaseResult {
    let sn = &cx.snapshotter;
    let base = cx.key("base");
    prepare_and_apply(cx, &base, "", &Applier::default()).await?;
    let committed_base = cx.key("committed-base");
    sn.commit(&committed_base, &base, default_labels()).await.ctx("commit base")?;
    let intermediate = cx.key("intermediate");
    sn.prepare(&intermediate, &committed_base, default_labels()).await.ctx("prepare intermediate")?;
    let committed_inter = cx.key("committed-inter");
    sn.commit(&committed_inter, &intermediate, default_labels()).await.ctx("commit intermediate")?;
    let top = cx.key("toplayer");
    sn.prepare(&top, &committed_inter, default_labels()).await.ctx("prepare toplayer")?;

    expect_error(
        sn.remove(&committed_inter).await,
        ErrorKind::FailedPrecondition,
        "remove of the intermediate layer",
    )?;
    ensure_eq!(
        sn.stat(&committed_inter).await.ctx("stat intermediate")?.kind,
        Kind::Committed,
        "kind of the intermediate layer after a refused remove"
    );
    sn.remove(&top).await.ctx("remove toplayer")?;
    sn.remove(&committed_inter).await.ctx("remove intermediate")?;
    sn.remove(&committed_base).await.ctx("remove base")?;
    Ok(())
}

async fn deleted_files_in_child_snapshot(cx: &CaseContext) -> CaseResult {
    check_snapshots(
        cx,
        &[
            Applier::from(vec![create_file("/foo", b"foo\n", 0o777), create_file("/foobar", b"foobar\n", 0o777)]),
            Applier::from(vec![remove_all("/foobar")]),
            Applier::default(),
        ],
    )
    .await
}

async fn move_file_from_lower_layer(cx: &CaseContext) -> CaseResult {
    check_snapshots(
        cx,
        &[
            Applier::from(vec![
                create_dir("/dir1", 0o700),
                create_file("/dir1/f1", b"Hello", 0o644),
                create_dir("dir2", 0o700),
                create_file("dir2/f2", b"...", 0o644),
            ]),
            Applier::from(vec![
                create_dir("/dir3", 0o700),
                create_file("/dir3/f1", b"Hello", 0o644),
                remove_all("/dir1"),
                link("dir2/f2", "dir3/f2"),
                remove_all("dir2/f2"),
            ]),
        ],
    )
    .await
}

async fn view_readonly(cx: &CaseContext) -> CaseResult {
    let sn = &cx.snapshotter;
    let preparing = cx.key("preparing");
    sn.prepare(&preparing, "", default_labels()).await.ctx("prepare")?;
    let committed = cx.key("committed");
    sn.commit(&committed, &preparing, default_labels()).await.ctx("commit")?;
    let view = cx.key("view");
    let mounts = sn.view(&view, &committed, default_labels()).await.ctx("view")?;
    let m = cx.mount(&mounts, "the view")?;
    let testfile = m.path().join("testfile");
    let written = std::fs::write(&testfile, b"testcontent");
    m.unmount().ctx("unmount the view")?;
    if cx.capabilities.readonly_views {
        ensure!(written.is_err(), "write to {} should fail (EROFS) but did not", testfile.display());
    }
    sn.remove(&view).await.ctx("remove the view")?;
    sn.remove(&committed).await.ctx("remove committed")?;
    Ok(())
}

async fn stat_in_walk(cx: &CaseContext) -> CaseResult {
    let sn = &cx.snapshotter;
    let prefix = "stats-in-walk-";
    let (c1, c2) = (format!("{prefix}c1"), format!("{prefix}c2"));
    sn.prepare(&format!("{c1}-a"), "", default_labels()).await.ctx("prepare c1-a")?;
    sn.commit(&c1, &format!("{c1}-a"), default_labels()).await.ctx("commit c1")?;
    sn.prepare(&format!("{c2}-a"), &c1, default_labels()).await.ctx("prepare c2-a")?;
    sn.commit(&c2, &format!("{c2}-a"), default_labels()).await.ctx("commit c2")?;
    sn.prepare(&format!("{prefix}a1"), &c2, default_labels()).await.ctx("prepare a1")?;
    sn.view(&format!("{prefix}v1"), &c2, default_labels()).await.ctx("view v1")?;

    let listed = sn.list(&[]).await.ctx("list")?;
    let names: BTreeSet<&str> = listed.iter().map(|i| i.name.as_str()).filter(|n| n.starts_with(prefix)).collect();
    ensure_eq!(names.len(), 4, "listed snapshots of this case ({names:?})");
    for info in listed.iter().filter(|i| i.name.starts_with(prefix)) {
        let stat = sn.stat(&info.name).await.ctx(format!("stat {}", info.name))?;
        ensure_eq!(stat, *info, "stat of {} against its listed info", info.name);
    }
    Ok(())
}

async fn close_twice(cx: &CaseContext) -> CaseResult {
    let sn = &cx.snapshotter;
    let n = unique("closeTwice");
    let prepare = format!("{n}-prepare");
    sn.prepare(&prepare, "", default_labels()).await.ctx("prepare")?;
    sn.commit(&n, &prepare, default_labels()).await.ctx("commit")?;
    sn.remove(&n).await.ctx("remove")?;
    sn.close().await.ctx("first close")?;
    sn.close().await.ctx("second close")?;
    Ok(())
}

async fn root_permission(cx: &CaseContext) -> CaseResult {
    let preparing = cx.key("preparing");
    let mounts = cx.snapshotter.prepare(&preparing, "", default_labels()).await.ctx("prepare")?;
    let m = cx.mount(&mounts, &preparing)?;
    let mode = std::fs::metadata(m.path()).map(|meta| meta.permissions().mode() & 0o777);
    m.unmount().ctx("unmount")?;
    let mode = mode.ctx("stat the snapshot root")?;
    ensure!(mode == 0o755, "root of a new snapshot: expected mode 0755, got {mode:04o}");
    Ok(())
}

async fn rename_case(cx: &CaseContext) -> CaseResult {
    let l1 = Applier::from(vec![
        create_dir("/dir1", 0o700),
        create_dir("/somefiles", 0o700),
        create_file("/somefiles/f1", b"was here first!", 0o644),
        create_file("/somefiles/f2", b"nothing interesting", 0o644),
    ]);
    let mut ops = Vec::new();
    // Without redirect_dir, overlayfs answers EXDEV for a lower directory.
    if cx.capabilities.rename_lower_dir {
        ops.push(rename("/dir1", "/dir2"));
    }
    ops.extend([
        create_file("/somefiles/f1-overwrite", b"new content 1", 0o644),
        rename("/somefiles/f1-overwrite", "/somefiles/f1"),
        rename("/somefiles/f2", "/somefiles/f3"),
    ]);
    check_snapshots(cx, &[l1, Applier::from(ops)]).await
}

async fn layers_128_mount(cx: &CaseContext) -> CaseResult {
    let sn = &cx.snapshotter;
    let mut appliers = vec![Applier::from(vec![
        create_file("/bottom", b"way at the bottom\n", 0o777),
        create_file("/overwriteme", b"FIRST!\n", 0o777),
        create_dir("/addhere", 0o755),
        create_dir("/onlyme", 0o755),
        create_file("/onlyme/bottom", b"bye!\n", 0o777),
    ])];
    for i in 1..=127 {
        appliers.push(Applier::from(vec![
            create_file("/overwriteme", format!("{i} WAS HERE!\n").as_bytes(), 0o777),
            create_file(&format!("/addhere/file-{i}"), b"same\n", 0o755),
            remove_all("/onlyme"),
            create_dir("/onlyme", 0o755),
            create_file(&format!("/onlyme/file-{i}"), b"only me!\n", 0o777),
        ]));
    }

    let flat = cx.scratch_dir("flat")?;
    let mut parent = String::new();
    for (i, applier) in appliers.iter().enumerate() {
        let preparing = cx.key(&format!("prepare-layer-{i}"));
        let mounts = sn
            .prepare(&preparing, &parent, default_labels())
            .await
            .ctx(format!("[layer {i}] prepare"))?;
        let m = cx.mount(&mounts, &format!("[layer {i}] {preparing}"))?;
        let step = cx
            .compare(&flat, m.path(), &format!("[layer {i}] before applying"))
            .and_then(|()| applier.apply(&flat).map_err(|e| Failure::new(format!("[layer {i}] apply to flat: {e}"))))
            .and_then(|()| applier.apply(m.path()).map_err(|e| Failure::new(format!("[layer {i}] apply: {e}"))))
            .and_then(|()| cx.compare(&flat, m.path(), &format!("[layer {i}] after applying")));
        m.unmount().ctx(format!("[layer {i}] unmount"))?;
        step?;
        let committed = cx.key(&format!("committed-{i}"));
        sn.commit(&committed, &preparing, default_labels()).await.ctx(format!("[layer {i}] commit"))?;
        parent = committed;
    }

    let view = cx.key("fullview");
    let mounts = sn.view(&view, &parent, default_labels()).await.ctx("view of the top layer")?;
    let m = cx.mount(&mounts, "the full view")?;
    let compared = cx.compare(&flat, m.path(), "full view of 128 layers");
    m.unmount().ctx("unmount the full view")?;
    compared
}
