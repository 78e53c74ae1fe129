//! The conformance suite on the blockcow driver serving its devices through
//! the kernel's page cache (`blockcow.pagecache=true`; root, FUSE, loop
//! devices and mkfs.ext4 needed; a missing one fails the case with what to
//! install).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use strata_drivers::blockcow::BlockCowSnapshotter;
use strata_snapshotter::{Result, Snapshotter};

fn blockcow_pagecache(root: PathBuf) -> BoxFuture<'static, Result<Arc<dyn Snapshotter>>> {
    Box::pin(async move {
        let options = BTreeMap::from([
            ("blockcow.basesize".to_string(), "64M".to_string()),
            ("blockcow.datasize".to_string(), "4G".to_string()),
            ("blockcow.metadatasize".to_string(), "64M".to_string()),
            ("blockcow.pagecache".to_string(), "true".to_string()),
        ]);
        let sn = tokio::task::spawn_blocking(move || BlockCowSnapshotter::open(&root, &options))
            .await
            .map_err(|e| strata_snapshotter::Error::internal(e.to_string()))??;
        Ok(Arc::new(sn) as Arc<dyn Snapshotter>)
    })
}

strata_snapshotter::conformance_suite!(blockcow_pagecache_suite, super::blockcow_pagecache);
