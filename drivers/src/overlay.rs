//! The overlay driver: each snapshot is one overlayfs layer.
//!
//! # Layout
//! - `<root>/metadata.db`: the [`MetaStore`].
//! - `<root>/snapshots/<id>/fs` (0755): the upper directory of an active
//!   snapshot, the layer content of a committed one.
//! - `<root>/snapshots/<id>/work`: overlay's work directory (active only).
//! - `<root>/l/<id>`: a short symlink to `../snapshots/<id>/fs`. Lower
//!   directories are named through these links so that long chains keep the
//!   mount options short.
//!
//! The driver only describes mounts ([`mounts_for`] is a pure function):
//! - no parent (active or view): a bind mount of the snapshot's own `fs`,
//!   `rw` or `ro`;
//! - a view with exactly one parent: a read-only bind of the parent's `fs`;
//! - an active snapshot with parents: an overlay with `workdir`, `upperdir`
//!   and `lowerdir` (nearest parent first);
//! - a view with two or more parents: an overlay with only `lowerdir`, which
//!   the kernel makes read-only.
//!
//! Overlay mounts start with `userxattr` when running in a user namespace
//! and `index=off` when the kernel has the `index` parameter, as containerd
//! does. Prepare never returns a read-only mount. Directory renames of lower
//! directories fail with `EXDEV` (no `redirect_dir`), as declared in the
//! capabilities.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use nix::fcntl::AtFlags;
use nix::unistd::{fchownat, Gid, Uid};
use strata_snapshotter::store::{MetaStore, Snapshot};
use strata_snapshotter::{Capabilities, Error, Info, Kind, Labels, Mount, Result, Snapshotter, Usage};

use crate::fsutil::disk_usage;

/// Where the short links live, relative to the driver root.
const LINKS_DIR: &str = "l";
const INDEX_PARAM: &str = "/sys/module/overlay/parameters/index";

/// Paths and fixed options of one overlay driver root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
    /// Add `index=off` to overlay mounts (the kernel has the parameter).
    index_off: bool,
    /// Add `userxattr` (running in a user namespace, where `trusted.*`
    /// xattrs are out of reach).
    userxattr: bool,
}

impl Layout {
    pub fn new(root: &Path, index_off: bool) -> Layout {
        Layout { root: root.to_path_buf(), index_off, userxattr: false }
    }

    /// The same layout, with or without the `userxattr` option.
    pub fn with_userxattr(mut self, userxattr: bool) -> Layout {
        self.userxattr = userxattr;
        self
    }

    /// `<root>/snapshots/<id>`.
    pub fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// `<root>/snapshots/<id>/fs`.
    pub fn upper(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("fs")
    }

    /// `<root>/snapshots/<id>/work`.
    pub fn work(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("work")
    }

    /// `<root>/l/<id>`, the short name of a layer.
    pub fn link(&self, id: u64) -> PathBuf {
        self.root.join(LINKS_DIR).join(id.to_string())
    }

    /// The target of the short link of `id`, relative to the links dir.
    fn link_target(id: u64) -> PathBuf {
        Path::new("..").join("snapshots").join(id.to_string()).join("fs")
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The mounts of an active snapshot or view.
pub fn mounts_for(layout: &Layout, snapshot: &Snapshot) -> Vec<Mount> {
    let bind = |source: PathBuf, mode: &str| Mount {
        fstype: "bind".into(),
        source: path_str(&source),
        target: String::new(),
        options: vec![mode.into(), "rbind".into()],
    };
    let active = snapshot.kind == Kind::Active;
    match snapshot.parent_ids.as_slice() {
        [] => return vec![bind(layout.upper(snapshot.id), if active { "rw" } else { "ro" })],
        [parent] if !active => return vec![bind(layout.upper(*parent), "ro")],
        _ => {}
    }
    let mut options = Vec::with_capacity(5);
    if layout.userxattr {
        options.push("userxattr".to_string());
    }
    if layout.index_off {
        options.push("index=off".to_string());
    }
    if active {
        options.push(format!("workdir={}", path_str(&layout.work(snapshot.id))));
        options.push(format!("upperdir={}", path_str(&layout.upper(snapshot.id))));
    }
    let lowers: Vec<String> = snapshot.parent_ids.iter().map(|id| path_str(&layout.link(*id))).collect();
    options.push(format!("lowerdir={}", lowers.join(":")));
    vec![Mount { fstype: "overlay".into(), source: "overlay".into(), target: String::new(), options }]
}

struct Inner {
    store: MetaStore,
    layout: Layout,
}

/// The overlay snapshotter over one root directory.
#[derive(Clone)]
pub struct Overlay {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay").field("layout", &self.inner.layout).finish()
    }
}

fn io_err(context: &str, path: &Path, e: impl Into<std::io::Error>) -> Error {
    Error::io(format!("{context} {}", path.display()), e.into())
}

impl Overlay {
    /// Opens (or creates) an overlay driver in `root`.
    pub fn open(root: &Path) -> Result<Overlay> {
        let store = MetaStore::open(root)?;
        let links = root.join(LINKS_DIR);
        std::fs::create_dir_all(&links).map_err(|e| io_err("create", &links, e))?;
        let layout = Layout::new(root, Path::new(INDEX_PARAM).exists()).with_userxattr(in_user_namespace());
        Ok(Overlay { inner: Arc::new(Inner { store, layout }) })
    }

    /// The metadata store (for tools and tests).
    pub fn store(&self) -> &MetaStore {
        &self.inner.store
    }

    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Inner) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| Error::internal(format!("overlay: blocking task failed: {e}")))?
    }
}

impl Inner {
    fn create(&self, kind: Kind, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let pending = self.store.begin_create(kind, key, parent, labels)?;
        let fs = pending.dir().join("fs");
        std::fs::DirBuilder::new().mode(0o755).create(&fs).map_err(|e| io_err("create", &fs, e))?;
        // mkdir is subject to the umask; the layer root must be 0755.
        std::fs::set_permissions(&fs, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| io_err("chmod", &fs, e))?;
        if kind == Kind::Active {
            let work = pending.dir().join("work");
            std::fs::DirBuilder::new().mode(0o711).create(&work).map_err(|e| io_err("create", &work, e))?;
        }
        if let Some(&pid) = pending.parent_ids().first() {
            // The merged root takes its owner from the upper directory.
            let parent_fs = self.layout.upper(pid);
            let meta = std::fs::metadata(&parent_fs).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::not_found(format!("parent snapshot {parent:?} was removed during the create"))
                } else {
                    io_err("stat", &parent_fs, e)
                }
            })?;
            fchownat(
                None,
                &fs,
                Some(Uid::from_raw(meta.uid())),
                Some(Gid::from_raw(meta.gid())),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err("chown", &fs, e))?;
        }
        let snapshot = self.store.finish_create(pending, |snapshot, _dir| {
            if snapshot.kind != Kind::Active {
                return Ok(()); // views never become parents
            }
            let link = self.layout.link(snapshot.id);
            // A link of the same name can only be debris of a create that
            // never committed (ids are handed out once).
            match std::fs::remove_file(&link) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &link, e)),
            }
            std::os::unix::fs::symlink(Layout::link_target(snapshot.id), &link).map_err(|e| io_err("symlink", &link, e))
        })?;
        Ok(mounts_for(&self.layout, &snapshot))
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        let snapshot = self.store.check_commit(name, key, &labels)?;
        let usage = disk_usage(&self.layout.upper(snapshot.id))?;
        self.store.commit_active(name, key, labels, usage)?;
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<()> {
        let entry = self.store.remove(key)?;
        let link = self.layout.link(entry.id);
        match std::fs::remove_file(&link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, link = %link.display(), "failed to remove a layer link; cleanup will retry");
                Ok(())
            }
        }
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        let entry = self.store.entry(key)?;
        if entry.info.kind == Kind::Active {
            disk_usage(&self.layout.upper(entry.id))
        } else {
            Ok(entry.usage)
        }
    }

    fn cleanup(&self) -> Result<()> {
        let removed = self.store.cleanup()?;
        if !removed.is_empty() {
            tracing::info!(count = removed.len(), "removed orphaned snapshot directories");
        }
        // Links whose target is gone point at removed or never-committed
        // snapshots. A link is made only after its target exists, so this
        // never touches a snapshot being created.
        let links = self.layout.root.join(LINKS_DIR);
        let rd = std::fs::read_dir(&links).map_err(|e| io_err("read", &links, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| io_err("read", &links, e))?;
            let path = entry.path();
            if let Err(e) = std::fs::metadata(&path) {
                if e.kind() == std::io::ErrorKind::NotFound {
                    std::fs::remove_file(&path).map_err(|e| io_err("remove", &path, e))?;
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Snapshotter for Overlay {
    async fn stat(&self, key: &str) -> Result<Info> {
        let key = key.to_string();
        self.blocking(move |i| i.store.stat(&key)).await
    }

    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let fieldpaths = fieldpaths.to_vec();
        self.blocking(move |i| i.store.update(info, &fieldpaths)).await
    }

    async fn usage(&self, key: &str) -> Result<Usage> {
        let key = key.to_string();
        self.blocking(move |i| i.usage(&key)).await
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let key = key.to_string();
        self.blocking(move |i| Ok(mounts_for(&i.layout, &i.store.snapshot(&key)?))).await
    }

    async fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let (key, parent) = (key.to_string(), parent.to_string());
        self.blocking(move |i| i.create(Kind::Active, &key, &parent, labels)).await
    }

    async fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let (key, parent) = (key.to_string(), parent.to_string());
        self.blocking(move |i| i.create(Kind::View, &key, &parent, labels)).await
    }

    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        let (name, key) = (name.to_string(), key.to_string());
        self.blocking(move |i| i.commit(&name, &key, labels)).await
    }

    async fn remove(&self, key: &str) -> Result<()> {
        let key = key.to_string();
        self.blocking(move |i| i.remove(&key)).await
    }

    async fn list(&self, filters: &[String]) -> Result<Vec<Info>> {
        let filters = filters.to_vec();
        self.blocking(move |i| i.store.list(&filters)).await
    }

    async fn cleanup(&self) -> Result<()> {
        self.blocking(|i| i.cleanup()).await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { rename_lower_dir: false, block_device: false, readonly_views: true }
    }
}

/// Whether this process runs in a user namespace other than the initial
/// one (its uid map is not the identity over all ids).
fn in_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => map.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"],
        Err(_) => false,
    }
}

/// Whether overlay works for a driver rooted at `root`: the kernel knows
/// overlayfs and a probe overlay mount on the backing filesystem succeeds
/// (which also needs `d_type` support).
pub fn is_supported(root: &Path) -> bool {
    match probe(root) {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(root = %root.display(), error = %e, "overlay is not supported here");
            false
        }
    }
}

fn probe(root: &Path) -> Result<()> {
    let filesystems = std::fs::read_to_string("/proc/filesystems")
        .map_err(|e| io_err("read", Path::new("/proc/filesystems"), e))?;
    if !filesystems.lines().any(|l| l.split_whitespace().last() == Some("overlay")) {
        return Err(Error::unimplemented("the kernel has no overlay filesystem (modprobe overlay)"));
    }
    std::fs::create_dir_all(root).map_err(|e| io_err("create", root, e))?;
    let dir = nix::unistd::mkdtemp(&root.join("overlay-probe-XXXXXX")).map_err(|e| io_err("mkdtemp in", root, e))?;
    let guard = ProbeDir(dir.clone());
    for d in ["lower", "upper", "work", "merged"] {
        std::fs::create_dir(dir.join(d)).map_err(|e| io_err("create", &dir.join(d), e))?;
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        dir.join("lower").display(),
        dir.join("upper").display(),
        dir.join("work").display()
    );
    let merged = dir.join("merged");
    nix::mount::mount(Some("overlay"), &merged, Some("overlay"), nix::mount::MsFlags::empty(), Some(data.as_str()))
        .map_err(|e| io_err("probe overlay mount on", &merged, e))?;
    nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH).map_err(|e| io_err("unmount", &merged, e))?;
    drop(guard);
    Ok(())
}

struct ProbeDir(PathBuf);

impl Drop for ProbeDir {
    fn drop(&mut self) {
        let merged = self.0.join("merged");
        let _ = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_snapshotter::mount::TempMount;
    use strata_snapshotter::store::DriverData;
    use strata_snapshotter::ErrorKind;

    fn snap(id: u64, kind: Kind, parents: &[u64]) -> Snapshot {
        Snapshot { id, kind, parent_ids: parents.to_vec(), driver_data: DriverData::new() }
    }

    #[test]
    fn mounts_without_parents_are_binds() {
        let l = Layout::new(Path::new("/r"), true);
        let m = mounts_for(&l, &snap(3, Kind::Active, &[]));
        assert_eq!(m, vec![Mount { fstype: "bind".into(), source: "/r/snapshots/3/fs".into(), target: String::new(), options: vec!["rw".into(), "rbind".into()] }]);
        let m = mounts_for(&l, &snap(4, Kind::View, &[]));
        assert_eq!(m[0].source, "/r/snapshots/4/fs");
        assert_eq!(m[0].options, ["ro", "rbind"]);
    }

    #[test]
    fn view_of_one_parent_binds_the_parent() {
        let l = Layout::new(Path::new("/r"), true);
        let m = mounts_for(&l, &snap(9, Kind::View, &[7]));
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].fstype.as_str(), m[0].source.as_str()), ("bind", "/r/snapshots/7/fs"));
        assert_eq!(m[0].options, ["ro", "rbind"]);
    }

    #[test]
    fn active_with_parents_is_an_overlay_in_containerd_option_order() {
        let l = Layout::new(Path::new("/r"), true);
        let m = mounts_for(&l, &snap(9, Kind::Active, &[7, 5, 2]));
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].fstype.as_str(), m[0].source.as_str()), ("overlay", "overlay"));
        assert_eq!(
            m[0].options,
            ["index=off", "workdir=/r/snapshots/9/work", "upperdir=/r/snapshots/9/fs", "lowerdir=/r/l/7:/r/l/5:/r/l/2"]
        );
        assert!(!m[0].is_readonly(), "prepare never returns a read-only mount");
        let no_index = Layout::new(Path::new("/r"), false);
        let m = mounts_for(&no_index, &snap(9, Kind::Active, &[7]));
        assert_eq!(m[0].options, ["workdir=/r/snapshots/9/work", "upperdir=/r/snapshots/9/fs", "lowerdir=/r/l/7"]);
        let rootless = Layout::new(Path::new("/r"), true).with_userxattr(true);
        let m = mounts_for(&rootless, &snap(9, Kind::Active, &[7]));
        assert_eq!(m[0].options[..2], ["userxattr", "index=off"]);
        let m = mounts_for(&rootless, &snap(9, Kind::Active, &[]));
        assert_eq!(m[0].options, ["rw", "rbind"], "binds take no overlay options");
    }

    #[test]
    fn view_of_many_parents_is_a_lower_only_overlay() {
        let l = Layout::new(Path::new("/r"), true);
        let m = mounts_for(&l, &snap(9, Kind::View, &[7, 5]));
        assert_eq!(m[0].fstype, "overlay");
        assert_eq!(m[0].options, ["index=off", "lowerdir=/r/l/7:/r/l/5"]);
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
    }

    fn require_overlay(root: &Path) {
        assert!(
            is_supported(root),
            "overlayfs is required for this test: load the module (modprobe overlay) and run as root"
        );
    }

    #[test]
    fn short_links_point_at_layers_and_go_with_them() {
        rt().block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let o = Overlay::open(dir.path()).expect("open");
            o.prepare("a", "", Labels::new()).await.expect("prepare");
            o.commit("base", "a", Labels::new()).await.expect("commit");
            let id = o.store().entry("base").expect("entry").id;
            let link = o.layout().link(id);
            assert_eq!(std::fs::read_link(&link).expect("link"), Path::new("../snapshots").join(id.to_string()).join("fs"));
            assert_eq!(std::fs::canonicalize(&link).expect("resolves"), std::fs::canonicalize(o.layout().upper(id)).expect("fs"));
            o.view("v", "base", Labels::new()).await.expect("view");
            let view_id = o.store().entry("v").expect("v").id;
            assert!(!o.layout().link(view_id).exists(), "views get no link");
            o.remove("v").await.expect("remove view");
            o.remove("base").await.expect("remove");
            assert!(std::fs::symlink_metadata(&link).is_err(), "link removed with its layer");
            // a dangling link (from a crash) is pruned by cleanup
            std::os::unix::fs::symlink("../snapshots/424242/fs", dir.path().join("l/424242")).expect("symlink");
            o.cleanup().await.expect("cleanup");
            assert!(std::fs::symlink_metadata(dir.path().join("l/424242")).is_err());
        });
    }

    #[test]
    fn root_is_0755_and_errors_are_classified() {
        rt().block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let o = Overlay::open(dir.path()).expect("open");
            let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
            let m = o.prepare("a", "", Labels::new()).await;
            nix::sys::stat::umask(old);
            let m = m.expect("prepare");
            let mode = std::fs::metadata(&m[0].source).expect("stat").mode();
            assert_eq!(mode & 0o7777, 0o755);
            assert_eq!(o.prepare("a", "", Labels::new()).await.expect_err("dup").kind(), ErrorKind::AlreadyExists);
            assert_eq!(o.prepare("b", "missing", Labels::new()).await.expect_err("np").kind(), ErrorKind::NotFound);
            assert_eq!(o.prepare("b", "a", Labels::new()).await.expect_err("active parent").kind(), ErrorKind::InvalidArgument);
            o.view("v", "", Labels::new()).await.expect("view");
            assert_eq!(o.commit("c", "v", Labels::new()).await.expect_err("view").kind(), ErrorKind::FailedPrecondition);
            o.commit("c", "a", Labels::new()).await.expect("commit");
            assert_eq!(o.mounts("c").await.expect_err("committed").kind(), ErrorKind::FailedPrecondition);
            assert_eq!(o.mounts("a").await.expect_err("gone").kind(), ErrorKind::NotFound);
            assert_eq!(o.usage("nope").await.expect_err("missing").kind(), ErrorKind::NotFound);
            o.close().await.expect("close");
            o.close().await.expect("close twice");
        });
    }

    #[test]
    fn three_layer_chain_with_whiteouts_through_real_mounts() {
        rt().block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            require_overlay(dir.path());
            let o = Overlay::open(&dir.path().join("overlay")).expect("open");

            // layer 1: files and a directory
            let m = o.prepare("l1", "", Labels::new()).await.expect("prepare l1");
            {
                let t = TempMount::new(&m).expect("mount l1");
                std::fs::write(t.path().join("keep"), b"1").expect("write");
                std::fs::write(t.path().join("gone"), b"1").expect("write");
                std::fs::create_dir_all(t.path().join("dir/sub")).expect("mkdir");
                std::fs::write(t.path().join("dir/sub/old"), b"old").expect("write");
                t.unmount().expect("unmount");
            }
            o.commit("L1", "l1", Labels::new()).await.expect("commit l1");

            // layer 2: delete a file, replace a directory, modify a file
            let m = o.prepare("l2", "L1", Labels::new()).await.expect("prepare l2");
            assert_eq!(m[0].fstype, "overlay", "an active snapshot with a parent is an overlay");
            let m2 = o.mounts("l2").await.expect("mounts");
            assert_eq!(m, m2);
            {
                let t = TempMount::new(&m).expect("mount l2");
                assert_eq!(std::fs::read(t.path().join("keep")).expect("lower visible"), b"1");
                std::fs::remove_file(t.path().join("gone")).expect("delete");
                std::fs::remove_dir_all(t.path().join("dir")).expect("rmdir");
                std::fs::create_dir(t.path().join("dir")).expect("recreate");
                std::fs::write(t.path().join("dir/new"), b"new").expect("write");
                std::fs::write(t.path().join("keep"), b"2").expect("overwrite");
                t.unmount().expect("unmount");
            }
            let active_usage = o.usage("l2").await.expect("usage");
            assert!(active_usage.inodes >= 4, "{active_usage:?}");
            o.commit("L2", "l2", Labels::new()).await.expect("commit l2");
            assert_eq!(o.usage("L2").await.expect("usage"), active_usage, "stored at commit");

            // layer 3 sees the merged result
            let m = o.prepare("l3", "L2", Labels::new()).await.expect("prepare l3");
            assert_eq!(m[0].fstype, "overlay");
            {
                let t = TempMount::new(&m).expect("mount l3");
                assert_eq!(std::fs::read(t.path().join("keep")).expect("read"), b"2");
                assert!(!t.path().join("gone").exists(), "whiteout hides the deleted file");
                assert!(!t.path().join("dir/sub").exists(), "opaque dir hides old content");
                assert_eq!(std::fs::read(t.path().join("dir/new")).expect("read"), b"new");
                std::fs::write(t.path().join("three"), b"3").expect("write");
                t.unmount().expect("unmount");
            }
            o.commit("L3", "l3", Labels::new()).await.expect("commit l3");

            // a view over three layers is read-only and merged
            let m = o.view("v", "L3", Labels::new()).await.expect("view");
            assert_eq!(m[0].fstype, "overlay");
            assert!(m[0].options.iter().all(|opt| !opt.starts_with("upperdir")));
            {
                let t = TempMount::new(&m).expect("mount view");
                assert_eq!(std::fs::read(t.path().join("three")).expect("read"), b"3");
                assert!(!t.path().join("gone").exists());
                let err = std::fs::write(t.path().join("x"), b"x").expect_err("read-only");
                assert_eq!(err.raw_os_error(), Some(libc::EROFS));
                t.unmount().expect("unmount");
            }
            // a view over one layer is a read-only bind
            let m = o.view("v1", "L1", Labels::new()).await.expect("view");
            {
                let t = TempMount::new(&m).expect("mount view");
                assert!(t.path().join("gone").exists());
                assert_eq!(std::fs::write(t.path().join("x"), b"x").expect_err("ro").raw_os_error(), Some(libc::EROFS));
                t.unmount().expect("unmount");
            }
            for k in ["v", "v1", "L3", "L2", "L1"] {
                o.remove(k).await.expect(k);
            }
            assert!(o.list(&[]).await.expect("list").is_empty());
        });
    }
}
