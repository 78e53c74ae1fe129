//! Small, byte-reproducible test images built from Debian's busybox-static.
//!
//! Everything is produced in memory from `/usr/bin/busybox` (package
//! `busybox-static`): no registry, no Docker, no network. The same inputs
//! always give the same bytes, so digests are stable between runs.
//!
//! # Formats
//! - [`write_rootfs_tar_gz`]: a plain root filesystem tarball, for
//!   `docker import`. `ctr images import` rejects it (no manifest).
//! - [`write_oci_archive`]: an OCI image layout (`oci-layout`, `index.json`,
//!   `blobs/sha256/…`) with one gzip layer that also carries a Docker
//!   `manifest.json` and `repositories`, so `ctr images import` and
//!   `docker load` both take it.
//! - [`write_docker_archive`]: the legacy `docker save` layout
//!   (`<id>/layer.tar`, `<config>.json`, `manifest.json`, `repositories`).
//! - [`write_multilayer_oci_archive`]: three layers, the last one with a
//!   whiteout; see [`multilayer`] for what its final tree holds.
//!
//! # Root filesystem
//! `bin/busybox` plus one symlink per applet from `busybox --list`,
//! `etc/passwd`, `etc/group`, `tmp` (mode 1777), and empty `dev`, `proc`,
//! `sys`, `root`, `var`. Entries are sorted, owned by 0:0, with mtime 0.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Where Debian's `busybox-static` puts its binary.
pub const BUSYBOX: &str = "/usr/bin/busybox";

/// The reference the single-layer images carry.
pub const BUSYBOX_REF: &str = "docker.io/library/busybox:latest";

/// What can go wrong while building an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The busybox binary is absent.
    #[error("{path} not found: install busybox-static (apt-get install busybox-static, or run scripts/deps.sh)")]
    MissingBusybox { path: PathBuf },
    /// `busybox --list` failed or printed nothing usable.
    #[error("`{path} --list` failed: {detail}")]
    BusyboxList { path: PathBuf, detail: String },
    /// An image reference without a `:tag`, or with characters a tar path cannot hold.
    #[error("invalid image reference {0:?}: expected NAME:TAG")]
    BadReference(String),
    /// Reading or writing a file failed.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

pub type Result<T> = std::result::Result<T, ImageError>;

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The hex part of a `sha256:<hex>` digest.
pub fn digest_hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// OCI chain IDs of a stack of layers given their diff IDs, bottom first:
/// `chain[0] = diff[0]`, `chain[n] = sha256(chain[n-1] + " " + diff[n])`.
/// These are the names containerd commits unpacked layers under.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(prev) => sha256_digest(format!("{prev} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// One entry of a layer, before it is written as tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
}

/// A layer's content: relative paths (no leading `/` or `./`) to entries.
/// A BTreeMap keeps the tar order sorted and therefore reproducible.
pub type Tree = BTreeMap<String, Entry>;

/// The busybox root filesystem as a [`Tree`], built from the binary at `busybox`.
pub fn busybox_tree(busybox: &Path) -> Result<Tree> {
    if !busybox.is_file() {
        return Err(ImageError::MissingBusybox { path: busybox.to_path_buf() });
    }
    let data = std::fs::read(busybox).map_err(io_err(format!("read {}", busybox.display())))?;
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(io_err(format!("run {} --list", busybox.display())))?;
    if !out.status.success() {
        return Err(ImageError::BusyboxList {
            path: busybox.to_path_buf(),
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    let list = String::from_utf8_lossy(&out.stdout);
    let applets: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .collect();
    if !applets.contains(&"sh") {
        return Err(ImageError::BusyboxList {
            path: busybox.to_path_buf(),
            detail: format!("no `sh` applet among {} applets", applets.len()),
        });
    }

    let mut tree = Tree::new();
    for dir in ["bin", "dev", "etc", "proc", "sys", "var"] {
        tree.insert(dir.to_string(), Entry::Dir { mode: 0o755 });
    }
    tree.insert("root".into(), Entry::Dir { mode: 0o700 });
    tree.insert("tmp".into(), Entry::Dir { mode: 0o1777 });
    tree.insert("bin/busybox".into(), Entry::File { mode: 0o755, data });
    for applet in applets {
        tree.insert(format!("bin/{applet}"), Entry::Symlink { target: "busybox".into() });
    }
    tree.insert(
        "etc/passwd".into(),
        Entry::File {
            mode: 0o644,
            data: b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n".to_vec(),
        },
    );
    tree.insert(
        "etc/group".into(),
        Entry::File { mode: 0o644, data: b"root:x:0:\nnogroup:x:65534:\n".to_vec() },
    );
    Ok(tree)
}

/// Writes a tree as an uncompressed tar, deterministically (sorted, 0:0,
/// mtime 0, GNU headers).
pub fn tree_to_tar(tree: &Tree) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    for (path, entry) in tree {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        let ctx = || format!("add {path} to a layer tar");
        match entry {
            Entry::Dir { mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                builder.append_data(&mut header, format!("{path}/"), std::io::empty()).map_err(io_err(ctx()))?;
            }
            Entry::File { mode, data } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice()).map_err(io_err(ctx()))?;
            }
            Entry::Symlink { target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target).map_err(io_err(ctx()))?;
            }
        }
    }
    builder.into_inner().map_err(io_err("finish layer tar"))
}

/// Writes a tree into an existing directory (a mounted snapshot, say):
/// directories, files and symlinks with their modes, owned by the caller.
pub fn materialize(tree: &Tree, dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (path, entry) in tree {
        let target = dir.join(path);
        let ctx = || format!("create {}", target.display());
        match entry {
            Entry::Dir { mode } => {
                std::fs::create_dir_all(&target).map_err(io_err(ctx()))?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode)).map_err(io_err(ctx()))?;
            }
            Entry::File { mode, data } => {
                std::fs::write(&target, data).map_err(io_err(ctx()))?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode)).map_err(io_err(ctx()))?;
            }
            Entry::Symlink { target: link } => {
                std::os::unix::fs::symlink(link, &target).map_err(io_err(ctx()))?;
            }
        }
    }
    Ok(())
}

/// Gzip with a fixed header (mtime 0, no file name), so output is reproducible.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    enc.write_all(data).map_err(io_err("gzip"))?;
    enc.finish().map_err(io_err("gzip"))
}

/// What was built: the file and the digests a test can check containerd or
/// Docker against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The file written.
    pub path: PathBuf,
    /// The full reference, e.g. `docker.io/library/busybox:latest`.
    pub reference: String,
    /// Digest of the OCI manifest (`None` for a docker-archive, which has none).
    pub manifest_digest: Option<String>,
    /// Digest of the image config: Docker's image ID.
    pub config_digest: String,
    /// Digests of the layer blobs as stored (gzip for OCI, plain tar for docker-archive).
    pub layer_digests: Vec<String>,
    /// Digests of the uncompressed layers, bottom first.
    pub diff_ids: Vec<String>,
    /// Chain IDs, bottom first: the last one is the snapshot containerd
    /// commits the top layer as.
    pub chain_ids: Vec<String>,
}

/// Splits `docker.io/library/busybox:latest` into (`busybox`, `latest`), the
/// short repository name Docker's `manifest.json` and `repositories` use.
fn docker_repo_tag(reference: &str) -> Result<(String, String)> {
    let bad = || ImageError::BadReference(reference.to_string());
    let (name, tag) = match reference.rsplit_once(':') {
        Some((n, t)) if !n.is_empty() && !t.is_empty() && !t.contains('/') => (n, t),
        _ => return Err(bad()),
    };
    if name.chars().any(|c| c.is_whitespace() || c == '"') {
        return Err(bad());
    }
    let short = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    Ok((short.to_string(), tag.to_string()))
}

fn image_config(diff_ids: &[String]) -> Vec<u8> {
    let history: Vec<_> = diff_ids
        .iter()
        .enumerate()
        .map(|(i, _)| json!({"created": "1970-01-01T00:00:00Z", "created_by": format!("strata test image layer {i}")}))
        .collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    config.to_string().into_bytes()
}

/// Writes an outer archive (itself plain tar) from path -> bytes, with the
/// directories given first.
fn write_archive(out: &Path, dirs: &[String], files: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    for d in dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(0);
        h.set_size(0);
        builder.append_data(&mut h, format!("{d}/"), std::io::empty()).map_err(io_err(format!("archive dir {d}")))?;
    }
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        builder.append_data(&mut h, name, data.as_slice()).map_err(io_err(format!("archive file {name}")))?;
    }
    let bytes = builder.into_inner().map_err(io_err("finish archive"))?;
    write_atomic(out, &bytes)
}

/// Writes `data` to a temp file next to `out`, then renames it into place,
/// so a half-written file never appears under the final name.
fn write_atomic(out: &Path, data: &[u8]) -> Result<()> {
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(format!("temp file in {}", dir.display())))?;
    tmp.write_all(data).map_err(io_err(format!("write {}", out.display())))?;
    // readable by everyone, like a file written by tar or curl
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(io_err(format!("chmod {}", tmp.path().display())))?;
    tmp.persist(out).map_err(|e| ImageError::Io { context: format!("rename to {}", out.display()), source: e.error })?;
    Ok(())
}

/// The busybox rootfs as a gzip tarball, for `docker import`.
pub fn write_rootfs_tar_gz(out: &Path) -> Result<PathBuf> {
    let tar = tree_to_tar(&busybox_tree(Path::new(BUSYBOX))?)?;
    write_atomic(out, &gzip(&tar)?)?;
    Ok(out.to_path_buf())
}

/// An OCI image layout tarball of the given layer trees (bottom first), each
/// layer gzip-compressed, that also carries Docker's `manifest.json` and
/// `repositories`.
pub fn write_oci_archive_of(out: &Path, reference: &str, layers: &[Tree]) -> Result<ImageInfo> {
    let (repo, tag) = docker_repo_tag(reference)?;
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut diff_ids = Vec::new();
    let mut layer_digests = Vec::new();
    let mut layer_descs = Vec::new();
    for tree in layers {
        let raw = tree_to_tar(tree)?;
        diff_ids.push(sha256_digest(&raw));
        let gz = gzip(&raw)?;
        let digest = sha256_digest(&gz);
        layer_descs.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest,
            "size": gz.len(),
        }));
        files.insert(format!("blobs/sha256/{}", digest_hex(&digest)), gz);
        layer_digests.push(digest);
    }
    let config = image_config(&diff_ids);
    let config_digest = sha256_digest(&config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": layer_descs,
    })
    .to_string()
    .into_bytes();
    let manifest_digest = sha256_digest(&manifest);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    });
    let docker_manifest = json!([{
        "Config": format!("blobs/sha256/{}", digest_hex(&config_digest)),
        "RepoTags": [format!("{repo}:{tag}")],
        "Layers": layer_digests.iter().map(|d| format!("blobs/sha256/{}", digest_hex(d))).collect::<Vec<_>>(),
    }]);
    let top = layer_digests.last().map(|d| digest_hex(d).to_string()).unwrap_or_default();
    let repositories = json!({ repo: { tag: top } });

    files.insert(format!("blobs/sha256/{}", digest_hex(&config_digest)), config);
    files.insert(format!("blobs/sha256/{}", digest_hex(&manifest_digest)), manifest);
    files.insert("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    files.insert("index.json".into(), index.to_string().into_bytes());
    files.insert("manifest.json".into(), docker_manifest.to_string().into_bytes());
    files.insert("repositories".into(), repositories.to_string().into_bytes());
    write_archive(out, &["blobs".into(), "blobs/sha256".into()], &files)?;

    Ok(ImageInfo {
        path: out.to_path_buf(),
        reference: reference.to_string(),
        manifest_digest: Some(manifest_digest),
        config_digest,
        layer_digests,
        chain_ids: chain_ids(&diff_ids),
        diff_ids,
    })
}

/// The single-layer busybox image as an OCI layout tarball (see the module doc).
pub fn write_oci_archive(out: &Path, reference: &str) -> Result<ImageInfo> {
    let tree = busybox_tree(Path::new(BUSYBOX))?;
    write_oci_archive_of(out, reference, &[tree])
}

/// A legacy docker-archive (`docker save` layout) of the given layer trees:
/// `<v1id>/layer.tar` (uncompressed), `<v1id>/VERSION`, `<v1id>/json`,
/// `<config hex>.json`, `manifest.json` and `repositories`.
pub fn write_docker_archive_of(out: &Path, reference: &str, layers: &[Tree]) -> Result<ImageInfo> {
    let (repo, tag) = docker_repo_tag(reference)?;
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut dirs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut raws = Vec::new();
    for tree in layers {
        let raw = tree_to_tar(tree)?;
        diff_ids.push(sha256_digest(&raw));
        raws.push(raw);
    }
    let chains = chain_ids(&diff_ids);
    let config = image_config(&diff_ids);
    let config_digest = sha256_digest(&config);

    let mut parent = String::new();
    let mut layer_paths = Vec::new();
    let mut layer_digests = Vec::new();
    for (raw, chain) in raws.into_iter().zip(&chains) {
        // A stable v1 ID per layer position, derived from the chain and the parent's ID.
        let v1id = hex::encode(Sha256::digest(format!("{parent} {chain}").as_bytes()));
        let mut v1 = json!({
            "id": v1id,
            "created": "1970-01-01T00:00:00Z",
            "os": "linux",
            "container_config": {"Cmd": null},
        });
        if !parent.is_empty() {
            v1["parent"] = json!(parent);
        }
        layer_digests.push(sha256_digest(&raw));
        files.insert(format!("{v1id}/VERSION"), b"1.0".to_vec());
        files.insert(format!("{v1id}/json"), v1.to_string().into_bytes());
        files.insert(format!("{v1id}/layer.tar"), raw);
        layer_paths.push(format!("{v1id}/layer.tar"));
        dirs.push(v1id.clone());
        parent = v1id;
    }
    let config_name = format!("{}.json", digest_hex(&config_digest));
    let docker_manifest = json!([{
        "Config": config_name,
        "RepoTags": [format!("{repo}:{tag}")],
        "Layers": layer_paths,
    }]);
    files.insert(config_name, config);
    files.insert("manifest.json".into(), docker_manifest.to_string().into_bytes());
    files.insert("repositories".into(), json!({ repo: { tag: parent } }).to_string().into_bytes());
    dirs.sort();
    write_archive(out, &dirs, &files)?;

    Ok(ImageInfo {
        path: out.to_path_buf(),
        reference: reference.to_string(),
        manifest_digest: None,
        config_digest,
        layer_digests,
        chain_ids: chains,
        diff_ids,
    })
}

/// The single-layer busybox image as a docker-archive (see the module doc).
pub fn write_docker_archive(out: &Path, reference: &str) -> Result<ImageInfo> {
    let tree = busybox_tree(Path::new(BUSYBOX))?;
    write_docker_archive_of(out, reference, &[tree])
}

/// The three-layer test image: what each layer does and what the unpacked
/// result must contain.
///
/// - layer 0: the busybox rootfs;
/// - layer 1: adds `data/a` (`"a1\n"`), `data/b` (`"b1\n"`), `etc/motd`;
/// - layer 2: deletes `data/a` with the whiteout `data/.wh.a`, rewrites
///   `data/b` (`"b2\n"`), adds `data/c` (`"c\n"`).
///
/// Unpacked: `data/a` absent, `data/b` = `"b2\n"`, `data/c` = `"c\n"`,
/// `etc/motd` = [`multilayer::MOTD`], `bin/sh` a symlink to `busybox`.
pub mod multilayer {
    use super::*;

    pub const REF: &str = "docker.io/strata/multilayer:latest";
    pub const MOTD: &[u8] = b"strata multilayer test image\n";

    /// The three layer trees, bottom first.
    pub fn layers(busybox: &Path) -> Result<Vec<Tree>> {
        let base = busybox_tree(busybox)?;
        let file = |data: &[u8]| Entry::File { mode: 0o644, data: data.to_vec() };
        let mut l1 = Tree::new();
        l1.insert("data".into(), Entry::Dir { mode: 0o755 });
        l1.insert("data/a".into(), file(b"a1\n"));
        l1.insert("data/b".into(), file(b"b1\n"));
        l1.insert("etc".into(), Entry::Dir { mode: 0o755 });
        l1.insert("etc/motd".into(), file(MOTD));
        let mut l2 = Tree::new();
        l2.insert("data".into(), Entry::Dir { mode: 0o755 });
        l2.insert("data/.wh.a".into(), Entry::File { mode: 0o600, data: Vec::new() });
        l2.insert("data/b".into(), file(b"b2\n"));
        l2.insert("data/c".into(), file(b"c\n"));
        Ok(vec![base, l1, l2])
    }

    /// Files (path, content) the unpacked image must hold.
    pub fn expected_files() -> Vec<(&'static str, &'static [u8])> {
        vec![("data/b", b"b2\n"), ("data/c", b"c\n"), ("etc/motd", MOTD)]
    }

    /// Paths the unpacked image must not hold.
    pub fn expected_absent() -> Vec<&'static str> {
        vec!["data/a", "data/.wh.a"]
    }
}

/// The three-layer image (see [`multilayer`]) as an OCI layout tarball.
pub fn write_multilayer_oci_archive(out: &Path) -> Result<ImageInfo> {
    write_oci_archive_of(out, multilayer::REF, &multilayer::layers(Path::new(BUSYBOX))?)
}

/// The three-layer image (see [`multilayer`]) as a docker-archive.
pub fn write_multilayer_docker_archive(out: &Path) -> Result<ImageInfo> {
    write_docker_archive_of(out, multilayer::REF, &multilayer::layers(Path::new(BUSYBOX))?)
}

/// All single-layer busybox images in one directory.
#[derive(Debug, Clone)]
pub struct TestImages {
    /// `busybox-rootfs.tar.gz`
    pub rootfs_tar_gz: PathBuf,
    /// `busybox-oci.tar`
    pub oci: ImageInfo,
    /// `busybox-docker-archive.tar`
    pub docker_archive: ImageInfo,
}

impl TestImages {
    /// Builds the three busybox images into `dir` (which must exist).
    pub fn build(dir: &Path) -> Result<TestImages> {
        let tree = busybox_tree(Path::new(BUSYBOX))?;
        let rootfs = dir.join("busybox-rootfs.tar.gz");
        write_atomic(&rootfs, &gzip(&tree_to_tar(&tree)?)?)?;
        let oci = write_oci_archive_of(&dir.join("busybox-oci.tar"), BUSYBOX_REF, std::slice::from_ref(&tree))?;
        let docker_archive =
            write_docker_archive_of(&dir.join("busybox-docker-archive.tar"), BUSYBOX_REF, std::slice::from_ref(&tree))?;
        Ok(TestImages { rootfs_tar_gz: rootfs, oci, docker_archive })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_archive(path: &Path) -> BTreeMap<String, Vec<u8>> {
        let file = std::fs::File::open(path).expect("open archive");
        let mut ar = tar::Archive::new(file);
        let mut out = BTreeMap::new();
        for e in ar.entries().expect("entries") {
            let mut e = e.expect("entry");
            if e.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = e.path().expect("path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read entry");
            out.insert(name, data);
        }
        out
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data).read_to_end(&mut out).expect("gunzip");
        out
    }

    fn json_of(data: &[u8]) -> serde_json::Value {
        serde_json::from_slice(data).expect("json")
    }

    fn layer_names(raw: &[u8]) -> Vec<String> {
        let mut ar = tar::Archive::new(raw);
        ar.entries()
            .expect("entries")
            .map(|e| e.expect("entry").path().expect("path").to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let diffs = vec!["sha256:aa".to_string(), "sha256:bb".to_string(), "sha256:cc".to_string()];
        let chains = chain_ids(&diffs);
        assert_eq!(chains[0], "sha256:aa");
        assert_eq!(chains[1], sha256_digest(b"sha256:aa sha256:bb"));
        assert_eq!(chains[2], sha256_digest(format!("{} sha256:cc", chains[1]).as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn rootfs_tree_has_busybox_and_applets() {
        let tree = busybox_tree(Path::new(BUSYBOX)).expect("busybox tree");
        assert!(matches!(tree.get("bin/busybox"), Some(Entry::File { mode: 0o755, .. })));
        assert_eq!(tree.get("bin/sh"), Some(&Entry::Symlink { target: "busybox".into() }));
        assert_eq!(tree.get("tmp"), Some(&Entry::Dir { mode: 0o1777 }));
        for d in ["proc", "sys", "dev", "etc"] {
            assert!(matches!(tree.get(d), Some(Entry::Dir { .. })), "{d} missing");
        }
        let raw = tree_to_tar(&tree).expect("tar");
        let names = layer_names(&raw);
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "layer entries are sorted");
        assert!(names.contains(&"etc/passwd".to_string()));
    }

    #[test]
    fn missing_busybox_is_a_clear_error() {
        let err = busybox_tree(Path::new("/nonexistent/busybox")).unwrap_err();
        assert!(err.to_string().contains("busybox-static"), "{err}");
    }

    #[test]
    fn bad_reference_is_rejected_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("x.tar");
        let err = write_oci_archive_of(&out, "no-tag", &[Tree::new()]).unwrap_err();
        assert!(matches!(err, ImageError::BadReference(_)), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn oci_archive_digests_are_consistent_and_reproducible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = write_oci_archive(&dir.path().join("a.tar"), BUSYBOX_REF).expect("build a");
        let b = write_oci_archive(&dir.path().join("b.tar"), BUSYBOX_REF).expect("build b");
        assert_eq!(std::fs::read(&a.path).expect("a"), std::fs::read(&b.path).expect("b"), "byte-reproducible");
        assert_eq!(a.manifest_digest, b.manifest_digest);

        let files = read_archive(&a.path);
        // every blob is named after its content
        for (name, data) in &files {
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(sha256_digest(data), format!("sha256:{hex}"), "{name}");
            }
        }
        assert_eq!(json_of(&files["oci-layout"])["imageLayoutVersion"], "1.0.0");
        let index = json_of(&files["index.json"]);
        let mdesc = &index["manifests"][0];
        let mdigest = mdesc["digest"].as_str().expect("digest");
        assert_eq!(Some(mdigest.to_string()), a.manifest_digest);
        assert_eq!(mdesc["annotations"]["io.containerd.image.name"], BUSYBOX_REF);
        let mbytes = &files[&format!("blobs/sha256/{}", digest_hex(mdigest))];
        assert_eq!(mdesc["size"].as_u64(), Some(mbytes.len() as u64));
        let manifest = json_of(mbytes);
        assert_eq!(manifest["config"]["digest"].as_str(), Some(a.config_digest.as_str()));
        let config_bytes = &files[&format!("blobs/sha256/{}", digest_hex(&a.config_digest))];
        assert_eq!(manifest["config"]["size"].as_u64(), Some(config_bytes.len() as u64));
        let config = json_of(config_bytes);
        let layers = manifest["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 1);
        let ldigest = layers[0]["digest"].as_str().expect("layer digest");
        assert_eq!(vec![ldigest.to_string()], a.layer_digests);
        let raw = gunzip(&files[&format!("blobs/sha256/{}", digest_hex(ldigest))]);
        assert_eq!(config["rootfs"]["diff_ids"][0].as_str(), Some(sha256_digest(&raw).as_str()));
        assert_eq!(a.diff_ids, vec![sha256_digest(&raw)]);
        assert_eq!(a.chain_ids, a.diff_ids);
        assert!(layer_names(&raw).contains(&"bin/busybox".to_string()));

        // Docker's view of the same file
        let dm = json_of(&files["manifest.json"]);
        assert_eq!(dm[0]["RepoTags"][0], "busybox:latest");
        assert!(files.contains_key(dm[0]["Config"].as_str().expect("Config")));
        assert!(files.contains_key(dm[0]["Layers"][0].as_str().expect("Layers")));
        assert_eq!(json_of(&files["repositories"])["busybox"]["latest"], digest_hex(ldigest));
    }

    #[test]
    fn docker_archive_digests_are_consistent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let info = write_docker_archive(&dir.path().join("d.tar"), BUSYBOX_REF).expect("build");
        let files = read_archive(&info.path);
        let dm = json_of(&files["manifest.json"]);
        let config_name = dm[0]["Config"].as_str().expect("Config");
        assert_eq!(config_name, format!("{}.json", digest_hex(&info.config_digest)));
        assert_eq!(sha256_digest(&files[config_name]), info.config_digest);
        let config = json_of(&files[config_name]);
        let layer_path = dm[0]["Layers"][0].as_str().expect("layer");
        assert!(layer_path.ends_with("/layer.tar"));
        assert_eq!(config["rootfs"]["diff_ids"][0].as_str(), Some(sha256_digest(&files[layer_path]).as_str()));
        let v1id = layer_path.trim_end_matches("/layer.tar");
        assert_eq!(json_of(&files["repositories"])["busybox"]["latest"], v1id);
        assert_eq!(json_of(&files[&format!("{v1id}/json")])["id"], v1id);
        // same layer bytes as the OCI image: same diff ID
        let oci = write_oci_archive(&dir.path().join("o.tar"), BUSYBOX_REF).expect("oci");
        assert_eq!(oci.diff_ids, info.diff_ids);
    }

    #[test]
    fn multilayer_image_has_three_layers_and_a_whiteout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let info = write_multilayer_oci_archive(&dir.path().join("m.tar")).expect("build");
        assert_eq!(info.layer_digests.len(), 3);
        assert_eq!(info.chain_ids.len(), 3);
        assert_eq!(info.chain_ids, chain_ids(&info.diff_ids));
        let files = read_archive(&info.path);
        let top = gunzip(&files[&format!("blobs/sha256/{}", digest_hex(&info.layer_digests[2]))]);
        assert_eq!(sha256_digest(&top), info.diff_ids[2]);
        assert!(layer_names(&top).contains(&"data/.wh.a".to_string()));
        let config = json_of(&files[&format!("blobs/sha256/{}", digest_hex(&info.config_digest))]);
        assert_eq!(config["rootfs"]["diff_ids"].as_array().map(Vec::len), Some(3));

        let d = write_multilayer_docker_archive(&dir.path().join("md.tar")).expect("docker archive");
        assert_eq!(d.diff_ids, info.diff_ids);
        let dfiles = read_archive(&d.path);
        let dm = json_of(&dfiles["manifest.json"]);
        assert_eq!(dm[0]["Layers"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn materialize_writes_the_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = busybox_tree(Path::new(BUSYBOX)).expect("tree");
        materialize(&tree, dir.path()).expect("materialize");
        assert_eq!(std::fs::read_link(dir.path().join("bin/sh")).expect("link"), PathBuf::from("busybox"));
        let tmp = std::fs::metadata(dir.path().join("tmp")).expect("tmp");
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&tmp.permissions()) & 0o7777, 0o1777);
        assert!(dir.path().join("etc/passwd").is_file());
    }

    #[test]
    fn test_images_build_all_three() {
        let dir = tempfile::tempdir().expect("tempdir");
        let imgs = TestImages::build(dir.path()).expect("build");
        let raw = gunzip(&std::fs::read(&imgs.rootfs_tar_gz).expect("rootfs"));
        assert_eq!(vec![sha256_digest(&raw)], imgs.oci.diff_ids);
        assert_eq!(imgs.oci.diff_ids, imgs.docker_archive.diff_ids);
        assert_eq!(imgs.oci.config_digest, imgs.docker_archive.config_digest);
    }
}
