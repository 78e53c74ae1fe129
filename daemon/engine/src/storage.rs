//! Storage: which driver the engine uses and where its data lives.
//!
//! Every driver keeps its own tree under the data root, so switching drivers
//! hides the other driver's images and switching back finds them again:
//!
//! ```text
//! <data-root>/<driver>/snapshots-root   the driver's snapshots
//! <data-root>/<driver>/images           the image store for that driver
//! ```
//!
//! The driver comes from `--storage-driver`; without it, the one driver
//! directory that holds data is used, more than one is refused, and with no
//! data at all overlay is picked where the kernel supports it, else vfs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_snapshotter::grpc::client::RemoteSnapshotter;
use strata_snapshotter::{Capabilities, Snapshotter};

use crate::error::EngineError;

/// Name of the per-driver directory holding its snapshots.
pub const SNAPSHOTS_DIR: &str = "snapshots-root";
/// Name of the per-driver directory holding its images.
pub const IMAGES_DIR: &str = "images";

/// The drivers the engine can run on: the embedded driver table, behind a
/// trait so the selection rules are testable without mounting anything.
pub trait DriverTable: Send + Sync {
    /// The names of the available drivers.
    fn names(&self) -> Vec<String>;
    /// Whether `name` can work with its data at `root` on this host.
    fn is_supported(&self, name: &str, root: &Path) -> bool;
    /// Opens driver `name` with its data at `root`.
    fn open(
        &self,
        name: &str,
        root: &Path,
        options: &BTreeMap<String, String>,
    ) -> strata_snapshotter::Result<Arc<dyn Snapshotter>>;
}

/// The drivers built into this binary: `strata_drivers::registry`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinDrivers;

impl DriverTable for BuiltinDrivers {
    fn names(&self) -> Vec<String> {
        strata_drivers::registry::DRIVERS.iter().map(|s| s.to_string()).collect()
    }
    fn is_supported(&self, name: &str, root: &Path) -> bool {
        strata_drivers::registry::is_supported(name, root)
    }
    fn open(
        &self,
        name: &str,
        root: &Path,
        options: &BTreeMap<String, String>,
    ) -> strata_snapshotter::Result<Arc<dyn Snapshotter>> {
        strata_drivers::registry::open(name, root, options)
    }
}

/// Maps Docker's driver names to ours: `overlay2` is overlay and
/// `devicemapper` is blockcow.
pub fn canonical_driver_name(name: &str) -> &str {
    match name {
        "overlay2" => "overlay",
        "devicemapper" => "blockcow",
        other => other,
    }
}

/// Whether `<data-root>/<driver>` exists and holds anything.
pub fn driver_holds_data(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(_) => false,
    }
}

/// Picks the driver; see the module doc for the rules.
pub fn select_driver(
    data_root: &Path,
    requested: Option<&str>,
    table: &dyn DriverTable,
) -> Result<String, EngineError> {
    let names = table.names();
    if let Some(requested) = requested {
        let name = canonical_driver_name(requested.trim());
        if !names.iter().any(|n| n == name) {
            return Err(EngineError::invalid(format!(
                "unknown storage driver {requested:?}: choose one of {}",
                names.join(", ")
            )));
        }
        return Ok(name.to_string());
    }
    let with_data: Vec<&String> = names.iter().filter(|n| driver_holds_data(&data_root.join(n))).collect();
    match with_data.as_slice() {
        [one] => Ok((*one).clone()),
        [] => {
            let overlay = "overlay";
            if names.iter().any(|n| n == overlay)
                && table.is_supported(overlay, &data_root.join(overlay).join(SNAPSHOTS_DIR))
            {
                Ok(overlay.to_string())
            } else if names.iter().any(|n| n == "vfs") {
                Ok("vfs".to_string())
            } else {
                Err(EngineError::internal("no usable storage driver: neither overlay nor vfs is available"))
            }
        }
        several => Err(EngineError::invalid(format!(
            "{} contains data of several storage drivers: {}; remove the ones you no longer need or choose one with --storage-driver",
            data_root.display(),
            several.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The opened storage: driver, snapshotter and directories.
pub struct Storage {
    pub driver: String,
    pub snapshotter: Arc<dyn Snapshotter>,
    /// `<data-root>/<driver>`.
    pub driver_dir: PathBuf,
    /// `<data-root>/<driver>/images`, for the image service.
    pub images_dir: PathBuf,
    /// `<data-root>/<driver>/snapshots-root`, the embedded driver's root.
    pub snapshots_dir: PathBuf,
}

/// What the engine needs to know to open its storage.
#[derive(Debug, Clone)]
pub struct StorageRequest<'a> {
    pub data_root: &'a Path,
    pub driver: Option<&'a str>,
    pub options: &'a BTreeMap<String, String>,
    /// With `Some`, the snapshots live in a running strata-snapshotd.
    pub remote_address: Option<&'a str>,
}

/// Selects the driver, creates its directories and opens its snapshotter:
/// the embedded driver from `table`, or the remote daemon.
pub async fn open_storage(
    request: &StorageRequest<'_>,
    table: Arc<dyn DriverTable>,
) -> Result<Storage, EngineError> {
    let data_root = request.data_root;
    std::fs::create_dir_all(data_root)
        .map_err(|e| EngineError::io(format!("create data root {}", data_root.display()), e))?;
    let driver = select_driver(data_root, request.driver, table.as_ref())?;
    let driver_dir = data_root.join(&driver);
    let snapshots_dir = driver_dir.join(SNAPSHOTS_DIR);
    let images_dir = driver_dir.join(IMAGES_DIR);
    let snapshotter: Arc<dyn Snapshotter> = match request.remote_address {
        Some(address) => {
            if !request.options.is_empty() {
                return Err(EngineError::invalid(
                    "--storage-opt configures the embedded driver; with --snapshotter-address set the options on strata-snapshotd",
                ));
            }
            let remote = RemoteSnapshotter::connect(address, &driver)
                .await
                .map_err(|e| EngineError::from(e).context_unavailable(address))?;
            Arc::new(remote.with_capabilities(known_capabilities(&driver)))
        }
        None => {
            std::fs::create_dir_all(&snapshots_dir)
                .map_err(|e| EngineError::io(format!("create {}", snapshots_dir.display()), e))?;
            let name = driver.clone();
            let root = snapshots_dir.clone();
            let options = request.options.clone();
            tokio::task::spawn_blocking(move || table.open(&name, &root, &options))
                .await
                .map_err(|e| EngineError::internal(format!("opening the storage driver panicked: {e}")))?
                .map_err(|e| EngineError::from(e).with_prefix(&format!("storage driver {driver}")))?
        }
    };
    std::fs::create_dir_all(&images_dir)
        .map_err(|e| EngineError::io(format!("create {}", images_dir.display()), e))?;
    Ok(Storage { driver, snapshotter, driver_dir, images_dir, snapshots_dir })
}

/// The labels that carry a container's `--storage-opt` (`HostConfig.StorageOpt`)
/// to the snapshotter's `Prepare` of its writable layer. The one option is
/// `size` (Docker's syntax, binary units): blockcow gives the container's
/// device that size through [`strata_drivers::blockcow::driver::SIZE_LABEL`];
/// overlay and vfs have no per-snapshot limit here and refuse, as dockerd
/// does without project quotas.
pub fn container_snapshot_labels(
    driver: &str,
    storage_opt: &serde_json::Map<String, serde_json::Value>,
) -> Result<strata_snapshotter::Labels, EngineError> {
    let mut labels = strata_snapshotter::Labels::new();
    for (key, value) in storage_opt {
        if key != "size" {
            return Err(EngineError::invalid(format!("Unknown option {key}")));
        }
        let text = value.as_str().unwrap_or_default();
        let bytes = strata_drivers::blockcow::driver::parse_docker_size(text)
            .ok_or_else(|| EngineError::invalid(format!("invalid size: '{text}'")))?;
        match driver {
            "blockcow" => {
                labels.insert(strata_drivers::blockcow::driver::SIZE_LABEL.to_string(), bytes.to_string());
            }
            "overlay" => {
                return Err(EngineError::invalid(
                    "--storage-opt is supported only for overlay over xfs with 'pquota' mount option",
                ))
            }
            other => {
                return Err(EngineError::invalid(format!(
                    "--storage-opt size is not supported by the {other} storage driver: use blockcow (devicemapper), whose containers get their own device size"
                )))
            }
        }
    }
    Ok(labels)
}

/// What each driver can do, for a remote snapshotter (the wire does not say).
fn known_capabilities(driver: &str) -> Capabilities {
    match driver {
        "blockcow" => Capabilities { rename_lower_dir: true, block_device: true, readonly_views: true },
        _ => Capabilities { rename_lower_dir: false, block_device: false, readonly_views: false },
    }
}

impl EngineError {
    /// The same error with `prefix: ` before its message.
    pub fn with_prefix(self, prefix: &str) -> Self {
        let message = format!("{prefix}: {}", self.message());
        match self {
            Self::InvalidArgument(_) => Self::InvalidArgument(message),
            Self::NotFound(_) => Self::NotFound(message),
            Self::Conflict(_) => Self::Conflict(message),
            Self::NotModified(_) => Self::NotModified(message),
            Self::NotImplemented(_) => Self::NotImplemented(message),
            Self::Unavailable(_) => Self::Unavailable(message),
            Self::Internal(_) => Self::Internal(message),
        }
    }

    fn context_unavailable(self, address: &str) -> Self {
        self.with_prefix(&format!("snapshotter at {address}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table whose drivers cannot be opened: only the selection is tested here.
    struct Names(Vec<&'static str>, bool);

    impl DriverTable for Names {
        fn names(&self) -> Vec<String> {
            self.0.iter().map(|s| s.to_string()).collect()
        }
        fn is_supported(&self, name: &str, _root: &Path) -> bool {
            name != "overlay" || self.1
        }
        fn open(
            &self,
            name: &str,
            _root: &Path,
            _options: &BTreeMap<String, String>,
        ) -> strata_snapshotter::Result<Arc<dyn Snapshotter>> {
            Err(strata_snapshotter::Error::unimplemented(format!("{name} cannot be opened here")))
        }
    }

    #[test]
    fn storage_opt_size_becomes_a_label_on_blockcow_only() {
        let opts = |v: serde_json::Value| v.as_object().cloned().unwrap();
        let labels = container_snapshot_labels("blockcow", &opts(serde_json::json!({"size": "1.5G"}))).unwrap();
        assert_eq!(
            labels.get(strata_drivers::blockcow::driver::SIZE_LABEL).map(String::as_str),
            Some((3u64 << 29).to_string().as_str())
        );
        assert!(container_snapshot_labels("overlay", &opts(serde_json::json!({}))).unwrap().is_empty());
        let err = container_snapshot_labels("blockcow", &opts(serde_json::json!({"size": "lots"}))).unwrap_err();
        assert_eq!(err.message(), "invalid size: 'lots'");
        let err = container_snapshot_labels("blockcow", &opts(serde_json::json!({"inodes": "10"}))).unwrap_err();
        assert_eq!(err.message(), "Unknown option inodes");
        let err = container_snapshot_labels("overlay", &opts(serde_json::json!({"size": "1G"}))).unwrap_err();
        assert!(err.message().contains("pquota"), "{err}");
        let err = container_snapshot_labels("vfs", &opts(serde_json::json!({"size": "1G"}))).unwrap_err();
        assert!(matches!(err, EngineError::InvalidArgument(_)) && err.message().contains("vfs"), "{err}");
    }

    #[test]
    fn aliases() {
        assert_eq!(canonical_driver_name("overlay2"), "overlay");
        assert_eq!(canonical_driver_name("devicemapper"), "blockcow");
        assert_eq!(canonical_driver_name("vfs"), "vfs");
    }

    #[test]
    fn explicit_driver_wins_and_unknown_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let table = Names(vec!["overlay", "vfs", "blockcow"], true);
        std::fs::create_dir_all(dir.path().join("overlay/images/x")).unwrap();
        std::fs::create_dir_all(dir.path().join("vfs/images/x")).unwrap();
        assert_eq!(select_driver(dir.path(), Some("vfs"), &table).unwrap(), "vfs");
        assert_eq!(select_driver(dir.path(), Some("devicemapper"), &table).unwrap(), "blockcow");
        let err = select_driver(dir.path(), Some("zfs"), &table).unwrap_err();
        assert!(err.message().contains("zfs") && err.message().contains("overlay, vfs, blockcow"), "{err}");
    }

    #[test]
    fn data_decides_and_ambiguity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let table = Names(vec!["overlay", "vfs"], true);
        // Nothing yet: overlay where supported, else vfs.
        assert_eq!(select_driver(dir.path(), None, &table).unwrap(), "overlay");
        assert_eq!(select_driver(dir.path(), None, &Names(vec!["overlay", "vfs"], false)).unwrap(), "vfs");
        // An empty driver directory holds no data.
        std::fs::create_dir_all(dir.path().join("overlay")).unwrap();
        std::fs::create_dir_all(dir.path().join("vfs/images")).unwrap();
        assert_eq!(select_driver(dir.path(), None, &table).unwrap(), "vfs");
        std::fs::create_dir_all(dir.path().join("overlay/images")).unwrap();
        let err = select_driver(dir.path(), None, &table).unwrap_err();
        assert!(err.message().contains("overlay, vfs"), "{err}");
        assert!(err.message().contains("--storage-driver"), "{err}");
    }

    #[tokio::test]
    async fn open_failure_is_reported_with_the_driver_name() {
        let dir = tempfile::tempdir().unwrap();
        let opts = BTreeMap::new();
        let request = StorageRequest { data_root: dir.path(), driver: Some("vfs"), options: &opts, remote_address: None };
        let err = open_storage(&request, Arc::new(Names(vec!["vfs"], false))).await.err().unwrap();
        assert!(err.message().starts_with("storage driver vfs: "), "{err}");
    }

    #[tokio::test]
    async fn remote_that_is_not_running_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let opts = BTreeMap::new();
        let sock = dir.path().join("absent.sock");
        let address = format!("unix://{}", sock.display());
        let request = StorageRequest {
            data_root: dir.path(),
            driver: Some("vfs"),
            options: &opts,
            remote_address: Some(&address),
        };
        let err = open_storage(&request, Arc::new(Names(vec!["vfs"], false))).await.err().unwrap();
        assert!(matches!(err, EngineError::Unavailable(_)), "{err:?}");
        assert!(err.message().contains("absent.sock"), "{err}");
    }
}
