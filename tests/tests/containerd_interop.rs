//! strata-snapshotd as a proxy snapshotter of a real containerd 1.6.
//!
//! For each of the project's `overlay`, `vfs` and `blockcow` drivers: a
//! private containerd declares all three as proxy snapshotters on one
//! strata-snapshotd socket; the test imports the busybox OCI image with `ctr images import
//! --snapshotter NAME`, runs `echo hello` in it with `ctr run`, and checks
//! that what `ctr snapshots ls/info/usage` report through containerd agrees
//! with what `stratactl` reads straight from the daemon (containerd rewrites
//! keys as `<namespace>/<seq>/<key>`). Then it removes a prepared snapshot
//! with `ctr snapshots rm` and waits until containerd's garbage collector has
//! removed it from the daemon too.
//!
//! Needs root, containerd, runc and busybox-static (scripts/deps.sh installs
//! them); without them the test fails and says what to install.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use strata_snapshotter::mount::TempMount;
use strata_snapshotter::Mount;
use strata_tests::image::{self, BUSYBOX_REF};
use strata_tests::peers::{self, Containerd, ProxySnapshotters, Snapshotd};

/// The project's drivers containerd knows as proxy snapshotters here.
const PROXIES: &[&str] = &["overlay", "vfs", "blockcow"];

/// A small blockcow pool, so that formatting its base device is quick.
const STORAGE_OPTS: &[&str] = &["blockcow.datasize=8G", "blockcow.basesize=256M"];

/// How long containerd's garbage collector may take to reach the daemon.
const GC_TIMEOUT: Duration = Duration::from_secs(60);

/// One snapshot as a containerd client names it: (key, parent, kind).
type Row = (String, String, String);

struct Setup {
    // drop order: containerd (and its tasks) first, then the daemon it dials
    containerd: Containerd,
    snapshotd: Snapshotd,
    stratactl: std::path::PathBuf,
    namespace: String,
    _images: tempfile::TempDir,
    oci: image::ImageInfo,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        assert!(nix::unistd::geteuid().is_root(), "containerd_interop needs root: run it as root (scripts/test.sh)");
        if let Err(e) = peers::require_containerd() {
            panic!("{e}");
        }
        // builds strata-snapshotd and stratactl if they are stale
        let bins = strata_tests::daemon::binaries();
        let stratactl = bins.stratactl.clone();
        let snapshotd =
            Snapshotd::start_bin(&bins.snapshotd, PROXIES, STORAGE_OPTS).unwrap_or_else(|e| panic!("start strata-snapshotd: {e}"));
        let proxies = ProxySnapshotters {
            socket: snapshotd.socket().to_path_buf(),
            names: PROXIES.iter().map(|s| s.to_string()).collect(),
        };
        let containerd = Containerd::start(Some(&proxies)).unwrap_or_else(|e| panic!("start containerd: {e}"));
        let images = tempfile::tempdir().expect("temp dir for images");
        let oci = image::write_oci_archive(&images.path().join("busybox-oci.tar"), BUSYBOX_REF)
            .unwrap_or_else(|e| panic!("build the busybox image: {e}"));
        Setup { containerd, snapshotd, stratactl, namespace: peers::namespace(tag), _images: images, oci }
    }

    /// `ctr -n <ns> <args>`; panics with both logs when it fails.
    fn ctr(&self, args: &[&str]) -> String {
        match self.containerd.ctr_ok(&self.namespace, args) {
            Ok(out) => out,
            Err(e) => panic!("{e}\n{}", self.logs()),
        }
    }

    /// `ctr -n <ns> snapshots --snapshotter NAME <args>`.
    fn ctr_snap(&self, name: &str, args: &[&str]) -> String {
        let mut full = vec!["snapshots", "--snapshotter", name];
        full.extend_from_slice(args);
        self.ctr(&full)
    }

    fn stratactl_cmd(&self, name: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.stratactl);
        cmd.args(["--address", &self.snapshotd.address(), "--snapshotter", name, "--json", "snapshots"]).args(args);
        cmd
    }

    /// `stratactl ... --json snapshots <args>`, parsed.
    fn stratactl(&self, name: &str, args: &[&str]) -> Value {
        let out = match peers::run_ok(&mut self.stratactl_cmd(name, args)) {
            Ok(out) => out,
            Err(e) => panic!("{e}\n{}", self.logs()),
        };
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("stratactl printed invalid JSON ({e}): {out}"))
    }

    fn logs(&self) -> String {
        format!(
            "--- containerd log ---\n{}\n--- strata-snapshotd log ---\n{}",
            self.containerd.log(),
            self.snapshotd.log()
        )
    }

    /// Our namespace's snapshots as containerd lists them.
    fn ctr_rows(&self, name: &str) -> BTreeSet<Row> {
        parse_ctr_ls(&self.ctr_snap(name, &["ls"]))
    }

    /// Our namespace's snapshots as the daemon lists them, keys and parents
    /// translated back from `<ns>/<seq>/<key>`.
    fn daemon_rows(&self, name: &str) -> BTreeSet<Row> {
        let list = self.stratactl(name, &["ls"]);
        let items = list.as_array().unwrap_or_else(|| panic!("stratactl ls: expected an array, got {list}"));
        let mut rows = BTreeSet::new();
        for info in items {
            let backend = str_field(info, "name");
            let Some((ns, key)) = peers::split_backend_key(&backend) else {
                panic!("daemon key {backend:?} is not containerd's <namespace>/<seq>/<key>");
            };
            if ns != self.namespace {
                continue;
            }
            let parent = str_field(info, "parent");
            let parent = if parent.is_empty() {
                String::new()
            } else {
                match peers::split_backend_key(&parent) {
                    Some((pns, pkey)) if pns == ns => pkey.to_string(),
                    _ => panic!("parent {parent:?} of {backend:?} is not in namespace {ns}"),
                }
            };
            rows.insert((key.to_string(), parent, str_field(info, "kind").to_lowercase()));
        }
        rows
    }

    /// The daemon's name for a client key of our namespace, found by listing.
    fn backend_key(&self, name: &str, key: &str) -> Option<String> {
        let list = self.stratactl(name, &["ls"]);
        list.as_array()?.iter().map(|i| str_field(i, "name")).find(|b| {
            peers::split_backend_key(b).is_some_and(|(ns, k)| ns == self.namespace && k == key)
        })
    }

    /// Waits until containerd's and the daemon's listings agree (containerd
    /// removes backend snapshots lazily, in its garbage collector), and
    /// returns the agreed rows.
    fn wait_agree(&self, name: &str) -> BTreeSet<Row> {
        let start = Instant::now();
        loop {
            let c = self.ctr_rows(name);
            let d = self.daemon_rows(name);
            if c == d {
                return c;
            }
            if start.elapsed() > GC_TIMEOUT {
                panic!(
                    "ctr and stratactl disagree on {name} after {GC_TIMEOUT:?}:\nctr:       {c:?}\nstratactl: {d:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn str_field(v: &Value, field: &str) -> String {
    match v.get(field) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => panic!("field {field} of {v} is not a string: {other}"),
    }
}

/// Parses `ctr snapshots ls` (columns KEY, PARENT, KIND; PARENT may be
/// blank). Keys in this test never contain spaces.
fn parse_ctr_ls(out: &str) -> BTreeSet<Row> {
    let mut rows = BTreeSet::new();
    for line in out.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (key, parent, kind) = match f.as_slice() {
            [key, kind] => (*key, "", *kind),
            [key, parent, kind] => (*key, *parent, *kind),
            _ => panic!("unexpected `ctr snapshots ls` line: {line:?}"),
        };
        rows.insert((key.to_string(), parent.to_string(), kind.to_lowercase()));
    }
    rows
}

/// Parses `ctr snapshots usage -b KEY`: (size, inodes).
fn parse_ctr_usage(out: &str, key: &str) -> (i64, i64) {
    for line in out.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 3 && f[0] == key {
            let size = f[f.len() - 2].parse().unwrap_or_else(|e| panic!("size in {line:?}: {e}"));
            let inodes = f[f.len() - 1].parse().unwrap_or_else(|e| panic!("inodes in {line:?}: {e}"));
            return (size, inodes);
        }
    }
    panic!("no usage line for {key} in:\n{out}");
}

/// `stratactl --json snapshots usage KEY`: (size, inodes).
fn daemon_usage(v: &Value) -> (i64, i64) {
    let one = match v {
        Value::Array(items) if items.len() == 1 => &items[0],
        Value::Object(_) => v,
        _ => panic!("stratactl usage: expected one entry, got {v}"),
    };
    let num = |f: &str| one.get(f).and_then(Value::as_i64).unwrap_or_else(|| panic!("usage field {f} in {one}"));
    (num("size"), num("inodes"))
}

fn check_proxy_snapshotter(name: &str) {
    let s = Setup::new(name);
    let chain = s.oci.chain_ids.last().expect("one layer").clone();
    let other = PROXIES.iter().find(|p| **p != name).expect("two proxies");

    // import unpacks the layer through the proxy: prepare, apply, commit as the chain ID
    s.ctr(&["images", "import", "--snapshotter", name, &s.oci.path.to_string_lossy()]);
    let rows = s.wait_agree(name);
    assert!(
        rows.contains(&(chain.clone(), String::new(), "committed".to_string())),
        "the layer is committed as its chain ID {chain}: {rows:?}"
    );

    // a container runs on the proxy's mounts
    let id = format!("interop-{name}-{}", std::process::id());
    let out = s.ctr(&["run", "--rm", "--snapshotter", name, BUSYBOX_REF, &id, "echo", "hello"]);
    assert_eq!(out.trim(), "hello", "ctr run output");
    // the container's snapshot goes away with --rm; listings converge
    let rows = s.wait_agree(name);
    assert!(!rows.iter().any(|r| r.0 == id), "container snapshot {id} still listed: {rows:?}");

    // info of the committed layer
    let info: Value = serde_json::from_str(&s.ctr_snap(name, &["info", &chain])).expect("ctr info JSON");
    let backend_chain = s.backend_key(name, &chain).expect("daemon knows the layer");
    let dinfo = s.stratactl(name, &["info", &backend_chain]);
    assert_eq!(str_field(&info, "Kind").to_lowercase(), "committed");
    assert_eq!(str_field(&dinfo, "kind").to_lowercase(), "committed");
    assert_eq!(str_field(&info, "Name"), chain);
    assert_eq!(str_field(&dinfo, "parent"), "");

    // a prepared snapshot with data in it
    let key = format!("interop-active-{name}");
    s.ctr_snap(name, &["prepare", &key, &chain]);
    let backend = s.backend_key(name, &key).expect("daemon knows the prepared snapshot");
    let mounts: Vec<Mount> = serde_json::from_value(s.stratactl(name, &["mounts", "/", &backend]))
        .unwrap_or_else(|e| panic!("stratactl mounts JSON: {e}"));
    {
        let m = TempMount::new(&mounts).unwrap_or_else(|e| panic!("mount {mounts:?}: {e}"));
        assert!(m.path().join("bin/busybox").is_file(), "the parent's files are visible");
        std::fs::write(m.path().join("interop-data"), vec![7u8; 256 * 1024]).expect("write into the snapshot");
    }
    let info: Value = serde_json::from_str(&s.ctr_snap(name, &["info", &key])).expect("ctr info JSON");
    let dinfo = s.stratactl(name, &["info", &backend]);
    assert_eq!(str_field(&info, "Kind").to_lowercase(), "active");
    assert_eq!(str_field(&dinfo, "kind").to_lowercase(), "active");
    assert_eq!(str_field(&info, "Parent"), chain);
    let dparent = str_field(&dinfo, "parent");
    assert_eq!(peers::split_backend_key(&dparent).map(|(_, k)| k.to_string()), Some(chain.clone()));

    // usage, in bytes, through containerd and straight from the daemon
    let (csize, cinodes) = parse_ctr_usage(&s.ctr_snap(name, &["usage", "-b", &key]), &key);
    let (dsize, dinodes) = daemon_usage(&s.stratactl(name, &["usage", &backend]));
    assert_eq!((csize, cinodes), (dsize, dinodes), "usage of {key}: ctr vs stratactl");
    assert!(dsize >= 256 * 1024, "usage counts the 256 KiB written: {dsize}");
    let (lsize, _) = parse_ctr_usage(&s.ctr_snap(name, &["usage", "-b", &chain]), &chain);
    assert_eq!(lsize, daemon_usage(&s.stratactl(name, &["usage", &backend_chain])).0, "usage of the layer");
    s.wait_agree(name);

    // the other proxy name is a separate driver: it sees none of this
    assert!(s.ctr_rows(other).is_empty(), "{other} lists {name}'s snapshots");
    assert!(s.daemon_rows(other).is_empty(), "daemon's {other} lists {name}'s snapshots");

    // rm: gone from containerd at once, from the daemon once GC has run
    s.ctr_snap(name, &["rm", &key]);
    let out = Command::new("ctr")
        .arg("-a")
        .arg(s.containerd.socket())
        .args(["-n", &s.namespace, "snapshots", "--snapshotter", name, "info", &key])
        .output()
        .expect("run ctr");
    assert!(!out.status.success(), "ctr info of a removed snapshot must fail");
    let start = Instant::now();
    while s.backend_key(name, &key).is_some() {
        assert!(start.elapsed() < GC_TIMEOUT, "{backend} still on the daemon after {GC_TIMEOUT:?}\n{}", s.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = peers::run(&mut s.stratactl_cmd(name, &["info", &backend])).expect("run stratactl");
    assert!(!out.status.success(), "stratactl info of a removed snapshot must fail");
    let rows = s.wait_agree(name);
    assert!(!rows.iter().any(|r| r.0 == key), "{key} still listed: {rows:?}");
    assert!(rows.iter().any(|r| r.0 == chain), "the image layer stays: {rows:?}");

    // the image goes, and with it (after GC) the layer
    s.ctr(&["images", "rm", "--sync", BUSYBOX_REF]);
    let start = Instant::now();
    while !s.daemon_rows(name).is_empty() {
        assert!(start.elapsed() < GC_TIMEOUT, "layer still on the daemon after images rm --sync\n{}", s.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(s.ctr_rows(name).is_empty());
    assert!(Path::new(s.snapshotd.socket()).exists());
}

#[test]
fn overlay_as_containerd_proxy_snapshotter() {
    check_proxy_snapshotter("overlay");
}

#[test]
fn vfs_as_containerd_proxy_snapshotter() {
    check_proxy_snapshotter("vfs");
}

#[test]
fn blockcow_as_containerd_proxy_snapshotter() {
    check_proxy_snapshotter("blockcow");
}

#[test]
fn ctr_ls_parsing_handles_blank_parents() {
    let out = "KEY                                                                     PARENT KIND\n\
               sha256:aaaa                                                                     Committed\n\
               k1                                                                      sha256:aaaa Active\n";
    let rows = parse_ctr_ls(out);
    assert!(rows.contains(&("sha256:aaaa".into(), String::new(), "committed".into())));
    assert!(rows.contains(&("k1".into(), "sha256:aaaa".into(), "active".into())));
    assert_eq!(parse_ctr_usage("KEY SIZE INODES\nk1  4096 3\n", "k1"), (4096, 3));
}
