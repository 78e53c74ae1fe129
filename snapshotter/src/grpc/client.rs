//! [`RemoteSnapshotter`]: the [`Snapshotter`] trait spoken over gRPC to a
//! daemon on a unix socket.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use strata_proto::snapshots as pb;
use strata_proto::snapshots::snapshots_client::SnapshotsClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::convert::{
    error_chain, error_from_status, info_from_proto, info_to_proto, labels_to_proto, mounts_from_proto,
    usage_from_proto,
};
use super::MAX_MESSAGE_BYTES;
use crate::error::{Error, Result};
use crate::snapshotter::Snapshotter;
use crate::types::{Capabilities, Info, Labels, Mount, Usage};

/// How long connecting to the socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A snapshotter served by a remote daemon. Every call names `snapshotter`
/// as the driver the daemon should use.
#[derive(Debug, Clone)]
pub struct RemoteSnapshotter {
    client: SnapshotsClient<Channel>,
    snapshotter: String,
    socket: PathBuf,
    capabilities: Capabilities,
}

/// The socket path of an address: `unix:///path.sock`, `unix:/path.sock` or a
/// bare path. Other schemes are `InvalidArgument`.
pub fn socket_path(address: &str) -> Result<PathBuf> {
    let path = if let Some(rest) = address.strip_prefix("unix://") {
        rest
    } else if let Some(rest) = address.strip_prefix("unix:") {
        rest
    } else if address.contains("://") {
        return Err(Error::invalid_argument(format!(
            "unsupported address {address:?}: expected unix:///path.sock or a socket path"
        )));
    } else {
        address
    };
    if path.is_empty() {
        return Err(Error::invalid_argument(format!("address {address:?} names no socket path")));
    }
    Ok(PathBuf::from(path))
}

impl RemoteSnapshotter {
    /// Connects to the daemon at `address` (`unix:///path.sock` or a bare
    /// path) and uses its driver `snapshotter`. Fails with `Unavailable` when
    /// nothing answers on the socket.
    ///
    /// The driver's capabilities are not on the wire; they default to none
    /// claimed (see [`Self::with_capabilities`]).
    pub async fn connect(address: &str, snapshotter: &str) -> Result<RemoteSnapshotter> {
        let socket = socket_path(address)?;
        let channel = connect_channel(address).await?;
        let client = SnapshotsClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(RemoteSnapshotter {
            client,
            snapshotter: snapshotter.to_string(),
            socket,
            capabilities: Capabilities { rename_lower_dir: false, block_device: false, readonly_views: false },
        })
    }

    /// Declares what the remote driver can do (the wire does not say).
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// The driver name sent with every request.
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    fn client(&self) -> SnapshotsClient<Channel> {
        self.client.clone()
    }
}

/// Opens a gRPC channel to the unix socket of `address` (`unix:///path.sock`
/// or a bare path); `Unavailable` when nothing answers.
pub async fn connect_channel(address: &str) -> Result<Channel> {
    let socket = socket_path(address)?;
    let connector_path = socket.clone();
    // The URI is required by the HTTP/2 layer but never dialled: the
    // connector below always opens the unix socket.
    let endpoint = Endpoint::from_static("http://strata-snapshotd.invalid").connect_timeout(CONNECT_TIMEOUT);
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = connector_path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|err| Error::unavailable(format!("connect to {}: {}", socket.display(), error_chain(&err))))
}

#[async_trait]
impl Snapshotter for RemoteSnapshotter {
    async fn stat(&self, key: &str) -> Result<Info> {
        let request = pb::StatSnapshotRequest { snapshotter: self.snapshotter.clone(), key: key.to_string() };
        let response = self.client().stat(request).await.map_err(|s| error_from_status(&s))?;
        let info = response.into_inner().info.ok_or_else(|| Error::internal("stat response carries no info"))?;
        Ok(info_from_proto(info))
    }

    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let request = pb::UpdateSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            info: Some(info_to_proto(&info)),
            update_mask: if fieldpaths.is_empty() {
                None
            } else {
                Some(prost_types::FieldMask { paths: fieldpaths.to_vec() })
            },
        };
        let response = self.client().update(request).await.map_err(|s| error_from_status(&s))?;
        let info = response.into_inner().info.ok_or_else(|| Error::internal("update response carries no info"))?;
        Ok(info_from_proto(info))
    }

    async fn usage(&self, key: &str) -> Result<Usage> {
        let request = pb::UsageRequest { snapshotter: self.snapshotter.clone(), key: key.to_string() };
        let response = self.client().usage(request).await.map_err(|s| error_from_status(&s))?;
        Ok(usage_from_proto(response.into_inner()))
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let request = pb::MountsRequest { snapshotter: self.snapshotter.clone(), key: key.to_string() };
        let response = self.client().mounts(request).await.map_err(|s| error_from_status(&s))?;
        Ok(mounts_from_proto(response.into_inner().mounts))
    }

    async fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let request = pb::PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
            parent: parent.to_string(),
            labels: labels_to_proto(&labels),
        };
        let response = self.client().prepare(request).await.map_err(|s| error_from_status(&s))?;
        Ok(mounts_from_proto(response.into_inner().mounts))
    }

    async fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let request = pb::ViewSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
            parent: parent.to_string(),
            labels: labels_to_proto(&labels),
        };
        let response = self.client().view(request).await.map_err(|s| error_from_status(&s))?;
        Ok(mounts_from_proto(response.into_inner().mounts))
    }

    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        let request = pb::CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: name.to_string(),
            key: key.to_string(),
            labels: labels_to_proto(&labels),
            parent: String::new(),
        };
        self.client().commit(request).await.map_err(|s| error_from_status(&s))?;
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<()> {
        let request = pb::RemoveSnapshotRequest { snapshotter: self.snapshotter.clone(), key: key.to_string() };
        self.client().remove(request).await.map_err(|s| error_from_status(&s))?;
        Ok(())
    }

    async fn list(&self, filters: &[String]) -> Result<Vec<Info>> {
        let request = pb::ListSnapshotsRequest { snapshotter: self.snapshotter.clone(), filters: filters.to_vec() };
        let mut stream = self.client().list(request).await.map_err(|s| error_from_status(&s))?.into_inner();
        let mut infos = Vec::new();
        while let Some(batch) = stream.message().await.map_err(|s| error_from_status(&s))? {
            infos.extend(batch.info.into_iter().map(info_from_proto));
        }
        Ok(infos)
    }

    async fn cleanup(&self) -> Result<()> {
        let request = pb::CleanupRequest { snapshotter: self.snapshotter.clone() };
        self.client().cleanup(request).await.map_err(|s| error_from_status(&s))?;
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_to_socket_paths() {
        assert_eq!(socket_path("unix:///run/strata/s.sock").ok(), Some(PathBuf::from("/run/strata/s.sock")));
        assert_eq!(socket_path("unix:/tmp/a.sock").ok(), Some(PathBuf::from("/tmp/a.sock")));
        assert_eq!(socket_path("/tmp/b.sock").ok(), Some(PathBuf::from("/tmp/b.sock")));
        assert_eq!(socket_path("rel.sock").ok(), Some(PathBuf::from("rel.sock")));
        for bad in ["tcp://127.0.0.1:1", "unix://", ""] {
            let err = socket_path(bad).err().map(|e| e.kind());
            assert_eq!(err, Some(crate::ErrorKind::InvalidArgument), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn connecting_to_a_missing_socket_is_unavailable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nothing.sock");
        let err = RemoteSnapshotter::connect(&format!("unix://{}", missing.display()), "overlay")
            .await
            .expect_err("connect must fail");
        assert_eq!(err.kind(), crate::ErrorKind::Unavailable);
        assert!(err.message().contains("nothing.sock"), "{err}");
    }
}
