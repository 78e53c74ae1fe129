//! The transactional metadata store that every driver reuses.
//!
//! One [`redb`] file, `<driver root>/metadata.db`, holds a record per
//! snapshot, keyed by its key (active, view) or name (committed): a numeric
//! id that is never reused (a persisted sequence), the kind, the parent's
//! name and the ids of the whole parent chain, timestamps, labels, the usage
//! measured at commit time, and a small map of driver-private data. A
//! children index (`(parent id, child id) -> child key`) makes "has
//! children" one range lookup. Reads (stat, list, mounts) use read
//! transactions and never wait for writers.
//!
//! The semantics are those of containerd's snapshot storage: see each method.
//!
//! # Directories and crashes
//! Each snapshot owns `<root>/snapshots/<id>`. The store keeps that directory
//! in step with the metadata so that a kill at any instant leaves both
//! consistent:
//! - a new snapshot is built in `snapshots/new-<random>` ([`MetaStore::begin_create`]),
//!   then renamed to `snapshots/<id>` inside the write transaction that
//!   records it, just before that transaction commits
//!   ([`MetaStore::finish_create`]). A leftover `snapshots/<id>` from an
//!   earlier crash (its id was never committed, so it is free again) is
//!   removed first. On any error the new directory is removed;
//! - a commit only rewrites metadata (the id and directory stay), so it has
//!   either happened or not;
//! - a removed snapshot's directory is deleted only after the removing
//!   transaction has committed, by renaming it to `snapshots/rm-<id>` and
//!   deleting that. The rename is part of the call; the deletion is left
//!   to the store's housekeeping thread, so a large tree (vfs) or a slow
//!   filesystem does not hold up the reply;
//! - the housekeeping thread also keeps a few empty `new-*` directories
//!   ready, so that a create does not wait for the filesystem to choose a
//!   place for a new directory (see [`spread_subdirectories`]);
//! - [`MetaStore::cleanup`] deletes every directory under `snapshots/` that
//!   no record points to, and [`MetaStore::open`] deletes stale `new-*` and
//!   `rm-*` directories, so no call after a restart trips over debris.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::SystemTime;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::filter::Filters;
use crate::types::{validate_labels, Info, Kind, Labels, Usage};

/// Snapshot records by key or name; the value is a JSON [`Record`].
const SNAPSHOTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("snapshots");
/// `(parent id, child id) -> child key or name`.
const CHILDREN: TableDefinition<'_, (u64, u64), &str> = TableDefinition::new("children");
/// Counters: the id sequence.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_id";

/// The file name of the metadata database inside a driver's root.
pub const METADATA_FILE: &str = "metadata.db";
/// The directory holding one sub-directory per snapshot id.
pub const SNAPSHOTS_DIR: &str = "snapshots";
const NEW_PREFIX: &str = "new-";
const RM_PREFIX: &str = "rm-";
/// How many empty `new-*` directories the housekeeping thread keeps ready.
const SPARE_DIRS: usize = 4;

/// Driver-private data kept with a snapshot (for example a device id).
pub type DriverData = BTreeMap<String, String>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: u64,
    kind: Kind,
    #[serde(default)]
    parent: String,
    /// Ids of the parent chain, nearest first. Parents never change, so
    /// this is computed once at creation.
    #[serde(default)]
    parent_ids: Vec<u64>,
    created: SystemTime,
    updated: SystemTime,
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    inodes: i64,
    #[serde(default)]
    driver_data: DriverData,
}

impl Record {
    fn info(&self, name: &str) -> Info {
        Info {
            name: name.to_string(),
            parent: self.parent.clone(),
            kind: self.kind,
            created: self.created,
            updated: self.updated,
            labels: self.labels.clone(),
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            id: self.id,
            kind: self.kind,
            parent_ids: self.parent_ids.clone(),
            driver_data: self.driver_data.clone(),
        }
    }
}

/// What a driver needs to serve one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The numeric id; the snapshot's directory is `snapshots/<id>`.
    pub id: u64,
    pub kind: Kind,
    /// Ids of the parent chain, nearest parent first.
    pub parent_ids: Vec<u64>,
    pub driver_data: DriverData,
}

/// Everything stored about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: u64,
    pub info: Info,
    /// Ids of the parent chain, nearest parent first.
    pub parent_ids: Vec<u64>,
    /// The usage recorded at commit time (zero for active snapshots and views).
    pub usage: Usage,
    pub driver_data: DriverData,
}

impl Entry {
    fn new(name: &str, r: &Record) -> Entry {
        Entry {
            id: r.id,
            info: r.info(name),
            parent_ids: r.parent_ids.clone(),
            usage: Usage { size: r.size, inodes: r.inodes },
            driver_data: r.driver_data.clone(),
        }
    }
}

fn db_err(e: impl Into<redb::Error>) -> Error {
    Error::internal(format!("metadata store: {}", e.into()))
}

fn encode(r: &Record) -> Result<Vec<u8>> {
    serde_json::to_vec(r).map_err(|e| Error::internal(format!("metadata store: encode record: {e}")))
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::internal(format!("metadata store: corrupt record for {key:?}: {e}")))
}

fn get_record<T: ReadableTable<&'static str, &'static [u8]>>(table: &T, key: &str) -> Result<Option<Record>> {
    match table.get(key).map_err(db_err)? {
        Some(v) => decode(key, v.value()).map(Some),
        None => Ok(None),
    }
}

fn has_children<T: ReadableTable<(u64, u64), &'static str>>(table: &T, id: u64) -> Result<Option<String>> {
    let mut range = table.range((id, 0)..=(id, u64::MAX)).map_err(db_err)?;
    match range.next() {
        Some(item) => {
            let (_, child) = item.map_err(db_err)?;
            Ok(Some(child.value().to_string()))
        }
        None => Ok(None),
    }
}

/// Labels as stored: empty values mean "no such label".
fn normalize(mut labels: Labels) -> Labels {
    labels.retain(|_, v| !v.is_empty());
    labels
}

fn remove_dir_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
    }
}

/// The metadata store of one driver root. Share it with an `Arc`; every
/// method is synchronous (call it from `spawn_blocking` in async code).
pub struct MetaStore {
    root: PathBuf,
    snapshots: PathBuf,
    db: Database,
    dirs: Arc<Dirs>,
    /// Work for the housekeeping thread; `None` once the store is dropped.
    jobs: Mutex<Option<Sender<Job>>>,
    housekeeper: Option<JoinHandle<()>>,
}

/// The directory state shared with the housekeeping thread.
#[derive(Debug)]
struct Dirs {
    snapshots: PathBuf,
    /// Names under `snapshots/` that are not debris although no record
    /// points to them: `new-*` directories being built or kept ready, and
    /// `rm-*` directories waiting to be deleted. [`MetaStore::cleanup`]
    /// leaves them alone.
    in_flight: Mutex<HashSet<OsString>>,
    /// Empty `new-*` directories (mode 0755, in `in_flight`) ready for a
    /// create to take.
    spares: Mutex<Vec<OsString>>,
}

enum Job {
    /// Delete `snapshots/<name>` and forget it in `in_flight`.
    Delete(OsString),
    /// Make spare directories until there are [`SPARE_DIRS`].
    Replenish,
    /// Answer once everything queued before has been done.
    Barrier(Sender<()>),
}

impl Dirs {
    fn lock_in_flight(&self) -> Result<std::sync::MutexGuard<'_, HashSet<OsString>>> {
        self.in_flight.lock().map_err(|_| Error::internal("metadata store: lock poisoned"))
    }

    /// Makes an empty `snapshots/new-<random>` directory with mode 0755 and
    /// records it in `in_flight` (under its lock, so a concurrent cleanup
    /// never sees it unrecorded). Returns its name.
    fn make_new_dir(&self) -> Result<OsString> {
        let mut set = self.lock_in_flight()?;
        let dir = nix::unistd::mkdtemp(&self.snapshots.join(format!("{NEW_PREFIX}XXXXXX")))
            .map_err(|e| Error::io(format!("create a directory in {}", self.snapshots.display()), e.into()))?;
        let name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        set.insert(name.clone());
        drop(set);
        use std::os::unix::fs::PermissionsExt;
        // mkdtemp makes 0700; snapshot roots are 0755.
        if let Err(e) = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)) {
            self.delete(&name);
            return Err(Error::io(format!("chmod {}", dir.display()), e));
        }
        Ok(name)
    }

    /// Deletes `snapshots/<name>` and forgets it in `in_flight`.
    fn delete(&self, name: &OsString) {
        let path = self.snapshots.join(name);
        if let Err(e) = remove_dir_if_exists(&path) {
            tracing::warn!(error = %e, "cannot delete a directory; cleanup will retry");
        }
        if let Ok(mut set) = self.in_flight.lock() {
            set.remove(name);
        }
    }

    fn replenish(&self) {
        loop {
            match self.spares.lock() {
                Ok(spares) if spares.len() < SPARE_DIRS => {}
                _ => return,
            }
            match self.make_new_dir() {
                Ok(name) => match self.spares.lock() {
                    Ok(mut spares) => spares.push(name),
                    Err(_) => return,
                },
                Err(e) => {
                    tracing::debug!(error = %e, "cannot make a spare snapshot directory");
                    return;
                }
            }
        }
    }
}

fn housekeeping(dirs: Arc<Dirs>, jobs: Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Delete(name) => dirs.delete(&name),
            Job::Replenish => dirs.replenish(),
            Job::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

impl Drop for MetaStore {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has done what was queued.
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Some(thread) = self.housekeeper.take() {
            let _ = thread.join();
        }
        // Spare directories are not needed any more.
        if let Ok(mut spares) = self.dirs.spares.lock() {
            for name in spares.drain(..) {
                self.dirs.delete(&name);
            }
        }
    }
}

impl std::fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStore").field("root", &self.root).finish_non_exhaustive()
    }
}

/// A snapshot being created: its directory exists as `snapshots/new-*` and
/// the caller fills it before [`MetaStore::finish_create`]. Dropping it
/// without finishing removes the directory.
#[derive(Debug)]
pub struct PendingSnapshot<'a> {
    store: &'a MetaStore,
    dir: PathBuf,
    name: OsString,
    kind: Kind,
    key: String,
    parent: String,
    parent_id: Option<u64>,
    parent_ids: Vec<u64>,
    labels: Labels,
    driver_data: DriverData,
}

impl PendingSnapshot<'_> {
    /// The temporary directory to build the snapshot in (mode 0755).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn key(&self) -> &str {
        &self.key
    }
    /// Ids of the parent chain, nearest parent first.
    pub fn parent_ids(&self) -> &[u64] {
        &self.parent_ids
    }
    /// Driver-private data to store with the new snapshot.
    pub fn set_driver_data(&mut self, data: DriverData) {
        self.driver_data = data;
    }
}

impl Drop for PendingSnapshot<'_> {
    fn drop(&mut self) {
        if let Err(e) = remove_dir_if_exists(&self.dir) {
            tracing::warn!(error = %e, "failed to remove unfinished snapshot directory");
        }
        if let Ok(mut set) = self.store.dirs.in_flight.lock() {
            set.remove(&self.name);
        }
    }
}

/// Asks the filesystem to place each new subdirectory of `dir` in a block
/// group of its own choosing, as it does for top-level directories (ext4's
/// "top of directory hierarchy" flag, `chattr +T`).
///
/// Snapshot (and container) directories are created and deleted by the
/// hundred. Without the flag ext4 keeps a new directory, and the files in
/// it, in the block group of its parent; on a filesystem without a journal
/// each inode allocation there then steps over every inode deleted in the
/// last 30 seconds, and unpacking a 400-file layer right after removing one
/// took four times as long. Best effort: filesystems without the flag
/// (xfs, tmpfs, ...) are left as they are.
pub fn spread_subdirectories(dir: &Path) {
    use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
    let Ok(d) = std::fs::File::open(dir) else { return };
    match ioctl_getflags(&d) {
        Ok(flags) if !flags.contains(IFlags::TOPDIR) => {
            if let Err(e) = ioctl_setflags(&d, flags | IFlags::TOPDIR) {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot mark the directory as a top directory");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "the filesystem has no inode flags"),
    }
}

impl MetaStore {
    /// Opens (or creates) the store in `root`: `root/metadata.db` and
    /// `root/snapshots/`. Stale `new-*` and `rm-*` directories left by a
    /// crash are removed. Only one process can have a store open.
    pub fn open(root: &Path) -> Result<MetaStore> {
        let snapshots = root.join(SNAPSHOTS_DIR);
        std::fs::create_dir_all(&snapshots).map_err(|e| Error::io(format!("create {}", snapshots.display()), e))?;
        spread_subdirectories(&snapshots);
        let path = root.join(METADATA_FILE);
        let db = Database::create(&path)
            .map_err(|e| Error::internal(format!("open metadata store {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(SNAPSHOTS).map_err(db_err)?;
            txn.open_table(CHILDREN).map_err(db_err)?;
            txn.open_table(META).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        let dirs = Arc::new(Dirs {
            snapshots: snapshots.clone(),
            in_flight: Mutex::new(HashSet::new()),
            spares: Mutex::new(Vec::new()),
        });
        let mut store =
            MetaStore { root: root.to_path_buf(), snapshots, db, dirs, jobs: Mutex::new(None), housekeeper: None };
        store.remove_debris()?;
        let (tx, rx) = mpsc::channel();
        let shared = store.dirs.clone();
        let thread = std::thread::Builder::new()
            .name("snapshot-dirs".to_string())
            .spawn(move || housekeeping(shared, rx))
            .map_err(|e| Error::io("start the housekeeping thread".to_string(), e))?;
        store.housekeeper = Some(thread);
        let _ = tx.send(Job::Replenish);
        store.jobs = Mutex::new(Some(tx));
        Ok(store)
    }

    /// The driver root this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/snapshots`.
    pub fn snapshots_dir(&self) -> &Path {
        &self.snapshots
    }

    /// `<root>/snapshots/<id>`, the directory a snapshot owns.
    pub fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.snapshots.join(id.to_string())
    }

    fn remove_debris(&self) -> Result<()> {
        for name in self.dir_names()? {
            let s = name.to_string_lossy();
            if s.starts_with(NEW_PREFIX) || s.starts_with(RM_PREFIX) {
                let path = self.snapshots.join(&name);
                tracing::info!(path = %path.display(), "removing debris of an interrupted operation");
                remove_dir_if_exists(&path)?;
            }
        }
        Ok(())
    }

    fn dir_names(&self) -> Result<Vec<OsString>> {
        let rd = std::fs::read_dir(&self.snapshots)
            .map_err(|e| Error::io(format!("read {}", self.snapshots.display()), e))?;
        rd.map(|e| e.map(|e| e.file_name()).map_err(|e| Error::io(format!("read {}", self.snapshots.display()), e)))
            .collect()
    }

    /// The info of `key`; `NotFound` if there is no such snapshot.
    pub fn stat(&self, key: &str) -> Result<Info> {
        self.entry(key).map(|e| e.info)
    }

    /// Everything stored about `key`; `NotFound` if there is no such snapshot.
    pub fn entry(&self, key: &str) -> Result<Entry> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
        match get_record(&table, key)? {
            Some(r) => Ok(Entry::new(key, &r)),
            None => Err(not_found(key)),
        }
    }

    /// The id, kind and parent chain of an active snapshot or view, as
    /// needed to compute its mounts. `NotFound` if missing,
    /// `FailedPrecondition` for a committed snapshot.
    pub fn snapshot(&self, key: &str) -> Result<Snapshot> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
        let r = get_record(&table, key)?.ok_or_else(|| not_found(key))?;
        if r.kind == Kind::Committed {
            return Err(Error::failed_precondition(format!(
                "snapshot {key:?} is committed: only active snapshots and views have mounts"
            )));
        }
        Ok(r.snapshot())
    }

    /// Every snapshot matching any of `filters` (containerd filter syntax;
    /// none means all), in key order. A malformed filter is `InvalidArgument`.
    pub fn list(&self, filters: &[String]) -> Result<Vec<Info>> {
        let filters = Filters::parse(filters)?;
        self.list_matching(&filters)
    }

    /// Like [`MetaStore::list`] with already parsed filters.
    pub fn list_matching(&self, filters: &Filters) -> Result<Vec<Info>> {
        Ok(self.entries()?.into_iter().map(|e| e.info).filter(|i| filters.matches(i)).collect())
    }

    /// Every snapshot record, in key order.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            out.push(Entry::new(k.value(), &decode(k.value(), v.value())?));
        }
        Ok(out)
    }

    /// Updates the labels of `info.name`, as containerd does: no
    /// `fieldpaths` or `labels` replaces all labels, `labels.<k>` sets (or
    /// with an empty or absent value deletes) one label, any other path is
    /// `InvalidArgument`; `updated` becomes now. Returns the new info.
    pub fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        if info.name.is_empty() {
            return Err(Error::invalid_argument("update: snapshot name is required"));
        }
        validate_labels(&info.labels)?;
        let txn = self.db.begin_write().map_err(db_err)?;
        let updated = {
            let mut table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let mut r = get_record(&table, &info.name)?.ok_or_else(|| not_found(&info.name))?;
            if fieldpaths.is_empty() {
                r.labels = info.labels.clone();
            } else {
                for path in fieldpaths {
                    if path == "labels" {
                        r.labels = info.labels.clone();
                    } else if let Some(k) = path.strip_prefix("labels.") {
                        match info.labels.get(k) {
                            Some(v) => r.labels.insert(k.to_string(), v.clone()),
                            None => r.labels.remove(k),
                        };
                    } else {
                        return Err(Error::invalid_argument(format!(
                            "cannot update {path:?} field of snapshot {:?}: only labels can be updated",
                            info.name
                        )));
                    }
                }
            }
            r.labels = normalize(std::mem::take(&mut r.labels));
            validate_labels(&r.labels)?;
            r.updated = SystemTime::now();
            table.insert(info.name.as_str(), encode(&r)?.as_slice()).map_err(db_err)?;
            r.info(&info.name)
        };
        txn.commit().map_err(db_err)?;
        Ok(updated)
    }

    /// Replaces the driver-private data of `key`.
    pub fn set_driver_data(&self, key: &str, data: DriverData) -> Result<()> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let mut r = get_record(&table, key)?.ok_or_else(|| not_found(key))?;
            r.driver_data = data;
            table.insert(key, encode(&r)?.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Checks that `key` can be created as a `kind` snapshot on `parent`
    /// and makes its temporary directory `snapshots/new-<random>` (mode
    /// 0755). Errors: empty key or labels too large = `InvalidArgument`,
    /// taken key = `AlreadyExists`, missing parent = `NotFound`, parent not
    /// committed = `InvalidArgument`; `Committed` is not a creatable kind.
    pub fn begin_create(&self, kind: Kind, key: &str, parent: &str, labels: Labels) -> Result<PendingSnapshot<'_>> {
        if kind == Kind::Committed {
            return Err(Error::invalid_argument("snapshots are created active or as views, then committed"));
        }
        if key.is_empty() {
            return Err(Error::invalid_argument("snapshot key must not be empty"));
        }
        validate_labels(&labels)?;
        let (parent_id, parent_ids) = {
            let txn = self.db.begin_read().map_err(db_err)?;
            let table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            check_new(&table, key, parent)?
        };
        let name = match self.take_spare() {
            Some(name) => name,
            None => self.dirs.make_new_dir()?,
        };
        let pending = PendingSnapshot {
            store: self,
            dir: self.snapshots.join(&name),
            name,
            kind,
            key: key.to_string(),
            parent: parent.to_string(),
            parent_id,
            parent_ids,
            labels: normalize(labels),
            driver_data: DriverData::new(),
        };
        Ok(pending)
    }

    /// A spare `new-*` directory if one is ready (and a request for another).
    fn take_spare(&self) -> Option<OsString> {
        let name = {
            let mut spares = self.dirs.spares.lock().ok()?;
            if spares.is_empty() {
                return None;
            }
            let name = spares.remove(0); // the oldest first
            // Refilled in batches: one wake-up of the thread per two creates.
            if spares.len() <= SPARE_DIRS / 2 {
                self.send(Job::Replenish);
            }
            name
        };
        // Whoever deleted it by hand, the create makes its own instead.
        let ok = std::fs::symlink_metadata(self.snapshots.join(&name)).map(|m| m.is_dir()).unwrap_or(false);
        if !ok {
            self.dirs.delete(&name);
            return None;
        }
        Some(name)
    }

    /// Waits until the directories of removed snapshots queued so far are
    /// deleted (and the spare directories made).
    pub fn settle(&self) {
        let (tx, rx) = mpsc::channel();
        if self.send(Job::Barrier(tx)) {
            let _ = rx.recv();
        }
    }

    /// The names under `snapshots/` other than the spare `new-*` ones,
    /// once queued deletions are done: snapshot directories and debris.
    pub fn settled_dir_names(&self) -> Result<Vec<OsString>> {
        self.settle();
        let spares: HashSet<OsString> = self.dirs.spares.lock().map(|s| s.iter().cloned().collect()).unwrap_or_default();
        Ok(self.dir_names()?.into_iter().filter(|n| !spares.contains(n)).collect())
    }

    /// Queues work for the housekeeping thread; false if it is gone.
    fn send(&self, job: Job) -> bool {
        match self.jobs.lock() {
            Ok(jobs) => jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok()),
            Err(_) => false,
        }
    }

    /// Records the pending snapshot and moves its directory to
    /// `snapshots/<id>`, both in one write transaction. `on_placed` runs
    /// after the rename, before the transaction commits (for example to
    /// create links to the final directory); if it fails nothing is kept.
    /// The checks of [`MetaStore::begin_create`] are repeated, so a racing
    /// create or remove is reported, not lost.
    pub fn finish_create(
        &self,
        pending: PendingSnapshot<'_>,
        on_placed: impl FnOnce(&Snapshot, &Path) -> Result<()>,
    ) -> Result<Snapshot> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let (snapshot, target) = {
            let mut table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let (parent_id, _) = check_new(&table, &pending.key, &pending.parent)?;
            if parent_id != pending.parent_id {
                return Err(Error::failed_precondition(format!(
                    "parent {:?} was replaced while {:?} was being created",
                    pending.parent, pending.key
                )));
            }
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let id = meta.get(NEXT_ID).map_err(db_err)?.map(|v| v.value()).unwrap_or(1);
            meta.insert(NEXT_ID, id + 1).map_err(db_err)?;
            let now = SystemTime::now();
            let record = Record {
                id,
                kind: pending.kind,
                parent: pending.parent.clone(),
                parent_ids: pending.parent_ids.clone(),
                created: now,
                updated: now,
                labels: pending.labels.clone(),
                size: 0,
                inodes: 0,
                driver_data: pending.driver_data.clone(),
            };
            table.insert(pending.key.as_str(), encode(&record)?.as_slice()).map_err(db_err)?;
            if let Some(pid) = parent_id {
                let mut children = txn.open_table(CHILDREN).map_err(db_err)?;
                children.insert((pid, id), pending.key.as_str()).map_err(db_err)?;
            }
            let target = self.snapshot_dir(id);
            // An id whose transaction never committed is free again; a
            // directory with that name is debris from a crash.
            remove_dir_if_exists(&target)?;
            std::fs::rename(&pending.dir, &target).map_err(|e| {
                Error::io(format!("rename {} to {}", pending.dir.display(), target.display()), e)
            })?;
            let snapshot = record.snapshot();
            if let Err(e) = on_placed(&snapshot, &target) {
                let _ = remove_dir_if_exists(&target);
                return Err(e);
            }
            (snapshot, target)
        };
        if let Err(e) = txn.commit() {
            let _ = remove_dir_if_exists(&target);
            return Err(db_err(e));
        }
        drop(pending);
        Ok(snapshot)
    }

    /// Creates a snapshot in one go: [`MetaStore::begin_create`], `build`
    /// on the temporary directory, [`MetaStore::finish_create`].
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: Labels,
        build: impl FnOnce(&mut PendingSnapshot<'_>) -> Result<()>,
    ) -> Result<Snapshot> {
        let mut pending = self.begin_create(kind, key, parent, labels)?;
        build(&mut pending)?;
        self.finish_create(pending, |_, _| Ok(()))
    }

    /// Checks that `key` can be committed as `name` (the checks of
    /// [`MetaStore::commit_active`]) and returns the active snapshot, so a
    /// driver can measure its usage before committing.
    pub fn check_commit(&self, name: &str, key: &str, labels: &Labels) -> Result<Snapshot> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
        check_commit(&table, name, key, labels).map(|r| r.snapshot())
    }

    /// Commits the active snapshot `key` as `name`, keeping its id and
    /// directory: the key disappears, `name` gets the key's parent, the
    /// commit `labels` (not merged with the old ones), `usage`, and
    /// created = updated = now. Errors: empty name or labels too large =
    /// `InvalidArgument`, `name` taken = `AlreadyExists`, `key` missing =
    /// `NotFound`, `key` not active = `FailedPrecondition`. Returns the id.
    pub fn commit_active(&self, name: &str, key: &str, labels: Labels, usage: Usage) -> Result<u64> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let id = {
            let mut table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let mut r = check_commit(&table, name, key, &labels)?;
            let now = SystemTime::now();
            r.kind = Kind::Committed;
            r.labels = normalize(labels);
            r.created = now;
            r.updated = now;
            r.size = usage.size;
            r.inodes = usage.inodes;
            table.remove(key).map_err(db_err)?;
            table.insert(name, encode(&r)?.as_slice()).map_err(db_err)?;
            if let Some(&pid) = r.parent_ids.first() {
                let mut children = txn.open_table(CHILDREN).map_err(db_err)?;
                children.insert((pid, r.id), name).map_err(db_err)?;
            }
            r.id
        };
        txn.commit().map_err(db_err)?;
        Ok(id)
    }

    /// Removes `key` and then its directory. Errors: missing = `NotFound`,
    /// has children = `FailedPrecondition` ("cannot remove snapshot with
    /// child"). Returns what was stored, for drivers with more to release.
    /// A failure to delete the directory after the metadata is gone is
    /// logged; [`MetaStore::cleanup`] retries it.
    pub fn remove(&self, key: &str) -> Result<Entry> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let entry = {
            let mut table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let r = get_record(&table, key)?.ok_or_else(|| not_found(key))?;
            let mut children = txn.open_table(CHILDREN).map_err(db_err)?;
            if let Some(child) = has_children(&children, r.id)? {
                return Err(Error::failed_precondition(format!(
                    "cannot remove snapshot with child: {key:?} is the parent of {child:?}"
                )));
            }
            if let Some(&pid) = r.parent_ids.first() {
                children.remove((pid, r.id)).map_err(db_err)?;
            }
            table.remove(key).map_err(db_err)?;
            Entry::new(key, &r)
        };
        // Between the commit and the rename no record points to the
        // directory: recorded (while this transaction still keeps cleanup
        // out) so that a cleanup leaves it, and then its trash, to us.
        let dir_name = OsString::from(entry.id.to_string());
        let trash_name = OsString::from(format!("{RM_PREFIX}{}", entry.id));
        let forget = |names: &[&OsString]| {
            if let Ok(mut set) = self.dirs.in_flight.lock() {
                for n in names {
                    set.remove(*n);
                }
            }
        };
        {
            let mut set = self.dirs.lock_in_flight()?;
            set.insert(dir_name.clone());
            set.insert(trash_name.clone());
        }
        if let Err(e) = txn.commit() {
            forget(&[&dir_name, &trash_name]);
            return Err(db_err(e));
        }
        let dir = self.snapshot_dir(entry.id);
        let trash = self.snapshots.join(&trash_name);
        match std::fs::rename(&dir, &trash) {
            Ok(()) => {
                forget(&[&dir_name]);
                if !self.send(Job::Delete(trash_name.clone())) {
                    self.dirs.delete(&trash_name);
                }
            }
            Err(e) => {
                forget(&[&dir_name, &trash_name]);
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(error = %e, id = entry.id, "snapshot removed but its directory was not; cleanup will retry");
                }
            }
        }
        Ok(entry)
    }

    /// Deletes every directory under `snapshots/` that no record points to
    /// (orphans of crashes, `new-*` and `rm-*` debris), except those being
    /// built right now and the empty spare `new-*` directories kept ready
    /// for creates. Returns the names it removed.
    pub fn cleanup(&self) -> Result<Vec<String>> {
        // Deletions already queued finish first, so that what a cleanup
        // leaves is exactly the live snapshots (and the spare directories).
        self.settle();
        // Holding the write transaction keeps creates from placing new
        // directories while the orphans are chosen and moved aside.
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut trash = Vec::new();
        {
            let table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let mut live = HashSet::new();
            for item in table.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                live.insert(decode(k.value(), v.value())?.id.to_string());
            }
            let in_flight = self.dirs.lock_in_flight()?;
            for name in self.dir_names()? {
                let s = name.to_string_lossy().into_owned();
                if live.contains(&s) || in_flight.contains(&name) {
                    continue;
                }
                let path = self.snapshots.join(&name);
                if s.starts_with(RM_PREFIX) {
                    trash.push((s, path));
                    continue;
                }
                let moved = self.snapshots.join(format!("{RM_PREFIX}{s}"));
                remove_dir_if_exists(&moved)?;
                std::fs::rename(&path, &moved)
                    .map_err(|e| Error::io(format!("rename {}", path.display()), e))?;
                trash.push((s, moved));
            }
        }
        txn.abort().map_err(db_err)?;
        let mut removed = Vec::new();
        for (name, path) in trash {
            remove_dir_if_exists(&path)?;
            removed.push(name);
        }
        Ok(removed)
    }

    /// The ids of all snapshots.
    pub fn ids(&self) -> Result<HashSet<u64>> {
        Ok(self.entries()?.into_iter().map(|e| e.id).collect())
    }
    /// Checks the store's invariants and returns the first violation as an
    /// `Internal` error: every record's directory exists and its id is below
    /// the sequence; every parent exists, is committed and matches the
    /// recorded parent chain; the children index holds exactly one entry per
    /// snapshot with a parent, naming it.
    pub fn verify(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::internal(format!("metadata store inconsistent: {msg}")));
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(SNAPSHOTS).map_err(db_err)?;
        let children = txn.open_table(CHILDREN).map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        let next_id = meta.get(NEXT_ID).map_err(db_err)?.map(|v| v.value()).unwrap_or(1);
        let mut records = BTreeMap::new();
        for item in table.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            records.insert(k.value().to_string(), decode(k.value(), v.value())?);
        }
        let mut expected_links = BTreeMap::new();
        for (key, r) in &records {
            if r.id >= next_id {
                return bad(format!("{key:?} has id {} beyond the sequence {next_id}", r.id));
            }
            if !self.snapshot_dir(r.id).is_dir() {
                return bad(format!("directory of {key:?} (id {}) is missing", r.id));
            }
            if r.parent.is_empty() {
                if !r.parent_ids.is_empty() {
                    return bad(format!("{key:?} has no parent but a parent chain"));
                }
                continue;
            }
            let Some(p) = records.get(&r.parent) else {
                return bad(format!("parent {:?} of {key:?} is missing", r.parent));
            };
            if p.kind != Kind::Committed || r.parent_ids.first() != Some(&p.id) || r.parent_ids[1..] != p.parent_ids[..] {
                return bad(format!("parent chain of {key:?} does not match {:?}", r.parent));
            }
            expected_links.insert((p.id, r.id), key.clone());
        }
        let mut links = BTreeMap::new();
        for item in children.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            links.insert(k.value(), v.value().to_string());
        }
        if links != expected_links {
            return bad(format!("children index {links:?} differs from the records {expected_links:?}"));
        }
        Ok(())
    }
}

fn not_found(key: &str) -> Error {
    Error::not_found(format!("snapshot {key:?} does not exist"))
}

/// Checks a new key against the table; returns the parent's id and the new
/// snapshot's parent chain.
fn check_new<T: ReadableTable<&'static str, &'static [u8]>>(
    table: &T,
    key: &str,
    parent: &str,
) -> Result<(Option<u64>, Vec<u64>)> {
    if table.get(key).map_err(db_err)?.is_some() {
        return Err(Error::already_exists(format!("snapshot {key:?} already exists")));
    }
    if parent.is_empty() {
        return Ok((None, Vec::new()));
    }
    let p = get_record(table, parent)?
        .ok_or_else(|| Error::not_found(format!("parent snapshot {parent:?} does not exist")))?;
    if p.kind != Kind::Committed {
        return Err(Error::invalid_argument(format!(
            "parent {parent:?} is {} and not committed: only committed snapshots can be parents",
            p.kind.as_str()
        )));
    }
    let mut chain = Vec::with_capacity(p.parent_ids.len() + 1);
    chain.push(p.id);
    chain.extend_from_slice(&p.parent_ids);
    Ok((Some(p.id), chain))
}

fn check_commit<T: ReadableTable<&'static str, &'static [u8]>>(
    table: &T,
    name: &str,
    key: &str,
    labels: &Labels,
) -> Result<Record> {
    if name.is_empty() {
        return Err(Error::invalid_argument("commit: snapshot name must not be empty"));
    }
    validate_labels(labels)?;
    if table.get(name).map_err(db_err)?.is_some() {
        return Err(Error::already_exists(format!("snapshot {name:?} already exists")));
    }
    let r = get_record(table, key)?.ok_or_else(|| not_found(key))?;
    if r.kind != Kind::Active {
        return Err(Error::failed_precondition(format!(
            "snapshot {key:?} is a {}: only active snapshots can be committed",
            r.kind.as_str()
        )));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn store() -> (tempfile::TempDir, MetaStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MetaStore::open(dir.path()).expect("open");
        (dir, store)
    }

    #[test]
    fn snapshot_directories_are_spread_on_ext4() {
        // Under the build directory, on the repository's filesystem (not a
        // tmpfs /tmp).
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("tempdir");
        let _store = MetaStore::open(dir.path()).expect("open");
        let snaps = std::fs::File::open(dir.path().join(SNAPSHOTS_DIR)).expect("open snapshots");
        let fs = rustix::fs::fstatfs(&snaps).expect("statfs");
        // EXT4_SUPER_MAGIC; other filesystems are left alone.
        if fs.f_type as u64 == 0xEF53 {
            let flags = rustix::fs::ioctl_getflags(&snaps).expect("flags");
            assert!(flags.contains(rustix::fs::IFlags::TOPDIR), "snapshots/ lacks the top-directory flag: {flags:?}");
        } else {
            eprintln!("filesystem type {:#x} is not ext4: nothing to check", fs.f_type);
        }
    }

    #[test]
    fn spare_directories_are_made_ahead_taken_by_creates_and_dropped_with_the_store() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let snaps = dir.path().join(SNAPSHOTS_DIR);
        let spares = |s: &MetaStore| -> Vec<OsString> {
            s.settle();
            let mut v = s.dirs.spares.lock().expect("lock").clone();
            v.sort();
            v
        };
        {
            let s = MetaStore::open(dir.path()).expect("open");
            let ready = spares(&s);
            assert_eq!(ready.len(), SPARE_DIRS, "{ready:?}");
            for n in &ready {
                let p = snaps.join(n);
                assert!(n.to_string_lossy().starts_with(NEW_PREFIX));
                assert_eq!(std::fs::read_dir(&p).expect("read").count(), 0, "a spare is empty");
                assert_eq!(std::fs::metadata(&p).expect("stat").permissions().mode() & 0o7777, 0o755);
            }
            // A create takes the oldest; they are made again in batches.
            let a = create(&s, Kind::Active, "a", "").expect("create");
            let now = spares(&s);
            assert_eq!(now.len(), SPARE_DIRS - 1);
            assert_eq!(ready.iter().filter(|n| !now.contains(n)).count(), 1, "exactly one spare was used");
            let b = create(&s, Kind::Active, "b", "").expect("create");
            s.remove("b").expect("remove");
            assert!(b.id > a.id);
            assert_eq!(spares(&s).len(), SPARE_DIRS, "refilled once half were used");
            // A spare deleted behind the store's back is passed over.
            let gone = spares(&s)[0].clone();
            std::fs::remove_dir(snaps.join(&gone)).expect("rmdir");
            for k in ["g1", "g2", "g3", "g4", "g5"] {
                create(&s, Kind::Active, k, "").expect("create past a missing spare");
                s.remove(k).expect("remove");
            }
            assert!(!s.dirs.in_flight.lock().expect("lock").contains(&gone), "the missing spare was taken and dropped");
            // Cleanup leaves spares alone, and so does a failed create.
            let before = spares(&s);
            assert!(before.len() > SPARE_DIRS / 2, "{before:?}");
            assert!(s.cleanup().expect("cleanup").is_empty());
            assert_eq!(spares(&s), before);
            s.create(Kind::Active, "c", "", Labels::new(), |_| Err(Error::internal("no"))).expect_err("fails");
            assert_eq!(s.settled_dir_names().expect("names"), vec![OsString::from(a.id.to_string())]);
            // A removed snapshot's directory is renamed at once and deleted
            // by the housekeeping thread.
            std::fs::write(s.snapshot_dir(a.id).join("f"), b"x").expect("write");
            s.remove("a").expect("remove");
            assert!(!s.snapshot_dir(a.id).exists());
            assert!(s.settled_dir_names().expect("names").is_empty());
            assert!(spares(&s).len() > SPARE_DIRS / 2);
        }
        // Dropping the store deletes its spares; a reopen makes new ones.
        assert_eq!(std::fs::read_dir(&snaps).expect("read").count(), 0);
        let s = MetaStore::open(dir.path()).expect("reopen");
        assert_eq!(spares(&s).len(), SPARE_DIRS);
    }

    #[test]
    fn a_cleanup_racing_removes_never_deletes_queued_trash_twice_or_reports_it() {
        let (_d, s) = store();
        let s = Arc::new(s);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cleaner = {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reported = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    reported.extend(s.cleanup().expect("cleanup"));
                }
                reported
            })
        };
        for i in 0..200 {
            let key = format!("k{i}");
            let snap = create(&s, Kind::Active, &key, "").expect("create");
            std::fs::write(s.snapshot_dir(snap.id).join("f"), b"x").expect("write");
            s.remove(&key).expect("remove");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reported = cleaner.join().expect("cleaner");
        assert!(reported.is_empty(), "cleanup took directories that were not debris: {reported:?}");
        assert!(s.settled_dir_names().expect("names").is_empty());
        s.verify().expect("consistent");
    }

    fn create(s: &MetaStore, kind: Kind, key: &str, parent: &str) -> Result<Snapshot> {
        s.create(kind, key, parent, Labels::new(), |_| Ok(()))
    }

    fn committed(s: &MetaStore, name: &str, parent: &str) -> u64 {
        let tmp = format!("{name}-active");
        create(s, Kind::Active, &tmp, parent).expect("prepare");
        s.commit_active(name, &tmp, Labels::new(), Usage::default()).expect("commit")
    }

    fn kind_of<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
        r.expect_err("expected an error").kind()
    }

    #[test]
    fn create_stat_and_parent_chain() {
        let (_d, s) = store();
        let base = committed(&s, "base", "");
        let mid = committed(&s, "mid", "base");
        let a = create(&s, Kind::Active, "ns/1/a key:x", "mid").expect("active");
        assert_eq!(a.parent_ids, vec![mid, base]);
        assert!(s.snapshot_dir(a.id).is_dir());
        let info = s.stat("ns/1/a key:x").expect("stat");
        assert_eq!(info.kind, Kind::Active);
        assert_eq!(info.parent, "mid");
        assert_eq!(info.created, info.updated);
        assert_eq!(s.stat("mid").expect("stat").parent, "base");
        assert!(a.id > mid && mid > base, "ids grow");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.snapshot_dir(a.id)).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn create_errors() {
        let (_d, s) = store();
        committed(&s, "c", "");
        create(&s, Kind::Active, "a", "").expect("a");
        create(&s, Kind::View, "v", "c").expect("v");
        assert_eq!(kind_of(create(&s, Kind::Active, "", "")), ErrorKind::InvalidArgument);
        assert_eq!(kind_of(create(&s, Kind::Active, "a", "")), ErrorKind::AlreadyExists);
        assert_eq!(kind_of(create(&s, Kind::View, "c", "")), ErrorKind::AlreadyExists);
        assert_eq!(kind_of(create(&s, Kind::View, "v", "c")), ErrorKind::AlreadyExists);
        assert_eq!(kind_of(create(&s, Kind::Active, "x", "missing")), ErrorKind::NotFound);
        assert_eq!(kind_of(create(&s, Kind::Active, "x", "a")), ErrorKind::InvalidArgument);
        assert_eq!(kind_of(create(&s, Kind::View, "x", "v")), ErrorKind::InvalidArgument);
        assert_eq!(kind_of(create(&s, Kind::Committed, "x", "")), ErrorKind::InvalidArgument);
        let big = labels(&[("k", &"v".repeat(4096))]);
        assert_eq!(kind_of(s.create(Kind::Active, "x", "", big, |_| Ok(()))), ErrorKind::InvalidArgument);
        let exact = labels(&[("k", &"v".repeat(4095))]);
        s.create(Kind::Active, "x", "", exact, |_| Ok(())).expect("exactly 4096 bytes is accepted");
        // nothing was left behind by the failures
        let names = s.settled_dir_names().expect("names");
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names.iter().all(|n| !n.to_string_lossy().starts_with(NEW_PREFIX)));
    }

    #[test]
    fn failed_build_leaves_nothing() {
        let (_d, s) = store();
        let err = s
            .create(Kind::Active, "a", "", Labels::new(), |p| {
                std::fs::write(p.dir().join("file"), b"x").expect("write");
                Err(Error::internal("build failed"))
            })
            .expect_err("build fails");
        assert_eq!(err.message(), "build failed");
        assert_eq!(kind_of(s.stat("a")), ErrorKind::NotFound);
        assert!(s.settled_dir_names().expect("names").is_empty());
        let pending = s.begin_create(Kind::Active, "a", "", Labels::new()).expect("begin");
        let err = s.finish_create(pending, |_, _| Err(Error::internal("hook failed"))).expect_err("hook fails");
        assert_eq!(err.message(), "hook failed");
        assert_eq!(kind_of(s.stat("a")), ErrorKind::NotFound);
        assert!(s.settled_dir_names().expect("names").is_empty());
    }

    #[test]
    fn snapshot_for_mounts() {
        let (_d, s) = store();
        committed(&s, "c", "");
        create(&s, Kind::View, "v", "c").expect("v");
        assert_eq!(s.snapshot("v").expect("view").kind, Kind::View);
        assert_eq!(kind_of(s.snapshot("c")), ErrorKind::FailedPrecondition);
        assert_eq!(kind_of(s.snapshot("nope")), ErrorKind::NotFound);
        assert_eq!(kind_of(s.stat("nope")), ErrorKind::NotFound);
    }

    #[test]
    fn commit_semantics() {
        let (_d, s) = store();
        committed(&s, "c", "");
        let a = s.create(Kind::Active, "a", "c", labels(&[("old", "1")]), |_| Ok(())).expect("a");
        create(&s, Kind::View, "v", "c").expect("v");
        create(&s, Kind::Active, "other", "").expect("other");
        assert_eq!(kind_of(s.commit_active("", "a", Labels::new(), Usage::default())), ErrorKind::InvalidArgument);
        assert_eq!(kind_of(s.commit_active("c", "a", Labels::new(), Usage::default())), ErrorKind::AlreadyExists);
        assert_eq!(kind_of(s.commit_active("other", "a", Labels::new(), Usage::default())), ErrorKind::AlreadyExists);
        assert_eq!(kind_of(s.commit_active("n", "missing", Labels::new(), Usage::default())), ErrorKind::NotFound);
        assert_eq!(kind_of(s.commit_active("n", "v", Labels::new(), Usage::default())), ErrorKind::FailedPrecondition);
        assert_eq!(kind_of(s.commit_active("n", "c", Labels::new(), Usage::default())), ErrorKind::FailedPrecondition);
        assert_eq!(kind_of(s.check_commit("n", "v", &Labels::new())), ErrorKind::FailedPrecondition);
        let big = labels(&[("k", &"v".repeat(5000))]);
        assert_eq!(kind_of(s.commit_active("n", "a", big, Usage::default())), ErrorKind::InvalidArgument);
        assert_eq!(s.check_commit("n", "a", &Labels::new()).expect("ok").id, a.id);

        let before = s.stat("a").expect("a").created;
        let usage = Usage { size: 4096, inodes: 3 };
        let id = s.commit_active("n", "a", labels(&[("new", "2"), ("empty", "")]), usage).expect("commit");
        assert_eq!(id, a.id, "commit keeps the id");
        assert_eq!(kind_of(s.stat("a")), ErrorKind::NotFound);
        let e = s.entry("n").expect("n");
        assert_eq!(e.info.kind, Kind::Committed);
        assert_eq!(e.info.parent, "c");
        assert_eq!(e.info.labels, labels(&[("new", "2")]), "commit labels replace, empty values dropped");
        assert_eq!(e.info.created, e.info.updated);
        assert!(e.info.created >= before);
        assert_eq!(e.usage, usage);
        assert!(s.snapshot_dir(id).is_dir());
        // the parent's child link follows the new name
        let err = s.remove("c").expect_err("c has children");
        assert!(err.message().contains("n") && err.message().contains("remove"), "{err}");
    }

    #[test]
    fn remove_semantics() {
        let (_d, s) = store();
        let base = committed(&s, "base", "");
        let top = committed(&s, "top", "base");
        create(&s, Kind::Active, "a", "top").expect("a");
        assert_eq!(kind_of(s.remove("missing")), ErrorKind::NotFound);
        for parent in ["base", "top"] {
            let err = s.remove(parent).expect_err("has children");
            assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
            assert!(err.message().contains("cannot remove snapshot with child"), "{err}");
        }
        let removed = s.remove("a").expect("remove a");
        assert_eq!(removed.info.parent, "top");
        assert!(!s.snapshot_dir(removed.id).exists());
        s.remove("top").expect("remove top");
        assert!(!s.snapshot_dir(top).exists());
        s.remove("base").expect("remove base");
        assert!(!s.snapshot_dir(base).exists());
        // keys and names are reusable, ids are not
        let again = create(&s, Kind::Active, "a", "").expect("reuse key");
        assert!(again.id > top);
        s.remove("a").expect("remove");
        assert!(s.list(&[]).expect("list").is_empty());
        assert!(s.settled_dir_names().expect("names").is_empty());
    }

    #[test]
    fn update_semantics() {
        let (_d, s) = store();
        s.create(Kind::Active, "a", "", labels(&[("l1", "v1"), ("l2", "v2")]), |_| Ok(())).expect("a");
        let created = s.stat("a").expect("a").created;
        let mut info = s.stat("a").expect("a");
        info.labels = labels(&[("l3", "v3")]);
        info.parent = "ignored".into();
        let got = s.update(info.clone(), &[]).expect("replace all");
        assert_eq!(got.labels, labels(&[("l3", "v3")]));
        assert_eq!(got.parent, "");
        assert_eq!(got.created, created);
        assert!(got.updated >= created);
        assert_eq!(s.stat("a").expect("a"), got);

        info.labels = labels(&[("l1", "x"), ("l3", "")]);
        let got = s.update(info.clone(), &["labels.l1".into(), "labels.l3".into(), "labels.l9".into()]).expect("one");
        assert_eq!(got.labels, labels(&[("l1", "x")]));
        info.labels = labels(&[("only", "1")]);
        assert_eq!(s.update(info.clone(), &["labels".into()]).expect("labels").labels, labels(&[("only", "1")]));

        for bad in ["parent", "name", "kind", "created", "labelsx"] {
            assert_eq!(kind_of(s.update(info.clone(), &[bad.into()])), ErrorKind::InvalidArgument, "{bad}");
        }
        assert_eq!(s.stat("a").expect("a").labels, labels(&[("only", "1")]), "failed updates change nothing");
        let mut nameless = info.clone();
        nameless.name.clear();
        assert_eq!(kind_of(s.update(nameless, &[])), ErrorKind::InvalidArgument);
        let mut missing = info.clone();
        missing.name = "missing".into();
        assert_eq!(kind_of(s.update(missing, &[])), ErrorKind::NotFound);
        let mut big = info.clone();
        big.labels = labels(&[("k", &"v".repeat(4096))]);
        assert_eq!(kind_of(s.update(big, &[])), ErrorKind::InvalidArgument);
    }

    #[test]
    fn list_with_filters() {
        let (_d, s) = store();
        committed(&s, "p", "");
        s.create(Kind::Active, "a", "p", labels(&[("l", "2")]), |_| Ok(())).expect("a");
        create(&s, Kind::View, "v", "p").expect("v");
        let names = |f: &[&str]| -> Vec<String> {
            let f: Vec<String> = f.iter().map(|s| s.to_string()).collect();
            s.list(&f).expect("list").into_iter().map(|i| i.name).collect()
        };
        assert_eq!(names(&[]), ["a", "p", "v"]);
        assert_eq!(names(&["kind==active"]), ["a"]);
        assert_eq!(names(&["parent==p"]), ["a", "v"]);
        assert_eq!(names(&["name==p", "name==v"]), ["p", "v"]);
        assert_eq!(names(&["labels.l==2,kind==active"]), ["a"]);
        assert_eq!(kind_of(s.list(&["name==".into()])), ErrorKind::InvalidArgument);
    }

    #[test]
    fn driver_data_round_trip() {
        let (_d, s) = store();
        let snap = s
            .create(Kind::Active, "a", "", Labels::new(), |p| {
                p.set_driver_data(labels(&[("device", "7")]));
                Ok(())
            })
            .expect("a");
        assert_eq!(snap.driver_data, labels(&[("device", "7")]));
        s.set_driver_data("a", labels(&[("device", "8")])).expect("set");
        s.commit_active("c", "a", Labels::new(), Usage::default()).expect("commit");
        assert_eq!(s.entry("c").expect("c").driver_data, labels(&[("device", "8")]));
        assert_eq!(kind_of(s.set_driver_data("a", DriverData::new())), ErrorKind::NotFound);
    }

    #[test]
    fn debris_is_removed_on_open_and_ids_survive_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let last = {
            let s = MetaStore::open(dir.path()).expect("open");
            committed(&s, "c", "")
        };
        let snaps = dir.path().join(SNAPSHOTS_DIR);
        for d in ["new-abc123", "rm-9"] {
            std::fs::create_dir_all(snaps.join(d).join("fs/deep")).expect("debris");
        }
        // a directory under the next id, as left by a create killed after
        // its rename but before its transaction committed
        std::fs::create_dir_all(snaps.join((last + 1).to_string()).join("stale")).expect("debris");
        let s = MetaStore::open(dir.path()).expect("reopen");
        assert!(!snaps.join("new-abc123").exists() && !snaps.join("rm-9").exists());
        assert_eq!(s.stat("c").expect("c").kind, Kind::Committed);
        let next = create(&s, Kind::Active, "a", "c").expect("create over debris");
        assert_eq!(next.id, last + 1);
        assert!(!s.snapshot_dir(next.id).join("stale").exists(), "debris replaced by the new snapshot");
    }

    #[test]
    fn cleanup_removes_orphans_only() {
        let (_d, s) = store();
        let c = committed(&s, "c", "");
        let snaps = s.snapshots_dir().to_path_buf();
        for d in ["999", "new-zzz", "rm-5", "junk"] {
            std::fs::create_dir_all(snaps.join(d).join("x")).expect("orphan");
        }
        let pending = s.begin_create(Kind::Active, "busy", "", Labels::new()).expect("pending");
        let mut removed = s.cleanup().expect("cleanup");
        removed.sort();
        assert_eq!(removed, ["999", "junk", "new-zzz", "rm-5"]);
        assert!(pending.dir().is_dir(), "in-flight directories are kept");
        assert!(s.snapshot_dir(c).is_dir());
        let snap = s.finish_create(pending, |_, _| Ok(())).expect("finish");
        assert!(s.snapshot_dir(snap.id).is_dir());
        assert!(s.cleanup().expect("cleanup").is_empty());
    }

    #[test]
    fn second_open_of_the_same_root_fails_cleanly() {
        let (d, _s) = store();
        let err = MetaStore::open(d.path()).expect_err("locked");
        assert_eq!(err.kind(), ErrorKind::Internal);
    }

    #[test]
    fn verify_accepts_a_consistent_store_and_spots_a_missing_directory() {
        let (_d, s) = store();
        committed(&s, "base", "");
        committed(&s, "mid", "base");
        let a = create(&s, Kind::Active, "a", "mid").expect("a");
        create(&s, Kind::View, "v", "base").expect("v");
        s.verify().expect("consistent");
        std::fs::remove_dir_all(s.snapshot_dir(a.id)).expect("rm");
        let err = s.verify().expect_err("missing dir");
        assert!(err.message().contains("\"a\""), "{err}");
    }

    #[test]
    fn concurrent_creates_commits_removes_and_cleanups_stay_consistent() {
        let (_d, s) = store();
        committed(&s, "base", "");
        std::thread::scope(|scope| {
            for t in 0..4 {
                let s = &s;
                scope.spawn(move || {
                    for i in 0..40 {
                        let (key, name) = (format!("t{t}-a{i}"), format!("t{t}-c{i}"));
                        s.create(Kind::Active, &key, "base", Labels::new(), |p| {
                            std::fs::write(p.dir().join("f"), b"x").map_err(|e| Error::io("write", e))
                        })
                        .expect("create");
                        s.commit_active(&name, &key, Labels::new(), Usage::default()).expect("commit");
                        if i % 2 == 0 {
                            s.remove(&name).expect("remove");
                        }
                    }
                });
            }
            let s = &s;
            scope.spawn(move || {
                for _ in 0..40 {
                    s.cleanup().expect("cleanup");
                }
            });
        });
        s.verify().expect("consistent");
        assert_eq!(s.list(&["kind==committed".to_string()]).expect("list").len(), 1 + 4 * 20);
        let live: HashSet<String> = s.ids().expect("ids").into_iter().map(|id| id.to_string()).collect();
        let on_disk: HashSet<String> =
            s.settled_dir_names().expect("names").into_iter().map(|n| n.to_string_lossy().into_owned()).collect();
        assert_eq!(live, on_disk, "cleanup never took a live directory and left none behind");
        for id in s.ids().expect("ids") {
            if s.entries().expect("entries").iter().any(|e| e.id == id && e.info.name != "base") {
                assert!(s.snapshot_dir(id).join("f").is_file(), "content of {id} intact");
            }
        }
    }

    const CRASH_ENV: &str = "STRATA_STORE_CRASH_WORKER";

    /// Runs create / commit / remove cycles until killed, logging what it is
    /// about to do and what it has done to `<root>/log`.
    fn crash_worker(root: &Path) -> ! {
        use std::io::Write;
        let s = MetaStore::open(&root.join("store")).expect("worker open");
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(root.join("log")).expect("log");
        std::fs::write(root.join("ready"), b"").expect("ready");
        // Microseconds since the epoch: later rounds never reuse a name.
        let mut i = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        let mut parent = s
            .list(&["kind==committed".to_string()])
            .expect("list")
            .into_iter()
            .max_by_key(|info| info.created)
            .map(|info| info.name)
            .unwrap_or_default();
        loop {
            i += 1;
            let (key, name, tmp) = (format!("a{i}"), format!("c{i}"), format!("t{i}"));
            s.create(Kind::Active, &key, &parent, Labels::new(), |p| {
                std::fs::write(p.dir().join("data"), i.to_string()).map_err(|e| Error::io("write", e))
            })
            .expect("create");
            writeln!(log, "commit-start {key} {name}").expect("log");
            s.commit_active(&name, &key, labels(&[("i", &i.to_string())]), Usage::default()).expect("commit");
            writeln!(log, "commit-done {name}").expect("log");
            s.create(Kind::View, &tmp, &name, Labels::new(), |_| Ok(())).expect("view");
            s.remove(&tmp).expect("remove");
            parent = name;
        }
    }

    #[test]
    fn survives_sigkill_at_any_instant() {
        if let Some(root) = std::env::var_os(CRASH_ENV) {
            crash_worker(Path::new(&root));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = std::env::current_exe().expect("test binary");
        for round in 0..12u64 {
            let ready = dir.path().join("ready");
            let _ = std::fs::remove_file(&ready);
            let mut child = std::process::Command::new(&exe)
                .args(["--exact", "store::tests::survives_sigkill_at_any_instant", "--test-threads=1", "--nocapture"])
                .env(CRASH_ENV, dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn worker");
            let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
            let started = std::time::Instant::now();
            while !ready.exists() {
                assert!(started.elapsed().as_secs() < 120, "the worker did not start");
                assert!(child.try_wait().expect("poll worker").is_none(), "the worker exited early");
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            std::thread::sleep(std::time::Duration::from_millis(20 + u64::from(nanos) % 150));
            child.kill().expect("SIGKILL");
            let status = child.wait().expect("wait");
            assert!(!status.success(), "the worker must have been killed, not have finished: {status}");

            let s = MetaStore::open(&dir.path().join("store")).expect("reopen after kill");
            s.verify().unwrap_or_else(|e| panic!("round {round}: {e}"));
            let log = std::fs::read_to_string(dir.path().join("log")).expect("log");
            let mut last_start = None;
            for line in log.lines() {
                let words: Vec<&str> = line.split(' ').collect();
                match words.as_slice() {
                    ["commit-start", key, name] => last_start = Some((key.to_string(), name.to_string())),
                    ["commit-done", name] => {
                        assert_eq!(s.stat(name).map(|i| i.kind), Ok(Kind::Committed), "round {round}: lost {name}");
                        last_start = None;
                    }
                    _ => {}
                }
            }
            if let Some((key, name)) = last_start {
                let active = s.stat(&key).map(|i| i.kind) == Ok(Kind::Active);
                let committed = s.stat(&name).map(|i| i.kind) == Ok(Kind::Committed);
                assert!(active != committed, "round {round}: in-flight commit half done: active {active}, committed {committed}");
                if active {
                    // finish it, so the log stays true for the next round
                    s.commit_active(&name, &key, Labels::new(), Usage::default()).expect("finish commit");
                }
            }
            // debris of the kill never makes a later call fail
            s.cleanup().expect("cleanup");
            let live: HashSet<String> = s.ids().expect("ids").into_iter().map(|id| id.to_string()).collect();
            let on_disk: HashSet<String> =
                s.settled_dir_names().expect("names").into_iter().map(|n| n.to_string_lossy().into_owned()).collect();
            assert_eq!(live, on_disk, "round {round}: only live snapshots have directories");
            let probe = format!("probe{round}");
            create(&s, Kind::Active, &probe, "").expect("create after restart");
            s.remove(&probe).expect("remove after restart");
            s.verify().expect("still consistent");
            let mut log = std::fs::OpenOptions::new().append(true).open(dir.path().join("log")).expect("log");
            std::io::Write::write_all(&mut log, b"round\n").expect("log");
        }
        let log = std::fs::read_to_string(dir.path().join("log")).expect("log");
        let commits = log.lines().filter(|l| l.starts_with("commit-done")).count();
        assert!(commits >= 12, "the workers made too little progress to test anything: {commits} commits");
    }
}
