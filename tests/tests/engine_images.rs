//! End-to-end tests of the image commands of `stratad` with the real docker
//! CLI: import, load (docker-archive and OCI layout), save and load back,
//! images (with filters), image inspect, history, tag, rmi, prune, image
//! events, `system df` (plain and `-v`), and a restart that keeps every
//! image. Test images are built from Debian's busybox-static.
//!
//! Run as root: `cargo test -p strata-tests --test engine_images`.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata_tests::engine::{http_unix, require_docker, snapshots_in, Docker, Stratad};
use strata_tests::image::{self, multilayer, ImageInfo};

struct Env {
    dir: tempfile::TempDir,
    root: PathBuf,
    sock: PathBuf,
    driver: &'static str,
    daemon: Stratad,
    docker: Docker,
}

fn start(driver: &'static str) -> Env {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root (snapshot mounts): run it as root");
    require_docker();
    assert!(
        Path::new(image::BUSYBOX).is_file(),
        "{} is missing: apt-get install busybox-static (or run scripts/deps.sh)",
        image::BUSYBOX
    );
    let dir = tempfile::Builder::new().prefix("stratad-images").tempdir().expect("temp dir");
    let root = dir.path().join("root");
    let sock = dir.path().join("d.sock");
    let daemon = Stratad::start_simple(&root, &sock, &["--storage-driver", driver]).expect("start stratad");
    let docker = Docker::new(&format!("unix://{}", sock.display()));
    Env { dir, root, sock, driver, daemon, docker }
}

impl Env {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Directories holding this driver's snapshots, counted.
    fn snapshot_count(&self) -> usize {
        let dir = find_named_dir(&self.root.join(self.driver), "snapshots", 3)
            .unwrap_or_else(|| panic!("no snapshots directory under {}", self.root.join(self.driver).display()));
        snapshots_in(&dir)
    }

    /// `GET path` on the daemon's socket; the JSON body.
    fn api_json(&self, path: &str) -> serde_json::Value {
        let (status, text) = http_unix(&self.sock, "GET", path, None).expect("raw request");
        assert_eq!(status, 200, "{path}: {text}");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    fn images_listing(&self) -> BTreeSet<String> {
        self.docker
            .ok(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn find_named_dir(base: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let entries = std::fs::read_dir(base).ok()?;
    let mut subdirs = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().ok()?.is_dir() {
            if e.file_name() == name {
                return Some(p);
            }
            subdirs.push(p);
        }
    }
    if depth == 0 {
        return None;
    }
    subdirs.into_iter().find_map(|d| find_named_dir(&d, name, depth - 1))
}

/// Directories under `base` (to `depth` levels) that contain `rel`.
fn dirs_containing(base: &Path, rel: &str, depth: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if std::fs::symlink_metadata(base.join(rel)).is_ok() {
        out.push(base.to_path_buf());
    }
    if depth > 0 {
        if let Ok(entries) = std::fs::read_dir(base) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    out.extend(dirs_containing(&e.path(), rel, depth - 1));
                }
            }
        }
    }
    out
}

fn stdin_of(env: &Env, args: &[&str], input: &[u8]) -> (bool, String, String) {
    let out = env.docker.output_with_input(args, input);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn import(env: &Env, tarball: &[u8], extra: &[&str], reference: &str) -> String {
    let mut args = vec!["import"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-", reference]);
    let (ok, stdout, stderr) = stdin_of(env, &args, tarball);
    assert!(ok, "docker import failed: {stderr}");
    let id = stdout.trim().to_string();
    assert!(id.starts_with("sha256:") && id.len() == 71, "import printed {stdout:?}");
    id
}

fn busybox_rootfs(env: &Env) -> Vec<u8> {
    let p = image::write_rootfs_tar_gz(&env.path("rootfs.tar.gz")).expect("build busybox rootfs");
    std::fs::read(p).expect("read rootfs")
}

/// A one-file root filesystem tar, different for each `marker`.
fn tiny_rootfs(marker: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let data = format!("{marker}\n");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    b.append_data(&mut h, "marker", data.as_bytes()).expect("append");
    b.into_inner().expect("finish")
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

fn short(id: &str) -> &str {
    &id.trim_start_matches("sha256:")[..12]
}

#[test]
fn import_inspect_history_tag_and_rmi() {
    let env = start("vfs");
    let rootfs = busybox_rootfs(&env);
    let id = import(
        &env,
        &rootfs,
        &["-c", "CMD [\"sh\"]", "-c", "ENV GREETING=hello", "-c", "WORKDIR /srv", "-c", "LABEL org.test=yes", "-m", "first"],
        "myimp:v1",
    );
    assert!(env.images_listing().contains(&format!("myimp:v1 {}", short(&id))), "{:?}", env.images_listing());

    let inspected: serde_json::Value =
        serde_json::from_str(&env.docker.ok(&["image", "inspect", "myimp:v1"])).expect("inspect json");
    let img = &inspected[0];
    assert_eq!(img["Id"], id.as_str());
    assert_eq!(img["RepoTags"], serde_json::json!(["myimp:v1"]));
    assert_eq!(img["Config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(img["Config"]["Env"], serde_json::json!(["GREETING=hello"]));
    assert_eq!(img["Config"]["WorkingDir"], "/srv");
    assert_eq!(img["Config"]["Labels"]["org.test"], "yes");
    assert_eq!(img["Comment"], "first");
    assert_eq!(img["Os"], "linux");
    assert_eq!(img["GraphDriver"]["Name"], "vfs");
    assert_eq!(img["RootFS"]["Layers"].as_array().map(Vec::len), Some(1));
    assert!(img["Size"].as_i64().unwrap_or(0) > 500_000, "busybox is bigger than that: {}", img["Size"]);
    assert_eq!(env.docker.ok(&["image", "inspect", "-f", "{{.Id}}", short(&id)]).trim(), id);

    let history = env.docker.ok(&["history", "--no-trunc", "myimp:v1"]);
    assert!(history.contains(&id) && history.contains("first"), "{history}");

    env.docker.ok(&["tag", "myimp:v1", "myrepo/bb:v2"]);
    env.docker.ok(&["tag", id.as_str(), "localhost:5000/a/b:c"]);
    let listing = env.images_listing();
    for r in ["myimp:v1", "myrepo/bb:v2", "localhost:5000/a/b:c"] {
        assert!(listing.contains(&format!("{r} {}", short(&id))), "{r} missing from {listing:?}");
    }
    assert_eq!(env.docker.ok(&["image", "inspect", "-f", "{{.Id}}", "localhost:5000/a/b:c"]).trim(), id);

    // Untag while other references remain; refuse deleting by ID without force.
    assert_eq!(env.docker.ok(&["rmi", "myrepo/bb:v2"]).trim(), "Untagged: myrepo/bb:v2");
    let err = env.docker.fails(&["rmi", short(&id)]);
    assert!(err.contains("referenced in multiple repositories"), "{err}");
    let snapshots = env.snapshot_count();
    assert_eq!(snapshots, 1, "one layer, one snapshot");
    assert_eq!(env.docker.ok(&["rmi", "localhost:5000/a/b:c"]).trim(), "Untagged: localhost:5000/a/b:c");
    let out = env.docker.ok(&["rmi", "myimp:v1"]);
    assert!(out.contains("Untagged: myimp:v1") && out.contains(&format!("Deleted: {id}")), "{out}");
    assert!(env.images_listing().is_empty());
    assert_eq!(env.snapshot_count(), 0, "the layer's snapshot is removed with the last image");

    let err = env.docker.fails(&["image", "inspect", "myimp:v1"]);
    assert!(err.contains("No such image: myimp:v1"), "{err}");
    let err = env.docker.fails(&["rmi", "nosuch"]);
    assert!(err.contains("No such image"), "{err}");
    let err = env.docker.fails(&["tag", "nosuch", "x:y"]);
    assert!(err.contains("No such image"), "{err}");
    let (ok, _, err) = stdin_of(&env, &["import", "-c", "RUN echo no", "-", "bad:1"], &rootfs);
    assert!(!ok && err.contains("not a valid change command"), "{err}");
    assert_eq!(env.snapshot_count(), 0, "a refused import leaves nothing");

    // Forced removal by ID untags every reference and deletes.
    let id = import(&env, &tiny_rootfs("forced"), &[], "f:1");
    env.docker.ok(&["tag", "f:1", "f:2"]);
    let out = env.docker.ok(&["rmi", "-f", short(&id)]);
    for line in ["Untagged: f:1", "Untagged: f:2", &format!("Deleted: {id}")] {
        assert!(out.lines().any(|l| l == line), "{line:?} missing from {out}");
    }
    assert!(env.images_listing().is_empty());
    assert_eq!(env.snapshot_count(), 0);
}

fn load(env: &Env, archive: &Path) -> String {
    env.docker.ok(&["load", "-i", &archive.display().to_string()])
}

/// Checks the unpacked multilayer image in the driver's snapshot directories:
/// vfs keeps full copies, overlay keeps the top layer's changes with the
/// deletion as an overlay whiteout (a 0:0 character device).
fn check_multilayer_unpacked(env: &Env) {
    let base = env.root.join(env.driver);
    let tops = dirs_containing(&base, "data/c", 6);
    assert_eq!(tops.len(), 1, "exactly one snapshot holds the top layer: {tops:?}");
    let top = &tops[0];
    assert_eq!(std::fs::read(top.join("data/b")).expect("data/b"), b"b2\n");
    assert_eq!(std::fs::read(top.join("data/c")).expect("data/c"), b"c\n");
    assert!(std::fs::symlink_metadata(top.join("data/.wh.a")).is_err(), "whiteout markers are never written");
    match env.driver {
        "vfs" => {
            assert!(std::fs::symlink_metadata(top.join("data/a")).is_err(), "data/a was deleted by the top layer");
            assert_eq!(std::fs::read(top.join("etc/motd")).expect("motd"), multilayer::MOTD);
            assert!(std::fs::symlink_metadata(top.join("bin/sh")).expect("bin/sh").file_type().is_symlink());
        }
        _ => {
            let a = std::fs::symlink_metadata(top.join("data/a")).expect("overlay whiteout for data/a");
            assert!(a.file_type().is_char_device() && a.rdev() == 0, "data/a must be an overlay whiteout: {a:?}");
        }
    }
}

fn load_save_and_load_back(driver: &'static str) {
    let env = start(driver);
    let images = image::TestImages::build(env.dir.path()).expect("build test images");
    let multi_oci = image::write_multilayer_oci_archive(&env.path("multi-oci.tar")).expect("multilayer oci");
    let multi_docker: ImageInfo =
        image::write_multilayer_docker_archive(&env.path("multi-docker.tar")).expect("multilayer docker");

    // docker-archive, first through the raw API without `quiet` (what the CLI asks for on a
    // terminal): each unpacked layer is reported as a finished "Loading layer" bar.
    let archive = std::fs::read(&images.docker_archive.path).expect("read the archive");
    let (status, text) = http_unix(&env.sock, "POST", "/images/load?quiet=0", Some(&archive)).expect("raw load");
    assert_eq!(status, 200, "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let messages: Vec<serde_json::Value> =
        body.lines().filter(|l| l.trim_start().starts_with('{')).map(|l| serde_json::from_str(l).expect("a JSON message")).collect();
    let layer = messages.iter().find(|m| m["status"] == "Loading layer").unwrap_or_else(|| panic!("no layer progress in {body}"));
    assert_eq!(layer["id"].as_str().map(str::len), Some(12), "{layer}");
    assert!(layer["progressDetail"]["total"].as_u64().unwrap_or(0) > 0, "{layer}");
    assert_eq!(layer["progressDetail"]["current"], layer["progressDetail"]["total"], "{layer}");
    assert!(messages.iter().any(|m| m["stream"] == "Loaded image: busybox:latest\n"), "{body}");
    // The CLI without a terminal asks for quiet output: only the result line.
    let out = load(&env, &images.docker_archive.path);
    assert_eq!(out.trim(), "Loaded image: busybox:latest", "{out}");
    let id = env.docker.ok(&["image", "inspect", "-f", "{{.Id}}", "busybox"]);
    assert_eq!(id.trim(), images.docker_archive.config_digest);
    // OCI layout of the same image: same ID, its layer already present.
    let before = env.snapshot_count();
    let out = load(&env, &images.oci.path);
    assert_eq!(out.trim(), "Loaded image: busybox:latest", "{out}");
    assert_eq!(images.oci.config_digest, images.docker_archive.config_digest);
    assert_eq!(env.snapshot_count(), before, "the same layer is not unpacked twice");

    // Three layers with a whiteout, as OCI (gzip layers), then the docker-archive of it.
    let out = load(&env, &multi_oci.path);
    assert_eq!(out.trim(), "Loaded image: strata/multilayer:latest", "{out}");
    check_multilayer_unpacked(&env);
    let out = load(&env, &multi_docker.path);
    assert!(out.contains("Loaded image: strata/multilayer:latest"), "{out}");
    assert_eq!(
        env.docker.ok(&["image", "inspect", "-f", "{{.Id}}", "strata/multilayer"]).trim(),
        multi_docker.config_digest
    );
    assert_eq!(env.snapshot_count(), 3, "busybox shares the bottom layer of the multilayer image");

    // A gzip-compressed whole archive loads too.
    let gz = image::gzip(&std::fs::read(&images.docker_archive.path).expect("read")).expect("gzip");
    let (ok, out, err) = stdin_of(&env, &["load"], &gz);
    assert!(ok && out.contains("Loaded image: busybox:latest"), "{out} {err}");

    // Save both, check the layout, and load into a fresh daemon.
    let saved = env.path("saved.tar");
    env.docker.ok(&["save", "-o", &saved.display().to_string(), "busybox:latest", "strata/multilayer"]);
    let mut names = BTreeSet::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&saved).expect("open saved"));
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().into_owned();
        if let Some(hex) = name.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).expect("read blob");
            assert_eq!(image::sha256_digest(&data), format!("sha256:{hex}"), "blob {name} matches its name");
        }
        names.insert(name);
    }
    for required in ["manifest.json", "index.json", "oci-layout", "repositories"] {
        assert!(names.contains(required), "{required} missing from {names:?}");
    }

    let other_root = env.path("other-root");
    let other_sock = env.path("other.sock");
    let _other = Stratad::start_simple(&other_root, &other_sock, &["--storage-driver", driver]).expect("second stratad");
    let other = Docker::new(&format!("unix://{}", other_sock.display()));
    let out = other.ok(&["load", "-i", &saved.display().to_string()]);
    assert!(out.contains("Loaded image: busybox:latest") && out.contains("Loaded image: strata/multilayer:latest"), "{out}");
    for (name, info) in [("busybox", &images.docker_archive), ("strata/multilayer", &multi_docker)] {
        assert_eq!(other.ok(&["image", "inspect", "-f", "{{.Id}}", name]).trim(), info.config_digest);
        let layers = other.ok(&["image", "inspect", "-f", "{{json .RootFS.Layers}}", name]);
        let layers: Vec<String> = serde_json::from_str(layers.trim()).expect("layers");
        assert_eq!(layers, info.diff_ids);
    }
    // Saving by ID gives an untagged image.
    let by_id = env.path("by-id.tar");
    env.docker.ok(&["save", "-o", &by_id.display().to_string(), short(&multi_docker.config_digest)]);
    other.ok(&["rmi", "strata/multilayer"]);
    let out = other.ok(&["load", "-i", &by_id.display().to_string()]);
    assert_eq!(out.trim(), format!("Loaded image ID: {}", multi_docker.config_digest));
    let err = env.docker.fails(&["save", "-o", &env.path("x.tar").display().to_string(), "nosuch:1"]);
    assert!(err.contains("No such image"), "{err}");
}

#[test]
fn load_save_and_load_back_vfs() {
    load_save_and_load_back("vfs");
}

#[test]
fn load_save_and_load_back_overlay() {
    load_save_and_load_back("overlay");
}

#[test]
fn image_events_since_until_and_filters() {
    let env = start("vfs");
    let since = unix_now() - 1;
    let id = import(&env, &tiny_rootfs("events"), &[], "evt:1");
    env.docker.ok(&["tag", "evt:1", "evt:2"]);
    env.docker.ok(&["rmi", "evt:2"]);
    let archive = env.path("evt.tar");
    env.docker.ok(&["save", "-o", &archive.display().to_string(), "evt:1"]);
    env.docker.ok(&["rmi", "evt:1"]);
    env.docker.ok(&["load", "-i", &archive.display().to_string()]);
    std::thread::sleep(Duration::from_millis(1100));
    let until = unix_now();

    let format = "{{.Type}} {{.Action}} {{.Actor.ID}} {{index .Actor.Attributes \"name\"}}";
    let out = env.docker.ok(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        "type=image",
        "--format",
        format,
    ]);
    let lines: Vec<&str> = out.lines().collect();
    let expected = [
        format!("image tag {id} evt:1"),
        format!("image import {id} {id}"),
        format!("image tag {id} evt:2"),
        format!("image untag {id} {id}"),
        format!("image save {id} {id}"),
        format!("image untag {id} {id}"),
        format!("image delete {id} {id}"),
        format!("image load {id} {id}"),
    ];
    assert_eq!(lines, expected.iter().map(String::as_str).collect::<Vec<_>>(), "{out}");

    let out = env.docker.ok(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        "type=image",
        "--filter",
        "event=untag",
        "--format",
        "{{.Action}}",
    ]);
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["untag", "untag"], "{out}");
}

#[test]
fn system_df_counts_sizes_shared_layers_and_reclaimable() {
    let env = start("vfs");
    let images = image::TestImages::build(env.dir.path()).expect("build test images");
    let multi = image::write_multilayer_docker_archive(&env.path("multi.tar")).expect("multilayer");
    load(&env, &images.docker_archive.path);
    load(&env, &multi.path);

    let df = env.api_json("/v1.50/system/df");
    let imgs = df["Images"].as_array().expect("Images");
    assert_eq!(imgs.len(), 2, "{df}");
    let by_id = |id: &str| imgs.iter().find(|i| i["Id"] == id).unwrap_or_else(|| panic!("{id} missing from {df}"));
    let bb = by_id(&images.docker_archive.config_digest);
    let ml = by_id(&multi.config_digest);
    let bb_size = bb["Size"].as_i64().expect("size");
    let ml_size = ml["Size"].as_i64().expect("size");
    assert!(bb_size > 0 && ml_size > bb_size, "{df}");
    // The busybox layer is the bottom layer of both images.
    assert_eq!(bb["SharedSize"].as_i64(), Some(bb_size), "{df}");
    assert_eq!(ml["SharedSize"].as_i64(), Some(bb_size), "{df}");
    assert_eq!(bb["Containers"].as_i64(), Some(0));
    assert_eq!(df["LayersSize"].as_i64(), Some(ml_size), "each layer counted once: {df}");
    // Plain listing leaves the df-only fields at -1, as dockerd does.
    let list = env.api_json("/v1.50/images/json");
    assert_eq!(list[0]["SharedSize"].as_i64(), Some(-1), "{list}");

    let out = env.docker.ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}} {{.Active}} {{.Reclaimable}}"]);
    let images_row = out.lines().find(|l| l.starts_with("Images")).unwrap_or_else(|| panic!("{out}"));
    assert!(images_row.starts_with("Images 2 0 "), "{images_row}");
    assert!(images_row.ends_with("(100%)"), "nothing in use, all reclaimable: {images_row}");

    let verbose = env.docker.ok(&["system", "df", "-v"]);
    assert!(verbose.contains("SHARED SIZE") && verbose.contains("UNIQUE SIZE"), "{verbose}");
    for repo in ["busybox", "strata/multilayer"] {
        assert!(verbose.lines().any(|l| l.starts_with(repo)), "{repo} missing:\n{verbose}");
    }
}

#[test]
fn restart_keeps_every_image() {
    let mut env = start("vfs");
    let images = image::TestImages::build(env.dir.path()).expect("build test images");
    let multi = image::write_multilayer_oci_archive(&env.path("multi.tar")).expect("multilayer");
    load(&env, &images.oci.path);
    load(&env, &multi.path);
    let imported = import(&env, &tiny_rootfs("restart"), &["-c", "CMD [\"/marker\"]"], "kept:1");
    env.docker.ok(&["tag", "busybox", "myrepo/bb:v1"]);
    let dangling = import(&env, &tiny_rootfs("will-be-dangling"), &[], "kept:2");
    import(&env, &tiny_rootfs("replaces"), &[], "kept:2");
    let before = env.images_listing();
    let inspect_before = env.docker.ok(&["image", "inspect", "kept:1", "busybox", short(&dangling)]);
    let snapshots = env.snapshot_count();

    let status = env.daemon.stop().expect("stop stratad");
    assert!(status.success(), "stratad exited with {status}");
    env.daemon = Stratad::start_simple(&env.root, &env.sock, &["--storage-driver", env.driver]).expect("restart");

    assert_eq!(env.images_listing(), before);
    assert_eq!(env.docker.ok(&["image", "inspect", "kept:1", "busybox", short(&dangling)]), inspect_before);
    assert_eq!(env.snapshot_count(), snapshots);
    let history = env.docker.ok(&["history", "-q", "kept:1"]);
    assert!(history.starts_with(short(&imported)), "{history}");
    // Still fully usable: remove everything.
    for r in ["kept:1", "kept:2", "myrepo/bb:v1", "busybox", "strata/multilayer"] {
        env.docker.ok(&["rmi", r]);
    }
    env.docker.ok(&["rmi", short(&dangling)]);
    assert!(env.images_listing().is_empty(), "{:?}", env.images_listing());
    assert_eq!(env.snapshot_count(), 0);
}

#[test]
fn list_filters_and_prune() {
    let env = start("vfs");
    let old = import(&env, &tiny_rootfs("one"), &["-c", "LABEL tier=gold"], "app:1");
    std::thread::sleep(Duration::from_millis(1100));
    let mid = import(&env, &tiny_rootfs("two"), &[], "other/app:1");
    std::thread::sleep(Duration::from_millis(1100));
    let new = import(&env, &tiny_rootfs("three"), &["-c", "LABEL tier=silver"], "app:1");

    let q = |filters: &[&str]| -> BTreeSet<String> {
        let mut args = vec!["images", "-q", "--no-trunc"];
        for f in filters {
            args.push("--filter");
            args.push(f);
        }
        env.docker.ok(&args).lines().map(str::to_owned).collect()
    };
    let set = |ids: &[&String]| -> BTreeSet<String> { ids.iter().map(|s| s.to_string()).collect() };
    assert_eq!(q(&[]), set(&[&old, &mid, &new]));
    assert_eq!(q(&["dangling=true"]), set(&[&old]));
    assert_eq!(q(&["dangling=false"]), set(&[&mid, &new]));
    assert_eq!(q(&["reference=app"]), set(&[&new]));
    assert_eq!(q(&["reference=*/app:*"]), set(&[&mid]));
    assert_eq!(q(&["label=tier"]), set(&[&old, &new]));
    assert_eq!(q(&["label=tier=silver"]), set(&[&new]));
    assert_eq!(q(&["before=app:1"]), set(&[&old, &mid]));
    assert_eq!(q(&["since=other/app:1"]), set(&[&new]));
    let err = env.docker.fails(&["images", "--filter", "color=red"]);
    assert!(err.contains("invalid filter 'color'"), "{err}");
    let listing = env.docker.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", "dangling=true"]);
    assert_eq!(listing.trim(), "<none>:<none>");

    let out = env.docker.ok(&["image", "prune", "-f"]);
    assert!(out.contains(&format!("deleted: {old}")) && out.contains("Total reclaimed space"), "{out}");
    assert_eq!(q(&[]), set(&[&mid, &new]));
    let out = env.docker.ok(&["image", "prune", "-a", "-f", "--filter", "label=tier=silver"]);
    assert!(out.contains("untagged: app:1") && out.contains(&format!("deleted: {new}")), "{out}");
    assert_eq!(q(&[]), set(&[&mid]));
    assert_eq!(env.snapshot_count(), 1);
}

/// Debian's dockerd 20.10 on a private data root and socket (vfs, no
/// networking setup), stopped and unmounted on drop.
struct Dockerd {
    child: Option<std::process::Child>,
    dir: PathBuf,
    log: PathBuf,
}

const DOCKERD: &str = "/usr/sbin/dockerd";

impl Dockerd {
    fn start(dir: &Path) -> Dockerd {
        assert!(Path::new(DOCKERD).is_file(), "{DOCKERD} is required for this test: apt-get install docker.io");
        std::fs::create_dir_all(dir).expect("dockerd dir");
        std::fs::write(dir.join("daemon.json"), "{}").expect("daemon.json");
        let log = dir.join("dockerd.log");
        let out = std::fs::File::create(&log).expect("dockerd log");
        let sock = dir.join("docker.sock");
        let child = std::process::Command::new(DOCKERD)
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(["--storage-driver", "vfs", "--iptables=false", "--ip6tables=false", "--bridge=none"])
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn dockerd");
        let mut d = Dockerd { child: Some(child), dir: dir.to_path_buf(), log };
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            if http_unix(&sock, "GET", "/_ping", None).map(|(s, _)| s == 200).unwrap_or(false) {
                return d;
            }
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("dockerd exited ({status}):\n{}", std::fs::read_to_string(&d.log).unwrap_or_default());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "dockerd did not start in 90 s:\n{}",
                std::fs::read_to_string(&d.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // dockerd unmounts its data root on a clean exit; after a crash, do it.
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        if std::thread::panicking() {
            eprintln!("---- dockerd log ----\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

#[test]
fn saved_images_load_into_dockerd_and_back() {
    let env = start("vfs");
    let multi = image::write_multilayer_docker_archive(&env.path("multi.tar")).expect("multilayer");
    load(&env, &multi.path);
    let imported = import(&env, &busybox_rootfs(&env), &["-c", "CMD [\"sh\"]", "-c", "ENV FROM=strata"], "strata-imp:1");
    let saved = env.path("from-strata.tar");
    env.docker.ok(&["save", "-o", &saved.display().to_string(), "strata/multilayer", "strata-imp:1"]);

    let dockerd = Dockerd::start(&env.path("dockerd"));
    let dk = Docker::new(&dockerd.host());
    let out = dk.ok(&["load", "-i", &saved.display().to_string()]);
    assert!(out.contains("Loaded image: strata/multilayer:latest") && out.contains("Loaded image: strata-imp:1"), "{out}");
    assert_eq!(dk.ok(&["image", "inspect", "-f", "{{.Id}}", "strata/multilayer"]).trim(), multi.config_digest);
    assert_eq!(dk.ok(&["image", "inspect", "-f", "{{.Id}}", "strata-imp:1"]).trim(), imported);
    // dockerd runs what it loaded: the whiteout and the rewritten file hold.
    let out = dk.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "strata/multilayer",
        "sh",
        "-c",
        "cat /data/b /data/c /etc/motd; test ! -e /data/a && echo a-gone",
    ]);
    assert_eq!(out, format!("b2\nc\n{}a-gone\n", String::from_utf8_lossy(multilayer::MOTD)));
    let out = dk.ok(&["run", "--rm", "--network", "none", "strata-imp:1", "sh", "-c", "echo $FROM"]);
    assert_eq!(out.trim(), "strata");

    // And back: dockerd's own save (legacy layout) loads into stratad.
    dk.ok(&["tag", "strata-imp:1", "via-dockerd:2"]);
    let back = env.path("from-dockerd.tar");
    dk.ok(&["save", "-o", &back.display().to_string(), "via-dockerd:2", "strata/multilayer"]);
    env.docker.ok(&["rmi", "strata/multilayer", "strata-imp:1"]);
    assert!(env.images_listing().is_empty());
    let out = load(&env, &back);
    assert!(out.contains("Loaded image: via-dockerd:2") && out.contains("Loaded image: strata/multilayer:latest"), "{out}");
    assert_eq!(env.docker.ok(&["image", "inspect", "-f", "{{.Id}}", "via-dockerd:2"]).trim(), imported);
    assert_eq!(env.docker.ok(&["image", "inspect", "-f", "{{.Id}}", "strata/multilayer"]).trim(), multi.config_digest);
    check_multilayer_unpacked(&env);
}
