//! Image archives: reading what `docker save` (docker-archive) and OCI image
//! layouts hold, and writing an archive that both formats can read.
//!
//! An uploaded archive is spooled to a file first (the manifest may come
//! after the layers), then indexed: member names map to byte ranges of that
//! file, so layers are read in place and nothing of the archive is ever
//! extracted to disk. Symlinked members (Docker 25+ writes
//! `<id>/layer.tar -> ../blobs/sha256/…`) are resolved by name, inside the
//! archive only.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::config::is_sha256_digest;

/// The most bytes a JSON member (manifest, index, config) may have.
const MAX_JSON: u64 = 64 * 1024 * 1024;

/// Why an archive cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive is malformed or incomplete.
    #[error("invalid image archive: {0}")]
    Invalid(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn invalid(msg: impl Into<String>) -> ArchiveError {
    ArchiveError::Invalid(msg.into())
}

#[derive(Debug, Clone)]
enum Member {
    File { offset: u64, size: u64 },
    Symlink(String),
    Dir,
}

/// A spooled, uncompressed tar archive indexed by member name.
#[derive(Debug)]
pub struct ArchiveIndex {
    path: PathBuf,
    members: BTreeMap<String, Member>,
}

/// Normalises a member name lexically (`./a/../b` is `b`); `None` when it
/// leaves the archive.
fn normalize(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// If the file at `path` is gzip, decompresses it into `path` + `.tar` and
/// returns that path; otherwise returns `path`.
pub fn ungzip_in_place(path: &Path) -> Result<PathBuf, ArchiveError> {
    let mut f = File::open(path).map_err(|e| ArchiveError::Io { context: format!("open {}", path.display()), source: e })?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(|e| ArchiveError::Io { context: "read the archive".into(), source: e })?;
    if n < 2 || magic != [0x1f, 0x8b] {
        return Ok(path.to_path_buf());
    }
    f.seek(SeekFrom::Start(0)).map_err(|e| ArchiveError::Io { context: "seek the archive".into(), source: e })?;
    let out_path = path.with_extension("tar");
    let mut out = File::create(&out_path).map_err(|e| ArchiveError::Io { context: format!("create {}", out_path.display()), source: e })?;
    let mut dec = flate2::read::MultiGzDecoder::new(io::BufReader::new(f));
    if let Err(e) = io::copy(&mut dec, &mut out) {
        let _ = std::fs::remove_file(&out_path);
        return Err(invalid(format!("bad gzip data: {e}")));
    }
    Ok(out_path)
}

impl ArchiveIndex {
    /// Indexes the tar archive at `path`.
    pub fn build(path: &Path) -> Result<ArchiveIndex, ArchiveError> {
        let f = File::open(path).map_err(|e| ArchiveError::Io { context: format!("open {}", path.display()), source: e })?;
        let mut archive = tar::Archive::new(io::BufReader::new(f));
        let mut members = BTreeMap::new();
        let entries = archive.entries().map_err(|e| invalid(e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| invalid(e.to_string()))?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if raw.starts_with('/') {
                return Err(invalid(format!("member {raw:?} has an absolute path")));
            }
            let Some(name) = normalize(&raw) else {
                return Err(invalid(format!("member {raw:?} leaves the archive")));
            };
            let member = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    Member::File { offset: entry.raw_file_position(), size: entry.size() }
                }
                tar::EntryType::Directory => Member::Dir,
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .ok_or_else(|| invalid(format!("link {raw:?} without a target")))?;
                    if entry.header().entry_type() == tar::EntryType::Link {
                        // Hard links name their target from the archive root.
                        Member::Symlink(format!("/{target}"))
                    } else {
                        Member::Symlink(target)
                    }
                }
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
                other => return Err(invalid(format!("member {raw:?} has unsupported type {other:?}"))),
            };
            members.insert(name, member);
        }
        Ok(ArchiveIndex { path: path.to_path_buf(), members })
    }

    pub fn contains(&self, name: &str) -> bool {
        normalize(name).is_some_and(|n| self.members.contains_key(&n))
    }

    fn locate(&self, name: &str) -> Result<(u64, u64), ArchiveError> {
        let mut current = normalize(name).ok_or_else(|| invalid(format!("{name:?} leaves the archive")))?;
        for _ in 0..16 {
            match self.members.get(&current) {
                Some(Member::File { offset, size }) => return Ok((*offset, *size)),
                Some(Member::Symlink(target)) => {
                    let joined = if let Some(abs) = target.strip_prefix('/') {
                        abs.to_string()
                    } else {
                        match current.rsplit_once('/') {
                            Some((dir, _)) => format!("{dir}/{target}"),
                            None => target.clone(),
                        }
                    };
                    current = normalize(&joined).ok_or_else(|| invalid(format!("link {name:?} leaves the archive")))?;
                }
                Some(Member::Dir) => return Err(invalid(format!("{name:?} is a directory"))),
                None => return Err(invalid(format!("{name:?} is missing"))),
            }
        }
        Err(invalid(format!("too many links resolving {name:?}")))
    }

    /// A reader of one member's bytes.
    pub fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, ArchiveError> {
        let (offset, size) = self.locate(name)?;
        let mut f = File::open(&self.path).map_err(|e| ArchiveError::Io { context: format!("open {}", self.path.display()), source: e })?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| ArchiveError::Io { context: "seek the archive".into(), source: e })?;
        Ok(Box::new(io::BufReader::with_capacity(256 * 1024, f.take(size))))
    }

    /// A member read whole (for JSON documents).
    pub fn read(&self, name: &str) -> Result<Vec<u8>, ArchiveError> {
        let (_, size) = self.locate(name)?;
        if size > MAX_JSON {
            return Err(invalid(format!("{name:?} is too large ({size} bytes)")));
        }
        let mut out = Vec::with_capacity(size as usize);
        self.open(name)?
            .read_to_end(&mut out)
            .map_err(|e| ArchiveError::Io { context: format!("read {name}"), source: e })?;
        Ok(out)
    }

    /// Checks that a member's bytes hash to `digest`.
    pub fn verify(&self, name: &str, digest: &str) -> Result<(), ArchiveError> {
        let mut r = self.open(name)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = r.read(&mut buf).map_err(|e| ArchiveError::Io { context: format!("read {name}"), source: e })?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let actual = format!("sha256:{}", hex::encode(h.finalize()));
        if actual != digest {
            return Err(invalid(format!("{name} has digest {actual}, expected {digest}")));
        }
        Ok(())
    }
}

/// One image found in an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveImage {
    /// Member holding the config.
    pub config: String,
    /// The config's digest, when the archive states it (OCI).
    pub config_digest: Option<String>,
    /// Members holding the layers, bottom first.
    pub layers: Vec<String>,
    /// The layers' digests as stored, when the archive states them (OCI).
    pub layer_digests: Vec<Option<String>>,
    /// References to give the image, as written in the archive.
    pub tags: Vec<String>,
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct OciIndex {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

fn blob_member(digest: &str) -> Result<String, ArchiveError> {
    if !is_sha256_digest(digest) {
        return Err(invalid(format!("unsupported digest {digest:?}")));
    }
    Ok(format!("blobs/sha256/{}", &digest[7..]))
}

const INDEX_TYPES: [&str; 2] = ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

/// Lists the images of an archive: `manifest.json` (docker-archive) when
/// present, else the OCI `index.json`.
pub fn images_of(index: &ArchiveIndex) -> Result<Vec<ArchiveImage>, ArchiveError> {
    if index.contains("manifest.json") {
        let entries: Vec<DockerManifestEntry> = serde_json::from_slice(&index.read("manifest.json")?)
            .map_err(|e| invalid(format!("manifest.json: {e}")))?;
        return Ok(entries
            .into_iter()
            .map(|e| ArchiveImage {
                config: e.config,
                config_digest: None,
                layer_digests: vec![None; e.layers.len()],
                layers: e.layers,
                tags: e.repo_tags.unwrap_or_default(),
            })
            .collect());
    }
    if !index.contains("index.json") {
        return Err(invalid("neither manifest.json nor index.json found; is this a docker save or OCI archive?"));
    }
    let top: OciIndex =
        serde_json::from_slice(&index.read("index.json")?).map_err(|e| invalid(format!("index.json: {e}")))?;
    let mut out = Vec::new();
    for desc in top.manifests {
        let name = desc
            .annotations
            .get("io.containerd.image.name")
            .cloned()
            .or_else(|| desc.annotations.get("org.opencontainers.image.ref.name").filter(|n| n.contains(['/', ':'])).cloned());
        let manifest_desc = resolve_manifest(index, desc, 0)?;
        let member = blob_member(&manifest_desc.digest)?;
        index.verify(&member, &manifest_desc.digest)?;
        let m: OciManifest =
            serde_json::from_slice(&index.read(&member)?).map_err(|e| invalid(format!("manifest {}: {e}", manifest_desc.digest)))?;
        let mut layers = Vec::new();
        let mut digests = Vec::new();
        for l in &m.layers {
            layers.push(blob_member(&l.digest)?);
            digests.push(Some(l.digest.clone()));
        }
        out.push(ArchiveImage {
            config: blob_member(&m.config.digest)?,
            config_digest: Some(m.config.digest.clone()),
            layers,
            layer_digests: digests,
            tags: name.into_iter().collect(),
        });
    }
    Ok(out)
}

/// Follows nested indexes down to one image manifest, preferring this
/// machine's platform.
fn resolve_manifest(index: &ArchiveIndex, desc: Descriptor, depth: usize) -> Result<Descriptor, ArchiveError> {
    if !INDEX_TYPES.contains(&desc.media_type.as_str()) {
        return Ok(desc);
    }
    if depth > 4 {
        return Err(invalid("image indexes nested too deeply"));
    }
    let member = blob_member(&desc.digest)?;
    index.verify(&member, &desc.digest)?;
    let nested: OciIndex = serde_json::from_slice(&index.read(&member)?).map_err(|e| invalid(format!("index {}: {e}", desc.digest)))?;
    let arch = super::config::go_arch();
    let mut manifests = nested.manifests;
    let pos = manifests
        .iter()
        .position(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch))
        .unwrap_or(0);
    if manifests.is_empty() {
        return Err(invalid(format!("index {} lists no manifests", desc.digest)));
    }
    let chosen = manifests.swap_remove(pos);
    resolve_manifest(index, chosen, depth + 1)
}

/// What `save` writes for one image.
#[derive(Debug, Clone)]
pub struct SaveImage {
    pub id: String,
    pub config: Vec<u8>,
    /// (DiffID, path of the uncompressed layer tarball), bottom first.
    pub layers: Vec<(String, PathBuf)>,
    /// Full references (`docker.io/library/busybox:latest`) with their
    /// familiar forms.
    pub tags: Vec<(String, String)>,
}

fn append_bytes<W: Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data)
}

fn append_dir<W: Write>(b: &mut tar::Builder<W>, name: &str) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o755);
    h.set_size(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Directory);
    b.append_data(&mut h, name, io::empty())
}

/// Writes the images as one tar holding both the docker-archive layout
/// (`manifest.json`, `repositories`) and the OCI layout (`oci-layout`,
/// `index.json`, `blobs/sha256/…`), the way Docker 25+ saves. Layers are
/// stored uncompressed, so each layer blob's digest is its DiffID.
pub fn write_archive<W: Write>(out: W, images: &[SaveImage]) -> io::Result<W> {
    let mut b = tar::Builder::new(out);
    append_dir(&mut b, "blobs/")?;
    append_dir(&mut b, "blobs/sha256/")?;
    let mut written = std::collections::HashSet::new();
    let mut docker_manifest = Vec::new();
    let mut index_manifests = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for img in images {
        let config_hex = img.id.trim_start_matches("sha256:").to_string();
        if written.insert(config_hex.clone()) {
            append_bytes(&mut b, &format!("blobs/sha256/{config_hex}"), &img.config)?;
        }
        let mut layer_descs = Vec::new();
        let mut layer_paths = Vec::new();
        for (diff, path) in &img.layers {
            let hex = diff.trim_start_matches("sha256:").to_string();
            let f = File::open(path).map_err(|e| io::Error::new(e.kind(), format!("layer blob {}: {e}", path.display())))?;
            let size = f.metadata()?.len();
            if written.insert(hex.clone()) {
                let mut h = tar::Header::new_ustar();
                h.set_mode(0o644);
                h.set_size(size);
                h.set_mtime(0);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, format!("blobs/sha256/{hex}"), f)?;
            }
            layer_descs.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": diff,
                "size": size,
            }));
            layer_paths.push(format!("blobs/sha256/{hex}"));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": img.id,
                "size": img.config.len(),
            },
            "layers": layer_descs,
        });
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
        let manifest_hex = hex::encode(Sha256::digest(&manifest_bytes));
        if written.insert(manifest_hex.clone()) {
            append_bytes(&mut b, &format!("blobs/sha256/{manifest_hex}"), &manifest_bytes)?;
        }
        let descriptor = |annotations: serde_json::Value| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_hex}"),
                "size": manifest_bytes.len(),
                "annotations": annotations,
            })
        };
        if img.tags.is_empty() {
            index_manifests.push(descriptor(serde_json::json!({})));
        }
        for (full, familiar) in &img.tags {
            let tag = familiar.rsplit_once(':').map(|(_, t)| t.to_string()).unwrap_or_default();
            index_manifests.push(descriptor(serde_json::json!({
                "io.containerd.image.name": full,
                "org.opencontainers.image.ref.name": tag,
            })));
            if let Some((repo, tag)) = familiar.rsplit_once(':') {
                if let Some(top) = img.layers.last() {
                    repositories
                        .entry(repo.to_string())
                        .or_default()
                        .insert(tag.to_string(), top.0.trim_start_matches("sha256:").to_string());
                }
            }
        }
        docker_manifest.push(serde_json::json!({
            "Config": format!("blobs/sha256/{config_hex}"),
            "RepoTags": img.tags.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>(),
            "Layers": layer_paths,
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": index_manifests,
    });
    append_bytes(&mut b, "index.json", &serde_json::to_vec(&index).map_err(io::Error::other)?)?;
    append_bytes(&mut b, "manifest.json", &serde_json::to_vec(&docker_manifest).map_err(io::Error::other)?)?;
    append_bytes(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    if !repositories.is_empty() {
        append_bytes(&mut b, "repositories", &serde_json::to_vec(&repositories).map_err(io::Error::other)?)?;
    }
    b.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(members: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, link, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if !link.is_empty() {
                h.set_link_name(link).expect("link");
            }
            b.append_data(&mut h, name, *data).expect("append");
        }
        b.into_inner().expect("finish")
    }

    #[test]
    fn symlinked_members_resolve_inside_the_archive_only() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("a.tar");
        std::fs::write(
            &p,
            tar_of(&[
                ("blobs/sha256/abc", tar::EntryType::Regular, "", b"layer"),
                ("x/layer.tar", tar::EntryType::Symlink, "../blobs/sha256/abc", b""),
                ("evil", tar::EntryType::Symlink, "../../etc/passwd", b""),
                ("abs", tar::EntryType::Symlink, "/blobs/sha256/abc", b""),
            ]),
        )
        .expect("write");
        let idx = ArchiveIndex::build(&p).expect("index");
        assert_eq!(idx.read("x/layer.tar").expect("read"), b"layer");
        assert_eq!(idx.read("./x/layer.tar").expect("read"), b"layer");
        assert_eq!(idx.read("abs").expect("abs"), b"layer");
        assert!(idx.read("evil").is_err());
        assert!(idx.read("missing").is_err());
    }

    #[test]
    fn written_archive_reads_back_in_both_layouts() {
        let tmp = tempfile::tempdir().expect("tmp");
        let layer = tmp.path().join("layer");
        std::fs::write(&layer, b"pretend tar").expect("layer");
        let diff = format!("sha256:{}", hex::encode(Sha256::digest(b"pretend tar")));
        let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{diff}"]}}}}"#).into_bytes();
        let id = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
        let img = SaveImage {
            id: id.clone(),
            config: config.clone(),
            layers: vec![(diff.clone(), layer)],
            tags: vec![("docker.io/library/bb:v1".into(), "bb:v1".into())],
        };
        let bytes = write_archive(Vec::new(), &[img]).expect("write");
        let p = tmp.path().join("out.tar");
        std::fs::write(&p, bytes).expect("write");
        let idx = ArchiveIndex::build(&p).expect("index");
        let docker = images_of(&idx).expect("images");
        assert_eq!(docker.len(), 1);
        assert_eq!(docker[0].tags, vec!["bb:v1".to_string()]);
        assert_eq!(idx.read(&docker[0].config).expect("config"), config);
        assert_eq!(idx.read(&docker[0].layers[0]).expect("layer"), b"pretend tar");
        let repos: serde_json::Value = serde_json::from_slice(&idx.read("repositories").expect("repos")).expect("json");
        assert!(repos["bb"]["v1"].is_string());

        // The OCI side alone, as a reader without manifest.json sees it.
        let oci = tmp.path().join("oci.tar");
        let mut b = tar::Builder::new(Vec::new());
        let mut a = tar::Archive::new(File::open(&p).expect("open"));
        for e in a.entries().expect("entries") {
            let mut e = e.expect("entry");
            let name = e.path().expect("path").to_string_lossy().into_owned();
            if name == "manifest.json" {
                continue;
            }
            let mut h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read");
            b.append_data(&mut h, &name, &data[..]).expect("append");
        }
        std::fs::write(&oci, b.into_inner().expect("finish")).expect("write");
        let idx = ArchiveIndex::build(&oci).expect("index");
        let images = images_of(&idx).expect("oci images");
        assert_eq!(images[0].tags, vec!["docker.io/library/bb:v1".to_string()]);
        assert_eq!(images[0].config_digest.as_deref(), Some(id.as_str()));
        assert_eq!(images[0].layer_digests[0].as_deref(), Some(diff.as_str()));
    }

    #[test]
    fn archives_without_a_manifest_are_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("a.tar");
        std::fs::write(&p, tar_of(&[("bin/sh", tar::EntryType::Regular, "", b"x")])).expect("write");
        let idx = ArchiveIndex::build(&p).expect("index");
        let err = images_of(&idx).expect_err("no manifest");
        assert!(err.to_string().contains("manifest.json"), "{err}");
    }
}
