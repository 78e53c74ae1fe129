//! The image service of one storage driver: import, load, save, list,
//! inspect, history, tag, remove, prune and the numbers of `system df`.
//!
//! # Layout
//! - [`store`]: the persisted metadata (configs, references, layer records,
//!   layer blobs), written atomically and reloaded on start.
//! - [`layer`]: the hostile-input-safe tar applier and the unpacking of one
//!   layer into a committed snapshot named by its chain ID.
//! - [`archive`]: reading docker-archive and OCI layout tarballs, writing
//!   an archive that holds both.
//! - [`config`]: image config documents, `--change` instructions, times.
//! - [`reference`]: image references in Docker's normalised form.
//!
//! Layers are committed snapshots named by chain ID; an image is its config
//! (its ID is the config's digest) plus references. Every operation that
//! changes the store runs under one lock, and one that fails removes what it
//! had made, so no half image or stray snapshot is left behind.

pub mod archive;
pub mod config;
pub mod layer;
pub mod reference;
pub mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::{Map, Value};
use strata_snapshotter::Snapshotter;
use tokio::io::AsyncWriteExt;

use crate::error::EngineError;
use crate::events::EventBus;
use archive::{ArchiveError, ArchiveIndex, SaveImage};
use config::ConfigView;
use layer::{LayerError, UnpackError};
use reference::Reference;
use store::{LayerRecord, Store, StoreError, StoredImage};

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Internal(e.to_string())
    }
}

impl From<ArchiveError> for EngineError {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::Invalid(_) => EngineError::InvalidArgument(e.to_string()),
            ArchiveError::Io { .. } => EngineError::Internal(e.to_string()),
        }
    }
}

impl From<UnpackError> for EngineError {
    fn from(e: UnpackError) -> Self {
        match &e {
            UnpackError::Layer(l) if l.is_bad_input() => EngineError::InvalidArgument(e.to_string()),
            UnpackError::DiffIdMismatch { .. } => EngineError::InvalidArgument(e.to_string()),
            UnpackError::Snapshotter(s) => EngineError::from(s.clone()),
            _ => EngineError::Internal(e.to_string()),
        }
    }
}

impl From<reference::ReferenceError> for EngineError {
    fn from(e: reference::ReferenceError) -> Self {
        EngineError::InvalidArgument(e.to_string())
    }
}

/// A container that uses an image, as the container service reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    pub id: String,
    pub running: bool,
}

/// The hook through which the image service learns which containers use an
/// image (for `rmi` refusals, prune and `system df`). Without one, no image
/// is in use.
pub trait ContainerUsage: Send + Sync {
    /// The containers created from image `image_id` (`sha256:…`).
    fn containers_using(&self, image_id: &str) -> Vec<ContainerRef>;
}

/// One row of `GET /images/json` and of `system df`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    pub id: String,
    /// Familiar references (`busybox:latest`), sorted.
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    pub size: i64,
    /// Bytes of layers also used by other images; -1 when not computed.
    pub shared_size: i64,
    pub labels: BTreeMap<String, String>,
    /// Containers using the image; -1 when not computed.
    pub containers: i64,
}

/// What `docker image inspect` shows.
#[derive(Debug, Clone)]
pub struct ImageDetails {
    pub summary: ImageSummary,
    pub view: ConfigView,
    /// The config document, parsed.
    pub document: Value,
    /// Unix seconds of the last tag, if any.
    pub last_tag_time: Option<i64>,
    /// The image this one was committed on, if any.
    pub parent: Option<String>,
}

/// One row of `docker history`, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    /// The image ID on the top row, `<missing>` below.
    pub id: String,
    pub created: i64,
    pub created_by: String,
    pub tags: Vec<String>,
    pub size: i64,
    pub comment: String,
}

/// One line of an `rmi` or prune answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteItem {
    Untagged(String),
    Deleted(String),
}

/// `system df` for images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDiskUsage {
    /// Bytes of every distinct layer.
    pub layers_size: i64,
    pub images: Vec<ImageSummary>,
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub deleted: Vec<DeleteItem>,
    pub space_reclaimed: u64,
}

/// Options of `docker import`.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// `repo` or `repo:tag` (the CLI puts the tag inside `repo`).
    pub repo: Option<String>,
    /// A separate tag (docker-py sends one).
    pub tag: Option<String>,
    /// Dockerfile-style changes (`CMD ["sh"]`).
    pub changes: Vec<String>,
    /// The commit message; the comment defaults to `Imported from -`.
    pub message: Option<String>,
}

/// Options of `docker commit` (see [`ImageService::commit`]).
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// The image the container was created from (ID or name); its layers
    /// come first.
    pub parent: Option<String>,
    pub repo: Option<String>,
    pub tag: Option<String>,
    /// The container config of the new image (`Cmd`, `Env`, ...).
    pub config: Map<String, Value>,
    pub comment: String,
    pub author: String,
    /// The history line (`/bin/sh -c …`).
    pub created_by: String,
    /// The ID of the container committed (empty: none).
    pub container: String,
    /// That container's config, recorded as the image's `container_config`.
    pub container_config: Option<Value>,
}

/// How [`ImageService::image_from_layer`] makes its image.
struct LayerImage {
    parent: Option<String>,
    config: Map<String, Value>,
    comment: String,
    author: String,
    created_by: String,
    container: String,
    container_config: Option<Value>,
    reference: Option<Reference>,
    /// `import` or `create`.
    event: &'static str,
}

/// Filters of `GET /images/json`, already split into key and values.
pub type Filters = BTreeMap<String, Vec<String>>;

/// Opens one layer tarball; called on a blocking thread.
pub type LayerOpener = Box<dyn FnOnce() -> std::io::Result<Box<dyn std::io::Read + Send>> + Send>;

/// A spooled upload that is deleted when dropped.
#[derive(Debug)]
pub struct Upload {
    path: PathBuf,
}

impl Upload {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(self.path.with_extension("tar"));
    }
}

/// One message of a `docker load` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadMessage {
    /// A layer was unpacked (layers already present are not reported).
    Layer { chain_id: String, tar_size: u64 },
    /// A result line (`Loaded image: busybox:latest`).
    Line(String),
}

/// The image service of one storage driver.
pub struct ImageService {
    pub dir: PathBuf,
    pub snapshotter: Arc<dyn Snapshotter>,
    pub events: EventBus,
    store: Mutex<Store>,
    /// Serialises every operation that changes the store or the snapshots.
    ops: tokio::sync::Mutex<()>,
    usage: RwLock<Option<Arc<dyn ContainerUsage>>>,
    /// Whether [`ImageService::recover`] has run.
    recovered: tokio::sync::OnceCell<()>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn next_seq() -> u64 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

fn familiar_of(full: &str) -> String {
    Reference::parse(full).map(|r| r.familiar()).unwrap_or_else(|_| full.to_string())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Go's `path.Match` subset the reference filter needs: `*` (not across
/// `/`), `?` and literal characters.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], text) || (!text.is_empty() && text[0] != b'/' && glob_match(pattern, &text[1..]))
        }
        (Some(b'?'), Some(c)) if *c != b'/' => glob_match(&pattern[1..], &text[1..]),
        (Some(p), Some(c)) if p == c => glob_match(&pattern[1..], &text[1..]),
        _ => false,
    }
}

impl ImageService {
    /// Opens (creating if needed) the image store kept in `dir`.
    pub fn open(dir: &Path, snapshotter: Arc<dyn Snapshotter>, events: EventBus) -> Result<ImageService, EngineError> {
        let store = Store::open(dir)?;
        tracing::info!(dir = %dir.display(), images = store.image_count(), "image store loaded");
        Ok(ImageService {
            dir: dir.to_path_buf(),
            snapshotter,
            events,
            store: Mutex::new(store),
            ops: tokio::sync::Mutex::new(()),
            usage: RwLock::new(None),
            recovered: tokio::sync::OnceCell::new(),
        })
    }

    /// Installs the container service's usage hook.
    pub fn set_container_usage(&self, usage: Arc<dyn ContainerUsage>) {
        let mut slot = self.usage.write().unwrap_or_else(|p| p.into_inner());
        *slot = Some(usage);
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // Store updates are whole-value replacements after the disk write, so
        // a panic elsewhere cannot leave it half-changed.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn containers_of(&self, id: &str) -> Vec<ContainerRef> {
        let usage = self.usage.read().unwrap_or_else(|p| p.into_inner());
        usage.as_ref().map(|u| u.containers_using(id)).unwrap_or_default()
    }

    /// How many images the store holds (`docker info`).
    pub fn count(&self) -> usize {
        self.store().image_count()
    }

    /// Removes what an interrupted operation (a crash mid-load) left: active
    /// unpack snapshots, layers no image uses, and blobs no layer has. Runs
    /// once, before the first operation that changes the store; call it
    /// directly to run it earlier.
    pub async fn recover(&self) {
        self.recovered
            .get_or_init(|| async {
                if let Err(e) = self.recover_now().await {
                    tracing::warn!(error = %e, "image store recovery incomplete");
                }
            })
            .await;
    }

    async fn recover_now(&self) -> Result<(), EngineError> {
        // Mounts of unpacks that were running when the daemon died.
        let tmp = self.store().tmp_dir();
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let p = e.path();
                if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    continue;
                }
                if strata_snapshotter::mount::is_mounted(&p).unwrap_or(false) {
                    if let Err(err) = strata_snapshotter::mount::unmount(&p) {
                        tracing::warn!(path = %p.display(), error = %err, "cannot unmount a stale unpack mount");
                        continue;
                    }
                }
                // Only an empty directory goes: never delete through a mount.
                let _ = std::fs::remove_dir(&p);
            }
        }
        let own = format!("{}{}-", layer::EXTRACT_PREFIX, std::process::id());
        for info in self.snapshotter.list(&[]).await? {
            if info.kind == strata_snapshotter::Kind::Active
                && info.name.starts_with(layer::EXTRACT_PREFIX)
                && !info.name.starts_with(&own)
            {
                tracing::info!(key = %info.name, "removing an interrupted layer unpack");
                if let Err(e) = self.snapshotter.remove(&info.name).await {
                    tracing::warn!(key = %info.name, error = %e, "cannot remove an interrupted layer unpack");
                }
            }
        }
        self.remove_unused_layers_locked().await?;
        let store = self.store();
        let known: HashSet<PathBuf> = store.layers().map(|l| store.blob_path(&l.diff_id)).collect();
        if let Ok(entries) = std::fs::read_dir(store.dir().join("blobs/sha256")) {
            for e in entries.flatten() {
                if !known.contains(&e.path()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// Removes the layers no image uses any more whose snapshots can go
    /// (a layer that is still the parent of a container's snapshot stays).
    /// The container service calls this after removing a container whose
    /// image was deleted while it existed. Returns the bytes freed.
    pub async fn remove_unused_layers(&self) -> Result<u64, EngineError> {
        self.recover().await;
        let _op = self.ops.lock().await;
        self.remove_unused_layers_locked().await
    }

    async fn remove_unused_layers_locked(&self) -> Result<u64, EngineError> {
        let mut freed = 0;
        let mut kept: HashSet<String> = HashSet::new();
        loop {
            let orphans: Vec<String> = {
                let store = self.store();
                let used: HashSet<String> = store.images().flat_map(|i| i.chain_ids().iter().cloned()).collect();
                let parents: HashSet<String> = store.layers().filter_map(|l| l.parent.clone()).collect();
                store
                    .layers()
                    .filter(|l| !used.contains(&l.chain_id) && !parents.contains(&l.chain_id) && !kept.contains(&l.chain_id))
                    .map(|l| l.chain_id.clone())
                    .collect()
            };
            if orphans.is_empty() {
                return Ok(freed);
            }
            for chain in &orphans {
                match self.snapshotter.remove(chain).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => {
                        tracing::info!(chain, error = %e, "unused layer kept: its snapshot is still a parent");
                        kept.insert(chain.clone());
                        continue;
                    }
                }
                tracing::info!(chain, "removed a layer no image uses");
                freed += self.store().layer(chain).map(|l| l.size).unwrap_or(0);
                self.store().remove_layer(chain)?;
            }
        }
    }

    /// Copies a request body into a file of the store's scratch directory.
    pub async fn spool<S, E>(&self, mut body: S) -> Result<Upload, EngineError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let path = self.store().tmp_dir().join(format!("upload-{}-{}", std::process::id(), next_seq()));
        let upload = Upload { path: path.clone() };
        let mut f = tokio::fs::File::create(&path).await.map_err(|e| EngineError::io(format!("create {}", path.display()), e))?;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| EngineError::invalid(format!("reading the request body: {e}")))?;
            f.write_all(&chunk).await.map_err(|e| EngineError::io(format!("write {}", path.display()), e))?;
        }
        f.flush().await.map_err(|e| EngineError::io(format!("write {}", path.display()), e))?;
        Ok(upload)
    }

    /// Resolves a name as dockerd does: a full ID (with or without
    /// `sha256:`), a reference (default tag `latest`), or an unambiguous ID
    /// prefix.
    pub fn resolve(&self, name: &str) -> Result<String, EngineError> {
        resolve_in(&self.store(), name)
    }

    fn summary(&self, store: &Store, img: &StoredImage) -> ImageSummary {
        let size = image_size(store, img);
        ImageSummary {
            id: img.id.clone(),
            // References by digest (`name@sha256:…`, left by a pull by
            // digest) are RepoDigests, not tags.
            repo_tags: store.references_of(&img.id).iter().filter(|r| !r.contains('@')).map(|r| familiar_of(r)).collect(),
            repo_digests: store.references_of(&img.id).iter().filter(|r| r.contains('@')).map(|r| familiar_of(r)).collect(),
            created: img.view.created_unix(),
            size: size as i64,
            shared_size: -1,
            labels: img.view.labels(),
            containers: -1,
        }
    }

    /// `GET /images/json`.
    pub fn list(&self, filters: &Filters) -> Result<Vec<ImageSummary>, EngineError> {
        for key in filters.keys() {
            if !matches!(key.as_str(), "reference" | "dangling" | "label" | "before" | "since") {
                return Err(EngineError::invalid(format!("invalid filter '{key}'")));
            }
        }
        let dangling = match filters.get("dangling").map(|v| v.as_slice()) {
            None | Some([]) => None,
            Some(values) => {
                let mut want = None;
                for v in values {
                    let b = match v.to_ascii_lowercase().as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(EngineError::invalid(format!("Invalid filter 'dangling={v}'"))),
                    };
                    want = Some(b);
                }
                want
            }
        };
        let store = self.store();
        let created_of = |name: &str| -> Result<i64, EngineError> {
            let id = resolve_in(&store, name)?;
            Ok(store.image(&id).map(|i| i.view.created_unix()).unwrap_or(0))
        };
        let before = filters.get("before").and_then(|v| v.first()).map(|n| created_of(n)).transpose()?;
        let since = filters.get("since").and_then(|v| v.first()).map(|n| created_of(n)).transpose()?;
        let patterns = filters.get("reference").cloned().unwrap_or_default();
        let labels = filters.get("label").cloned().unwrap_or_default();

        let mut out = Vec::new();
        for img in store.images() {
            let mut s = self.summary(&store, img);
            if let Some(d) = dangling {
                if d != s.repo_tags.is_empty() {
                    continue;
                }
            }
            if before.is_some_and(|b| s.created >= b) || since.is_some_and(|t| s.created <= t) {
                continue;
            }
            if !labels.iter().all(|l| match l.split_once('=') {
                Some((k, v)) => s.labels.get(k).is_some_and(|x| x == v),
                None => s.labels.contains_key(l),
            }) {
                continue;
            }
            if !patterns.is_empty() {
                // Keep the references that match, as dockerd does.
                let matching: Vec<String> = s
                    .repo_tags
                    .iter()
                    .filter(|t| {
                        let name = t.rsplit_once(':').map(|(n, _)| n).unwrap_or(t);
                        patterns.iter().any(|p| glob_match(p.as_bytes(), t.as_bytes()) || glob_match(p.as_bytes(), name.as_bytes()))
                    })
                    .cloned()
                    .collect();
                if matching.is_empty() {
                    continue;
                }
                s.repo_tags = matching;
            }
            out.push(s);
        }
        out.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    /// `GET /images/{name}/json`.
    pub fn inspect(&self, name: &str) -> Result<ImageDetails, EngineError> {
        let store = self.store();
        let id = resolve_in(&store, name)?;
        let img = store.image(&id).ok_or_else(|| no_such_image(name))?;
        let document = serde_json::from_slice(&img.config).unwrap_or(Value::Null);
        Ok(ImageDetails {
            summary: self.summary(&store, img),
            view: img.view.clone(),
            document,
            last_tag_time: img.meta.last_tag_time,
            parent: img.meta.parent.clone().filter(|p| store.image(p).is_some()),
        })
    }

    /// `GET /images/{name}/history`, newest first.
    pub fn history(&self, name: &str) -> Result<Vec<HistoryItem>, EngineError> {
        let store = self.store();
        let id = resolve_in(&store, name)?;
        let img = store.image(&id).ok_or_else(|| no_such_image(name))?;
        let sizes: Vec<i64> = img
            .chain_ids()
            .iter()
            .map(|c| store.layer(c).map(|l| l.size as i64).unwrap_or(0))
            .collect();
        let mut rows = Vec::new();
        let mut layer = 0usize;
        if img.view.history.is_empty() {
            for (i, size) in sizes.iter().enumerate() {
                rows.push(HistoryItem {
                    id: "<missing>".into(),
                    created: img.view.created_unix(),
                    created_by: String::new(),
                    tags: Vec::new(),
                    size: *size,
                    comment: if i == 0 { img.view.comment.clone().unwrap_or_default() } else { String::new() },
                });
            }
        } else {
            for h in &img.view.history {
                let size = if h.empty_layer {
                    0
                } else {
                    let s = sizes.get(layer).copied().unwrap_or(0);
                    layer += 1;
                    s
                };
                rows.push(HistoryItem {
                    id: "<missing>".into(),
                    created: h.created.as_deref().and_then(config::parse_rfc3339).map(|(s, _)| s).unwrap_or(0),
                    created_by: h.created_by.clone().unwrap_or_default(),
                    tags: Vec::new(),
                    size,
                    comment: h.comment.clone().unwrap_or_default(),
                });
            }
        }
        rows.reverse();
        if let Some(top) = rows.first_mut() {
            top.id = id.clone();
            top.tags = store.references_of(&id).iter().map(|r| familiar_of(r)).collect();
        }
        Ok(rows)
    }

    /// `POST /images/{name}/tag`: points `repo[:tag]` at the image.
    pub async fn tag(&self, name: &str, repo: &str, tag: Option<&str>) -> Result<(), EngineError> {
        self.recover().await;
        let _op = self.ops.lock().await;
        let r = tagged_reference(repo, tag)?;
        let (id, labels) = {
            let mut store = self.store();
            let id = resolve_in(&store, name)?;
            store.tag(&r.to_string(), &id, unix_now())?;
            let labels = store.image(&id).map(|i| i.view.labels()).unwrap_or_default();
            (id, labels)
        };
        self.emit("tag", &id, labels, &r.familiar());
        Ok(())
    }

    fn emit(&self, action: &str, id: &str, mut attributes: BTreeMap<String, String>, name: &str) {
        attributes.insert("name".to_string(), name.to_string());
        self.events.emit("image", action, id, attributes);
    }

    /// Records a freshly unpacked layer, moving its blob into place.
    fn record_layer(&self, unpacked: &layer::UnpackedLayer, parent: Option<String>, blob_tmp: &Path) -> Result<(), EngineError> {
        let mut store = self.store();
        let final_blob = store.blob_path(&unpacked.applied.diff_id);
        if final_blob.exists() {
            let _ = std::fs::remove_file(blob_tmp);
        } else {
            std::fs::rename(blob_tmp, &final_blob).map_err(|e| EngineError::io(format!("rename {}", blob_tmp.display()), e))?;
        }
        if store.layer(&unpacked.chain_id).is_none() {
            store.put_layer(LayerRecord {
                chain_id: unpacked.chain_id.clone(),
                diff_id: unpacked.applied.diff_id.clone(),
                parent,
                size: unpacked.applied.size,
                tar_size: unpacked.applied.tar_size,
            })?;
        }
        Ok(())
    }

    /// Unpacks one layer on top of `parent` (a chain ID) into a committed
    /// snapshot and records it (blob moved into place, layer record
    /// written). With `diff_id`, the content must hash to it. Returns the
    /// layer and whether its record is new (what a rollback must remove);
    /// if recording fails, a layer this call made is removed again.
    async fn unpack_layer(
        &self,
        parent: Option<String>,
        diff_id: Option<String>,
        open: LayerOpener,
    ) -> Result<(layer::UnpackedLayer, bool), EngineError> {
        let (blob_tmp, mount_dir) = {
            let store = self.store();
            (store.tmp_dir().join(format!("blob-{}-{}", std::process::id(), next_seq())), store.tmp_dir())
        };
        let unpacked =
            layer::unpack(self.snapshotter.clone(), parent.clone(), diff_id, open, blob_tmp.clone(), mount_dir).await?;
        let is_new = self.store().layer(&unpacked.chain_id).is_none();
        if let Err(e) = self.record_layer(&unpacked, parent, &blob_tmp) {
            if is_new {
                self.rollback_layers(std::slice::from_ref(&unpacked.chain_id)).await;
            }
            return Err(e);
        }
        Ok((unpacked, is_new))
    }

    /// Whether a layer is fully present: its record, its blob and its
    /// committed snapshot.
    async fn layer_present(&self, chain_id: &str) -> bool {
        let recorded = {
            let store = self.store();
            store.layer(chain_id).is_some_and(|l| store.blob_path(&l.diff_id).exists())
        };
        recorded && self.snapshotter.stat(chain_id).await.is_ok()
    }

    /// Removes layers created by a failed operation, top first.
    async fn rollback_layers(&self, created: &[String]) {
        for chain in created.iter().rev() {
            if let Err(e) = self.snapshotter.remove(chain).await {
                if !e.is_not_found() {
                    tracing::warn!(chain, error = %e, "failed to remove the snapshot of an abandoned layer");
                }
            }
            if let Err(e) = self.store().remove_layer(chain) {
                tracing::warn!(chain, error = %e, "failed to forget an abandoned layer");
            }
        }
    }

    /// `POST /images/create?fromSrc=-`: imports a root filesystem tarball
    /// (plain or gzip) as a one-layer image; returns the image ID.
    pub async fn import(&self, upload: &Upload, opts: ImportOptions) -> Result<String, EngineError> {
        // Everything about the request is checked before anything is made.
        let reference = tag_reference(opts.repo.as_deref(), opts.tag.as_deref())?;
        let mut container_config = Map::new();
        config::apply_changes(&mut container_config, &opts.changes).map_err(EngineError::invalid)?;
        let comment = opts.message.clone().filter(|m| !m.is_empty()).unwrap_or_else(|| "Imported from -".to_string());
        let spec = LayerImage {
            parent: None,
            config: container_config,
            comment,
            author: String::new(),
            created_by: String::new(),
            container: String::new(),
            container_config: None,
            reference,
            event: "import",
        };
        self.image_from_layer(upload.path(), spec).await
    }

    /// `docker commit`: a new image made of the image `opts.parent` (an ID,
    /// or none) plus the layer tarball at `layer`, with `opts.config` as its
    /// container config. Emits `tag` (with a reference) and `create`, as
    /// dockerd does; the caller reports the container's `commit` event.
    pub async fn commit(&self, layer: &Path, opts: CommitOptions) -> Result<String, EngineError> {
        let reference = tag_reference(opts.repo.as_deref(), opts.tag.as_deref())?;
        let parent = match opts.parent.as_deref() {
            Some(p) => Some(self.resolve(p)?),
            None => None,
        };
        let spec = LayerImage {
            parent,
            config: opts.config,
            comment: opts.comment,
            author: opts.author,
            created_by: opts.created_by,
            container: opts.container,
            container_config: opts.container_config,
            reference,
            event: "create",
        };
        self.image_from_layer(layer, spec).await
    }

    async fn image_from_layer(&self, layer_path: &Path, spec: LayerImage) -> Result<String, EngineError> {
        self.recover().await;
        let _op = self.ops.lock().await;
        let parent_view = match &spec.parent {
            Some(id) => Some(self.store().image(id).map(|i| i.view.clone()).ok_or_else(|| no_such_image(id))?),
            None => None,
        };
        let parent_chain = parent_view.as_ref().and_then(|v| layer::chain_ids(&v.rootfs.diff_ids).pop());
        let path = layer_path.to_path_buf();
        let open: LayerOpener = Box::new(move || Ok(Box::new(std::fs::File::open(path)?) as Box<dyn std::io::Read + Send>));
        let (unpacked, created_new) = self.unpack_layer(parent_chain, None, open).await?;
        let result = async {
            let now = config::now_rfc3339();
            let mut diff_ids = parent_view.as_ref().map(|v| v.rootfs.diff_ids.clone()).unwrap_or_default();
            diff_ids.push(unpacked.applied.diff_id.clone());
            let mut history: Vec<Value> = match &spec.parent {
                Some(id) => {
                    let raw = self.store().image(id).map(|i| i.config.clone()).unwrap_or_default();
                    serde_json::from_slice::<Value>(&raw)
                        .ok()
                        .and_then(|v| v.get("history").and_then(Value::as_array).cloned())
                        .unwrap_or_default()
                }
                None => Vec::new(),
            };
            let mut entry = Map::new();
            entry.insert("created".into(), Value::from(now.clone()));
            if !spec.author.is_empty() {
                entry.insert("author".into(), Value::from(spec.author.clone()));
            }
            if !spec.created_by.is_empty() {
                entry.insert("created_by".into(), Value::from(spec.created_by.clone()));
            }
            if !spec.comment.is_empty() {
                entry.insert("comment".into(), Value::from(spec.comment.clone()));
            }
            history.push(Value::Object(entry));
            let arch = parent_view.as_ref().and_then(|v| v.architecture.clone()).unwrap_or_else(|| config::go_arch().to_string());
            let os = parent_view.as_ref().and_then(|v| v.os.clone()).unwrap_or_else(|| "linux".to_string());
            let mut doc = Map::new();
            doc.insert("architecture".into(), Value::from(arch));
            if !spec.author.is_empty() {
                doc.insert("author".into(), Value::from(spec.author.clone()));
            }
            if !spec.comment.is_empty() {
                doc.insert("comment".into(), Value::from(spec.comment.clone()));
            }
            doc.insert("config".into(), Value::Object(spec.config.clone()));
            if !spec.container.is_empty() {
                doc.insert("container".into(), Value::from(spec.container.clone()));
            }
            if let Some(c) = &spec.container_config {
                doc.insert("container_config".into(), c.clone());
            }
            doc.insert("created".into(), Value::from(now));
            doc.insert("history".into(), Value::Array(history));
            doc.insert("os".into(), Value::from(os));
            doc.insert("rootfs".into(), serde_json::json!({"type": "layers", "diff_ids": diff_ids}));
            let bytes = serde_json::to_vec(&Value::Object(doc)).map_err(|e| EngineError::internal(e.to_string()))?;
            let view = ConfigView::parse(&bytes).map_err(EngineError::internal)?;
            let labels = view.labels();
            let id = {
                let mut store = self.store();
                let id = store.put_image(bytes, view)?;
                if let Some(p) = &spec.parent {
                    store.set_parent(&id, p)?;
                }
                if let Some(r) = &spec.reference {
                    store.tag(&r.to_string(), &id, unix_now())?;
                }
                id
            };
            if let Some(r) = &spec.reference {
                self.emit("tag", &id, labels.clone(), &r.familiar());
            }
            self.emit(spec.event, &id, labels, &id);
            Ok::<String, EngineError>(id)
        }
        .await;
        if result.is_err() && created_new {
            self.rollback_layers(std::slice::from_ref(&unpacked.chain_id)).await;
        }
        result
    }

    /// `POST /images/load`: loads every image of a docker-archive or OCI
    /// layout tarball (gzip or not); returns what dockerd reports: a
    /// "Loading layer" for each layer it unpacked and the result lines
    /// (`Loaded image: busybox:latest`).
    pub async fn load(&self, upload: &Upload) -> Result<Vec<LoadMessage>, EngineError> {
        let raw = upload.path().to_path_buf();
        let index = tokio::task::spawn_blocking(move || -> Result<(ArchiveIndex, Vec<archive::ArchiveImage>), ArchiveError> {
            let plain = archive::ungzip_in_place(&raw)?;
            let index = ArchiveIndex::build(&plain)?;
            let images = archive::images_of(&index)?;
            Ok((index, images))
        })
        .await
        .map_err(|e| EngineError::internal(format!("archive task failed: {e}")))??;
        let (index, images) = index;
        let index = Arc::new(index);
        if images.is_empty() {
            return Err(EngineError::invalid("invalid image archive: it holds no image"));
        }

        // Check every config and reference first.
        let mut plans = Vec::new();
        for img in &images {
            let config = index.read(&img.config)?;
            let id = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&config)));
            if let Some(d) = &img.config_digest {
                if *d != id {
                    return Err(EngineError::invalid(format!("invalid image archive: config {} has digest {id}", img.config)));
                }
            }
            let view = ConfigView::parse(&config).map_err(EngineError::invalid)?;
            if view.rootfs.diff_ids.len() != img.layers.len() {
                return Err(EngineError::invalid(format!(
                    "invalid image archive: the config of {id} lists {} layers, the manifest {}",
                    view.rootfs.diff_ids.len(),
                    img.layers.len()
                )));
            }
            let mut refs = Vec::new();
            for t in &img.tags {
                let r = Reference::parse_tagged(t)?;
                if r.digest.is_some() && r.tag.is_none() {
                    continue;
                }
                refs.push(r);
            }
            plans.push((img.clone(), config, view, id, refs));
        }

        self.recover().await;
        let _op = self.ops.lock().await;
        let mut created: Vec<String> = Vec::new();
        let mut messages = Vec::new();
        let result = async {
            for (img, config, view, id, refs) in plans {
                let chains = layer::chain_ids(&view.rootfs.diff_ids);
                for (i, chain) in chains.iter().enumerate() {
                    if self.layer_present(chain).await {
                        continue;
                    }
                    if let Some(Some(d)) = img.layer_digests.get(i) {
                        let (idx, member, d) = (index.clone(), img.layers[i].clone(), d.clone());
                        tokio::task::spawn_blocking(move || idx.verify(&member, &d))
                            .await
                            .map_err(|e| EngineError::internal(format!("verify task failed: {e}")))??;
                    }
                    let parent = if i == 0 { None } else { Some(chains[i - 1].clone()) };
                    let (idx, member) = (index.clone(), img.layers[i].clone());
                    let open: LayerOpener =
                        Box::new(move || idx.open(&member).map_err(|e| std::io::Error::other(e.to_string())));
                    let (unpacked, is_new) = self
                        .unpack_layer(parent, Some(view.rootfs.diff_ids[i].clone()), open)
                        .await
                        .map_err(|e| with_context(e, format!("layer {} of {}", i + 1, img.config)))?;
                    if is_new {
                        created.push(chain.clone());
                    }
                    messages.push(LoadMessage::Layer { chain_id: chain.clone(), tar_size: unpacked.applied.tar_size });
                }
                let labels = view.labels();
                let mut store = self.store();
                let id2 = store.put_image(config, view)?;
                debug_assert_eq!(id, id2);
                for r in &refs {
                    if let Some(old) = store.set_reference(&r.to_string(), &id)? {
                        messages.push(LoadMessage::Line(format!(
                            "The image {} already exists, renaming the old one with ID {old} to empty string",
                            r.familiar()
                        )));
                    }
                    messages.push(LoadMessage::Line(format!("Loaded image: {}", r.familiar())));
                }
                if refs.is_empty() {
                    messages.push(LoadMessage::Line(format!("Loaded image ID: {id}")));
                }
                drop(store);
                self.emit("load", &id, labels, &id);
            }
            Ok::<(), EngineError>(())
        }
        .await;
        if let Err(e) = result {
            self.rollback_layers(&created).await;
            return Err(e);
        }
        Ok(messages)
    }

    /// Whether the layer with this chain ID is fully present (a pull skips
    /// it: "Already exists").
    pub async fn has_layer(&self, chain_id: &str) -> bool {
        self.layer_present(chain_id).await
    }

    /// Stores a pulled image: unpacks the layers that are not present yet
    /// (from `layers[i]`, a tarball plain, gzip or already decompressed,
    /// checked against the config's DiffID), stores the config and points
    /// `reference` at it. `on_layer(i)` is called once layer `i` is in
    /// place. Returns the image ID and whether `reference` pointed elsewhere
    /// (or nowhere) before. On failure the layers it made are removed and
    /// nothing is tagged.
    pub async fn store_pulled(
        &self,
        config_bytes: Vec<u8>,
        mut layers: Vec<Option<LayerOpener>>,
        reference: Option<&Reference>,
        on_layer: &(dyn Fn(usize) + Send + Sync),
    ) -> Result<(String, bool), EngineError> {
        let view = ConfigView::parse(&config_bytes).map_err(EngineError::invalid)?;
        if view.rootfs.diff_ids.len() != layers.len() {
            return Err(EngineError::invalid(format!(
                "the image config lists {} layers, the manifest {}",
                view.rootfs.diff_ids.len(),
                layers.len()
            )));
        }
        self.recover().await;
        let _op = self.ops.lock().await;
        let chains = layer::chain_ids(&view.rootfs.diff_ids);
        let mut created: Vec<String> = Vec::new();
        let result = async {
            for (i, chain) in chains.iter().enumerate() {
                let opener = layers[i].take();
                if self.layer_present(chain).await {
                    on_layer(i);
                    continue;
                }
                let open = opener.ok_or_else(|| EngineError::internal(format!("layer {chain} is no longer present")))?;
                let parent = if i == 0 { None } else { Some(chains[i - 1].clone()) };
                let (_, is_new) = self
                    .unpack_layer(parent, Some(view.rootfs.diff_ids[i].clone()), open)
                    .await
                    .map_err(|e| with_context(e, format!("layer {}", i + 1)))?;
                if is_new {
                    created.push(chain.clone());
                }
                on_layer(i);
            }
            let mut store = self.store();
            let id = store.put_image(config_bytes, view)?;
            let mut changed = true;
            if let Some(r) = reference {
                let full = r.to_string();
                changed = store.resolve_reference(&full) != Some(id.as_str());
                store.tag(&full, &id, unix_now())?;
            }
            Ok::<(String, bool), EngineError>((id, changed))
        }
        .await;
        if result.is_err() {
            self.rollback_layers(&created).await;
        }
        result
    }

    /// Resolves the names of `docker save` into what the archive holds. A
    /// reference contributes its tag; an ID contributes no tag.
    pub fn save_plan(&self, names: &[String]) -> Result<Vec<SaveImage>, EngineError> {
        let store = self.store();
        let mut order: Vec<String> = Vec::new();
        let mut tags: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for name in names {
            let id = resolve_in(&store, name)?;
            if !order.contains(&id) {
                order.push(id.clone());
            }
            let is_id = is_id_like(name) && !store.references().contains_key(&Reference::parse_tagged(name).map(|r| r.to_string()).unwrap_or_default());
            if !is_id {
                if let Ok(r) = Reference::parse_tagged(name) {
                    if r.tag.is_some() {
                        let entry = tags.entry(id.clone()).or_default();
                        let pair = (r.to_string(), r.familiar());
                        if !entry.contains(&pair) {
                            entry.push(pair);
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        for id in order {
            let img = store.image(&id).ok_or_else(|| no_such_image(&id))?;
            let layers = img
                .view
                .rootfs
                .diff_ids
                .iter()
                .map(|d| (d.clone(), store.blob_path(d)))
                .collect();
            out.push(SaveImage { id: id.clone(), config: img.config.clone(), layers, tags: tags.remove(&id).unwrap_or_default() });
        }
        Ok(out)
    }

    /// Writes the archive of `plan` to `out` (blocking; run it on a blocking
    /// thread) and reports a `save` event per image.
    pub fn write_save<W: std::io::Write>(&self, plan: &[SaveImage], out: W) -> std::io::Result<W> {
        let w = archive::write_archive(out, plan)?;
        for img in plan {
            let labels = self.store().image(&img.id).map(|i| i.view.labels()).unwrap_or_default();
            self.emit("save", &img.id, labels, &img.id);
        }
        Ok(w)
    }

    /// `DELETE /images/{name}`.
    pub async fn remove(&self, name: &str, force: bool) -> Result<Vec<DeleteItem>, EngineError> {
        self.recover().await;
        let _op = self.ops.lock().await;
        let (id, by_reference, refs) = {
            let store = self.store();
            let id = resolve_in(&store, name)?;
            let by_reference = reference_of_name(&store, name).filter(|r| store.resolve_reference(r) == Some(id.as_str()));
            (id.clone(), by_reference, store.references_of(&id))
        };
        let containers = self.containers_of(&id);
        let labels = self.store().image(&id).map(|i| i.view.labels()).unwrap_or_default();
        let mut out = Vec::new();

        if let Some(full) = by_reference {
            let last = refs.len() <= 1;
            if last && !containers.is_empty() && !force {
                return Err(EngineError::conflict(format!(
                    "conflict: unable to remove repository reference \"{name}\" (must force) - container {} is using its referenced image {}",
                    short_id(&containers[0].id),
                    short_id(&id)
                )));
            }
            self.store().remove_reference(&full)?;
            out.push(DeleteItem::Untagged(familiar_of(&full)));
            self.emit("untag", &id, labels.clone(), &id);
            if !last || !containers.is_empty() {
                return Ok(out);
            }
        } else {
            if let Some(running) = containers.iter().find(|c| c.running) {
                return Err(EngineError::conflict(format!(
                    "conflict: unable to delete {} (cannot be forced) - image is being used by running container {}",
                    short_id(&id),
                    short_id(&running.id)
                )));
            }
            if !force {
                if refs.len() > 1 {
                    return Err(EngineError::conflict(format!(
                        "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                        short_id(&id)
                    )));
                }
                if let Some(c) = containers.first() {
                    return Err(EngineError::conflict(format!(
                        "conflict: unable to delete {} (must be forced) - image is being used by stopped container {}",
                        short_id(&id),
                        short_id(&c.id)
                    )));
                }
            }
            for r in &refs {
                self.store().remove_reference(r)?;
                out.push(DeleteItem::Untagged(familiar_of(r)));
                self.emit("untag", &id, labels.clone(), &id);
            }
            if !containers.is_empty() {
                // Forced: the image stays for its containers, untagged.
                return Ok(out);
            }
        }
        let (deleted, _) = self.delete_image(&id, labels).await?;
        out.extend(deleted);
        Ok(out)
    }

    /// Deletes an image that has no references, and every layer no other
    /// image uses. Returns the lines and the bytes freed.
    async fn delete_image(&self, id: &str, labels: BTreeMap<String, String>) -> Result<(Vec<DeleteItem>, u64), EngineError> {
        let chains = {
            let mut store = self.store();
            let chains = store.image(id).map(|i| i.chain_ids().to_vec()).unwrap_or_default();
            store.remove_image(id)?;
            chains
        };
        self.emit("delete", id, labels, id);
        let mut out = vec![DeleteItem::Deleted(id.to_string())];
        let mut freed = 0u64;
        let still_used: HashSet<String> = self.store().images().flat_map(|i| i.chain_ids().iter().cloned()).collect();
        for chain in chains.iter().rev() {
            if still_used.contains(chain) {
                break;
            }
            match self.snapshotter.remove(chain).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    // Still a parent (of a container's snapshot): keep it
                    // and everything below.
                    tracing::info!(chain, error = %e, "layer kept");
                    break;
                }
            }
            let size = self.store().layer(chain).map(|l| l.size).unwrap_or(0);
            self.store().remove_layer(chain)?;
            freed += size;
            out.push(DeleteItem::Deleted(chain.clone()));
        }
        Ok((out, freed))
    }

    /// `POST /images/prune`: removes dangling images, or with `all` every
    /// image no container uses. Filters: `label`, `label!`, `until`.
    pub async fn prune(&self, all: bool, filters: &Filters) -> Result<PruneReport, EngineError> {
        for key in filters.keys() {
            if !matches!(key.as_str(), "dangling" | "label" | "label!" | "until") {
                return Err(EngineError::invalid(format!("invalid filter '{key}'")));
            }
        }
        let mut all = all;
        if let Some(v) = filters.get("dangling").and_then(|v| v.first()) {
            match v.to_ascii_lowercase().as_str() {
                "true" | "1" => all = false,
                "false" | "0" => all = true,
                _ => return Err(EngineError::invalid(format!("Invalid filter 'dangling={v}'"))),
            }
        }
        let until = match filters.get("until").and_then(|v| v.first()) {
            Some(u) => Some(parse_until(u)?),
            None => None,
        };
        self.recover().await;
        let _op = self.ops.lock().await;
        let candidates: Vec<(String, Vec<String>, BTreeMap<String, String>)> = {
            let store = self.store();
            store
                .images()
                .filter(|img| {
                    let refs = store.references_of(&img.id);
                    let labels = img.view.labels();
                    (all || refs.is_empty())
                        && until.is_none_or(|u| img.view.created_unix() < u)
                        && filters.get("label").is_none_or(|ls| ls.iter().all(|l| label_matches(&labels, l)))
                        && filters.get("label!").is_none_or(|ls| ls.iter().all(|l| !label_matches(&labels, l)))
                })
                .map(|img| (img.id.clone(), store.references_of(&img.id), img.view.labels()))
                .collect()
        };
        let mut report = PruneReport::default();
        for (id, refs, labels) in candidates {
            if !self.containers_of(&id).is_empty() {
                continue;
            }
            for r in &refs {
                self.store().remove_reference(r)?;
                report.deleted.push(DeleteItem::Untagged(familiar_of(r)));
                self.emit("untag", &id, labels.clone(), &id);
            }
            let (items, freed) = self.delete_image(&id, labels).await?;
            report.deleted.extend(items);
            report.space_reclaimed += freed;
        }
        Ok(report)
    }

    /// The image part of `system df`: sizes, shared sizes and container
    /// counts.
    pub fn disk_usage(&self) -> ImageDiskUsage {
        let store = self.store();
        let mut users: HashMap<&str, usize> = HashMap::new();
        for img in store.images() {
            for c in img.chain_ids() {
                *users.entry(c.as_str()).or_default() += 1;
            }
        }
        let layers_size: u64 = store.layers().map(|l| l.size).sum();
        let mut images = Vec::new();
        for img in store.images() {
            let mut s = self.summary(&store, img);
            s.shared_size = img
                .chain_ids()
                .iter()
                .filter(|c| users.get(c.as_str()).copied().unwrap_or(0) > 1)
                .map(|c| store.layer(c).map(|l| l.size).unwrap_or(0) as i64)
                .sum();
            s.containers = self.containers_of(&img.id).len() as i64;
            images.push(s);
        }
        images.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        ImageDiskUsage { layers_size: layers_size as i64, images }
    }
}

/// `repo` (possibly `repo:tag`) plus an optional separate `tag`, as import
/// and commit take them; `latest` when neither names a tag.
fn tag_reference(repo: Option<&str>, tag: Option<&str>) -> Result<Option<Reference>, EngineError> {
    repo.filter(|r| !r.is_empty()).map(|repo| tagged_reference(repo, tag)).transpose()
}

/// `repo` (possibly `repo:tag`) with `tag` put in, `latest` when neither
/// names one; a digest reference cannot be a tag.
fn tagged_reference(repo: &str, tag: Option<&str>) -> Result<Reference, EngineError> {
    let mut r = Reference::parse(repo)?;
    if r.digest.is_some() {
        return Err(EngineError::invalid("refusing to create a tag with a digest reference"));
    }
    if let Some(t) = tag.filter(|t| !t.is_empty()) {
        if !reference::valid_tag(t) {
            return Err(EngineError::invalid(format!("invalid tag format: {t:?}")));
        }
        r.tag = Some(t.to_string());
    }
    if r.tag.is_none() {
        r.tag = Some(reference::DEFAULT_TAG.to_string());
    }
    Ok(r)
}

fn label_matches(labels: &BTreeMap<String, String>, filter: &str) -> bool {
    match filter.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
        None => labels.contains_key(filter),
    }
}

/// `until` of prune: unix seconds (`1700000000`, `1700000000.5`) or RFC 3339.
fn parse_until(text: &str) -> Result<i64, EngineError> {
    if let Some((s, _)) = config::parse_rfc3339(text) {
        return Ok(s);
    }
    let secs = text.split('.').next().unwrap_or(text);
    secs.parse::<i64>().map_err(|_| EngineError::invalid(format!("invalid until value {text:?}")))
}

fn image_size(store: &Store, img: &StoredImage) -> u64 {
    img.chain_ids().iter().map(|c| store.layer(c).map(|l| l.size).unwrap_or(0)).sum()
}

fn no_such_image(name: &str) -> EngineError {
    EngineError::not_found(format!("No such image: {name}"))
}

fn is_id_like(name: &str) -> bool {
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The full reference `name` stands for, when it is one in the store.
fn reference_of_name(store: &Store, name: &str) -> Option<String> {
    let r = Reference::parse_tagged(name).ok()?;
    let full = r.to_string();
    store.references().contains_key(&full).then_some(full)
}

fn resolve_in(store: &Store, name: &str) -> Result<String, EngineError> {
    if name.is_empty() {
        return Err(no_such_image(name));
    }
    if let Some(hex) = name.strip_prefix("sha256:") {
        if hex.len() == 64 {
            return store.image(name).map(|i| i.id.clone()).ok_or_else(|| no_such_image(name));
        }
    } else if name.len() == 64 && is_id_like(name) {
        let id = format!("sha256:{name}");
        if store.image(&id).is_some() {
            return Ok(id);
        }
    }
    if let Some(full) = reference_of_name(store, name) {
        if let Some(id) = store.resolve_reference(&full) {
            return Ok(id.to_string());
        }
    }
    if is_id_like(name) {
        let prefix = name.strip_prefix("sha256:").unwrap_or(name);
        let ids = store.ids_with_prefix(prefix);
        if ids.len() == 1 {
            return Ok(ids[0].clone());
        }
    }
    Err(no_such_image(name))
}

/// The same error with `context: ` before its message.
fn with_context(err: EngineError, context: impl std::fmt::Display) -> EngineError {
    let msg = format!("{context}: {}", err.message());
    match err {
        EngineError::InvalidArgument(_) => EngineError::InvalidArgument(msg),
        EngineError::NotFound(_) => EngineError::NotFound(msg),
        EngineError::Conflict(_) => EngineError::Conflict(msg),
        EngineError::NotModified(_) => EngineError::NotModified(msg),
        EngineError::NotImplemented(_) => EngineError::NotImplemented(msg),
        EngineError::Unavailable(_) => EngineError::Unavailable(msg),
        EngineError::Internal(_) => EngineError::Internal(msg),
    }
}

impl From<LayerError> for EngineError {
    fn from(e: LayerError) -> Self {
        if e.is_bad_input() {
            EngineError::InvalidArgument(e.to_string())
        } else {
            EngineError::Internal(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_path_match() {
        assert!(glob_match(b"busybox", b"busybox"));
        assert!(glob_match(b"busy*", b"busybox"));
        assert!(glob_match(b"*:v1", b"bb:v1"));
        assert!(!glob_match(b"*", b"myrepo/bb"));
        assert!(glob_match(b"myrepo/*", b"myrepo/bb"));
        assert!(glob_match(b"b?", b"bb"));
        assert!(!glob_match(b"b?", b"bbb"));
    }

    fn tar_with(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, link, data) in entries {
            let mut h = tar::Header::new_ustar();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(data.len() as u64);
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    async fn service() -> (tempfile::TempDir, ImageService) {
        assert!(nix::unistd::geteuid().is_root(), "these tests mount snapshots: run them as root");
        let tmp = tempfile::tempdir().expect("tmp");
        let sn = strata_drivers::registry::open("vfs", &tmp.path().join("vfs"), &BTreeMap::new()).expect("vfs driver");
        let svc = ImageService::open(&tmp.path().join("images"), sn, EventBus::new()).expect("image service");
        (tmp, svc)
    }

    async fn upload(svc: &ImageService, data: Vec<u8>) -> Upload {
        let stream = futures::stream::iter(vec![Ok::<Bytes, std::io::Error>(Bytes::from(data))]);
        svc.spool(stream).await.expect("spool")
    }

    fn docker_archive(layers: &[Vec<u8>]) -> Vec<u8> {
        let diffs: Vec<String> =
            layers.iter().map(|l| format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(l)))).collect();
        let config = serde_json::json!({"rootfs": {"type": "layers", "diff_ids": diffs}}).to_string();
        let mut entries: Vec<(String, Vec<u8>)> = vec![("c.json".into(), config.into_bytes())];
        let names: Vec<String> = (0..layers.len()).map(|i| format!("l{i}.tar")).collect();
        for (n, l) in names.iter().zip(layers) {
            entries.push((n.clone(), l.clone()));
        }
        let manifest = serde_json::json!([{"Config": "c.json", "RepoTags": ["t:1"], "Layers": names}]).to_string();
        entries.push(("manifest.json".into(), manifest.into_bytes()));
        let refs: Vec<(&str, tar::EntryType, &str, &[u8])> =
            entries.iter().map(|(n, d)| (n.as_str(), tar::EntryType::Regular, "", d.as_slice())).collect();
        tar_with(&refs)
    }

    #[tokio::test]
    async fn refused_import_and_failed_load_leave_no_snapshot_or_layer() {
        let (tmp, svc) = service().await;
        let canary = tmp.path().join("canary");
        std::fs::create_dir(&canary).expect("canary");
        let target = canary.display().to_string();
        let evil = tar_with(&[
            ("ok", tar::EntryType::Regular, "", b"fine"),
            ("link", tar::EntryType::Symlink, target.as_str(), b""),
            ("link/pwned", tar::EntryType::Regular, "", b"x"),
        ]);
        let up = upload(&svc, evil.clone()).await;
        let err = svc.import(&up, ImportOptions::default()).await.expect_err("hostile import");
        assert!(matches!(err, EngineError::InvalidArgument(_)), "{err:?}");
        assert!(svc.snapshotter.list(&[]).await.expect("list").is_empty());
        assert_eq!(std::fs::read_dir(&canary).expect("canary").count(), 0);

        let good = tar_with(&[("a", tar::EntryType::Regular, "", b"a")]);
        let up = upload(&svc, docker_archive(&[good.clone(), evil])).await;
        let err = svc.load(&up).await.expect_err("hostile load");
        assert!(err.message().contains("layer 2"), "{err:?}");
        assert!(svc.snapshotter.list(&[]).await.expect("list").is_empty(), "the good layer is rolled back");
        assert_eq!(svc.store().layers().count(), 0);
        assert_eq!(svc.count(), 0);

        let up = upload(&svc, docker_archive(&[good])).await;
        let messages = svc.load(&up).await.expect("load");
        assert!(matches!(&messages[..], [LoadMessage::Layer { tar_size, .. }, LoadMessage::Line(l)] if *tar_size > 0 && l == "Loaded image: t:1"), "{messages:?}");
        assert_eq!(svc.snapshotter.list(&[]).await.expect("list").len(), 1);
        let removed = svc.remove("t:1", false).await.expect("remove");
        assert_eq!(removed.len(), 3, "untagged, deleted image, deleted layer: {removed:?}");
        assert!(svc.snapshotter.list(&[]).await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn recovery_removes_interrupted_unpacks_and_unused_layers() {
        let (_tmp, svc) = service().await;
        let good = tar_with(&[("a", tar::EntryType::Regular, "", b"a")]);
        let up = upload(&svc, good).await;
        let id = svc.import(&up, ImportOptions { repo: Some("keep:1".into()), ..Default::default() }).await.expect("import");

        // What a crash mid-load leaves: an active unpack of another process
        // and a committed layer no image uses.
        let sn = svc.snapshotter.clone();
        let mounts =
            sn.prepare(&format!("{}1-0 sha256:x", layer::EXTRACT_PREFIX), "", Default::default()).await.expect("prepare");
        // Its mount, as a killed daemon leaves it.
        let stale = strata_snapshotter::mount::TempMount::new_in(&mounts, &svc.store().tmp_dir()).expect("mount");
        let stale_dir = stale.path().to_path_buf();
        std::mem::forget(stale);
        // Whatever the outcome, nothing stays mounted after the test.
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                if strata_snapshotter::mount::is_mounted(&self.0).unwrap_or(false) {
                    let _ = strata_snapshotter::mount::unmount(&self.0);
                }
            }
        }
        let _guard = Unmount(stale_dir.clone());
        assert!(strata_snapshotter::mount::is_mounted(&stale_dir).expect("mountinfo"));
        let orphan = format!("sha256:{}", "e".repeat(64));
        sn.prepare("k", "", Default::default()).await.expect("prepare");
        sn.commit(&orphan, "k", Default::default()).await.expect("commit");
        svc.store()
            .put_layer(LayerRecord { chain_id: orphan.clone(), diff_id: orphan.clone(), parent: None, size: 1, tar_size: 1 })
            .expect("record");
        std::fs::write(svc.store().blob_path(&orphan), b"x").expect("blob");

        // The next start recovers before its first change.
        let svc = ImageService::open(&svc.dir, sn.clone(), EventBus::new()).expect("reopen");
        assert!(svc.store().layer(&orphan).is_some(), "the record was persisted");
        svc.tag("keep:1", "keep", Some("2")).await.expect("tag");
        let names: Vec<String> = sn.list(&[]).await.expect("list").into_iter().map(|i| i.name).collect();
        let chain = svc.store().image(&id).expect("image kept").chain_ids().to_vec();
        assert_eq!(names, chain, "only the image's layer remains");
        assert!(svc.store().layer(&orphan).is_none());
        assert!(!svc.store().blob_path(&orphan).exists());
        assert!(svc.store().blob_path(&chain[0]).exists(), "the image's own blob stays");
        assert!(!stale_dir.exists(), "the stale mount is unmounted and its directory removed");
    }

    #[tokio::test]
    async fn commit_stacks_a_layer_on_the_parent_image() {
        let (tmp, svc) = service().await;
        let base = tar_with(&[("a", tar::EntryType::Regular, "", b"a")]);
        let up = upload(&svc, base).await;
        let parent = svc
            .import(&up, ImportOptions { repo: Some("base".into()), changes: vec!["CMD [\"sh\"]".into()], ..Default::default() })
            .await
            .expect("import");
        let layer = tmp.path().join("changes.tar");
        std::fs::write(&layer, tar_with(&[("b", tar::EntryType::Regular, "", b"b"), (".wh.a", tar::EntryType::Regular, "", b"")]))
            .expect("layer");
        let mut config = Map::new();
        config.insert("Cmd".into(), serde_json::json!(["echo", "hi"]));
        let opts = CommitOptions {
            parent: Some("base:latest".into()),
            repo: Some("docker.io/library/child".into()),
            tag: Some("v1".into()),
            config,
            comment: "a commit".into(),
            author: "me".into(),
            created_by: "sh -c touch b".into(),
            container: "c0ffee".into(),
            container_config: Some(serde_json::json!({"Image": "base:latest"})),
        };
        let id = svc.commit(&layer, opts).await.expect("commit");
        let d = svc.inspect("child:v1").expect("inspect");
        assert_eq!(d.summary.id, id);
        assert_eq!(d.view.rootfs.diff_ids.len(), 2);
        assert_eq!(d.view.rootfs.diff_ids[0], svc.inspect(&parent).expect("parent").view.rootfs.diff_ids[0]);
        assert_eq!(d.view.author.as_deref(), Some("me"));
        assert_eq!(d.view.container.as_deref(), Some("c0ffee"));
        assert_eq!(d.view.container_config, Some(serde_json::json!({"Image": "base:latest"})));
        assert_eq!(d.parent.as_deref(), Some(svc.resolve(&parent).expect("parent id").as_str()));
        assert_eq!(svc.inspect(&parent).expect("parent").parent, None, "an imported image has no parent");
        let h = svc.history("child:v1").expect("history");
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].created_by.as_str(), h[0].comment.as_str()), ("sh -c touch b", "a commit"));
        assert_eq!(h[0].size, 1, "one byte added");
        let snaps = svc.snapshotter.list(&[]).await.expect("list");
        assert_eq!(snaps.len(), 2, "the parent's layer is shared: {snaps:?}");
        let events: Vec<String> = svc.events.history().iter().map(|e| e.action.clone()).collect();
        assert_eq!(events, vec!["tag", "import", "tag", "create"]);
        let err = svc.commit(&layer, CommitOptions { parent: Some("nosuch".into()), ..Default::default() }).await;
        assert!(matches!(err, Err(EngineError::NotFound(_))), "{err:?}");
    }

    #[test]
    fn until_accepts_unix_and_rfc3339() {
        assert_eq!(parse_until("1700000000").expect("unix"), 1_700_000_000);
        assert_eq!(parse_until("1700000000.5").expect("frac"), 1_700_000_000);
        assert_eq!(parse_until("1970-01-01T00:01:00Z").expect("rfc"), 60);
        assert!(parse_until("soon").is_err());
    }
}
