//! Persisted container metadata.
//!
//! Every container has a directory `<driver dir>/containers/<id>/` holding
//! `config.json` (the container as created, [`ContainerRecord`]),
//! `state.json` ([`ContainerState`]), the json-file log `<id>-json.log` and
//! the OCI bundle `bundle/` (runtime spec and the `rootfs` mount point).
//! Files are replaced atomically (write to a temporary name, flush, rename); a new
//! container's directory is flushed once its files are written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::EngineError;

/// The container as created: what `docker inspect` shows under `Config`
/// and `HostConfig`, plus what the engine needs to run it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64 hex characters.
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// The image as the user typed it (`busybox`).
    pub image: String,
    /// The image ID (`sha256:…`).
    pub image_id: String,
    /// The first word of the command (entrypoint and cmd merged).
    pub path: String,
    /// The rest of the command.
    pub args: Vec<String>,
    /// Docker's `Config` object, merged with the image config.
    pub config: Value,
    /// Docker's `HostConfig` object as sent, with the network mode and log
    /// driver resolved.
    pub host_config: Value,
    /// The effective network mode: `none` or `host`.
    pub network_mode: String,
    /// The storage driver.
    pub driver: String,
    /// The key of the container's active snapshot.
    pub snapshot_key: String,
    /// The image's top chain ID (the snapshot's parent), empty for none.
    pub parent_chain_id: String,
    /// Labels (`Config.Labels`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Bind mounts, volumes and tmpfs mounts, volumes resolved to their
    /// names and directories.
    #[serde(default)]
    pub mounts: Vec<super::mounts::MountPoint>,
}

/// The lifecycle state of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Restarting => "restarting",
            Status::Removing => "removing",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }

    /// Whether a process is alive (running or paused).
    pub fn is_alive(self) -> bool {
        matches!(self, Status::Running | Status::Paused | Status::Restarting)
    }
}

/// The changing part of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub status: Status,
    /// The init process on the host, 0 when none.
    pub pid: i32,
    pub exit_code: i64,
    /// RFC 3339; empty before the first start.
    pub started_at: String,
    /// RFC 3339; empty before the first exit.
    pub finished_at: String,
    /// The last start failure, if any.
    pub error: String,
    /// Whether the daemon stopped the container on request (stop, kill,
    /// rm -f); such an exit is not restarted by the restart policy.
    #[serde(default)]
    pub stopped_by_user: bool,
    /// Restarts by the restart policy since the last start on request.
    #[serde(default)]
    pub restart_count: u64,
}

/// Checks a container ID: 64 lowercase hex characters.
pub fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a container name as dockerd does: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b[1..].iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A fresh random container ID.
pub fn new_id() -> Result<String, EngineError> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom").map_err(|e| EngineError::io("open /dev/urandom", e))?;
    f.read_exact(&mut bytes).map_err(|e| EngineError::io("read /dev/urandom", e))?;
    Ok(hex::encode(bytes))
}

const ADJECTIVES: &[&str] = &[
    "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry", "nifty", "proud",
    "quiet", "sharp", "tender", "vivid", "wise", "zealous", "bold", "clever",
];
const NOUNS: &[&str] = &[
    "otter", "falcon", "badger", "heron", "lynx", "marmot", "newt", "osprey", "panda", "quail", "raven", "seal",
    "tapir", "urchin", "vole", "walrus", "yak", "zebra", "bison", "crane",
];

/// A generated name `<adjective>_<noun>` picked from the ID's bytes, with a
/// number appended when `taken` says the plain one is in use.
pub fn generate_name(id: &str, taken: impl Fn(&str) -> bool) -> String {
    let bytes = hex::decode(id.get(..8).unwrap_or("00000000")).unwrap_or_default();
    let a = bytes.first().copied().unwrap_or(0) as usize % ADJECTIVES.len();
    let n = bytes.get(1).copied().unwrap_or(0) as usize % NOUNS.len();
    let base = format!("{}_{}", ADJECTIVES[a], NOUNS[n]);
    if !taken(&base) {
        return base;
    }
    (2..).map(|i| format!("{base}{i}")).find(|c| !taken(c)).unwrap_or(base)
}

/// The on-disk layout of one container.
#[derive(Debug, Clone)]
pub struct ContainerDir {
    pub dir: PathBuf,
    pub id: String,
}

impl ContainerDir {
    pub fn new(root: &Path, id: &str) -> Self {
        Self { dir: root.join(id), id: id.to_string() }
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join(format!("{}-json.log", self.id))
    }
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.bundle().join("rootfs")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("init.pid")
    }
}

/// Writes `value` as JSON to `path` atomically: the data is flushed before
/// the rename, so a crash leaves the old file or the new one, never an
/// empty one. (A new name also needs [`sync_dir`] of its directory.)
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), EngineError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| EngineError::internal(format!("encode {}: {e}", path.display())))?;
    let tmp = path.with_extension("json.tmp");
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        std::io::Write::write_all(&mut f, &bytes)?;
        f.sync_data()
    });
    written.map_err(|e| EngineError::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| EngineError::io(format!("rename {}", tmp.display()), e))
}

/// Flushes a directory, so the names created or removed in it last.
pub fn sync_dir(dir: &Path) -> Result<(), EngineError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| EngineError::io(format!("sync {}", dir.display()), e))
}

/// Reads a JSON file.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, EngineError> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(format!("read {}", path.display()), e))?;
    serde_json::from_slice(&bytes).map_err(|e| EngineError::internal(format!("corrupt {}: {e}", path.display())))
}

/// Loads every container under `root`; directories that are not complete
/// containers are reported and skipped.
pub fn load_all(root: &Path) -> Vec<(ContainerRecord, ContainerState)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str() else { continue };
        if !is_container_id(id) {
            continue;
        }
        let dir = ContainerDir::new(root, id);
        let record: ContainerRecord = match read_json(&dir.config()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(id, error = %e, "skipping a container without readable metadata");
                continue;
            }
        };
        let state: ContainerState = read_json(&dir.state()).unwrap_or_default();
        out.push((record, state));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        let id = new_id().unwrap();
        assert!(is_container_id(&id), "{id}");
        assert!(!is_container_id("abc"));
        assert!(!is_container_id(&id.to_uppercase()));
        assert!(valid_name("web"));
        assert!(valid_name("a.b-c_d"));
        assert!(!valid_name("w"));
        assert!(!valid_name("-web"));
        assert!(!valid_name("we b"));
        let name = generate_name(&id, |_| false);
        assert!(valid_name(&name), "{name}");
        let again = generate_name(&id, |n| n == name);
        assert_ne!(again, name);
        assert!(again.starts_with(&name));
    }

    #[test]
    fn state_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let state = ContainerState { status: Status::Exited, exit_code: 3, pid: 0, ..Default::default() };
        write_json(&path, &state).unwrap();
        let back: ContainerState = read_json(&path).unwrap();
        assert_eq!(back, state);
        assert!(read_json::<ContainerState>(&dir.path().join("missing")).is_err());
    }
}
