//! The `Snapshots` service over a table of drivers.
//!
//! Each request names its driver in the `snapshotter` field, the way
//! containerd's proxy plugins do; with exactly one driver loaded every name
//! maps to it. Each RPC runs in a `tracing` span with its method, driver, key,
//! resulting code and duration; the outcome is logged at `debug` level
//! (internal errors at `error`).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use strata_proto::snapshots as pb;
use strata_proto::snapshots::snapshots_server::{Snapshots, SnapshotsServer};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use super::convert::{
    info_from_proto, info_to_proto, labels_from_proto, mounts_to_proto, status_from_error,
    usage_to_proto,
};
use super::{MAX_MESSAGE_BYTES, NAMESPACE_HEADER};
use crate::error::{Error, Result};
use crate::snapshotter::Snapshotter;

/// How many snapshots one `List` response message carries.
pub const LIST_BATCH: usize = 100;

/// Serves the `Snapshots` service for `drivers` on `listener` until
/// `shutdown` completes, then finishes the calls in flight and returns.
///
/// The drivers are not closed here: the caller owns them and closes them
/// after `serve` returns. An empty table is `InvalidArgument`.
pub async fn serve(
    drivers: BTreeMap<String, Arc<dyn Snapshotter>>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let service = SnapshotsService::new(drivers)?;
    let server = SnapshotsServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .add_service(server)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(|err| Error::internal(format!("serving snapshots: {err}")))
}

/// The `Snapshots` service implementation.
pub struct SnapshotsService {
    drivers: BTreeMap<String, Arc<dyn Snapshotter>>,
}

impl SnapshotsService {
    /// A service over `drivers`; at least one is required.
    pub fn new(drivers: BTreeMap<String, Arc<dyn Snapshotter>>) -> Result<Self> {
        if drivers.is_empty() {
            return Err(Error::invalid_argument("no snapshotter driver to serve"));
        }
        Ok(Self { drivers })
    }

    /// The driver a request names.
    fn driver(&self, name: &str) -> Result<&Arc<dyn Snapshotter>> {
        if self.drivers.len() == 1 {
            if let Some(only) = self.drivers.values().next() {
                return Ok(only);
            }
        }
        self.drivers.get(name).ok_or_else(|| {
            let loaded: Vec<&str> = self.drivers.keys().map(String::as_str).collect();
            Error::invalid_argument(format!(
                "snapshotter not loaded: {name} (loaded: {})",
                loaded.join(", ")
            ))
        })
    }
}

/// Fails with `InvalidArgument` when a required identifier is empty.
fn require(what: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid_argument(format!("{what} must not be empty")));
    }
    Ok(())
}

/// Runs one RPC inside its span, maps its error to a status and logs the
/// outcome with the code and duration.
async fn rpc<T, F>(method: &'static str, request_meta: &tonic::metadata::MetadataMap, snapshotter: &str, key: &str, call: F) -> Result<Response<T>, Status>
where
    F: Future<Output = Result<T>>,
{
    let namespace = request_meta.get(NAMESPACE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    let span = tracing::debug_span!(
        "rpc",
        method,
        snapshotter,
        key,
        namespace,
        code = tracing::field::Empty,
        duration_us = tracing::field::Empty,
    );
    let started = Instant::now();
    let result = call.instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let code = match &result {
        Ok(_) => Code::Ok,
        Err(err) => status_from_error(err).code(),
    };
    span.record("code", tracing::field::debug(code));
    span.record("duration_us", elapsed.as_micros() as u64);
    let _entered = span.enter();
    match &result {
        Ok(_) => tracing::debug!("ok"),
        Err(err) if code == Code::Internal => tracing::error!(error = %err, "failed"),
        Err(err) => tracing::debug!(error = %err, "failed"),
    }
    result.map(Response::new).map_err(|err| status_from_error(&err))
}

type ListStream = Pin<Box<dyn Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        request: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        rpc("Prepare", &meta, &req.snapshotter, &req.key, async {
            let driver = self.driver(&req.snapshotter)?;
            require("key", &req.key)?;
            let mounts = driver.prepare(&req.key, &req.parent, labels_from_proto(req.labels.clone())).await?;
            Ok(pb::PrepareSnapshotResponse { mounts: mounts_to_proto(&mounts) })
        })
        .await
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        rpc("View", &meta, &req.snapshotter, &req.key, async {
            let driver = self.driver(&req.snapshotter)?;
            require("key", &req.key)?;
            let mounts = driver.view(&req.key, &req.parent, labels_from_proto(req.labels.clone())).await?;
            Ok(pb::ViewSnapshotResponse { mounts: mounts_to_proto(&mounts) })
        })
        .await
    }

    async fn mounts(&self, request: Request<pb::MountsRequest>) -> Result<Response<pb::MountsResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        rpc("Mounts", &meta, &req.snapshotter, &req.key, async {
            let driver = self.driver(&req.snapshotter)?;
            require("key", &req.key)?;
            let mounts = driver.mounts(&req.key).await?;
            Ok(pb::MountsResponse { mounts: mounts_to_proto(&mounts) })
        })
        .await
    }

    async fn commit(&self, request: Request<pb::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let (meta, _, req) = request.into_parts();
        rpc("Commit", &meta, &req.snapshotter, &req.key, async {
            let driver = self.driver(&req.snapshotter)?;
            require("key", &req.key)?;
            require("name", &req.name)?;
            if !req.parent.is_empty() {
                // containerd >= 2.2 sends a parent only to snapshotters that
                // advertise "rebase"; we do not, so a parent is accepted only
                // when it changes nothing.
                let active = driver.stat(&req.key).await?;
                if active.parent != req.parent {
                    return Err(Error::invalid_argument(format!(
                        "commit of {:?} with parent {:?}: the snapshot's parent is {:?} and rebasing is not supported",
                        req.key, req.parent, active.parent
                    )));
                }
            }
            driver.commit(&req.name, &req.key, labels_from_proto(req.labels.clone())).await
        })
        .await
    }

    async fn remove(&self, request: Request<pb::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let (meta, _, req) = request.into_parts();
        rpc("Remove", &meta, &req.snapshotter, &req.key, async {
            let driver = self.driver(&req.snapshotter)?;
            require("key", &req.key)?;
            driver.remove(&req.key).await
        })
        .await
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        rpc("Stat", &meta, &req.snapshotter, &req.key, async {
            let driver = self.driver(&req.snapshotter)?;
            require("key", &req.key)?;
            let info = driver.stat(&req.key).await?;
            Ok(pb::StatSnapshotResponse { info: Some(info_to_proto(&info)) })
        })
        .await
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        let key = req.info.as_ref().map(|i| i.name.clone()).unwrap_or_default();
        rpc("Update", &meta, &req.snapshotter, &key, async {
            let driver = self.driver(&req.snapshotter)?;
            let info = req
                .info
                .clone()
                .ok_or_else(|| Error::invalid_argument("update request carries no info"))?;
            require("name", &info.name)?;
            let paths = req.update_mask.as_ref().map(|m| m.paths.clone()).unwrap_or_default();
            let updated = driver.update(info_from_proto(info), &paths).await?;
            Ok(pb::UpdateSnapshotResponse { info: Some(info_to_proto(&updated)) })
        })
        .await
    }

    type ListStream = ListStream;

    async fn list(&self, request: Request<pb::ListSnapshotsRequest>) -> Result<Response<Self::ListStream>, Status> {
        let (meta, _, req) = request.into_parts();
        rpc("List", &meta, &req.snapshotter, "", async {
            let driver = self.driver(&req.snapshotter)?;
            let infos = driver.list(&req.filters).await?;
            let batches: Vec<Result<pb::ListSnapshotsResponse, Status>> = infos
                .chunks(LIST_BATCH)
                .map(|chunk| Ok(pb::ListSnapshotsResponse { info: chunk.iter().map(info_to_proto).collect() }))
                .collect();
            Ok(Box::pin(tokio_stream::iter(batches)) as ListStream)
        })
        .await
    }

    async fn usage(&self, request: Request<pb::UsageRequest>) -> Result<Response<pb::UsageResponse>, Status> {
        let (meta, _, req) = request.into_parts();
        rpc("Usage", &meta, &req.snapshotter, &req.key, async {
            let driver = self.driver(&req.snapshotter)?;
            require("key", &req.key)?;
            Ok(usage_to_proto(driver.usage(&req.key).await?))
        })
        .await
    }

    async fn cleanup(&self, request: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        let (meta, _, req) = request.into_parts();
        rpc("Cleanup", &meta, &req.snapshotter, "", async {
            let driver = self.driver(&req.snapshotter)?;
            driver.cleanup().await
        })
        .await
    }
}
