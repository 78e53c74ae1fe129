//! The conformance suite over gRPC: each case serves the real driver
//! in-process on a temporary unix socket and runs against a
//! `RemoteSnapshotter`, so every call crosses the wire and the error mapping
//! in both directions. Also checks the server's dispatch by driver name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_drivers::registry;
use strata_snapshotter::grpc::{server, RemoteSnapshotter};
use strata_snapshotter::testsuite::FactoryFuture;
use strata_snapshotter::{Error, ErrorKind, Labels, Result, Snapshotter};
use tokio::net::UnixListener;
use tokio::sync::oneshot;

/// Serves `drivers` (opened under `root/<name>`) on `root/snapshotd.sock`
/// until the returned sender is dropped or fired.
async fn serve_drivers(names: &[&str], root: &Path) -> Result<(String, oneshot::Sender<()>, BTreeMap<String, Arc<dyn Snapshotter>>)> {
    let mut drivers: BTreeMap<String, Arc<dyn Snapshotter>> = BTreeMap::new();
    for name in names {
        let driver = registry::open(name, &root.join(name), &BTreeMap::new())?;
        drivers.insert(name.to_string(), driver);
    }
    let socket = root.join("snapshotd.sock");
    let listener = UnixListener::bind(&socket).map_err(|e| Error::io(format!("bind {}", socket.display()), e))?;
    let (stop, stopped) = oneshot::channel::<()>();
    let served = drivers.clone();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(err) = server::serve(served, listener, shutdown).await {
            eprintln!("gRPC server failed: {err}");
        }
    });
    Ok((format!("unix://{}", socket.display()), stop, drivers))
}

/// The suite's factory: the driver behind a gRPC server, seen through the client.
async fn over_grpc(name: &'static str, root: PathBuf) -> Result<Arc<dyn Snapshotter>> {
    let (address, stop, drivers) = serve_drivers(&[name], &root).await?;
    // The server runs for the rest of the case; the runtime ends it.
    std::mem::forget(stop);
    let capabilities = drivers
        .get(name)
        .map(|d| d.capabilities())
        .ok_or_else(|| Error::internal("driver missing from its own table"))?;
    let client = RemoteSnapshotter::connect(&address, name).await?.with_capabilities(capabilities);
    Ok(Arc::new(client))
}

fn overlay(root: PathBuf) -> FactoryFuture {
    Box::pin(over_grpc("overlay", root))
}

fn vfs(root: PathBuf) -> FactoryFuture {
    Box::pin(over_grpc("vfs", root))
}

strata_snapshotter::conformance_suite!(overlay_over_grpc, overlay);
strata_snapshotter::conformance_suite!(vfs_over_grpc, vfs);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

fn kind_of<T: std::fmt::Debug>(result: Result<T>) -> ErrorKind {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.kind(),
    }
}

#[test]
fn requests_are_dispatched_by_snapshotter_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (address, stop, _drivers) = serve_drivers(&["overlay", "vfs"], dir.path()).await.expect("serve");
        let overlay = RemoteSnapshotter::connect(&address, "overlay").await.expect("connect overlay");
        let vfs = RemoteSnapshotter::connect(&address, "vfs").await.expect("connect vfs");

        vfs.prepare("only-in-vfs", "", Labels::new()).await.expect("prepare on vfs");
        assert_eq!(vfs.stat("only-in-vfs").await.expect("stat on vfs").name, "only-in-vfs");
        assert_eq!(kind_of(overlay.stat("only-in-vfs").await), ErrorKind::NotFound);
        overlay.prepare("only-in-vfs", "", Labels::new()).await.expect("same key on overlay is free");
        assert_eq!(overlay.list(&[]).await.expect("list overlay").len(), 1);

        let unknown = RemoteSnapshotter::connect(&address, "nope").await.expect("connect");
        let err = unknown.stat("only-in-vfs").await.expect_err("unknown driver must fail");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().starts_with("snapshotter not loaded: nope"), "{err}");
        let _ = stop.send(());
    });
}

#[test]
fn a_single_driver_answers_to_every_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (address, stop, _drivers) = serve_drivers(&["vfs"], dir.path()).await.expect("serve");
        let as_vfs = RemoteSnapshotter::connect(&address, "vfs").await.expect("connect");
        let as_other = RemoteSnapshotter::connect(&address, "customsnapshot").await.expect("connect");
        as_other.prepare("k", "", Labels::new()).await.expect("prepare under another name");
        assert_eq!(as_vfs.stat("k").await.expect("stat").name, "k");
        let _ = stop.send(());
    });
}

#[test]
fn list_streams_more_than_one_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let (address, stop, _drivers) = serve_drivers(&["vfs"], dir.path()).await.expect("serve");
        let client = RemoteSnapshotter::connect(&address, "vfs").await.expect("connect");
        let count = server::LIST_BATCH * 2 + 7;
        for i in 0..count {
            client.view(&format!("view-{i:03}"), "", Labels::new()).await.expect("view");
        }
        let mut names: Vec<String> = client.list(&[]).await.expect("list").into_iter().map(|i| i.name).collect();
        names.sort();
        let expected: Vec<String> = (0..count).map(|i| format!("view-{i:03}")).collect();
        assert_eq!(names, expected);
        let _ = stop.send(());
    });
}
