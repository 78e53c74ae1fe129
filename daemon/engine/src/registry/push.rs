//! `docker push`: upload the layer blobs the registry lacks (mounting them
//! from another repository of the same registry when one is known to hold
//! them), the config, then a Docker schema 2 manifest per tag.
//!
//! Layers are pushed as the uncompressed tarballs the image store keeps
//! (media type `application/vnd.docker.image.rootfs.diff.tar`), so a
//! layer's blob digest is its DiffID and a push needs no recompression.

use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::client::{error_text, Credentials, Session};
use super::pull::MEDIA_DOCKER_MANIFEST;
use super::{send, short_digest, split_name, Progress, ProgressSender, RegistryError, RegistryService};
use crate::error::EngineError;
use crate::images::reference::Reference;

const MEDIA_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const MEDIA_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// The bytes of one upload request body.
const CHUNK: usize = 256 * 1024;

/// One tag to push, resolved before the stream starts.
pub struct PushItem {
    pub tag: String,
    pub config: Vec<u8>,
    /// (DiffID = blob digest, uncompressed tarball), bottom first.
    pub layers: Vec<(String, std::path::PathBuf)>,
}

/// Where a blob came from.
enum Placed {
    Existed,
    Mounted(String),
    Uploaded,
}

impl RegistryService {
    /// Resolves what `POST /images/{name}/push?tag=` pushes: one tag, or
    /// every tag of the repository when `tag` is empty.
    pub fn plan_push(&self, name: &str, tag: Option<&str>) -> Result<(Reference, Vec<PushItem>), EngineError> {
        let mut repo = Reference::parse(name)?;
        if repo.digest.is_some() {
            return Err(EngineError::invalid(format!("cannot push a digest reference: {name}")));
        }
        let tags: Vec<String> = match tag.filter(|t| !t.is_empty()).map(str::to_owned).or_else(|| repo.tag.clone()) {
            Some(t) => vec![t],
            None => {
                let familiar = repo.familiar_name();
                let mut all: Vec<String> = self
                    .images
                    .list(&Default::default())?
                    .into_iter()
                    .flat_map(|s| s.repo_tags)
                    .filter_map(|t| t.rsplit_once(':').filter(|(n, _)| *n == familiar).map(|(_, t)| t.to_string()))
                    .collect();
                all.sort();
                all.dedup();
                if all.is_empty() {
                    return Err(EngineError::not_found(format!("An image does not exist locally with the tag: {familiar}")));
                }
                all
            }
        };
        repo.tag = None;
        let mut items = Vec::new();
        for t in tags {
            let full = format!("{}:{t}", repo.name);
            let plan = self.images.save_plan(std::slice::from_ref(&full)).map_err(|e| match e {
                EngineError::NotFound(_) => EngineError::not_found(format!("An image does not exist locally with the tag: {}:{t}", repo.familiar_name())),
                other => other,
            })?;
            let img = plan.into_iter().next().ok_or_else(|| EngineError::internal("empty push plan"))?;
            items.push(PushItem { tag: t, config: img.config, layers: img.layers });
        }
        Ok((repo, items))
    }

    /// Pushes the planned tags, reporting progress.
    pub async fn run_push(&self, repo: &Reference, items: Vec<PushItem>, creds: Credentials, tx: &ProgressSender) -> Result<(), EngineError> {
        let (domain, path) = split_name(&repo.name);
        let mut session = self.session(domain, path, creds, "pull,push");
        send(tx, Progress::line(format!("The push refers to repository [{}]", repo.name)));
        for item in items {
            // Pull access to the repositories blobs may be mounted from.
            for (diff_id, _) in &item.layers {
                if let Some(from) = self.mount_source(domain, path, diff_id) {
                    session.add_scope(format!("repository:{from}:pull")).await;
                }
            }
            session.ensure_authorized().await?;
            for (diff_id, _) in item.layers.iter().rev() {
                send(tx, Progress::layer(&short_digest(diff_id), "Preparing"));
            }
            let mut sizes = Vec::new();
            for (diff_id, file) in item.layers.iter().rev() {
                let id = short_digest(diff_id);
                let size = std::fs::metadata(file).map_err(|e| EngineError::io(format!("stat {}", file.display()), e))?.len();
                sizes.push(size);
                match self.put_blob(&session, diff_id, BlobSource::File(file), size, Some((&id, tx))).await? {
                    Placed::Existed => send(tx, Progress::layer(&id, "Layer already exists")),
                    Placed::Mounted(from) => send(tx, Progress::layer(&id, format!("Mounted from {from}"))),
                    Placed::Uploaded => send(tx, Progress::layer(&id, "Pushed")),
                }
            }
            sizes.reverse();
            let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(&item.config)));
            self.put_blob(&session, &config_digest, BlobSource::Bytes(&item.config), item.config.len() as u64, None).await?;

            let layers: Vec<serde_json::Value> = item
                .layers
                .iter()
                .zip(&sizes)
                .map(|((d, _), s)| json!({"mediaType": MEDIA_LAYER_TAR, "size": s, "digest": d}))
                .collect();
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_DOCKER_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, "size": item.config.len(), "digest": config_digest},
                "layers": layers,
            });
            let body = serde_json::to_vec_pretty(&manifest).map_err(|e| EngineError::internal(e.to_string()))?;
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
            let url = session.url(&format!("manifests/{}", item.tag));
            let b2 = body.clone();
            let resp = session
                .send(Method::PUT, &url, &move |b| b.header(CONTENT_TYPE, MEDIA_DOCKER_MANIFEST).body(b2.clone()))
                .await?;
            if !resp.status().is_success() {
                return Err(RegistryError::Protocol(format!("manifest upload refused: {}", error_text(resp).await)).into());
            }
            let mut digests: Vec<String> = item.layers.iter().map(|(d, _)| d.clone()).collect();
            digests.push(config_digest);
            self.record_sources(domain, path, &digests);
            send(tx, Progress::line(format!("{}: digest: {digest} size: {}", item.tag, body.len())));
            send(tx, Progress::Aux(json!({"Tag": item.tag, "Digest": digest, "Size": body.len()})));
            let shown = Reference { name: repo.name.clone(), tag: Some(item.tag.clone()), digest: None }.familiar();
            let mut attrs = std::collections::BTreeMap::new();
            attrs.insert("name".to_string(), shown.clone());
            self.events.emit("image", "push", &shown, attrs);
        }
        Ok(())
    }

    /// Another repository of the same registry known to hold `digest`.
    fn mount_source(&self, domain: &str, repo: &str, digest: &str) -> Option<String> {
        let own = format!("{domain}/{repo}");
        self.sources_of(digest)
            .into_iter()
            .find(|s| *s != own && s.starts_with(&format!("{domain}/")))
            .map(|s| s[domain.len() + 1..].to_string())
    }

    async fn put_blob(
        &self,
        session: &Session,
        digest: &str,
        source: BlobSource<'_>,
        size: u64,
        progress: Option<(&str, &ProgressSender)>,
    ) -> Result<Placed, EngineError> {
        let url = session.url(&format!("blobs/{digest}"));
        let head = session.send(Method::HEAD, &url, &|b| b).await?;
        if head.status().is_success() {
            return Ok(Placed::Existed);
        }
        let (domain, repo) = (session.endpoint.domain.clone(), session.repo.clone());
        let mount = self.mount_source(&domain, &repo, digest);
        let start = match &mount {
            Some(from) => session.url(&format!("blobs/uploads/?mount={digest}&from={from}")),
            None => session.url("blobs/uploads/"),
        };
        let resp = session.send(Method::POST, &start, &|b| b.header(CONTENT_LENGTH, "0")).await?;
        if resp.status() == StatusCode::CREATED {
            if let Some(from) = mount {
                return Ok(Placed::Mounted(from));
            }
        }
        if resp.status() != StatusCode::ACCEPTED {
            return Err(RegistryError::Protocol(format!("blob upload of {digest} refused: {}", error_text(resp).await)).into());
        }
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Protocol("blob upload reply without Location".into()))?;
        let mut put = session.absolute(location);
        put.push(if put.contains('?') { '&' } else { '?' });
        put.push_str(&format!("digest={digest}"));

        let body = match source {
            BlobSource::Bytes(b) => reqwest::Body::from(b.to_vec()),
            BlobSource::File(path) => {
                let file = tokio::fs::File::open(path).await.map_err(|e| EngineError::io(format!("open {}", path.display()), e))?;
                let progress = progress.map(|(id, tx)| (id.to_string(), tx.clone()));
                let state = (file, 0u64, Instant::now(), progress);
                let stream = futures::stream::unfold(state, move |(mut file, mut sent, mut last, progress)| async move {
                    let mut buf = vec![0u8; CHUNK];
                    match file.read(&mut buf).await {
                        Ok(0) => None,
                        Ok(n) => {
                            buf.truncate(n);
                            sent += n as u64;
                            if let Some((id, tx)) = &progress {
                                if last.elapsed() >= Duration::from_millis(100) || sent == size {
                                    send(tx, Progress::counts(id, "Pushing", sent, size));
                                    last = Instant::now();
                                }
                            }
                            Some((Ok::<bytes::Bytes, std::io::Error>(bytes::Bytes::from(buf)), (file, sent, last, progress)))
                        }
                        Err(e) => Some((Err(e), (file, sent, last, progress))),
                    }
                });
                reqwest::Body::wrap_stream(stream)
            }
        };
        let resp = session
            .builder(Method::PUT, &put)
            .await
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(body)
            .send()
            .await
            .map_err(|e| RegistryError::http(&put, e))?;
        if resp.status() != StatusCode::CREATED {
            return Err(RegistryError::Protocol(format!("blob upload of {digest} failed: {}", error_text(resp).await)).into());
        }
        Ok(Placed::Uploaded)
    }
}

enum BlobSource<'a> {
    Bytes(&'a [u8]),
    File(&'a std::path::Path),
}
