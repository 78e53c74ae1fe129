//! The registry service: pull and push over the Docker Registry HTTP API v2.
//!
//! # Layout
//! - [`client`]: endpoints (HTTPS, or plain HTTP for loopback and
//!   `--insecure-registry`), `X-Registry-Auth` credentials, and the
//!   per-repository session that answers Bearer/Basic challenges.
//! - [`pull`]: manifests (Docker schema 2, OCI, manifest lists and indexes),
//!   verified blob downloads in parallel, layers unpacked through the image
//!   service as they arrive.
//! - [`push`]: blob uploads (skipping blobs the registry has, mounting blobs
//!   from another repository of the same registry) and the manifest.
//!
//! Both report [`Progress`] messages; only [`crate::api`] turns them into
//! Docker's JSON progress stream.
//!
//! Architecture invariant: a pull stores nothing until every layer is
//! unpacked and verified; a failure removes the layers it made and the
//! downloaded blobs, and tags nothing.

pub mod client;
pub mod pull;
pub mod push;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::EngineError;
use crate::events::EventBus;
use crate::images::ImageService;

pub use client::Credentials;

/// The registry a reference without one belongs to.
pub const DEFAULT_DOMAIN: &str = crate::images::reference::DEFAULT_DOMAIN;

/// How many layers download at once.
pub const MAX_CONCURRENT_DOWNLOADS: usize = 3;

/// A registry failure.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry refused the credentials, or the repository does not
    /// exist.
    #[error("access to {repo} denied, repository does not exist or may require 'docker login': {detail}")]
    Denied { repo: String, detail: String },
    /// The tag or digest is not in the repository.
    #[error("manifest for {reference} not found: {detail}")]
    ManifestUnknown { reference: String, detail: String },
    /// The registry could not be reached or the connection broke.
    #[error("{url}: {detail}")]
    Http { url: String, detail: String },
    /// The registry answered something this engine cannot use.
    #[error("{0}")]
    Protocol(String),
    /// Content did not match its digest.
    #[error("{what} verification failed: expected {expected}, got {actual}")]
    DigestMismatch { what: String, expected: String, actual: String },
    /// `X-Registry-Auth` could not be decoded.
    #[error("invalid X-Registry-Auth header: {0}")]
    BadAuth(String),
    /// A local file could not be written or read.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

impl RegistryError {
    fn http(url: &str, e: reqwest::Error) -> Self {
        // reqwest's Display omits the cause (connection refused, TLS, ...).
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        RegistryError::Http { url: url.to_string(), detail }
    }
    fn io(context: impl std::fmt::Display, source: std::io::Error) -> Self {
        RegistryError::Io { context: context.to_string(), source }
    }
}

impl From<RegistryError> for EngineError {
    fn from(e: RegistryError) -> Self {
        match &e {
            RegistryError::Denied { .. } | RegistryError::ManifestUnknown { .. } => EngineError::NotFound(e.to_string()),
            RegistryError::BadAuth(_) => EngineError::InvalidArgument(e.to_string()),
            RegistryError::Http { .. } => EngineError::Unavailable(e.to_string()),
            _ => EngineError::Internal(e.to_string()),
        }
    }
}

/// What a layer line of the progress stream carries besides its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detail {
    /// No `progressDetail` at all (summary lines).
    None,
    /// `"progressDetail":{}`.
    Empty,
    /// `"progressDetail":{"current":N,"total":M}`.
    Counts { current: u64, total: u64 },
}

/// One message of a pull or push.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    Status { id: Option<String>, status: String, detail: Detail },
    /// Machine-readable result (`{"Tag","Digest","Size"}` of a push).
    Aux(serde_json::Value),
    /// The operation failed after the stream started.
    Error(String),
}

impl Progress {
    fn line(status: impl Into<String>) -> Progress {
        Progress::Status { id: None, status: status.into(), detail: Detail::None }
    }
    fn layer(id: &str, status: impl Into<String>) -> Progress {
        Progress::Status { id: Some(id.to_string()), status: status.into(), detail: Detail::Empty }
    }
    fn counts(id: &str, status: &str, current: u64, total: u64) -> Progress {
        Progress::Status { id: Some(id.to_string()), status: status.to_string(), detail: Detail::Counts { current, total } }
    }
}

/// Where progress messages go; a closed receiver (the client left) does
/// not stop the operation.
pub type ProgressSender = tokio::sync::mpsc::UnboundedSender<Progress>;

fn send(tx: &ProgressSender, p: Progress) {
    let _ = tx.send(p);
}

/// The 12-hex short form of a digest, the `id` of layer lines.
pub fn short_digest(digest: &str) -> String {
    digest.split_once(':').map(|(_, h)| h).unwrap_or(digest).chars().take(12).collect()
}

/// The registry service of one engine.
pub struct RegistryService {
    http: reqwest::Client,
    insecure: Vec<String>,
    images: Arc<ImageService>,
    events: EventBus,
    /// Holds `blob-sources.json`.
    state_dir: PathBuf,
}

/// Serialises updates of `blob-sources.json` (services are made per
/// request).
static SOURCES_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl RegistryService {
    /// A service keeping its small state (which repositories hold which
    /// blobs, for cross-repository mounts) in `state_dir`.
    pub fn new(
        images: Arc<ImageService>,
        events: EventBus,
        insecure: Vec<String>,
        state_dir: &Path,
    ) -> Result<RegistryService, EngineError> {
        let http = shared_http_client()?;
        std::fs::create_dir_all(state_dir).map_err(|e| EngineError::io(format!("create {}", state_dir.display()), e))?;
        Ok(RegistryService { http, insecure, images, events, state_dir: state_dir.to_path_buf() })
    }

    fn sources_path(&self) -> PathBuf {
        self.state_dir.join("blob-sources.json")
    }

    fn read_sources(&self) -> BTreeMap<String, BTreeSet<String>> {
        std::fs::read(self.sources_path()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// Repositories (`host/repo`) known to hold the blob `digest`.
    pub fn sources_of(&self, digest: &str) -> BTreeSet<String> {
        let _g = SOURCES_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        self.read_sources().remove(digest).unwrap_or_default()
    }

    /// Remembers that `domain/repo` holds the blobs `digests`.
    pub fn record_sources(&self, domain: &str, repo: &str, digests: &[String]) {
        let _g = SOURCES_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = self.read_sources();
        for d in digests {
            all.entry(d.clone()).or_default().insert(format!("{domain}/{repo}"));
        }
        let result = serde_json::to_vec(&all)
            .map_err(|e| e.to_string())
            .and_then(|bytes| crate::images::store::write_atomic(&self.sources_path(), &bytes).map_err(|e| e.to_string()));
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot record blob sources");
        }
    }

    fn session(&self, domain: &str, repo: &str, creds: Credentials, actions: &str) -> client::Session {
        client::Session::new(self.http.clone(), client::Endpoint::new(domain, &self.insecure), repo, creds, actions)
    }
}

/// The HTTP client of every registry service: building one loads the
/// system's trust roots, which is worth doing once per process, not per
/// request; a shared client also reuses connections across pulls.
fn shared_http_client() -> Result<reqwest::Client, EngineError> {
    static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(client) = HTTP.get() {
        return Ok(client.clone());
    }
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .user_agent(concat!("stratad/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| EngineError::internal(format!("cannot build the registry HTTP client: {e}")))?;
    Ok(HTTP.get_or_init(|| client).clone())
}

/// Splits a normalised name (`127.0.0.1:5000/a/b`) into domain and path.
pub fn split_name(name: &str) -> (&str, &str) {
    name.split_once('/').unwrap_or((DEFAULT_DOMAIN, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_digests_and_names() {
        assert_eq!(short_digest("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(split_name("127.0.0.1:5000/a/b"), ("127.0.0.1:5000", "a/b"));
        assert_eq!(split_name("docker.io/library/busybox"), ("docker.io", "library/busybox"));
    }
}
