//! The Python docker SDK's own integration tests against `stratad`.
//!
//! The tests come from the SDK's source distribution on PyPI, pinned by
//! version and sha256 ([`SDK_VERSION`], [`SDK_SHA256`]): 7.0.0 is the newest
//! release whose sdist still ships `tests/integration/` (7.1.0's does not).
//! The test
//!
//! 1. builds, once per target directory, a virtual environment with the
//!    Python packages pinned in `tests/pysdk/requirements.txt` and downloads
//!    the sdist with pip (both cached under `CARGO_TARGET_TMPDIR/pysdk`; the
//!    sdist's sha256 is checked on every run);
//! 2. unpacks the sdist into a temporary directory;
//! 3. starts `stratad` (overlay driver) on a temporary socket and data root,
//!    and loads the images the SDK's tests expect, all built from Debian's
//!    busybox-static: `alpine:3.10` (their `TEST_IMG`), `alpine:latest` and
//!    `busybox:latest`;
//! 4. runs pytest on the node ids listed in `tests/pysdk/selected.txt` with
//!    `DOCKER_HOST` pointing at the daemon and `DOCKER_TEST_API_VERSION=1.41`
//!    (as the SDK's own Makefile runs them), and fails unless every one of
//!    them passes (a skipped or deselected test counts as a failure).
//!
//! Needs root, runc, the docker CLI, `python3` with the `venv` module
//! (Debian: python3, python3-venv) and PyPI on the first run.
//!
//! Run: `cargo test -p strata-tests --test engine_docker_py`.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use strata_tests::engine::{require_docker, require_program, Docker, Stratad};
use strata_tests::image::{self, Entry};

/// The docker SDK release whose integration tests run.
const SDK_VERSION: &str = "7.0.0";
/// sha256 of `docker-7.0.0.tar.gz` as published on PyPI.
const SDK_SHA256: &str = "323736fb92cd9418fc5e7133bc953e11a9da04f4483f828b527db553f1e7e5a3";
/// The API version the SDK's tests ask for: the one the SDK's own Makefile
/// runs them at (`TEST_API_VERSION ?= 1.41`).
const TEST_API_VERSION: &str = "1.41";
/// The interpreter the virtual environment is made from (Debian's python3).
const PYTHON: &str = "/usr/bin/python3";
/// Longest the whole pytest run may take.
const PYTEST_DEADLINE: Duration = Duration::from_secs(40 * 60);

fn pysdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pysdk")
}

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("pysdk")
}

fn sha256_hex(data: &[u8]) -> String {
    image::digest_hex(&image::sha256_digest(data)).to_string()
}

fn text(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A command with the environment pip and pytest need and nothing of the
/// caller's docker settings.
fn python_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("DOCKER_") || key.starts_with("PYTHON") || key == "VIRTUAL_ENV" {
            cmd.env_remove(&key);
        }
    }
    cmd.env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_INPUT", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command, what: &str, hint: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}; {hint}"));
    assert!(out.status.success(), "{what} failed; {hint}\n{}", text(&out));
    out
}

/// The pinned Python packages, one `name==version` a line.
fn requirements() -> String {
    let path = pysdk_dir().join("requirements.txt");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The virtual environment with the pinned packages: reused when its marker
/// names the same requirements, rebuilt from scratch otherwise.
fn venv() -> PathBuf {
    assert!(
        Path::new(PYTHON).is_file(),
        "{PYTHON} is required: apt-get install python3 python3-venv (or run scripts/deps.sh)"
    );
    let reqs = requirements();
    let stamp = sha256_hex(reqs.as_bytes());
    let dir = cache_dir().join("venv");
    let marker = dir.join("strata-requirements.sha256");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(stamp.as_str()) {
        return dir;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("remove stale {}: {e}", dir.display()));
    }
    std::fs::create_dir_all(cache_dir()).unwrap_or_else(|e| panic!("create {}: {e}", cache_dir().display()));
    run(
        python_command(Path::new(PYTHON)).args(["-m", "venv"]).arg(&dir),
        "creating the virtual environment",
        "install the venv module: apt-get install python3-venv",
    );
    let python = dir.join("bin/python");
    run(
        python_command(&python)
            .args(["-m", "pip", "install", "--quiet", "--only-binary", ":all:", "-r"])
            .arg(pysdk_dir().join("requirements.txt")),
        "pip install -r tests/pysdk/requirements.txt",
        "PyPI must be reachable (pip's usual settings, e.g. PIP_INDEX_URL, apply)",
    );
    std::fs::write(&marker, &stamp).unwrap_or_else(|e| panic!("write {}: {e}", marker.display()));
    dir
}

/// The pinned sdist, downloaded with pip once and checked on every run.
fn sdist(venv: &Path) -> Vec<u8> {
    let path = cache_dir().join(format!("docker-{SDK_VERSION}.tar.gz"));
    if !path.is_file() {
        let download = tempfile::tempdir_in(cache_dir()).expect("temp dir for the download");
        run(
            python_command(&venv.join("bin/python"))
                .args(["-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"])
                .arg(format!("docker=={SDK_VERSION}"))
                .arg("-d")
                .arg(download.path()),
            "pip download of the docker SDK sdist",
            "PyPI must be reachable (pip's usual settings, e.g. PIP_INDEX_URL, apply)",
        );
        let got = download.path().join(format!("docker-{SDK_VERSION}.tar.gz"));
        std::fs::rename(&got, &path).unwrap_or_else(|e| panic!("move {} into the cache: {e}", got.display()));
    }
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let sum = sha256_hex(&data);
    if sum != SDK_SHA256 {
        let _ = std::fs::remove_file(&path);
        panic!("{} has sha256 {sum}, expected {SDK_SHA256}: removed; the next run downloads it again", path.display());
    }
    data
}

/// Unpacks the sdist into `dir` and returns the source root (`docker-7.0.0`).
fn unpack(data: &[u8], dir: &Path) -> PathBuf {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(data));
    archive.unpack(dir).unwrap_or_else(|e| panic!("unpack the docker sdist into {}: {e}", dir.display()));
    let root = dir.join(format!("docker-{SDK_VERSION}"));
    assert!(
        root.join("tests/integration/conftest.py").is_file(),
        "the docker {SDK_VERSION} sdist has no tests/integration/: it cannot serve this test"
    );
    root
}

/// The pytest node ids of `tests/pysdk/selected.txt` (`#` starts a comment).
fn selected() -> Vec<String> {
    let path = pysdk_dir().join("selected.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let ids: Vec<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{} lists a test twice", path.display());
    assert!(!ids.is_empty(), "{} lists no test", path.display());
    ids
}

/// System users of Alpine's base layout; the SDK's tests run commands as
/// some of them (`whoami` as `postgres`).
const ALPINE_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh
bin:x:1:1:bin:/bin:/sbin/nologin
daemon:x:2:2:daemon:/sbin:/sbin/nologin
adm:x:3:4:adm:/var/adm:/sbin/nologin
lp:x:4:7:lp:/var/spool/lpd:/sbin/nologin
mail:x:8:12:mail:/var/spool/mail:/sbin/nologin
operator:x:11:0:operator:/root:/bin/sh
ftp:x:21:21::/var/lib/ftp:/sbin/nologin
postgres:x:70:70::/var/lib/postgresql:/bin/sh
guest:x:405:100:guest:/dev/null:/sbin/nologin
nobody:x:65534:65534:nobody:/:/sbin/nologin
";
const ALPINE_GROUP: &str = "root:x:0:root
bin:x:1:root,bin,daemon
daemon:x:2:root,bin,daemon
adm:x:4:root,adm,daemon
lp:x:7:lp
mail:x:12:mail
ftp:x:21:
postgres:x:70:
users:x:100:games
nogroup:x:65533:
nobody:x:65534:
";

/// The test image tree: busybox plus the directories and users of Alpine's
/// layout that the SDK's tests rely on (working directories, bind targets,
/// users).
fn alpine_like_tree() -> image::Tree {
    let mut tree = image::busybox_tree(Path::new(image::BUSYBOX)).expect("busybox tree");
    for dir in ["home", "mnt", "opt", "srv", "usr", "usr/bin", "usr/sbin", "usr/local", "usr/local/bin", "var/opt", "var/log", "var/tmp", "run"] {
        tree.insert(dir.to_string(), Entry::Dir { mode: 0o755 });
    }
    tree.insert("etc/passwd".into(), Entry::File { mode: 0o644, data: ALPINE_PASSWD.as_bytes().to_vec() });
    tree.insert("etc/group".into(), Entry::File { mode: 0o644, data: ALPINE_GROUP.as_bytes().to_vec() });
    tree
}

/// Mount points at or below `root`, deepest first.
fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(root))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found
}

/// Detaches whatever is still mounted under the test's directory when the
/// test ends, passing or failing, so its temporary directory can go.
struct MountSweep(PathBuf);

impl Drop for MountSweep {
    fn drop(&mut self) {
        for m in mounts_under(&self.0) {
            if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("cannot detach {}: {e}", m.display());
            }
        }
    }
}

/// Counts from the `<testsuite …>` element of pytest's JUnit XML report.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    tests: u64,
    failures: u64,
    errors: u64,
    skipped: u64,
}

fn junit_counts(xml: &str) -> Option<Counts> {
    let start = xml.find("<testsuite ")?;
    let element = &xml[start..start + xml[start..].find('>')?];
    let attr = |name: &str| -> Option<u64> {
        let key = format!(" {name}=\"");
        let from = element.find(&key)? + key.len();
        let len = element[from..].find('"')?;
        element[from..from + len].parse().ok()
    };
    Some(Counts { tests: attr("tests")?, failures: attr("failures")?, errors: attr("errors")?, skipped: attr("skipped")? })
}

#[test]
fn junit_counts_are_read_from_the_testsuite_element() {
    let xml = r#"<?xml version="1.0"?><testsuites><testsuite name="docker-py" errors="1" failures="2" skipped="3" tests="40" time="1.0"><testcase/></testsuite></testsuites>"#;
    assert_eq!(junit_counts(xml), Some(Counts { tests: 40, failures: 2, errors: 1, skipped: 3 }));
    assert_eq!(junit_counts("<testsuites/>"), None);
    assert_eq!(junit_counts(r#"<testsuite tests="x" failures="0" errors="0" skipped="0">"#), None);
}

#[test]
fn docker_py_integration_subset_passes() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root (mounts, runc): run it as root");
    require_docker();
    require_program("runc", "install it: apt-get install runc");
    let ids = selected();
    let venv = venv();
    let data = sdist(&venv);

    let dir = tempfile::Builder::new().prefix("stratad-pysdk").tempdir().expect("temp dir");
    let _sweep = MountSweep(dir.path().to_path_buf());
    let source = unpack(&data, &dir.path().join("src"));
    let root = dir.path().join("root");
    let sock = dir.path().join("d.sock");
    let mut daemon = Stratad::start_simple(&root, &sock, &["--storage-driver", "overlay"]).expect("start stratad");
    let host = format!("unix://{}", sock.display());
    let docker = Docker::new(&host);

    let archive = image::write_docker_archive_of(
        &dir.path().join("alpine.tar"),
        "docker.io/library/alpine:3.10",
        &[alpine_like_tree()],
    )
    .expect("build the test image");
    docker.ok(&["load", "-i", &archive.path.display().to_string()]);
    docker.ok(&["tag", "alpine:3.10", "alpine:latest"]);
    docker.ok(&["tag", "alpine:3.10", "busybox:latest"]);

    let junit = dir.path().join("junit.xml");
    let docker_config = dir.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).expect("docker config dir");
    // Some of docker-py's tests leave their temporary files behind: keep
    // them in this test's directory, which is removed at the end.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).expect("temp dir for pytest");
    let mut child = python_command(&venv.join("bin/python"))
        .current_dir(&source)
        .env("DOCKER_HOST", &host)
        .env("DOCKER_TEST_API_VERSION", TEST_API_VERSION)
        .env("DOCKER_CONFIG", &docker_config)
        .env("HOME", dir.path())
        .env("TMPDIR", &tmp)
        .args(["-m", "pytest", "-p", "no:cacheprovider", "--timeout", "300", "-rfEs", "-v"])
        .arg(format!("--junitxml={}", junit.display()))
        .args(&ids)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pytest");
    let mut stdout = child.stdout.take().expect("pytest stdout");
    let mut stderr = child.stderr.take().expect("pytest stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + PYTEST_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll pytest") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    let report = format!("pytest stdout:\n{stdout}\npytest stderr:\n{stderr}");
    let Some(status) = status else {
        panic!("pytest did not finish within {PYTEST_DEADLINE:?}\n{report}");
    };
    let xml = std::fs::read_to_string(&junit).unwrap_or_else(|e| panic!("no JUnit report ({e})\n{report}"));
    let counts = junit_counts(&xml).unwrap_or_else(|| panic!("unreadable JUnit report:\n{xml}\n{report}"));
    let want = Counts { tests: ids.len() as u64, failures: 0, errors: 0, skipped: 0 };
    assert!(
        status.success() && counts == want,
        "docker-py {SDK_VERSION} integration tests: pytest {status}, {counts:?}, expected {want:?}\n{report}"
    );
    println!("docker-py {SDK_VERSION}: {} of {} selected integration tests passed", counts.tests, ids.len());
    daemon.stop().expect("stop stratad");
    let left = mounts_under(&root);
    assert!(left.is_empty(), "stratad left mounts behind after the SDK's tests and a clean stop: {left:?}");
}
