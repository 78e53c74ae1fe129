//! The engine's shared state: configuration, the storage driver and the
//! services every handler reaches through `Arc<Engine>`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use strata_snapshotter::Snapshotter;

use crate::events::EventBus;
use crate::images::ImageService;

/// The settings the API reports (in `/info`) and the services use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// `--data-root`: everything the engine stores lives below it.
    pub data_root: PathBuf,
    /// `-D`: log every request.
    pub debug: bool,
    /// `--log-driver` (reported; containers use it).
    pub log_driver: String,
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
    /// When the daemon started.
    pub started: SystemTime,
}

impl Engine {
    pub fn new(
        config: EngineConfig,
        driver: String,
        snapshotter: Arc<dyn Snapshotter>,
        events: EventBus,
        images: Arc<ImageService>,
    ) -> Self {
        Self { config, driver, snapshotter, events, images, started: SystemTime::now() }
    }

    /// `<data-root>/<driver>`: the directory that holds this driver's data.
    pub fn driver_dir(&self) -> PathBuf {
        self.config.data_root.join(&self.driver)
    }
}
