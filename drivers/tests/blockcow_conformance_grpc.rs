//! The conformance suite over gRPC on the blockcow driver: each case opens a
//! small pool (4 GiB sparse data file, 64 MiB base device, so mkfs is quick),
//! serves it in-process on a temporary unix socket and runs against a
//! `RemoteSnapshotter` carrying the driver's capabilities, so every call
//! crosses the wire. Needs root, FUSE, loop devices and mkfs.ext4; a missing
//! one fails the case with what to install.
//!
//! Closing the client also stops the server and closes the driver, so the
//! FUSE mount and every loop device of the case are gone when it ends.
//!
//! Run: `cargo test -p strata-drivers --test blockcow_conformance_grpc`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use strata_drivers::registry;
use strata_snapshotter::grpc::{server, RemoteSnapshotter};
use strata_snapshotter::testsuite::FactoryFuture;
use strata_snapshotter::{Capabilities, Error, Info, Labels, Mount, Result, Snapshotter, Usage};
use tokio::net::UnixListener;
use tokio::sync::oneshot;

const DRIVER: &str = "blockcow";

fn pool_options() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("blockcow.basesize".to_string(), "64M".to_string()),
        ("blockcow.datasize".to_string(), "4G".to_string()),
        ("blockcow.metadatasize".to_string(), "64M".to_string()),
    ])
}

/// The server side of one case: the driver and the handle that stops the
/// server task.
struct Served {
    driver: Arc<dyn Snapshotter>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A `RemoteSnapshotter` whose `close` also shuts the in-process server
/// down and closes the served driver (the client alone cannot: gRPC has no
/// Close call). Every other method is the client's.
struct RemoteWithServer {
    client: RemoteSnapshotter,
    served: Mutex<Served>,
}

#[async_trait]
impl Snapshotter for RemoteWithServer {
    async fn stat(&self, key: &str) -> Result<Info> {
        self.client.stat(key).await
    }
    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        self.client.update(info, fieldpaths).await
    }
    async fn usage(&self, key: &str) -> Result<Usage> {
        self.client.usage(key).await
    }
    async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.client.mounts(key).await
    }
    async fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.client.prepare(key, parent, labels).await
    }
    async fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        self.client.view(key, parent, labels).await
    }
    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        self.client.commit(name, key, labels).await
    }
    async fn remove(&self, key: &str) -> Result<()> {
        self.client.remove(key).await
    }
    async fn list(&self, filters: &[String]) -> Result<Vec<Info>> {
        self.client.list(filters).await
    }
    async fn cleanup(&self) -> Result<()> {
        self.client.cleanup().await
    }
    async fn close(&self) -> Result<()> {
        self.client.close().await?;
        let (driver, stop, task) = {
            let mut served = self.served.lock().map_err(|_| Error::internal("server state lock poisoned"))?;
            (served.driver.clone(), served.stop.take(), served.task.take())
        };
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        if let Some(task) = task {
            task.await.map_err(|e| Error::internal(format!("gRPC server task failed: {e}")))?;
        }
        // Closing twice is allowed by the contract; the driver handles it.
        driver.close().await
    }
    fn capabilities(&self) -> Capabilities {
        self.client.capabilities()
    }
}

/// Opens blockcow under `root/blockcow` and serves it on `root/snapshotd.sock`.
async fn serve(root: &Path) -> Result<(String, Served)> {
    let driver_root = root.join(DRIVER);
    let options = pool_options();
    let driver = tokio::task::spawn_blocking(move || registry::open(DRIVER, &driver_root, &options))
        .await
        .map_err(|e| Error::internal(format!("open blockcow: {e}")))??;
    let socket = root.join("snapshotd.sock");
    let listener = UnixListener::bind(&socket).map_err(|e| Error::io(format!("bind {}", socket.display()), e))?;
    let (stop, stopped) = oneshot::channel::<()>();
    let drivers = BTreeMap::from([(DRIVER.to_string(), driver.clone())]);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(err) = server::serve(drivers, listener, shutdown).await {
            eprintln!("gRPC server failed: {err}");
        }
    });
    Ok((format!("unix://{}", socket.display()), Served { driver, stop: Some(stop), task: Some(task) }))
}

async fn over_grpc(root: PathBuf) -> Result<Arc<dyn Snapshotter>> {
    let (address, served) = serve(&root).await?;
    let capabilities = served.driver.capabilities();
    let client = match RemoteSnapshotter::connect(&address, DRIVER).await {
        Ok(c) => c.with_capabilities(capabilities),
        Err(e) => {
            // Do not leave the FUSE mount behind when the case cannot start.
            let _ = served.driver.close().await;
            return Err(e);
        }
    };
    Ok(Arc::new(RemoteWithServer { client, served: Mutex::new(served) }))
}

fn blockcow(root: PathBuf) -> FactoryFuture {
    Box::pin(over_grpc(root))
}

strata_snapshotter::conformance_suite!(blockcow_over_grpc, blockcow);

/// The capabilities the suite relies on arrive intact: blockcow mounts are
/// block devices and views are read-only.
#[test]
fn blockcow_mounts_over_grpc_are_loop_devices() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root (FUSE, loop devices, mkfs.ext4)");
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        let sn = over_grpc(dir.path().to_path_buf()).await.expect("serve blockcow");
        let caps = sn.capabilities();
        assert!(caps.block_device && caps.readonly_views, "{caps:?}");
        let checked = async {
            let active = sn.prepare("active", "", Labels::new()).await?;
            sn.commit("layer", "active", Labels::new()).await?;
            let view = sn.view("view", "layer", Labels::new()).await?;
            Ok::<_, Error>((active, view))
        }
        .await;
        let closed = sn.close().await;
        let (active, view) = checked.expect("prepare, commit, view");
        closed.expect("close");
        for (what, mounts, ro) in [("active", &active, false), ("view", &view, true)] {
            assert_eq!(mounts.len(), 1, "{what}: {mounts:?}");
            let m = &mounts[0];
            assert_eq!(m.fstype, "ext4", "{what}: {m:?}");
            assert!(m.source.starts_with("/dev/loop"), "{what}: {m:?}");
            assert_eq!(m.options.iter().any(|o| o == "ro"), ro, "{what}: {m:?}");
        }
    });
}
