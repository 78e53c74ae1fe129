//! The vfs driver: every active snapshot is a full copy of its parent.
//!
//! # Layout
//! - `<root>/metadata.db`: the [`MetaStore`].
//! - `<root>/snapshots/<id>` (0755): the snapshot's whole filesystem.
//!
//! Prepare on a parent copies the parent's directory (which already holds
//! the whole chain) with every piece of metadata, reflinking file data where
//! the filesystem can. A view of a parent copies nothing: it is a read-only
//! bind of the parent's directory. Mounts are `bind` with `rbind`.
//! Renaming anything works (there are no layers), and views are read-only.
//! Usage of an active snapshot is its whole directory, parents' content
//! included, since it holds a copy of it.

use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use strata_snapshotter::store::{MetaStore, Snapshot};
use strata_snapshotter::{Capabilities, Error, Info, Kind, Labels, Mount, Result, Snapshotter, Usage};

use crate::fsutil::{copy_tree, disk_usage};

/// The mounts of an active snapshot or view whose directories live under
/// `snapshots` (`<root>/snapshots`).
pub fn mounts_for(snapshots: &Path, snapshot: &Snapshot) -> Vec<Mount> {
    let dir = |id: u64| snapshots.join(id.to_string()).to_string_lossy().into_owned();
    let (source, mode) = match (snapshot.kind, snapshot.parent_ids.first()) {
        (Kind::Active, _) => (dir(snapshot.id), "rw"),
        (_, Some(parent)) => (dir(*parent), "ro"),
        (_, None) => (dir(snapshot.id), "ro"),
    };
    vec![Mount { fstype: "bind".into(), source, target: String::new(), options: vec!["rbind".into(), mode.into()] }]
}

/// The vfs snapshotter over one root directory.
#[derive(Clone)]
pub struct Vfs {
    store: Arc<MetaStore>,
}

impl std::fmt::Debug for Vfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vfs").field("root", &self.store.root()).finish()
    }
}

impl Vfs {
    /// Opens (or creates) a vfs driver in `root`.
    pub fn open(root: &Path) -> Result<Vfs> {
        Ok(Vfs { store: Arc::new(MetaStore::open(root)?) })
    }

    /// The metadata store (for tools and tests).
    pub fn store(&self) -> &MetaStore {
        &self.store
    }

    #[cfg(test)]
    fn dir(&self, id: u64) -> PathBuf {
        self.store.snapshot_dir(id)
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&MetaStore) -> Result<T> + Send + 'static) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::internal(format!("vfs: blocking task failed: {e}")))?
    }
}

fn create(store: &MetaStore, kind: Kind, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
    let snapshot = store.create(kind, key, parent, labels, |pending| {
        match (pending.kind(), pending.parent_ids().first()) {
            (Kind::Active, Some(&parent_id)) => {
                let source = store.snapshot_dir(parent_id);
                copy_tree(&source, pending.dir()).map_err(|e| {
                    if source.exists() {
                        e
                    } else {
                        Error::not_found(format!("parent snapshot {parent:?} was removed while it was being copied"))
                    }
                })
            }
            _ => Ok(()),
        }
    })?;
    Ok(mounts_for(store.snapshots_dir(), &snapshot))
}

fn usage(store: &MetaStore, key: &str) -> Result<Usage> {
    let entry = store.entry(key)?;
    if entry.info.kind == Kind::Active {
        disk_usage(&store.snapshot_dir(entry.id))
    } else {
        Ok(entry.usage)
    }
}

#[async_trait]
impl Snapshotter for Vfs {
    async fn stat(&self, key: &str) -> Result<Info> {
        let key = key.to_string();
        self.blocking(move |s| s.stat(&key)).await
    }

    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let fieldpaths = fieldpaths.to_vec();
        self.blocking(move |s| s.update(info, &fieldpaths)).await
    }

    async fn usage(&self, key: &str) -> Result<Usage> {
        let key = key.to_string();
        self.blocking(move |s| usage(s, &key)).await
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let key = key.to_string();
        self.blocking(move |s| Ok(mounts_for(s.snapshots_dir(), &s.snapshot(&key)?))).await
    }

    async fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let (key, parent) = (key.to_string(), parent.to_string());
        self.blocking(move |s| create(s, Kind::Active, &key, &parent, labels)).await
    }

    async fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let (key, parent) = (key.to_string(), parent.to_string());
        self.blocking(move |s| create(s, Kind::View, &key, &parent, labels)).await
    }

    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        let (name, key) = (name.to_string(), key.to_string());
        let dirs = self.store.snapshots_dir().to_path_buf();
        self.blocking(move |s| {
            let snapshot = s.check_commit(&name, &key, &labels)?;
            let usage = disk_usage(&dirs.join(snapshot.id.to_string()))?;
            s.commit_active(&name, &key, labels, usage).map(|_| ())
        })
        .await
    }

    async fn remove(&self, key: &str) -> Result<()> {
        let key = key.to_string();
        self.blocking(move |s| s.remove(&key).map(|_| ())).await
    }

    async fn list(&self, filters: &[String]) -> Result<Vec<Info>> {
        let filters = filters.to_vec();
        self.blocking(move |s| s.list(&filters)).await
    }

    async fn cleanup(&self) -> Result<()> {
        self.blocking(|s| s.cleanup().map(|_| ())).await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { rename_lower_dir: true, block_device: false, readonly_views: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use strata_snapshotter::mount::TempMount;
    use strata_snapshotter::store::DriverData;
    use strata_snapshotter::ErrorKind;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
    }

    #[test]
    fn mounts_are_rbinds() {
        let s = |id, kind, parents: &[u64]| Snapshot { id, kind, parent_ids: parents.to_vec(), driver_data: DriverData::new() };
        let root = Path::new("/r/snapshots");
        let m = mounts_for(root, &s(3, Kind::Active, &[2, 1]));
        assert_eq!(m, vec![Mount { fstype: "bind".into(), source: "/r/snapshots/3".into(), target: String::new(), options: vec!["rbind".into(), "rw".into()] }]);
        let m = mounts_for(root, &s(4, Kind::View, &[2, 1]));
        assert_eq!((m[0].source.as_str(), m[0].options.clone()), ("/r/snapshots/2", vec!["rbind".to_string(), "ro".to_string()]));
        let m = mounts_for(root, &s(5, Kind::View, &[]));
        assert_eq!((m[0].source.as_str(), m[0].options[1].as_str()), ("/r/snapshots/5", "ro"));
    }

    #[test]
    fn three_layer_chain_with_deletes_through_real_mounts() {
        rt().block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let v = Vfs::open(dir.path()).expect("open");
            assert!(v.capabilities().rename_lower_dir);

            let m = v.prepare("l1", "", Labels::new()).await.expect("prepare");
            {
                let t = TempMount::new(&m).expect("mount");
                std::fs::write(t.path().join("keep"), b"1").expect("write");
                std::fs::write(t.path().join("gone"), b"1").expect("write");
                std::fs::create_dir_all(t.path().join("dir/sub")).expect("mkdir");
                std::fs::hard_link(t.path().join("keep"), t.path().join("dir/keep-link")).expect("link");
                t.unmount().expect("unmount");
            }
            v.commit("L1", "l1", Labels::new()).await.expect("commit");
            let l1 = v.usage("L1").await.expect("usage");

            let m = v.prepare("l2", "L1", Labels::new()).await.expect("prepare");
            {
                let t = TempMount::new(&m).expect("mount");
                assert_eq!(std::fs::read(t.path().join("keep")).expect("copied"), b"1");
                let a = std::fs::metadata(t.path().join("keep")).expect("stat");
                let b = std::fs::metadata(t.path().join("dir/keep-link")).expect("stat");
                assert_eq!(a.ino(), b.ino(), "hard links survive the copy");
                std::fs::remove_file(t.path().join("gone")).expect("delete");
                std::fs::rename(t.path().join("dir"), t.path().join("moved")).expect("rename a lower dir");
                t.unmount().expect("unmount");
            }
            v.commit("L2", "l2", Labels::new()).await.expect("commit");
            assert_eq!(v.usage("L2").await.expect("usage").inodes, l1.inodes - 1, "one file fewer");

            let m = v.prepare("l3", "L2", Labels::new()).await.expect("prepare");
            {
                let t = TempMount::new(&m).expect("mount");
                assert!(!t.path().join("gone").exists());
                assert!(t.path().join("moved/sub").is_dir());
                std::fs::write(t.path().join("three"), b"3").expect("write");
                t.unmount().expect("unmount");
            }
            v.commit("L3", "l3", Labels::new()).await.expect("commit");

            let m = v.view("view", "L3", Labels::new()).await.expect("view");
            assert_eq!(m[0].source, v.dir(v.store().entry("L3").expect("L3").id).to_string_lossy());
            {
                let t = TempMount::new(&m).expect("mount");
                assert_eq!(std::fs::read(t.path().join("three")).expect("read"), b"3");
                assert_eq!(std::fs::write(t.path().join("x"), b"x").expect_err("ro").raw_os_error(), Some(libc::EROFS));
                t.unmount().expect("unmount");
            }
            // the parent's content is untouched by its children
            let l1_id = v.store().entry("L1").expect("L1").id;
            assert!(v.dir(l1_id).join("gone").exists());

            assert_eq!(v.remove("L2").await.expect_err("has child").kind(), ErrorKind::FailedPrecondition);
            for k in ["view", "L3", "L2", "L1"] {
                v.remove(k).await.expect(k);
            }
            assert!(!v.dir(l1_id).exists());
            v.cleanup().await.expect("cleanup");
        });
    }
}
