//! The persisted image metadata of one storage driver.
//!
//! Layout under the store directory:
//! - `imagedb/<hex>`: image configs, byte for byte; `sha256:<hex>` is the
//!   image ID and the file name's digest is checked on load.
//! - `imagedb-meta/<hex>.json`: what the engine knows about an image beyond
//!   its config (when it was last tagged).
//! - `layerdb/<chain hex>.json`: one record per unpacked layer (its chain ID,
//!   DiffID, parent and sizes); the layer itself is the committed snapshot
//!   named by its chain ID.
//! - `blobs/sha256/<diff hex>`: the uncompressed layer tarballs, so `save`
//!   exports exactly the bytes whose digest is the DiffID.
//! - `repositories.json`: references (`docker.io/library/busybox:latest`)
//!   to image IDs, and each image's last tag time.
//! - `repositories.log`: reference changes made since `repositories.json`
//!   was last written, one JSON line each, appended and `fdatasync`ed before
//!   the change is acknowledged (a tag costs one flush of one file instead
//!   of a rewrite and a rename). Replayed over `repositories.json` on open;
//!   folded into it (atomic rewrite, then the log is emptied) every
//!   [`COMPACT_AFTER`] changes and on open. Replaying a log that was already
//!   folded in gives the same state again, so a crash between the two steps
//!   is harmless; a torn last line (a crash mid-append, never acknowledged)
//!   is dropped.
//! - `tmp/`: uploads and blobs being written; emptied on open.
//!
//! Every other file is written atomically (temp file, fsync, rename, fsync
//! of the directory), so a crash leaves either the old or the new state.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::{is_sha256_digest, ConfigView};

/// A store failure: always an I/O or corruption problem of the engine.
#[derive(Debug, thiserror::Error)]
#[error("image store: {0}")]
pub struct StoreError(pub String);

fn io_err(context: impl std::fmt::Display, e: std::io::Error) -> StoreError {
    StoreError(format!("{context}: {e}"))
}

/// One unpacked layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub chain_id: String,
    pub diff_id: String,
    /// The parent's chain ID; `None` for a bottom layer.
    pub parent: Option<String>,
    /// Sum of the regular files' sizes.
    pub size: u64,
    /// Length of the uncompressed tarball.
    pub tar_size: u64,
}

/// Per-image facts that are not in the config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// Unix seconds of the last tag operation, if any.
    #[serde(default)]
    pub last_tag_time: Option<i64>,
    /// The image a commit was made on (Docker's `Parent`), if any.
    #[serde(default)]
    pub parent: Option<String>,
}

/// An image known to the store.
#[derive(Debug, Clone)]
pub struct StoredImage {
    /// `sha256:<hex>` of `config`.
    pub id: String,
    pub config: Vec<u8>,
    pub view: ConfigView,
    pub meta: ImageMeta,
    /// The chain IDs of `view`'s layers (computed once: listings ask often).
    chains: Vec<String>,
}

impl StoredImage {
    fn new(id: String, config: Vec<u8>, view: ConfigView, meta: ImageMeta) -> StoredImage {
        let chains = super::layer::chain_ids(&view.rootfs.diff_ids);
        StoredImage { id, config, view, meta, chains }
    }

    /// The chain IDs of the image's layers, bottom first.
    pub fn chain_ids(&self) -> &[String] {
        &self.chains
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RepositoriesFile {
    /// Full reference to image ID.
    references: BTreeMap<String, String>,
    /// Image ID to the Unix seconds of its last tag operation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    last_tag_times: BTreeMap<String, i64>,
}

/// One change of the references, as a line of `repositories.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RefChange {
    /// `reference` points at `id`; `time` is the image's new last tag time.
    Set {
        reference: String,
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        time: Option<i64>,
    },
    Remove { reference: String },
}

/// Reference changes logged before `repositories.json` is rewritten.
pub const COMPACT_AFTER: usize = 256;

const REFS_FILE: &str = "repositories.json";
const REFS_LOG: &str = "repositories.log";

/// The image store: an in-memory copy of the directory, written through.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    images: BTreeMap<String, StoredImage>,
    refs: BTreeMap<String, String>,
    /// `refs` inverted: image ID to its references.
    refs_of: BTreeMap<String, BTreeSet<String>>,
    layers: BTreeMap<String, LayerRecord>,
    /// `repositories.log`, open for appending, and its length.
    refs_log: Option<File>,
    refs_log_len: u64,
    /// Changes in the log since the last rewrite of `repositories.json`.
    logged: usize,
}

fn hex_of(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

/// Writes `data` to `path` atomically and durably.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().ok_or_else(|| StoreError(format!("{} has no parent", path.display())))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| io_err(format!("create {}", tmp.display()), e))?;
        f.write_all(data).map_err(|e| io_err(format!("write {}", tmp.display()), e))?;
        f.sync_all().map_err(|e| io_err(format!("sync {}", tmp.display()), e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_err(format!("rename to {}", path.display()), e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// fsyncs a directory so a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(format!("sync {}", dir.display()), e))
}

fn remove_durably(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("remove {}", path.display()), e)),
    }
    match path.parent() {
        Some(d) => sync_dir(d),
        None => Ok(()),
    }
}

impl Store {
    /// Opens the store in `dir`, creating it when absent, and loads every
    /// record. Leftovers of interrupted writes are removed.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        for sub in ["imagedb", "imagedb-meta", "layerdb", "blobs/sha256", "tmp"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| io_err(format!("create {}", p.display()), e))?;
        }
        let tmp = dir.join("tmp");
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let mut store = Store {
            dir: dir.to_path_buf(),
            images: BTreeMap::new(),
            refs: BTreeMap::new(),
            refs_of: BTreeMap::new(),
            layers: BTreeMap::new(),
            refs_log: None,
            refs_log_len: 0,
            logged: 0,
        };

        for entry in read_dir(&dir.join("layerdb"))? {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let Some(hex) = name.strip_suffix(".json") else { continue };
            let bytes = std::fs::read(entry.path()).map_err(|e| io_err(format!("read {}", entry.path().display()), e))?;
            let rec: LayerRecord = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError(format!("corrupt layer record {}: {e}", entry.path().display())))?;
            if hex_of(&rec.chain_id) != hex {
                return Err(StoreError(format!("layer record {} names {}", entry.path().display(), rec.chain_id)));
            }
            store.layers.insert(rec.chain_id.clone(), rec);
        }

        for entry in read_dir(&dir.join("imagedb"))? {
            let Some(hex) = entry.file_name().to_str().map(str::to_owned) else { continue };
            if hex.starts_with('.') {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let config = std::fs::read(entry.path()).map_err(|e| io_err(format!("read {}", entry.path().display()), e))?;
            let id = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
            if hex_of(&id) != hex {
                tracing::warn!(path = %entry.path().display(), "image config does not match its digest; ignored");
                continue;
            }
            let view = match ConfigView::parse(&config) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "unreadable image config; ignored");
                    continue;
                }
            };
            let meta_path = dir.join("imagedb-meta").join(format!("{hex}.json"));
            let meta = match std::fs::read(&meta_path) {
                Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
                Err(_) => ImageMeta::default(),
            };
            store.images.insert(id.clone(), StoredImage::new(id, config, view, meta));
        }

        let repos = dir.join(REFS_FILE);
        match std::fs::read(&repos) {
            Ok(bytes) => {
                let file: RepositoriesFile = serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError(format!("corrupt {}: {e}", repos.display())))?;
                for (reference, id) in file.references {
                    store.point(reference, id);
                }
                for (id, unix) in file.last_tag_times {
                    if let Some(img) = store.images.get_mut(&id) {
                        img.meta.last_tag_time = Some(unix);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("read {}", repos.display()), e)),
        }
        store.open_refs_log()?;
        Ok(store)
    }

    /// Replays `repositories.log` over the references read from
    /// `repositories.json`, folds it into that file, and opens it empty for
    /// appending.
    fn open_refs_log(&mut self) -> Result<(), StoreError> {
        let path = self.dir.join(REFS_LOG);
        let existed = match std::fs::read(&path) {
            Ok(bytes) => {
                let mut lines = bytes.split_inclusive(|b| *b == b'\n').peekable();
                while let Some(line) = lines.next() {
                    let last = lines.peek().is_none();
                    match serde_json::from_slice::<RefChange>(line) {
                        Ok(change) if line.ends_with(b"\n") => self.apply(change),
                        // A torn last line was never acknowledged.
                        _ if last => tracing::warn!(path = %path.display(), "dropping an incomplete last line"),
                        Ok(_) | Err(_) => {
                            return Err(StoreError(format!(
                                "corrupt {}: unreadable line {:?}",
                                path.display(),
                                String::from_utf8_lossy(line)
                            )))
                        }
                    }
                }
                if !bytes.is_empty() {
                    self.write_refs_file()?;
                }
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_err(format!("read {}", path.display()), e)),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_err(format!("open {}", path.display()), e))?;
        log.set_len(0).map_err(|e| io_err(format!("truncate {}", path.display()), e))?;
        log.sync_data().map_err(|e| io_err(format!("sync {}", path.display()), e))?;
        if !existed {
            sync_dir(&self.dir)?;
        }
        self.refs_log = Some(log);
        self.refs_log_len = 0;
        self.logged = 0;
        Ok(())
    }

    /// Applies a logged change to the in-memory state; references to images
    /// that are gone are dropped.
    fn apply(&mut self, change: RefChange) {
        match change {
            RefChange::Set { reference, id, time } => {
                if let Some(img) = self.images.get_mut(&id) {
                    if time.is_some() {
                        img.meta.last_tag_time = time;
                    }
                }
                self.point(reference, id);
            }
            RefChange::Remove { reference } => self.unpoint(&reference),
        }
    }

    /// Points `reference` at `id` in memory (both maps); a reference to an
    /// unknown image is dropped.
    fn point(&mut self, reference: String, id: String) {
        self.unpoint(&reference);
        if self.images.contains_key(&id) {
            self.refs_of.entry(id.clone()).or_default().insert(reference.clone());
            self.refs.insert(reference, id);
        }
    }

    fn unpoint(&mut self, reference: &str) {
        if let Some(old) = self.refs.remove(reference) {
            if let Some(set) = self.refs_of.get_mut(&old) {
                set.remove(reference);
                if set.is_empty() {
                    self.refs_of.remove(&old);
                }
            }
        }
    }

    /// Makes `changes` durable (appended to the log and flushed), then
    /// applies them. On failure nothing is applied and the log is cut back.
    fn record(&mut self, changes: Vec<RefChange>) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for c in &changes {
            serde_json::to_writer(&mut buf, c).map_err(|e| StoreError(e.to_string()))?;
            buf.push(b'\n');
        }
        let path = self.dir.join(REFS_LOG);
        let Some(log) = self.refs_log.as_mut() else {
            return Err(StoreError(format!("{} is not open", path.display())));
        };
        let start = self.refs_log_len;
        let written = log
            .seek(std::io::SeekFrom::Start(start))
            .and_then(|_| log.write_all(&buf))
            .and_then(|()| log.sync_data());
        if let Err(e) = written {
            if let Err(cut) = log.set_len(start).and_then(|()| log.sync_data()) {
                tracing::error!(path = %path.display(), error = %cut, "cannot cut a failed append off the reference log");
            }
            return Err(io_err(format!("append to {}", path.display()), e));
        }
        self.refs_log_len = start + buf.len() as u64;
        self.logged += changes.len();
        for c in changes {
            self.apply(c);
        }
        if self.logged >= COMPACT_AFTER {
            // The changes are already durable: a failed rewrite only leaves
            // a longer log, folded in on the next try or the next open.
            if let Err(e) = self.compact() {
                tracing::warn!(error = %e, "cannot fold the reference log into {REFS_FILE}");
            }
        }
        Ok(())
    }

    /// Rewrites `repositories.json` from memory, then empties the log.
    fn compact(&mut self) -> Result<(), StoreError> {
        self.write_refs_file()?;
        let path = self.dir.join(REFS_LOG);
        if let Some(log) = self.refs_log.as_mut() {
            log.set_len(0)
                .and_then(|()| log.sync_data())
                .map_err(|e| io_err(format!("truncate {}", path.display()), e))?;
        }
        self.refs_log_len = 0;
        self.logged = 0;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A scratch directory on the same filesystem as the store.
    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// Where the uncompressed tarball of the layer with this DiffID lives.
    pub fn blob_path(&self, diff_id: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(hex_of(diff_id))
    }

    pub fn images(&self) -> impl Iterator<Item = &StoredImage> {
        self.images.values()
    }

    pub fn image(&self, id: &str) -> Option<&StoredImage> {
        self.images.get(id)
    }

    pub fn image_count(&self) -> usize {
        self.images.len()
    }

    pub fn layer(&self, chain_id: &str) -> Option<&LayerRecord> {
        self.layers.get(chain_id)
    }

    pub fn layers(&self) -> impl Iterator<Item = &LayerRecord> {
        self.layers.values()
    }

    /// Every reference, full form, with its image ID.
    pub fn references(&self) -> &BTreeMap<String, String> {
        &self.refs
    }

    /// The references of one image, full form, sorted.
    pub fn references_of(&self, id: &str) -> Vec<String> {
        self.refs_of.get(id).map(|set| set.iter().cloned().collect()).unwrap_or_default()
    }

    pub fn resolve_reference(&self, full: &str) -> Option<&str> {
        self.refs.get(full).map(String::as_str)
    }

    /// The images whose ID starts with `prefix` (hex, without `sha256:`).
    pub fn ids_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.images.keys().filter(|id| hex_of(id).starts_with(prefix)).cloned().collect()
    }

    /// Records an unpacked layer.
    pub fn put_layer(&mut self, rec: LayerRecord) -> Result<(), StoreError> {
        let path = self.dir.join("layerdb").join(format!("{}.json", hex_of(&rec.chain_id)));
        let bytes = serde_json::to_vec_pretty(&rec).map_err(|e| StoreError(e.to_string()))?;
        write_atomic(&path, &bytes)?;
        self.layers.insert(rec.chain_id.clone(), rec);
        Ok(())
    }

    /// Forgets a layer (its snapshot is removed by the caller) and deletes
    /// its blob when no other layer has the same DiffID.
    pub fn remove_layer(&mut self, chain_id: &str) -> Result<(), StoreError> {
        let Some(rec) = self.layers.remove(chain_id) else { return Ok(()) };
        remove_durably(&self.dir.join("layerdb").join(format!("{}.json", hex_of(chain_id))))?;
        if !self.layers.values().any(|l| l.diff_id == rec.diff_id) {
            remove_durably(&self.blob_path(&rec.diff_id))?;
        }
        Ok(())
    }

    /// Stores an image config (its ID is its digest) and returns the ID.
    pub fn put_image(&mut self, config: Vec<u8>, view: ConfigView) -> Result<String, StoreError> {
        let id = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
        if !self.images.contains_key(&id) {
            write_atomic(&self.dir.join("imagedb").join(hex_of(&id)), &config)?;
            self.images.insert(id.clone(), StoredImage::new(id.clone(), config, view, ImageMeta::default()));
        }
        Ok(id)
    }

    /// Deletes an image's config and references (not its layers).
    pub fn remove_image(&mut self, id: &str) -> Result<(), StoreError> {
        let gone = self.references_of(id).into_iter().map(|reference| RefChange::Remove { reference }).collect();
        self.record(gone)?;
        remove_durably(&self.dir.join("imagedb-meta").join(format!("{}.json", hex_of(id))))?;
        remove_durably(&self.dir.join("imagedb").join(hex_of(id)))?;
        self.images.remove(id);
        Ok(())
    }

    /// Points `full` at image `id`; returns the image it pointed at before.
    pub fn set_reference(&mut self, full: &str, id: &str) -> Result<Option<String>, StoreError> {
        if !is_sha256_digest(id) || !self.images.contains_key(id) {
            return Err(StoreError(format!("no image {id} to reference")));
        }
        let old = self.refs.get(full).cloned();
        self.record(vec![RefChange::Set { reference: full.to_string(), id: id.to_string(), time: None }])?;
        Ok(old.filter(|o| o != id))
    }

    /// Removes a reference; returns the image it pointed at.
    pub fn remove_reference(&mut self, full: &str) -> Result<Option<String>, StoreError> {
        let old = self.refs.get(full).cloned();
        if old.is_some() {
            self.record(vec![RefChange::Remove { reference: full.to_string() }])?;
        }
        Ok(old)
    }

    /// Points `full` at image `id` and records `unix` as the image's last
    /// tag time, in one atomic write; returns the image `full` pointed at
    /// before.
    pub fn tag(&mut self, full: &str, id: &str, unix: i64) -> Result<Option<String>, StoreError> {
        if !is_sha256_digest(id) || !self.images.contains_key(id) {
            return Err(StoreError(format!("no image {id} to reference")));
        }
        let old = self.refs.get(full).cloned();
        self.record(vec![RefChange::Set { reference: full.to_string(), id: id.to_string(), time: Some(unix) }])?;
        Ok(old.filter(|o| o != id))
    }

    /// Records the image `id` was committed on.
    pub fn set_parent(&mut self, id: &str, parent: &str) -> Result<(), StoreError> {
        let Some(img) = self.images.get_mut(id) else { return Ok(()) };
        img.meta.parent = Some(parent.to_string());
        self.write_meta(id)
    }

    fn write_meta(&self, id: &str) -> Result<(), StoreError> {
        let Some(img) = self.images.get(id) else { return Ok(()) };
        let bytes = serde_json::to_vec(&img.meta).map_err(|e| StoreError(e.to_string()))?;
        write_atomic(&self.dir.join("imagedb-meta").join(format!("{}.json", hex_of(id))), &bytes)
    }

    fn write_refs_file(&self) -> Result<(), StoreError> {
        let last_tag_times =
            self.images.values().filter_map(|img| img.meta.last_tag_time.map(|t| (img.id.clone(), t))).collect();
        let file = RepositoriesFile { references: self.refs.clone(), last_tag_times };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| StoreError(e.to_string()))?;
        write_atomic(&self.dir.join(REFS_FILE), &bytes)
    }
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>, StoreError> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_err(format!("read {}", dir.display()), e))?;
    rd.collect::<Result<Vec<_>, _>>().map_err(|e| io_err(format!("read {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(n: u8) -> (Vec<u8>, ConfigView) {
        let diff = format!("sha256:{}", hex::encode([n; 32]));
        let bytes = format!(r#"{{"created":"2024-01-01T00:00:00Z","rootfs":{{"type":"layers","diff_ids":["{diff}"]}}}}"#).into_bytes();
        let view = ConfigView::parse(&bytes).expect("view");
        (bytes, view)
    }

    #[test]
    fn everything_survives_a_reopen() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (bytes, view) = config(1);
        let diff = view.rootfs.diff_ids[0].clone();
        let id = {
            let mut s = Store::open(tmp.path()).expect("open");
            s.put_layer(LayerRecord { chain_id: diff.clone(), diff_id: diff.clone(), parent: None, size: 10, tar_size: 2048 })
                .expect("layer");
            let id = s.put_image(bytes.clone(), view).expect("image");
            assert_eq!(s.tag("docker.io/library/a:latest", &id, 41).expect("tag"), None);
            assert_eq!(s.tag("docker.io/library/a:1", &id, 42).expect("tag"), None);
            s.set_parent(&id, "sha256:00").expect("parent");
            id
        };
        let s = Store::open(tmp.path()).expect("reopen");
        let img = s.image(&id).expect("image persisted");
        assert_eq!(img.config, bytes);
        assert_eq!(img.meta.last_tag_time, Some(42));
        assert_eq!(img.meta.parent.as_deref(), Some("sha256:00"));
        assert_eq!(s.resolve_reference("docker.io/library/a:latest"), Some(id.as_str()));
        assert_eq!(s.resolve_reference("docker.io/library/a:1"), Some(id.as_str()));
        assert_eq!(s.layer(&diff).expect("layer").size, 10);
        assert_eq!(s.ids_with_prefix(&hex_of(&id)[..6]), vec![id.clone()]);
    }

    #[test]
    fn retagging_reports_the_previous_image_and_removal_forgets() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut s = Store::open(tmp.path()).expect("open");
        let (b1, v1) = config(1);
        let (b2, v2) = config(2);
        let a = s.put_image(b1, v1).expect("a");
        let b = s.put_image(b2, v2).expect("b");
        s.set_reference("docker.io/library/x:1", &a).expect("ref");
        assert_eq!(s.set_reference("docker.io/library/x:1", &b).expect("retag"), Some(a.clone()));
        assert!(s.set_reference("docker.io/library/x:2", "sha256:nope").is_err());
        s.remove_image(&b).expect("remove");
        assert!(s.references().is_empty());
        let s = Store::open(tmp.path()).expect("reopen");
        assert!(s.image(&b).is_none());
        assert!(s.image(&a).is_some());
    }

    #[test]
    fn reference_changes_are_logged_replayed_and_folded() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (b1, v1) = config(1);
        let (b2, v2) = config(2);
        let (a, b) = {
            let mut s = Store::open(tmp.path()).expect("open");
            let a = s.put_image(b1, v1).expect("a");
            let b = s.put_image(b2, v2).expect("b");
            s.tag("docker.io/library/x:1", &a, 7).expect("tag");
            s.tag("docker.io/library/x:2", &a, 8).expect("tag");
            s.tag("docker.io/library/y:1", &b, 9).expect("tag");
            s.remove_reference("docker.io/library/x:2").expect("untag");
            assert_eq!(s.set_reference("docker.io/library/x:1", &b).expect("retag"), Some(a.clone()));
            (a, b)
        };
        let log = tmp.path().join(REFS_LOG);
        let logged = std::fs::read(&log).expect("log");
        assert_eq!(logged.iter().filter(|c| **c == b'\n').count(), 5, "one line per change");

        // Replayed on open, then folded into repositories.json.
        let s = Store::open(tmp.path()).expect("reopen");
        let expect = |s: &Store| {
            assert_eq!(s.resolve_reference("docker.io/library/x:1"), Some(b.as_str()));
            assert_eq!(s.resolve_reference("docker.io/library/x:2"), None);
            assert_eq!(s.resolve_reference("docker.io/library/y:1"), Some(b.as_str()));
            assert_eq!(s.image(&a).expect("a").meta.last_tag_time, Some(8));
            assert_eq!(s.image(&b).expect("b").meta.last_tag_time, Some(9));
        };
        expect(&s);
        drop(s);
        assert_eq!(std::fs::metadata(&log).expect("log").len(), 0, "folded on open");

        // A crash after the fold but before the log was emptied replays
        // changes that are already in repositories.json: same state.
        std::fs::write(&log, &logged).expect("put the old log back");
        expect(&Store::open(tmp.path()).expect("reopen"));

        // A torn last line (never acknowledged) is dropped.
        let mut torn = logged.clone();
        torn.extend_from_slice(br#"{"remove":{"reference":"docker.io/lib"#);
        std::fs::write(&log, &torn).expect("torn");
        expect(&Store::open(tmp.path()).expect("reopen with a torn line"));

        // Garbage before the last line is corruption, not silently skipped.
        let mut bad = b"not json\n".to_vec();
        bad.extend_from_slice(&logged);
        std::fs::write(&log, &bad).expect("bad");
        let err = Store::open(tmp.path()).expect_err("corrupt log");
        assert!(err.to_string().contains("repositories.log"), "{err}");
    }

    #[test]
    fn the_reference_log_is_folded_after_enough_changes() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (b1, v1) = config(1);
        let mut s = Store::open(tmp.path()).expect("open");
        let a = s.put_image(b1, v1).expect("a");
        for i in 0..COMPACT_AFTER + 3 {
            s.tag(&format!("docker.io/library/x:{i}"), &a, i as i64).expect("tag");
        }
        let log = std::fs::read(tmp.path().join(REFS_LOG)).expect("log");
        assert_eq!(log.iter().filter(|c| **c == b'\n').count(), 3, "the log restarts after a fold");
        let file: RepositoriesFile =
            serde_json::from_slice(&std::fs::read(tmp.path().join(REFS_FILE)).expect("refs")).expect("json");
        assert_eq!(file.references.len(), COMPACT_AFTER);
        drop(s);
        let s = Store::open(tmp.path()).expect("reopen");
        assert_eq!(s.references().len(), COMPACT_AFTER + 3);
        assert_eq!(s.image(&a).expect("a").meta.last_tag_time, Some(COMPACT_AFTER as i64 + 2));
    }

}
