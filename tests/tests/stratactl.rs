//! `stratactl snapshots …` against a running `strata-snapshotd`: every verb,
//! in text and with `--json`, and the mount command it prints actually
//! mounts the snapshot when pasted into a shell.
//!
//! Needs root. Run: `cargo test -p strata-tests --test stratactl`.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use strata_snapshotter::mount::{is_mounted, unmount};
use strata_tests::daemon::{binaries, require_root, Daemon};

struct Setup {
    daemon: Daemon,
    dir: tempfile::TempDir,
}

fn start(driver: &str) -> Setup {
    require_root();
    let dir = tempfile::Builder::new().prefix("strata-ctl-").tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("root"), &dir.path().join("snapshotd.sock"), &["--driver", driver])
        .expect("start strata-snapshotd");
    Setup { daemon, dir }
}

/// Runs stratactl with `--snapshotter driver` and asserts success; returns stdout.
#[track_caller]
fn ok(setup: &Setup, driver: &str, args: &[&str]) -> String {
    let mut full = vec!["--snapshotter", driver];
    full.extend_from_slice(args);
    let out = setup.daemon.stratactl(&full).expect("run stratactl");
    assert!(out.status.success(), "stratactl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[track_caller]
fn fails(setup: &Setup, driver: &str, args: &[&str]) -> Output {
    let mut full = vec!["--snapshotter", driver];
    full.extend_from_slice(args);
    let out = setup.daemon.stratactl(&full).expect("run stratactl");
    assert!(!out.status.success(), "stratactl {args:?} should have failed");
    out
}

#[track_caller]
fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Unmounts on drop, so a failing test leaves nothing mounted.
struct Unmount<'a>(&'a Path);
impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        while is_mounted(self.0).unwrap_or(false) {
            if unmount(self.0).is_err() {
                break;
            }
        }
    }
}

/// Runs a printed mount command in a shell.
fn sh(command: &str) {
    let out = Command::new("sh").arg("-c").arg(command).output().expect("run sh");
    assert!(out.status.success(), "`{command}` failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn verbs(driver: &str) {
    let setup = start(driver);
    let d = driver;

    // prepare, write through the printed mount command, commit.
    let printed = ok(&setup, d, &["snapshots", "prepare", "--mounts", "--label", "stage=one", "base-work"]);
    assert!(!printed.trim().is_empty(), "prepare --mounts printed nothing");
    let target = setup.dir.path().join("mnt");
    std::fs::create_dir(&target).expect("mkdir target");
    let commands = ok(&setup, d, &["snapshots", "mounts", target.to_str().expect("utf-8 path"), "base-work"]);
    assert!(commands.starts_with("mount ") || commands.starts_with("cd "), "{commands}");
    {
        let _guard = Unmount(&target);
        for line in commands.lines() {
            sh(line);
        }
        std::fs::write(target.join("hello"), b"from base\n").expect("write into the mounted snapshot");
    }
    assert!(!is_mounted(&target).expect("mountinfo"), "guard left {} mounted", target.display());
    ok(&setup, d, &["snapshots", "commit", "--label", "stage=done", "base", "base-work"]);

    // A child and a view, then the listings.
    ok(&setup, d, &["snapshots", "prepare", "child", "base"]);
    let view = json(&ok(&setup, d, &["--json", "snapshots", "view", "look", "base"]));
    assert_eq!(view["key"], "look");
    assert!(view["mounts"].as_array().is_some_and(|m| !m.is_empty()), "{view}");

    let ls = ok(&setup, d, &["snapshots", "ls"]);
    let rows: Vec<Vec<&str>> = ls.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["KEY", "PARENT", "KIND"]);
    let mut body = rows[1..].to_vec();
    body.sort();
    assert_eq!(body, vec![vec!["base", "Committed"], vec!["child", "base", "Active"], vec!["look", "base", "View"]]);

    let ls = json(&ok(&setup, d, &["--json", "snapshots", "ls", "kind==committed"]));
    let items = ls.as_array().expect("array");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["name"], "base");
    assert_eq!(items[0]["kind"], "committed");
    assert_eq!(items[0]["labels"]["stage"], "done");

    let tree = ok(&setup, d, &["snapshots", "tree"]);
    assert_eq!(tree, "base\n \\_ child\n \\_ look\n");
    let tree = json(&ok(&setup, d, &["--json", "snapshots", "tree"]));
    assert_eq!(tree[0]["name"], "base");
    assert_eq!(tree[0]["children"].as_array().map(Vec::len), Some(2));

    let info = ok(&setup, d, &["snapshots", "info", "child"]);
    assert!(info.contains("Name:    child") && info.contains("Parent:  base") && info.contains("Kind:    Active"), "{info}");
    let info = json(&ok(&setup, d, &["--json", "snapshots", "info", "base"]));
    assert_eq!(info["parent"], "");
    assert!(info["created"].as_str().is_some_and(|t| t.ends_with('Z')), "{info}");

    // Usage: the committed layer holds the 10-byte file.
    let usage = json(&ok(&setup, d, &["--json", "snapshots", "usage", "base"]));
    assert_eq!(usage[0]["key"], "base");
    assert!(usage[0]["size"].as_i64().is_some_and(|s| s >= 10), "{usage}");
    assert!(usage[0]["inodes"].as_i64().is_some_and(|n| n >= 1), "{usage}");
    let usage = ok(&setup, d, &["snapshots", "usage"]);
    assert!(usage.starts_with("KEY") && usage.contains("INODES"), "{usage}");
    assert_eq!(usage.lines().count(), 4, "{usage}");
    assert!(usage.lines().skip(1).all(|l| l.contains(" B") || l.contains("iB")), "sizes are not human: {usage}");

    // Labels: set two, delete one.
    let labels = ok(&setup, d, &["snapshots", "label", "child", "a=1", "b=2"]);
    assert_eq!(labels, "a=1\nb=2\n");
    let labels = json(&ok(&setup, d, &["--json", "snapshots", "label", "child", "a="]));
    assert_eq!(labels, serde_json::json!({ "b": "2" }));

    // Errors: exit code 1 and the daemon's reason.
    let out = fails(&setup, d, &["snapshots", "info", "ghost"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ghost") && err.contains("NotFound"), "{err}");
    let out = fails(&setup, d, &["snapshots", "rm", "base"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("FailedPrecondition"));
    let out = fails(&setup, d, &["snapshots", "label", "child", "novalue"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEY=VALUE"));

    // Removal children first, then cleanup leaves an empty listing.
    ok(&setup, d, &["snapshots", "rm", "child", "look"]);
    ok(&setup, d, &["snapshots", "rm", "base"]);
    ok(&setup, d, &["snapshots", "cleanup"]);
    assert_eq!(json(&ok(&setup, d, &["--json", "snapshots", "ls"])), serde_json::json!([]));
}

#[test]
fn verbs_on_overlay() {
    verbs("overlay");
}

#[test]
fn verbs_on_vfs() {
    verbs("vfs");
}

#[test]
fn address_comes_from_the_environment() {
    let setup = start("vfs");
    let out = Command::new(&binaries().stratactl)
        .args(["--snapshotter", "vfs", "--json", "snapshots", "ls"])
        .env("STRATA_SNAPSHOTD_ADDRESS", setup.daemon.address())
        .output()
        .expect("run stratactl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&String::from_utf8_lossy(&out.stdout)), serde_json::json!([]));

    let missing = setup.dir.path().join("missing.sock");
    let out = Command::new(&binaries().stratactl)
        .args(["snapshots", "ls"])
        .env("STRATA_SNAPSHOTD_ADDRESS", format!("unix://{}", missing.display()))
        .output()
        .expect("run stratactl");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.sock") && err.contains("Unavailable"), "{err}");
}

/// Past a page of overlay options, `mounts` prints a `cd DIR && mount …`
/// command with relative layer paths, and that command works.
#[test]
fn long_overlay_mount_command_is_pasteable() {
    use strata_snapshotter::mount::TempMount;
    use strata_snapshotter::{Labels, Snapshotter};
    const LAYERS: usize = 130;

    let setup = start("overlay");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let sn = setup.daemon.client("overlay").await.expect("client");
        let mut parent = String::new();
        for i in 0..LAYERS {
            let key = format!("layer-{i}-active");
            let name = format!("layer-{i}");
            let mounts = sn.prepare(&key, &parent, Labels::new()).await.expect("prepare");
            if i == 0 {
                let m = TempMount::new_in(&mounts, setup.dir.path()).expect("mount bottom layer");
                std::fs::write(m.path().join("bottom"), b"first layer\n").expect("write");
                m.unmount().expect("unmount");
            }
            sn.commit(&name, &key, Labels::new()).await.expect("commit");
            parent = name;
        }
        sn.prepare("top", &parent, Labels::new()).await.expect("prepare top");
        let options_len: usize = sn.mounts("top").await.expect("mounts")[0].options.join(",").len();
        assert!(options_len > 4096, "only {options_len} bytes of options: the chain is too short to test the long form");
    });

    let target = setup.dir.path().join("mnt");
    std::fs::create_dir(&target).expect("mkdir");
    let printed = ok(&setup, "overlay", &["snapshots", "mounts", target.to_str().expect("utf-8"), "top"]);
    let line = printed.trim_end();
    assert!(line.starts_with("cd ") && line.contains(" && mount -t overlay overlay -o "), "{line}");
    assert!(!line.contains(":/"), "lower layers are not relative: {line}");
    let _guard = Unmount(&target);
    sh(line);
    assert_eq!(std::fs::read(target.join("bottom")).expect("read through 130 layers"), b"first layer\n");
    std::fs::write(target.join("upper"), b"x").expect("write into the top snapshot");
}
