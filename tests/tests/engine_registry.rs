//! End-to-end tests of `docker push` and `docker pull` through `stratad`
//! against a real registry: Debian's `docker-registry` (Distribution 2.x)
//! on 127.0.0.1, with its storage in a temp dir. Covered: push then pull
//! back (same image ID), progress output, pull by digest, "Already exists"
//! and "Image is up to date", cross-repository blob mounts, pull/push
//! events, an image pushed by another client (an OCI index over an OCI
//! manifest with gzip layers), a three-layer round trip, and a pull that
//! fails on a corrupt blob leaving nothing behind, then succeeds once the
//! blob is repaired.
//!
//! Run as root: `cargo test -p strata-tests --test engine_registry`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strata_tests::engine::{curl, free_port, require_docker, snapshots_in, Docker, Stratad};
use strata_tests::image::{self, ImageInfo};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A `docker-registry serve` on 127.0.0.1, killed on drop.
struct Registry {
    child: Child,
    port: u16,
    storage: PathBuf,
    log: PathBuf,
}

impl Registry {
    /// Starts a registry; with `htpasswd` (a `user:bcrypt` line) it asks
    /// for Basic credentials.
    fn start(dir: &Path, htpasswd: Option<&str>) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).is_file(),
            "{REGISTRY_BIN} is missing: apt-get install docker-registry (or run scripts/deps.sh)"
        );
        let port = free_port();
        let storage = dir.join("registry-storage");
        std::fs::create_dir_all(&storage).expect("registry storage dir");
        let config = dir.join("registry.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some(line) = htpasswd {
            let file = dir.join("htpasswd");
            std::fs::write(&file, format!("{line}\n")).expect("write htpasswd");
            yaml.push_str(&format!("auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n", file.display()));
        }
        std::fs::write(&config, yaml).expect("write registry config");
        let log = dir.join("registry.log");
        let out = std::fs::File::create(&log).expect("registry log");
        let err = out.try_clone().expect("registry log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {REGISTRY_BIN}: {e}"));
        let mut reg = Registry { child, port, storage, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = reg.child.try_wait() {
                panic!("docker-registry exited ({status}):\n{}", reg.log_text());
            }
            assert!(Instant::now() < deadline, "docker-registry did not listen on {port}:\n{}", reg.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The file the registry keeps blob `digest` in.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = image::digest_hex(digest);
        self.storage.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    /// Uploads a blob as another client would: POST starts an upload,
    /// one PUT to its Location completes it.
    fn put_blob(&self, repo: &str, data: &[u8], scratch: &Path) -> String {
        let digest = image::sha256_digest(data);
        let file = scratch.join(image::digest_hex(&digest));
        std::fs::write(&file, data).expect("write blob");
        let out = curl(&[
            "-sS",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-X",
            "POST",
            &format!("http://{}/v2/{repo}/blobs/uploads/", self.host()),
        ]);
        let headers = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(headers.starts_with("HTTP/1.1 202"), "upload start: {headers}");
        let location = headers
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("location")).map(|(_, v)| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no Location in {headers}"));
        let location = if location.starts_with('/') { format!("http://{}{location}", self.host()) } else { location };
        let sep = if location.contains('?') { '&' } else { '?' };
        let out = curl(&[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{location}{sep}digest={digest}"),
        ]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "201", "blob upload: {}", String::from_utf8_lossy(&out.stderr));
        digest
    }

    fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8], scratch: &Path) -> String {
        let file = scratch.join(format!("manifest-{reference}"));
        std::fs::write(&file, body).expect("write manifest");
        let out = curl(&[
            "-sS",
            "-w",
            "\n%{http_code}",
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {media_type}"),
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("http://{}/v2/{repo}/manifests/{reference}", self.host()),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.ends_with("201"), "manifest upload: {text}");
        image::sha256_digest(body)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Env {
    dir: tempfile::TempDir,
    root: PathBuf,
    driver: &'static str,
    _daemon: Stratad,
    docker: Docker,
    registry: Registry,
}

fn start(driver: &'static str) -> Env {
    start_with(driver, None)
}

fn start_with(driver: &'static str, htpasswd: Option<&str>) -> Env {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root (snapshot mounts): run it as root");
    require_docker();
    assert!(
        Path::new(image::BUSYBOX).is_file(),
        "{} is missing: apt-get install busybox-static (or run scripts/deps.sh)",
        image::BUSYBOX
    );
    let dir = tempfile::Builder::new().prefix("stratad-registry").tempdir().expect("temp dir");
    let registry = Registry::start(dir.path(), htpasswd);
    let root = dir.path().join("root");
    let sock = dir.path().join("d.sock");
    let daemon = Stratad::start_simple(&root, &sock, &["--storage-driver", driver]).expect("start stratad");
    let docker = Docker::new(&format!("unix://{}", sock.display()));
    Env { dir, root, driver, _daemon: daemon, docker, registry }
}

impl Env {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn load(&self, archive: &Path) {
        let data = std::fs::read(archive).expect("read archive");
        let out = self.docker.output_with_input(&["load"], &data);
        assert!(out.status.success(), "docker load: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn image_id(&self, name: &str) -> String {
        self.docker.ok(&["image", "inspect", "--format", "{{.Id}}", name]).trim().to_string()
    }

    fn image_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.docker.ok(&["images", "-q", "--no-trunc"]).lines().map(str::to_owned).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Committed and active snapshots of the driver, counted.
    fn snapshot_count(&self) -> usize {
        let base = self.root.join(self.driver);
        let dir = find_named_dir(&base, "snapshots", 3).unwrap_or_else(|| panic!("no snapshots directory under {}", base.display()));
        snapshots_in(&dir)
    }
}

fn find_named_dir(base: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let mut subdirs = Vec::new();
    for e in std::fs::read_dir(base).ok()?.flatten() {
        if e.file_type().ok()?.is_dir() {
            if e.file_name() == name {
                return Some(e.path());
            }
            subdirs.push(e.path());
        }
    }
    if depth == 0 {
        return None;
    }
    subdirs.into_iter().find_map(|d| find_named_dir(&d, name, depth - 1))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// The `Digest: sha256:…` line of pull output, or the `digest:` of push.
fn digest_in(output: &str) -> String {
    output
        .split_whitespace()
        .find(|w| w.starts_with("sha256:") && w.len() == 71)
        .unwrap_or_else(|| panic!("no digest in output:\n{output}"))
        .to_string()
}

fn assert_contains(haystack: &str, needle: &str) {
    assert!(haystack.contains(needle), "expected {needle:?} in:\n{haystack}");
}

fn push_then_pull_back(driver: &'static str) {
    let env = start(driver);
    let images = image::TestImages::build(env.dir.path()).expect("test images");
    env.load(&images.docker_archive.path);
    let host = env.registry.host();
    let target = format!("{host}/busybox:t");
    let since = unix_now();
    env.docker.ok(&["tag", "busybox:latest", &target]);

    let pushed = env.docker.ok(&["push", &target]);
    assert_contains(&pushed, &format!("The push refers to repository [{host}/busybox]"));
    assert_contains(&pushed, "Pushed");
    assert_contains(&pushed, "t: digest: sha256:");
    let digest = digest_in(&pushed);
    // The manifest is in the registry under the tag and the digest.
    let out = curl(&["-sf", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Accept: application/vnd.docker.distribution.manifest.v2+json",
        &format!("http://{host}/v2/busybox/manifests/{digest}")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");

    // Pushing again finds every layer there.
    assert_contains(&env.docker.ok(&["push", &target]), "Layer already exists");
    // Another repository of the same registry gets the layer mounted.
    let copy = format!("{host}/copies/bb:v1");
    env.docker.ok(&["tag", "busybox:latest", &copy]);
    assert_contains(&env.docker.ok(&["push", &copy]), "Mounted from busybox");

    env.docker.ok(&["rmi", &target, &copy, "busybox:latest"]);
    assert!(env.image_ids().is_empty(), "images left: {:?}", env.image_ids());

    let pulled = env.docker.ok(&["pull", &target]);
    assert_contains(&pulled, "t: Pulling from busybox");
    assert_contains(&pulled, "Pull complete");
    assert_contains(&pulled, &format!("Digest: {digest}"));
    assert_contains(&pulled, &format!("Status: Downloaded newer image for {target}"));
    assert_eq!(env.image_id(&target), images.docker_archive.config_digest, "the pulled image is the pushed one");

    let again = env.docker.ok(&["pull", &target]);
    assert_contains(&again, "Already exists");
    assert_contains(&again, &format!("Status: Image is up to date for {target}"));

    // By digest.
    let by_digest = format!("{host}/busybox@{digest}");
    let out = env.docker.ok(&["pull", &by_digest]);
    assert_contains(&out, &format!("Digest: {digest}"));
    assert_eq!(env.image_id(&by_digest), images.docker_archive.config_digest);
    let digests = env.docker.ok(&["image", "inspect", "--format", "{{json .RepoDigests}}", &by_digest]);
    assert_contains(&digests, &by_digest);
    let tags = env.docker.ok(&["image", "inspect", "--format", "{{json .RepoTags}}", &by_digest]);
    assert!(!tags.contains('@'), "a digest reference is not a tag: {tags}");

    // A tag the registry does not have is a clean error.
    let err = env.docker.fails(&["pull", &format!("{host}/busybox:nosuch")]);
    assert_contains(&err, "not found");
    let err = env.docker.fails(&["pull", &format!("{host}/nosuch/repo:t")]);
    assert!(err.contains("not found") || err.contains("denied"), "{err}");

    let events = env.docker.ok(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &(unix_now() + 1).to_string(),
        "--filter",
        "type=image",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}}",
    ]);
    assert_contains(&events, &format!("push {target}"));
    assert_contains(&events, &format!("pull {target}"));
}

#[test]
fn push_then_pull_back_vfs() {
    push_then_pull_back("vfs");
}

#[test]
fn push_then_pull_back_overlay() {
    push_then_pull_back("overlay");
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An image written straight into the registry by another client: gzip
/// layers, an OCI manifest and an OCI index naming it for this platform.
#[test]
fn pull_an_image_pushed_by_another_client() {
    let env = start("vfs");
    let scratch = env.path("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch");
    let layers = image::multilayer::layers(Path::new(image::BUSYBOX)).expect("layers");
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for tree in &layers {
        let tar = image::tree_to_tar(tree).expect("tar");
        diff_ids.push(image::sha256_digest(&tar));
        let gz = image::gzip(&tar).expect("gzip");
        let digest = env.registry.put_blob("other/multi", &gz, &scratch);
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": gz.len(), "digest": digest}));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": go_arch(),
        "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "one"}, {"created_by": "two"}, {"created_by": "three"}],
    }))
    .expect("config");
    let config_digest = env.registry.put_blob("other/multi", &config, &scratch);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": config_digest},
        "layers": descs,
    }))
    .expect("manifest");
    let manifest_digest =
        env.registry.put_manifest("other/multi", "single", "application/vnd.oci.image.manifest.v1+json", &manifest, &scratch);
    let other_arch = if go_arch() == "amd64" { "arm64" } else { "amd64" };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": manifest.len(), "digest": manifest_digest,
             "platform": {"os": "linux", "architecture": other_arch}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": manifest.len(), "digest": manifest_digest,
             "platform": {"os": "linux", "architecture": go_arch()}},
        ],
    }))
    .expect("index");
    let index_digest = env.registry.put_manifest("other/multi", "v1", "application/vnd.oci.image.index.v1+json", &index, &scratch);

    let reference = format!("{}/other/multi:v1", env.registry.host());
    let out = env.docker.ok(&["pull", &reference]);
    assert_contains(&out, &format!("Digest: {index_digest}"));
    assert_eq!(out.matches("Pull complete").count(), 3, "{out}");
    assert_eq!(env.image_id(&reference), config_digest);
    // The single manifest's tag shares every layer.
    let single = format!("{}/other/multi:single", env.registry.host());
    let out = env.docker.ok(&["pull", &single]);
    assert_eq!(out.matches("Already exists").count(), 3, "{out}");
    assert_contains(&out, &format!("Digest: {manifest_digest}"));
}

/// Three layers pushed and pulled back; a corrupt blob fails the pull with
/// nothing left behind, and the next pull (blob repaired) succeeds.
#[test]
fn multilayer_round_trip_and_failed_pull_leaves_nothing() {
    let env = start("vfs");
    let info: ImageInfo = image::write_multilayer_docker_archive(&env.path("multi.tar")).expect("multilayer");
    env.load(&info.path);
    let target = format!("{}/strata/multi:3", env.registry.host());
    env.docker.ok(&["tag", "strata/multilayer:latest", &target]);
    let pushed = env.docker.ok(&["push", &target]);
    assert_eq!(pushed.matches("Pushed").count(), 3, "{pushed}");
    env.docker.ok(&["rmi", &target, "strata/multilayer:latest"]);
    assert!(env.image_ids().is_empty());
    let snapshots_before = env.snapshot_count();

    // Corrupt the top layer in the registry's storage (same length).
    let blob = env.registry.blob_file(&info.layer_digests[2]);
    let good = std::fs::read(&blob).unwrap_or_else(|e| panic!("read {}: {e}", blob.display()));
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(&blob, &bad).expect("corrupt blob");
    let out = env.docker.output(&["pull", &target]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "a corrupt blob must fail the pull:\n{text}");
    assert_contains(&text, "verification failed");
    assert!(env.image_ids().is_empty(), "a failed pull left an image: {:?}", env.image_ids());
    assert_eq!(env.snapshot_count(), snapshots_before, "a failed pull left snapshots");
    let scratch = env.root.join(env.driver).join("images/tmp");
    let leftovers: Vec<_> = std::fs::read_dir(&scratch).expect("tmp").flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.is_empty(), "a failed pull left files: {leftovers:?}");

    std::fs::write(&blob, &good).expect("repair blob");
    let out = env.docker.ok(&["pull", &target]);
    assert_eq!(out.matches("Pull complete").count(), 3, "{out}");
    assert_eq!(env.image_id(&target), info.config_digest);
}

/// `strata:strata-secret`, bcrypt (cost 5), as `htpasswd -nbB` writes it.
const HTPASSWD: &str = "strata:$2y$05$RUGgFFNBlPkYdqGCd20mwelRXLXj6caH4E2oX3QH36IAvwlO..hEq";
/// base64("strata:strata-secret"), the `auth` of a docker config file.
const AUTH: &str = "c3RyYXRhOnN0cmF0YS1zZWNyZXQ=";

/// A registry that wants credentials: without them push and pull are
/// refused with a clear message; with them (the CLI sends them in
/// X-Registry-Auth) both work.
#[test]
fn credentials_from_x_registry_auth_reach_the_registry() {
    let env = start_with("vfs", Some(HTPASSWD));
    let images = image::TestImages::build(env.dir.path()).expect("test images");
    env.load(&images.docker_archive.path);
    let host = env.registry.host();
    let target = format!("{host}/private/bb:t");
    env.docker.ok(&["tag", "busybox:latest", &target]);

    let err = env.docker.fails(&["push", &target]);
    assert!(err.contains("denied") && err.contains("authentication required"), "{err}");

    let config = env.path("docker-config");
    std::fs::create_dir_all(&config).expect("docker config dir");
    std::fs::write(config.join("config.json"), format!(r#"{{"auths":{{"{host}":{{"auth":"{AUTH}"}}}}}}"#)).expect("config.json");
    let sock = env.root.parent().expect("dir").join("d.sock");
    let authed = Docker::new(&format!("unix://{}", sock.display())).env("DOCKER_CONFIG", &config.display().to_string());
    assert_contains(&authed.ok(&["push", &target]), "t: digest: sha256:");
    env.docker.ok(&["rmi", &target, "busybox:latest"]);

    let err = env.docker.fails(&["pull", &target]);
    assert!(err.contains("denied") || err.contains("not found"), "{err}");
    assert!(env.image_ids().is_empty());
    assert_contains(&authed.ok(&["pull", &target]), &format!("Status: Downloaded newer image for {target}"));
    assert_eq!(env.image_id(&target), images.docker_archive.config_digest);
}
