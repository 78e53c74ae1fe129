//! `docker pull`: resolve the manifest (choosing the platform from a list or
//! index), fetch and verify the config, download the missing layers in
//! parallel while earlier ones are unpacked, then tag.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::client::{error_text, Credentials, Session};
use super::{send, short_digest, split_name, Progress, ProgressSender, RegistryError, RegistryService};
use crate::error::EngineError;
use crate::images::config::ConfigView;
use crate::images::reference::Reference;
use crate::images::LayerOpener;

pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The largest manifest or config accepted (dockerd uses 4 MiB too).
const MAX_DOCUMENT: usize = 4 << 20;

/// A content descriptor of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
}

#[derive(Debug, Deserialize)]
struct ManifestDoc {
    #[serde(rename = "schemaVersion", default)]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// An image manifest reduced to what a pull needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageManifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// What a manifest document is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    Image(ImageManifest),
    /// A manifest list or OCI index.
    List(Vec<Descriptor>),
}

/// Parses a manifest document, using the `Content-Type` when the document
/// does not name its own media type.
pub fn parse_manifest(bytes: &[u8], content_type: &str) -> Result<Manifest, RegistryError> {
    let doc: ManifestDoc =
        serde_json::from_slice(bytes).map_err(|e| RegistryError::Protocol(format!("malformed manifest: {e}")))?;
    if doc.schema_version != 2 {
        return Err(RegistryError::Protocol(format!(
            "unsupported manifest schema version {} (Docker image manifest v2, schema 1 is not supported)",
            doc.schema_version
        )));
    }
    let media = doc.media_type.clone().unwrap_or_else(|| content_type.split(';').next().unwrap_or("").trim().to_string());
    let is_list = media == MEDIA_DOCKER_LIST || media == MEDIA_OCI_INDEX || (doc.manifests.is_some() && doc.config.is_none());
    if is_list {
        return Ok(Manifest::List(doc.manifests.unwrap_or_default()));
    }
    match (doc.config, doc.layers) {
        (Some(config), Some(layers)) => {
            for d in std::iter::once(&config).chain(layers.iter()) {
                if !crate::images::config::is_sha256_digest(&d.digest) {
                    return Err(RegistryError::Protocol(format!("manifest names an unsupported digest {:?}", d.digest)));
                }
            }
            Ok(Manifest::Image(ImageManifest { config, layers }))
        }
        _ => Err(RegistryError::Protocol(format!("manifest of type {media:?} has no config or layers"))),
    }
}

/// Chooses the entry of a manifest list for `os`/`arch`.
pub fn choose_platform<'a>(entries: &'a [Descriptor], os: &str, arch: &str) -> Option<&'a Descriptor> {
    entries.iter().find(|d| d.platform.as_ref().is_some_and(|p| p.os == os && p.architecture == arch))
}

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A pull whose manifest and config are fetched; nothing is stored yet.
pub struct PreparedPull {
    session: Session,
    /// The reference as stored: `name:tag` or `name@digest`.
    reference: Reference,
    /// The digest of the manifest (or list) the reference names.
    digest: String,
    manifest: ImageManifest,
    config: Vec<u8>,
    view: ConfigView,
}

impl PreparedPull {
    /// The familiar form of the pulled reference (`busybox:latest`).
    pub fn familiar(&self) -> String {
        self.reference.familiar()
    }
}

/// A downloaded blob in the scratch directory; removed when dropped.
struct TempBlob(PathBuf);

impl Drop for TempBlob {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A layer reader that keeps its downloaded blob until it is dropped.
struct BlobReader {
    inner: Box<dyn Read + Send>,
    _blob: TempBlob,
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

/// Wraps a zstd stream in a decoder; gzip and plain tar pass through (the
/// layer applier recognises gzip itself).
fn decompress_zstd(file: std::fs::File) -> std::io::Result<Box<dyn Read + Send>> {
    let mut buf = BufReader::with_capacity(128 * 1024, file);
    let head = buf.fill_buf()?;
    if head.len() >= 4 && head[..4] == [0x28, 0xb5, 0x2f, 0xfd] {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(buf)?))
    } else {
        Ok(Box::new(buf))
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl RegistryService {
    async fn get_document(&self, session: &Session, suffix: &str, accept: &str) -> Result<(Vec<u8>, String, StatusCode), RegistryError> {
        let url = session.url(suffix);
        let accept = accept.to_string();
        let resp = session.send(Method::GET, &url, &move |b| b.header(ACCEPT, accept.clone())).await?;
        let status = resp.status();
        if !status.is_success() {
            return Ok((error_text(resp).await.into_bytes(), String::new(), status));
        }
        let ctype = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if resp.content_length().is_some_and(|l| l > MAX_DOCUMENT as u64) {
            return Err(RegistryError::Protocol(format!("{url}: document larger than {MAX_DOCUMENT} bytes")));
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| RegistryError::http(&url, e))?;
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(RegistryError::Protocol(format!("{url}: document larger than {MAX_DOCUMENT} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, ctype, status))
    }

    /// Fetches a manifest by tag or digest; a digest is verified.
    async fn fetch_manifest(&self, session: &Session, tag_or_digest: &str, shown: &str) -> Result<(Manifest, String), RegistryError> {
        let accept = [MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_LIST, MEDIA_OCI_MANIFEST, MEDIA_OCI_INDEX].join(", ");
        let (body, ctype, status) = self.get_document(session, &format!("manifests/{tag_or_digest}"), &accept).await?;
        if status == StatusCode::NOT_FOUND {
            return Err(RegistryError::ManifestUnknown { reference: shown.to_string(), detail: String::from_utf8_lossy(&body).into_owned() });
        }
        if status == StatusCode::FORBIDDEN {
            return Err(RegistryError::Denied { repo: session.repo.clone(), detail: String::from_utf8_lossy(&body).into_owned() });
        }
        if !status.is_success() {
            return Err(RegistryError::Protocol(format!("manifest for {shown}: {}", String::from_utf8_lossy(&body))));
        }
        let digest = sha256_of(&body);
        if tag_or_digest.starts_with("sha256:") && digest != tag_or_digest {
            return Err(RegistryError::DigestMismatch { what: "manifest".into(), expected: tag_or_digest.into(), actual: digest });
        }
        Ok((parse_manifest(&body, &ctype)?, digest))
    }

    /// Resolves the reference to an image manifest and fetches its config.
    /// Errors here happen before any output, so they become plain HTTP
    /// errors.
    /// From a manifest list, the `linux/<arch>` entry is pulled.
    pub async fn prepare_pull(&self, reference: Reference, creds: Credentials, arch: &str) -> Result<PreparedPull, EngineError> {
        let (domain, repo) = split_name(&reference.name);
        let session = self.session(domain, repo, creds, "pull");
        let tag_or_digest = reference.digest.clone().or_else(|| reference.tag.clone()).unwrap_or_else(|| "latest".into());
        let shown = reference.familiar();
        let (manifest, digest) = self.fetch_manifest(&session, &tag_or_digest, &shown).await?;
        let manifest = match manifest {
            Manifest::Image(m) => m,
            Manifest::List(entries) => {
                let chosen = choose_platform(&entries, "linux", arch).ok_or_else(|| {
                    EngineError::not_found(format!("no matching manifest for linux/{arch} in the manifest list entries"))
                })?;
                match self.fetch_manifest(&session, &chosen.digest, &shown).await?.0 {
                    Manifest::Image(m) => m,
                    Manifest::List(_) => return Err(RegistryError::Protocol("a manifest list names another list".into()).into()),
                }
            }
        };
        if manifest.config.size > MAX_DOCUMENT as u64 {
            return Err(RegistryError::Protocol(format!("image config of {} bytes is too large", manifest.config.size)).into());
        }
        let (config, _, status) = self.get_document(&session, &format!("blobs/{}", manifest.config.digest), "*/*").await?;
        if !status.is_success() {
            return Err(RegistryError::Protocol(format!("image config {}: {}", manifest.config.digest, String::from_utf8_lossy(&config))).into());
        }
        let actual = sha256_of(&config);
        if actual != manifest.config.digest {
            return Err(RegistryError::DigestMismatch { what: "image config".into(), expected: manifest.config.digest.clone(), actual }.into());
        }
        let view = ConfigView::parse(&config).map_err(|e| EngineError::internal(format!("image config: {e}")))?;
        if view.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(EngineError::internal(format!(
                "image config lists {} layers, its manifest {}",
                view.rootfs.diff_ids.len(),
                manifest.layers.len()
            )));
        }
        let mut stored = reference.clone();
        if stored.digest.is_some() {
            stored.tag = None;
        } else if stored.tag.is_none() {
            stored.tag = Some("latest".into());
        }
        Ok(PreparedPull { session, reference: stored, digest, manifest, config, view })
    }

    /// Downloads, verifies and stores the image, reporting progress; returns
    /// the image ID.
    pub async fn run_pull(self: &Arc<Self>, prepared: PreparedPull, tx: &ProgressSender) -> Result<String, EngineError> {
        let PreparedPull { session, reference, digest, manifest, config, view } = prepared;
        let session = Arc::new(session);
        let tag_or_digest = reference.tag.clone().or_else(|| reference.digest.clone()).unwrap_or_default();
        send(tx, Progress::Status { id: Some(tag_or_digest), status: format!("Pulling from {}", session.repo), detail: super::Detail::None });

        let chains = crate::images::layer::chain_ids(&view.rootfs.diff_ids);
        let mut present = Vec::with_capacity(chains.len());
        for (chain, layer) in chains.iter().zip(&manifest.layers) {
            let here = self.images.has_layer(chain).await;
            let id = short_digest(&layer.digest);
            send(tx, Progress::layer(&id, if here { "Already exists" } else { "Pulling fs layer" }));
            present.push(here);
        }
        let semaphore = Arc::new(tokio::sync::Semaphore::new(super::MAX_CONCURRENT_DOWNLOADS));
        let scratch = self.images.dir.join("tmp");
        let mut tasks = Vec::new();
        let mut openers: Vec<Option<LayerOpener>> = Vec::new();
        for (layer, here) in manifest.layers.iter().zip(&present) {
            if *here {
                openers.push(None);
                continue;
            }
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<TempBlob, String>>();
            let (me, session, layer1, tx2, sem) = (self.clone(), session.clone(), layer.clone(), tx.clone(), semaphore.clone());
            let path = scratch.join(format!("pull-{}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed), short_digest(&layer.digest)));
            tasks.push(tokio::spawn(async move {
                let id = short_digest(&layer1.digest);
                let permit = match sem.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => {
                        send(&tx2, Progress::layer(&id, "Waiting"));
                        match sem.acquire_owned().await {
                            Ok(p) => p,
                            Err(_) => return,
                        }
                    }
                };
                let result = me.download(&session, &layer1, path, &tx2).await.map_err(|e| e.to_string());
                drop(permit);
                // A closed receiver (the pull failed) drops the blob here.
                let _ = done_tx.send(result);
            }));
            let (tx3, layer2) = (tx.clone(), layer.clone());
            openers.push(Some(Box::new(move || -> std::io::Result<Box<dyn Read + Send>> {
                let blob = done_rx
                    .blocking_recv()
                    .map_err(|_| std::io::Error::other("the layer download was abandoned"))?
                    .map_err(std::io::Error::other)?;
                let id = short_digest(&layer2.digest);
                send(&tx3, Progress::counts(&id, "Extracting", layer2.size, layer2.size));
                let file = std::fs::File::open(&blob.0)?;
                Ok(Box::new(BlobReader { inner: decompress_zstd(file)?, _blob: blob }) as Box<dyn Read + Send>)
            })));
        }

        let ids: Vec<String> = manifest.layers.iter().map(|l| short_digest(&l.digest)).collect();
        let downloaded: Vec<bool> = present.iter().map(|p| !p).collect();
        let tx4 = tx.clone();
        let on_layer = move |i: usize| {
            if downloaded.get(i).copied().unwrap_or(false) {
                send(&tx4, Progress::layer(&ids[i], "Pull complete"));
            }
        };
        let stored = self.images.store_pulled(config, openers, Some(&reference), &on_layer).await;
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        let (id, changed) = stored?;

        let mut digests: Vec<String> = manifest.layers.iter().map(|l| l.digest.clone()).collect();
        digests.push(manifest.config.digest.clone());
        self.record_sources(&session.endpoint.domain, &session.repo, &digests);
        send(tx, Progress::line(format!("Digest: {digest}")));
        let familiar = reference.familiar();
        send(
            tx,
            Progress::line(if changed {
                format!("Status: Downloaded newer image for {familiar}")
            } else {
                format!("Status: Image is up to date for {familiar}")
            }),
        );
        let mut attrs = std::collections::BTreeMap::new();
        attrs.insert("name".to_string(), familiar.clone());
        self.events.emit("image", "pull", &familiar, attrs);
        Ok(id)
    }

    /// Downloads one blob to `path`, checking its size and digest.
    async fn download(&self, session: &Session, layer: &super::pull::Descriptor, path: PathBuf, tx: &ProgressSender) -> Result<TempBlob, RegistryError> {
        let id = short_digest(&layer.digest);
        let url = session.url(&format!("blobs/{}", layer.digest));
        let resp = session.send(Method::GET, &url, &|b| b).await?;
        if !resp.status().is_success() {
            return Err(RegistryError::Protocol(format!("blob {}: {}", layer.digest, error_text(resp).await)));
        }
        let total = if layer.size > 0 { layer.size } else { resp.content_length().unwrap_or(0) };
        let blob = TempBlob(path);
        let mut file = tokio::fs::File::create(&blob.0).await.map_err(|e| RegistryError::io(format!("create {}", blob.0.display()), e))?;
        let mut hasher = Sha256::new();
        let mut current = 0u64;
        let mut last = Instant::now();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| RegistryError::http(&url, e))?;
            hasher.update(&chunk);
            current += chunk.len() as u64;
            if layer.size > 0 && current > layer.size {
                return Err(RegistryError::Protocol(format!("blob {} is larger than the {} bytes its manifest says", layer.digest, layer.size)));
            }
            file.write_all(&chunk).await.map_err(|e| RegistryError::io(format!("write {}", blob.0.display()), e))?;
            if last.elapsed() >= Duration::from_millis(100) {
                send(tx, Progress::counts(&id, "Downloading", current, total));
                last = Instant::now();
            }
        }
        send(tx, Progress::counts(&id, "Downloading", current, total));
        file.flush().await.map_err(|e| RegistryError::io(format!("write {}", blob.0.display()), e))?;
        drop(file);
        send(tx, Progress::layer(&id, "Verifying Checksum"));
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != layer.digest {
            return Err(RegistryError::DigestMismatch { what: format!("filesystem layer {}", layer.digest), expected: layer.digest.clone(), actual });
        }
        if layer.size > 0 && current != layer.size {
            return Err(RegistryError::Protocol(format!("blob {} has {current} bytes, its manifest says {}", layer.digest, layer.size)));
        }
        send(tx, Progress::layer(&id, "Download complete"));
        Ok(blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn manifests_of_every_kind_parse() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_DOCKER_MANIFEST}","config":{{"mediaType":"x","size":3,"digest":"{D}"}},"layers":[{{"mediaType":"y","size":5,"digest":"{D}"}}]}}"#
        );
        match parse_manifest(m.as_bytes(), "").expect("schema 2") {
            Manifest::Image(i) => assert_eq!((i.config.size, i.layers.len()), (3, 1)),
            other => panic!("{other:?}"),
        }
        // OCI manifests may leave the media type to the Content-Type.
        let oci = format!(r#"{{"schemaVersion":2,"config":{{"size":3,"digest":"{D}"}},"layers":[]}}"#);
        assert!(matches!(parse_manifest(oci.as_bytes(), MEDIA_OCI_MANIFEST).expect("oci"), Manifest::Image(_)));
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{D}","size":1,"platform":{{"os":"linux","architecture":"arm64"}}}},{{"digest":"{D}","size":2,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        match parse_manifest(index.as_bytes(), MEDIA_OCI_INDEX).expect("index") {
            Manifest::List(e) => {
                assert_eq!(choose_platform(&e, "linux", "amd64").map(|d| d.size), Some(2));
                assert!(choose_platform(&e, "linux", "s390x").is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_manifests_are_refused() {
        assert!(parse_manifest(br#"{"schemaVersion":1,"fsLayers":[]}"#, "").is_err());
        assert!(parse_manifest(b"not json", "").is_err());
        assert!(parse_manifest(br#"{"schemaVersion":2}"#, MEDIA_DOCKER_MANIFEST).is_err());
        let bad = r#"{"schemaVersion":2,"config":{"size":3,"digest":"md5:abc"},"layers":[]}"#;
        assert!(parse_manifest(bad.as_bytes(), MEDIA_OCI_MANIFEST).is_err());
    }

    #[test]
    fn zstd_layers_are_decompressed_and_others_pass_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let z = dir.path().join("z");
        std::fs::write(&z, zstd::encode_all(&b"tar bytes"[..], 3).expect("zstd")).expect("write");
        let mut out = Vec::new();
        decompress_zstd(std::fs::File::open(&z).expect("open")).expect("decoder").read_to_end(&mut out).expect("read");
        assert_eq!(out, b"tar bytes");
        let p = dir.path().join("p");
        std::fs::write(&p, b"plain").expect("write");
        let mut out = Vec::new();
        decompress_zstd(std::fs::File::open(&p).expect("open")).expect("reader").read_to_end(&mut out).expect("read");
        assert_eq!(out, b"plain");
    }
}
