//! Local volumes: directories the engine owns that containers mount.
//!
//! # Layout
//! Each driver keeps its volumes under `<data-root>/<driver>/volumes/`:
//! `<name>/_data` is what containers see, `<name>/meta.json` the record
//! ([`VolumeRecord`]: creation time, labels, anonymous or named). A new
//! volume is built as `.tmp-<name>` and renamed into place, a removed one is
//! renamed to `.removing-<name>` before its tree is deleted; both kinds of
//! debris are deleted when the store opens, so a crash never leaves a
//! half-made volume listed.
//!
//! Which containers use a volume is asked of the container service through
//! [`VolumeUsers`] (the container records name their volumes), so a volume
//! in use is never removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::events::EventBus;
use crate::images::config::now_rfc3339;

/// The one volume driver.
pub const LOCAL_DRIVER: &str = "local";

/// What is kept of a volume in its `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Made for a container (`-v /dst`, an image's `Volumes`), not by name.
    #[serde(default)]
    pub anonymous: bool,
}

/// A volume as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub record: VolumeRecord,
    /// `<root>/<name>/_data`.
    pub mountpoint: PathBuf,
}

/// Who uses volumes: the container service.
pub trait VolumeUsers: Send + Sync {
    /// The IDs of the containers (any state) that mount volume `name`.
    fn containers_using_volume(&self, name: &str) -> Vec<String>;
}

/// The volumes of one storage driver.
pub struct VolumeService {
    root: PathBuf,
    events: EventBus,
    volumes: Mutex<BTreeMap<String, VolumeRecord>>,
    users: OnceLock<Weak<dyn VolumeUsers>>,
}

/// Checks a volume name as dockerd's local driver does:
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b[1..].iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn invalid_name(name: &str) -> EngineError {
    EngineError::invalid(format!(
        "create {name}: \"{name}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
    ))
}

/// dockerd's reply for a volume that does not exist.
pub fn no_such_volume(name: &str) -> EngineError {
    EngineError::not_found(format!("get {name}: no such volume"))
}

/// Refuses a volume driver other than `local` (there are no plugins).
pub fn check_driver(driver: &str) -> Result<(), EngineError> {
    if driver.is_empty() || driver == LOCAL_DRIVER {
        Ok(())
    } else {
        Err(EngineError::not_found(format!("error looking up volume plugin {driver}: plugin \"{driver}\" not found")))
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| EngineError::io(format!("create {}", tmp.display()), e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| EngineError::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| EngineError::io(format!("rename to {}", path.display()), e))
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

impl VolumeService {
    /// Opens (creating) the volume store at `root`, deleting debris of
    /// creations and removals a crash interrupted. Blocking.
    pub fn open(root: &Path, events: EventBus) -> Result<Arc<VolumeService>, EngineError> {
        std::fs::create_dir_all(root).map_err(|e| EngineError::io(format!("create {}", root.display()), e))?;
        let mut volumes = BTreeMap::new();
        let entries = std::fs::read_dir(root).map_err(|e| EngineError::io(format!("read {}", root.display()), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(".tmp-") || name.starts_with(".removing-") {
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete volume debris");
                }
                continue;
            }
            let meta = path.join("meta.json");
            let record = std::fs::read(&meta)
                .ok()
                .and_then(|b| serde_json::from_slice::<VolumeRecord>(&b).ok())
                .filter(|r| r.name == name && path.join("_data").is_dir());
            match record {
                Some(r) => {
                    volumes.insert(name, r);
                }
                None => tracing::warn!(path = %path.display(), "not a volume (no readable meta.json or _data); left alone"),
            }
        }
        tracing::info!(volumes = volumes.len(), "volume store loaded");
        Ok(Arc::new(VolumeService { root: root.to_path_buf(), events, volumes: Mutex::new(volumes), users: OnceLock::new() }))
    }

    /// Tells the service who uses volumes (once, at start-up).
    pub fn set_users(&self, users: Weak<dyn VolumeUsers>) {
        let _ = self.users.set(users);
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, VolumeRecord>> {
        self.volumes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The containers that use volume `name`.
    pub fn users_of(&self, name: &str) -> Vec<String> {
        match self.users.get().and_then(Weak::upgrade) {
            Some(u) => u.containers_using_volume(name),
            None => Vec::new(),
        }
    }

    pub fn data_path(&self, name: &str) -> PathBuf {
        self.root.join(name).join("_data")
    }

    fn view(&self, record: VolumeRecord) -> Volume {
        Volume { mountpoint: self.data_path(&record.name), record }
    }

    /// Every volume, by name.
    pub fn list(&self) -> Vec<Volume> {
        let records: Vec<VolumeRecord> = self.lock().values().cloned().collect();
        records.into_iter().map(|r| self.view(r)).collect()
    }

    pub fn get(&self, name: &str) -> Result<Volume, EngineError> {
        let record = self.lock().get(name).cloned().ok_or_else(|| no_such_volume(name))?;
        Ok(self.view(record))
    }

    /// `POST /volumes/create`: makes volume `name` (a random one when
    /// empty) or returns the existing one of that name. `driver_opts`
    /// must be empty: the local driver here mounts nothing itself.
    pub fn create(
        &self,
        name: &str,
        driver: &str,
        driver_opts: &BTreeMap<String, String>,
        labels: BTreeMap<String, String>,
    ) -> Result<Volume, EngineError> {
        check_driver(driver).map_err(|e| EngineError::not_found(format!("create {name}: {}", e.message())))?;
        if let Some(key) = driver_opts.keys().next() {
            return Err(EngineError::invalid(format!(
                "create {name}: the local volume driver of this engine takes no options (got {key:?}): volumes are plain directories"
            )));
        }
        let name = if name.is_empty() { random_name()? } else { name.to_string() };
        self.create_record(&name, labels, false).map(|(v, _)| v)
    }

    /// A named volume for a container: the existing one, or a new one.
    /// Returns whether it was created now.
    pub fn get_or_create(&self, name: &str, labels: BTreeMap<String, String>) -> Result<(Volume, bool), EngineError> {
        self.create_record(name, labels, false)
    }

    /// A new anonymous volume for a container.
    pub fn create_anonymous(&self) -> Result<Volume, EngineError> {
        let name = random_name()?;
        self.create_record(&name, BTreeMap::new(), true).map(|(v, _)| v)
    }

    fn create_record(&self, name: &str, labels: BTreeMap<String, String>, anonymous: bool) -> Result<(Volume, bool), EngineError> {
        if !valid_name(name) {
            return Err(invalid_name(name));
        }
        let mut map = self.lock();
        if let Some(existing) = map.get(name) {
            let existing = existing.clone();
            drop(map);
            return Ok((self.view(existing), false));
        }
        let record = VolumeRecord { name: name.to_string(), created_at: now_rfc3339(), labels, anonymous };
        let tmp = self.root.join(format!(".tmp-{name}"));
        let _ = std::fs::remove_dir_all(&tmp);
        let made = (|| {
            std::fs::create_dir_all(tmp.join("_data")).map_err(|e| EngineError::io(format!("create {}", tmp.display()), e))?;
            let bytes = serde_json::to_vec_pretty(&record).map_err(|e| EngineError::internal(format!("encode volume record: {e}")))?;
            write_atomic(&tmp.join("meta.json"), &bytes)?;
            sync_dir(&tmp);
            let dest = self.root.join(name);
            std::fs::rename(&tmp, &dest).map_err(|e| EngineError::io(format!("rename to {}", dest.display()), e))?;
            sync_dir(&self.root);
            Ok(())
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        map.insert(name.to_string(), record.clone());
        drop(map);
        self.events.emit("volume", "create", name, [("driver".to_string(), LOCAL_DRIVER.to_string())].into());
        Ok((self.view(record), true))
    }

    /// `DELETE /volumes/{name}`: refused while a container uses it; with
    /// `force` a missing volume is no error.
    pub fn remove(&self, name: &str, force: bool) -> Result<(), EngineError> {
        let users = self.users_of(name);
        let mut map = self.lock();
        if !map.contains_key(name) {
            return if force { Ok(()) } else { Err(no_such_volume(name)) };
        }
        if !users.is_empty() {
            return Err(EngineError::conflict(format!("remove {name}: volume is in use - [{}]", users.join(", "))));
        }
        let dir = self.root.join(name);
        let doomed = self.root.join(format!(".removing-{name}"));
        std::fs::rename(&dir, &doomed).map_err(|e| EngineError::io(format!("rename {}", dir.display()), e))?;
        sync_dir(&self.root);
        map.remove(name);
        drop(map);
        if let Err(e) = std::fs::remove_dir_all(&doomed) {
            tracing::warn!(path = %doomed.display(), error = %e, "cannot delete a removed volume's files");
        }
        self.events.emit("volume", "destroy", name, [("driver".to_string(), LOCAL_DRIVER.to_string())].into());
        Ok(())
    }

    /// The size of a volume's data as dockerd counts it: the sizes of its
    /// files, each inode once; -1 when it cannot be read.
    pub fn size(&self, name: &str) -> i64 {
        fn walk(dir: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> std::io::Result<i64> {
            use std::os::unix::fs::MetadataExt;
            let mut total = 0;
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                let meta = entry.metadata()?;
                if meta.is_dir() {
                    total += walk(&entry.path(), seen)?;
                } else if seen.insert((meta.dev(), meta.ino())) {
                    total += i64::try_from(meta.size()).unwrap_or(i64::MAX);
                }
            }
            Ok(total)
        }
        walk(&self.data_path(name), &mut std::collections::HashSet::new()).unwrap_or(-1)
    }

    /// Emits a `volume` event with the driver among the attributes.
    pub fn emit(&self, action: &str, name: &str, extra: &[(&str, String)]) {
        let mut attrs: BTreeMap<String, String> = extra.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        attrs.insert("driver".to_string(), LOCAL_DRIVER.to_string());
        self.events.emit("volume", action, name, attrs);
    }
}

/// 64 hex characters, as dockerd names anonymous volumes.
fn random_name() -> Result<String, EngineError> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| EngineError::io("read /dev/urandom", e))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Users(Vec<String>);
    impl VolumeUsers for Users {
        fn containers_using_volume(&self, name: &str) -> Vec<String> {
            if name == "busy" {
                self.0.clone()
            } else {
                Vec::new()
            }
        }
    }

    #[test]
    fn volumes_persist_and_are_protected_while_used() {
        let dir = tempfile::tempdir().unwrap();
        let svc = VolumeService::open(dir.path(), EventBus::new()).unwrap();
        let users: Arc<dyn VolumeUsers> = Arc::new(Users(vec!["c1".into()]));
        svc.set_users(Arc::downgrade(&users));
        let labels: BTreeMap<String, String> = [("a".to_string(), "b".to_string())].into();
        let v = svc.create("data", "", &BTreeMap::new(), labels.clone()).unwrap();
        assert_eq!(v.mountpoint, dir.path().join("data/_data"));
        assert!(v.mountpoint.is_dir());
        // Same name: the existing volume.
        assert_eq!(svc.create("data", "local", &BTreeMap::new(), BTreeMap::new()).unwrap().record.labels, labels);
        svc.get_or_create("busy", BTreeMap::new()).unwrap();
        let anon = svc.create_anonymous().unwrap();
        assert!(anon.record.anonymous && anon.record.name.len() == 64);
        assert!(matches!(svc.create("x", "", &BTreeMap::new(), BTreeMap::new()), Err(EngineError::InvalidArgument(_))));
        assert!(matches!(svc.create("a/b", "", &BTreeMap::new(), BTreeMap::new()), Err(EngineError::InvalidArgument(_))));
        let err = svc.create("p", "flocker", &BTreeMap::new(), BTreeMap::new()).unwrap_err();
        assert_eq!(err.to_string(), "create p: error looking up volume plugin flocker: plugin \"flocker\" not found");
        let opts: BTreeMap<String, String> = [("type".to_string(), "nfs".to_string())].into();
        assert!(matches!(svc.create("nfs", "", &opts, BTreeMap::new()), Err(EngineError::InvalidArgument(_))));
        assert!(!dir.path().join("nfs").exists());

        let err = svc.remove("busy", true).unwrap_err();
        assert_eq!(err.to_string(), "remove busy: volume is in use - [c1]");
        assert_eq!(svc.remove("ghost", false).unwrap_err().to_string(), "get ghost: no such volume");
        svc.remove("ghost", true).unwrap();

        // Debris of an interrupted create and remove goes at the next open.
        std::fs::create_dir_all(dir.path().join(".tmp-half/_data")).unwrap();
        std::fs::create_dir_all(dir.path().join(".removing-old/_data")).unwrap();
        drop(svc);
        let svc = VolumeService::open(dir.path(), EventBus::new()).unwrap();
        let names: Vec<String> = svc.list().into_iter().map(|v| v.record.name).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.contains(&"data".to_string()) && names.contains(&"busy".to_string()));
        assert_eq!(svc.get("data").unwrap().record.labels, labels);
        assert!(!dir.path().join(".tmp-half").exists() && !dir.path().join(".removing-old").exists());
        std::fs::write(svc.data_path("data").join("f"), "four").unwrap();
        std::fs::create_dir(svc.data_path("data").join("d")).unwrap();
        std::fs::hard_link(svc.data_path("data").join("f"), svc.data_path("data").join("d/g")).unwrap();
        assert_eq!(svc.size("data"), 4);
        svc.remove("data", false).unwrap();
        assert!(!dir.path().join("data").exists());
        assert!(svc.get("data").is_err());
    }
}
