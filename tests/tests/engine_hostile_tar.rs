//! Hostile tarballs against `stratad` through the real docker CLI: layers
//! whose entries escape the root with `..`, absolute paths, symlinked
//! directories or hard links, archives whose members point outside, and
//! layers whose content does not match their digest. Each is refused with a
//! clear message; nothing is written outside (a canary directory stays
//! untouched and no `pwned` file appears anywhere), and no image, snapshot or
//! stored blob is left behind.
//!
//! Run as root: `cargo test -p strata-tests --test engine_hostile_tar`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use strata_tests::engine::{require_docker, snapshots_in, Docker, Stratad};

/// A tar writer that puts names and link targets in verbatim (the tar
/// crate's own setters refuse `..`, which these tests need).
struct RawTar {
    buf: Vec<u8>,
}

impl RawTar {
    fn new() -> Self {
        Self { buf: Vec::new() }
    }
    fn entry(mut self, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) -> Self {
        assert!(name.len() <= 100 && link.len() <= 100, "names must fit a ustar header: {name} {link}");
        let mut h = tar::Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len().div_ceil(512) * 512, 0);
        self
    }
    fn dir(self, name: &str) -> Self {
        self.entry(name, tar::EntryType::Directory, "", b"")
    }
    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, tar::EntryType::Regular, "", data)
    }
    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Symlink, target, b"")
    }
    fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Link, target, b"")
    }
    fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&[0u8; 1024]);
        self.buf
    }
}

struct Env {
    dir: tempfile::TempDir,
    root: PathBuf,
    canary: PathBuf,
    driver: &'static str,
    _daemon: Stratad,
    docker: Docker,
}

/// Short temp paths: ustar names hold 100 bytes.
fn start(driver: &'static str) -> Env {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root (snapshot mounts): run it as root");
    require_docker();
    let dir = tempfile::Builder::new().prefix("sh").tempdir_in("/tmp").expect("temp dir");
    let root = dir.path().join("root");
    let sock = dir.path().join("d.sock");
    let canary = dir.path().join("canary");
    std::fs::create_dir(&canary).expect("canary dir");
    std::fs::write(canary.join("secret"), b"untouched\n").expect("canary file");
    let daemon = Stratad::start_simple(&root, &sock, &["--storage-driver", driver]).expect("start stratad");
    let docker = Docker::new(&format!("unix://{}", sock.display()));
    Env { dir, root, canary, driver, _daemon: daemon, docker }
}

fn find_files_named(base: &Path, prefix: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with(prefix) {
            out.push(p.clone());
        }
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            find_files_named(&p, prefix, out);
        }
    }
}

impl Env {
    fn canary_abs(&self) -> String {
        self.canary.display().to_string()
    }

    /// A `../` chain long enough to climb from any snapshot to `/`.
    fn climb(&self) -> String {
        "../".repeat(16)
    }

    fn snapshot_entries(&self) -> usize {
        let base = self.root.join(self.driver);
        let mut found = Vec::new();
        find_dirs_named(&base, "snapshots", 3, &mut found);
        assert!(!found.is_empty(), "no snapshots directory under {}", base.display());
        found.iter().map(|d| snapshots_in(d)).sum()
    }

    /// Nothing happened: canary intact, no `pwned*` anywhere in the test
    /// directory or at `/tmp`, no image, no snapshot, no stored layer.
    fn assert_untouched(&self, what: &str) {
        let names: Vec<_> = std::fs::read_dir(&self.canary).expect("canary").flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret")], "{what}: something appeared in the canary directory");
        let secret = self.canary.join("secret");
        assert_eq!(std::fs::read(&secret).expect("secret"), b"untouched\n", "{what}: canary changed");
        assert_eq!(std::fs::metadata(&secret).expect("secret").nlink(), 1, "{what}: canary was hard-linked");
        let mut pwned = Vec::new();
        find_files_named(self.dir.path(), "pwned", &mut pwned);
        find_files_named(Path::new("/tmp"), "pwned-strata", &mut pwned);
        assert!(pwned.is_empty(), "{what}: files were written: {pwned:?}");
        assert_eq!(self.docker.ok(&["images", "-q", "-a"]).trim(), "", "{what}: an image was left behind");
        assert_eq!(self.snapshot_entries(), 0, "{what}: a snapshot was left behind");
        let images_dir = self.root.join(self.driver).join("images");
        for sub in ["layerdb", "blobs/sha256", "imagedb", "tmp"] {
            let n = std::fs::read_dir(images_dir.join(sub)).map(|d| d.count()).unwrap_or(0);
            assert_eq!(n, 0, "{what}: {sub} is not empty");
        }
    }

    fn import_refused(&self, what: &str, tarball: &[u8], needle: &str) {
        let out = self.docker.output_with_input(&["import", "-", "evil:1"], tarball);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: import succeeded: {}", String::from_utf8_lossy(&out.stdout));
        assert!(stderr.contains(needle), "{what}: message {stderr:?} lacks {needle:?}");
        self.assert_untouched(what);
    }
}

fn find_dirs_named(base: &Path, name: &str, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for e in entries.flatten() {
        if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        if e.file_name() == name {
            out.push(e.path());
        } else if depth > 0 {
            find_dirs_named(&e.path(), name, depth - 1, out);
        }
    }
}

fn escapes(env: &Env) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let canary = env.canary_abs();
    let climb = env.climb();
    let canary_rel = format!("{climb}{}", canary.trim_start_matches('/'));
    vec![
        ("dot-dot file", RawTar::new().file("../pwned-dotdot", b"x").finish(), "would escape the layer root"),
        (
            "dot-dot to the canary",
            RawTar::new().dir("etc/").file(&format!("etc/{canary_rel}/pwned"), b"x").finish(),
            "would escape the layer root",
        ),
        (
            "dot-dot to /tmp",
            RawTar::new().file(&format!("{climb}tmp/pwned-strata-dotdot"), b"x").finish(),
            "would escape the layer root",
        ),
        (
            "absolute path",
            RawTar::new().file("ok", b"fine").file(&format!("{canary}/pwned"), b"x").finish(),
            "absolute paths are not allowed",
        ),
        (
            "symlinked directory (absolute target)",
            RawTar::new().symlink("evil", &canary).file("evil/pwned", b"x").finish(),
            "is a symbolic link",
        ),
        (
            "symlinked directory (relative target)",
            RawTar::new().dir("a/").symlink("a/up", &canary_rel).file("a/up/pwned", b"x").finish(),
            "is a symbolic link",
        ),
        (
            "whiteout through a symlink",
            RawTar::new().symlink("evil", &canary).file("evil/.wh.secret", b"").finish(),
            "is a symbolic link",
        ),
        (
            "hard link with dot-dot",
            RawTar::new().hardlink("pwned-link", &format!("{canary_rel}/secret")).finish(),
            "hard link target",
        ),
        (
            "hard link to an absolute path",
            RawTar::new().hardlink("pwned-link", &format!("{canary}/secret")).finish(),
            "hard link target",
        ),
        (
            "hard link through a symlink",
            RawTar::new().symlink("evil", &canary).hardlink("pwned-link", "evil/secret").finish(),
            "is a symbolic link",
        ),
    ]
}

fn import_escapes_are_refused(driver: &'static str) {
    let env = start(driver);
    for (what, tarball, needle) in escapes(&env) {
        env.import_refused(what, &tarball, needle);
        // Compressed, the same.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tarball).expect("gzip");
        env.import_refused(what, &gz.finish().expect("gzip"), needle);
    }
    // Garbage is refused too, and the daemon still works afterwards.
    env.import_refused("not a tarball", &[0x42; 3000], "invalid layer tarball");
    let good = RawTar::new().dir("etc/").file("etc/hostname", b"fine\n").finish();
    let out = env.docker.output_with_input(&["import", "-", "good:1"], &good);
    assert!(out.status.success(), "a good import after the refusals: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn import_escapes_are_refused_vfs() {
    import_escapes_are_refused("vfs");
}

#[test]
fn import_escapes_are_refused_overlay() {
    import_escapes_are_refused("overlay");
}

/// A docker-archive of one image with the given layer tars.
fn docker_archive(layers: &[Vec<u8>], diff_ids: Option<Vec<String>>, layer_names: Option<Vec<String>>) -> Vec<u8> {
    let diff_ids = diff_ids.unwrap_or_else(|| layers.iter().map(|l| strata_tests::image::sha256_digest(l)).collect());
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string();
    let config_hex = strata_tests::image::digest_hex(&strata_tests::image::sha256_digest(config.as_bytes())).to_string();
    let names = layer_names.unwrap_or_else(|| (0..layers.len()).map(|i| format!("l{i}/layer.tar")).collect());
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": ["evil:latest"],
        "Layers": names,
    }])
    .to_string();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).expect("append");
    };
    add(&format!("{config_hex}.json"), config.as_bytes());
    for (i, l) in layers.iter().enumerate() {
        add(&format!("l{i}/layer.tar"), l);
    }
    add("manifest.json", manifest.as_bytes());
    b.into_inner().expect("archive")
}

#[test]
fn load_refuses_hostile_layers_and_archives_and_keeps_nothing() {
    let env = start("overlay");
    let canary = env.canary_abs();
    let good = RawTar::new().dir("etc/").file("etc/hostname", b"fine\n").finish();
    let refused = |what: &str, archive: Vec<u8>, needle: &str| {
        let out = env.docker.output_with_input(&["load"], &archive);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: load succeeded: {}", String::from_utf8_lossy(&out.stdout));
        assert!(stderr.contains(needle), "{what}: message {stderr:?} lacks {needle:?}");
        env.assert_untouched(what);
    };

    // A good bottom layer, then a hostile one: the good layer is rolled back.
    let symlink_escape = RawTar::new().symlink("evil", &canary).file("evil/pwned", b"x").finish();
    refused("symlink escape in layer 2", docker_archive(&[good.clone(), symlink_escape], None, None), "is a symbolic link");
    let hardlink_escape = RawTar::new().hardlink("pwned-link", &format!("{canary}/secret")).finish();
    refused("hard link escape", docker_archive(&[good.clone(), hardlink_escape], None, None), "hard link target");
    let dotdot = RawTar::new().file("../../../../../../../../../../tmp/pwned-strata-load", b"x").finish();
    refused("dot-dot escape", docker_archive(&[dotdot], None, None), "would escape the layer root");

    // Content that does not match the config's DiffID.
    let wrong = vec![format!("sha256:{}", "0".repeat(64))];
    refused("diff ID mismatch", docker_archive(std::slice::from_ref(&good), Some(wrong), None), "does not match its digest");
    // Manifest members that leave the archive or do not exist.
    refused(
        "member outside the archive",
        docker_archive(std::slice::from_ref(&good), None, Some(vec!["../../etc/passwd".into()])),
        "leaves the archive",
    );
    refused("missing member", docker_archive(std::slice::from_ref(&good), None, Some(vec!["nope/layer.tar".into()])), "is missing");
    refused("not an image archive", RawTar::new().file("bin/sh", b"x").finish(), "manifest.json");

    let out = env.docker.output_with_input(&["load"], &docker_archive(&[good], None, None));
    assert!(out.status.success(), "a good load after the refusals: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Loaded image: evil:latest"));
}
