//! The engine's shared state: configuration, the storage driver and the
//! services every handler reaches through `Arc<Engine>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use strata_snapshotter::Snapshotter;

use crate::error::EngineError;
use crate::events::EventBus;
use crate::images::ImageService;
use crate::server::Shutdown;
use crate::system::ImageStats;

/// The settings the API reports (in `/info`) and the services use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// `--data-root`: everything the engine stores lives below it.
    pub data_root: PathBuf,
    /// `-D`: log every request.
    pub debug: bool,
    /// `--log-driver` (reported; containers use it).
    pub log_driver: String,
    /// `--log-opt`: default options of `log_driver` for containers.
    pub log_opts: BTreeMap<String, String>,
    /// `--insecure-registry` entries (reported; pulls use them).
    pub insecure_registries: Vec<String>,
    /// `--storage-opt` key=value pairs given to the driver.
    pub storage_opts: BTreeMap<String, String>,
    /// `--snapshotter-address`, when the snapshotter is a remote daemon.
    pub snapshotter_address: Option<String>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            data_root: PathBuf::from(crate::config::DEFAULT_DATA_ROOT),
            debug: false,
            log_driver: "json-file".to_string(),
            log_opts: BTreeMap::new(),
            insecure_registries: Vec::new(),
            storage_opts: BTreeMap::new(),
            snapshotter_address: None,
        }
    }
}

/// Everything a request handler may use.
pub struct Engine {
    pub config: EngineConfig,
    /// The storage driver's name ("overlay", "vfs", "blockcow").
    pub driver: String,
    /// The driver's snapshotter, embedded or remote.
    pub snapshotter: Arc<dyn Snapshotter>,
    pub events: EventBus,
    pub images: Arc<ImageService>,
    /// The container service of the driver (built from the other parts).
    pub containers: Arc<crate::containers::ContainerService>,
    /// The local volumes of the driver (`<data-root>/<driver>/volumes`).
    pub volumes: Arc<crate::volumes::VolumeService>,
    /// The image numbers `/info` and `/system/df` show.
    pub image_stats: Arc<dyn ImageStats>,
    /// Fires when the daemon shuts down; long streams end on it.
    pub shutdown: Shutdown,
    /// The daemon's persistent identity (`ID` in `/info`).
    pub id: String,
    /// When the daemon started.
    pub started: SystemTime,
}

/// The parts an [`Engine`] is assembled from.
pub struct EngineParts {
    pub config: EngineConfig,
    pub driver: String,
    pub snapshotter: Arc<dyn Snapshotter>,
    pub events: EventBus,
    pub images: Arc<ImageService>,
    pub image_stats: Arc<dyn ImageStats>,
    pub shutdown: Shutdown,
}

impl Engine {
    /// Assembles the engine; reads or creates its identity under the data root.
    pub fn new(parts: EngineParts) -> Result<Self, EngineError> {
        let id = engine_id(&parts.config.data_root)?;
        let driver_dir = parts.config.data_root.join(&parts.driver);
        let volumes = crate::volumes::VolumeService::open(&driver_dir.join("volumes"), parts.events.clone())?;
        let containers = crate::containers::ContainerService::open(
            &parts.config.data_root.join(&parts.driver),
            &parts.driver,
            &parts.config.log_driver,
            &parts.config.log_opts,
            parts.snapshotter.clone(),
            parts.images.clone(),
            volumes.clone(),
            parts.events.clone(),
        )?;
        Ok(Self {
            containers,
            volumes,
            config: parts.config,
            driver: parts.driver,
            snapshotter: parts.snapshotter,
            events: parts.events,
            images: parts.images,
            image_stats: parts.image_stats,
            shutdown: parts.shutdown,
            id,
            started: SystemTime::now(),
        })
    }

    /// `<data-root>/<driver>`: the directory that holds this driver's data.
    pub fn driver_dir(&self) -> PathBuf {
        self.config.data_root.join(&self.driver)
    }
}

/// The daemon identity, kept in `<data-root>/engine-id` so it survives
/// restarts; created on first start.
pub fn engine_id(data_root: &Path) -> Result<String, EngineError> {
    let path = data_root.join("engine-id");
    match std::fs::read_to_string(&path) {
        Ok(text) if is_engine_id(text.trim()) => return Ok(text.trim().to_string()),
        Ok(_) => tracing::warn!(path = %path.display(), "engine identity file is malformed; making a new one"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(EngineError::io(format!("read {}", path.display()), e)),
    }
    let mut bytes = [0u8; 16];
    getrandom_bytes(&mut bytes)?;
    let hex = hex::encode(bytes);
    let id = format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]);
    std::fs::create_dir_all(data_root)
        .map_err(|e| EngineError::io(format!("create {}", data_root.display()), e))?;
    let tmp = data_root.join(".engine-id.tmp");
    std::fs::write(&tmp, format!("{id}\n")).map_err(|e| EngineError::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path).map_err(|e| EngineError::io(format!("rename to {}", path.display()), e))?;
    Ok(id)
}

fn is_engine_id(text: &str) -> bool {
    text.len() == 36 && text.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn getrandom_bytes(buf: &mut [u8]) -> Result<(), EngineError> {
    use std::io::Read;
    let mut f = std::fs::File::open("/dev/urandom").map_err(|e| EngineError::io("open /dev/urandom", e))?;
    f.read_exact(buf).map_err(|e| EngineError::io("read /dev/urandom", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_id_persists() {
        let dir = tempfile::tempdir().unwrap();
        let a = engine_id(dir.path()).unwrap();
        assert!(is_engine_id(&a), "{a}");
        assert_eq!(engine_id(dir.path()).unwrap(), a);
        std::fs::write(dir.path().join("engine-id"), "garbage").unwrap();
        let b = engine_id(dir.path()).unwrap();
        assert_ne!(a, b);
        assert!(is_engine_id(&b));
    }
}
