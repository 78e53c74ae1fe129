//! The conformance suite, in process, against the directory-based drivers
//! of the registry, `overlay` and `vfs`, each opened with default options on
//! the fresh root every case gets. Needs root (the cases mount).
//!
//! Run: `cargo test -p strata-drivers --test conformance`

use std::collections::BTreeMap;
use std::path::PathBuf;

use strata_snapshotter::testsuite::FactoryFuture;
use strata_snapshotter::Error;

/// Opens driver `name` from the registry on `root`, off the async threads
/// (opening does blocking I/O).
fn open(name: &'static str, root: PathBuf) -> FactoryFuture {
    Box::pin(async move {
        tokio::task::spawn_blocking(move || strata_drivers::registry::open(name, &root, &BTreeMap::new()))
            .await
            .map_err(|e| Error::internal(format!("open driver {name}: {e}")))?
    })
}

fn overlay(root: PathBuf) -> FactoryFuture {
    open("overlay", root)
}

fn vfs(root: PathBuf) -> FactoryFuture {
    open("vfs", root)
}

strata_snapshotter::conformance_suite!(overlay_driver, overlay);
strata_snapshotter::conformance_suite!(vfs_driver, vfs);
