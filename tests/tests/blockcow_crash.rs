//! Crash safety of the blockcow driver in the real `strata-snapshotd`: the
//! daemon is SIGKILLed 20 times while a filesystem on one of its devices is
//! being written to heavily (sequential writes, overwrites of blocks shared
//! with the parent layer, fsync), and 20 times while Prepare / Commit /
//! View / Remove run over gRPC. After each kill:
//! - the test unmounts its own mounts of the devices lazily and the loop
//!   devices on the device files must detach; the dead daemon's FUSE mount
//!   is left in place: the restarted daemon must clear it itself. A killed
//!   daemon that cannot exit (one of its threads waits on a request to its
//!   own FUSE mount) is not helped either: a new daemon is started beside
//!   it, must abort the stale FUSE connection, and the old process must
//!   then exit;
//! - after the restart exactly one FUSE mount (the new daemon's) is left at
//!   the device files' directory;
//! - `stratactl pool check` is clean on the pool as the kill left it and
//!   again once the restarted daemon has opened it;
//! - List and Stat agree, and the committed snapshots are exactly those the
//!   workload committed (a Commit in flight either happened or did not);
//! - every committed snapshot, mounted through a view, holds files
//!   byte-identical to the hashes taken when it was committed.
//!
//! Needs root, FUSE (`/dev/fuse`), loop devices and `mkfs.ext4` (e2fsprogs);
//! a missing one fails the test saying what to install. The random seed is
//! printed; set `STRATA_CRASH_SEED` to replay.
//! Run: `cargo test -p strata-tests --test blockcow_crash`.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use strata_snapshotter::grpc::RemoteSnapshotter;
use strata_snapshotter::mount::{self, TempMount};
use strata_snapshotter::{Kind, Labels, Snapshotter};
use strata_tests::daemon::{binaries, require_root, Daemon};

/// Kills per workload.
const ROUNDS: usize = 20;
/// Driver options of the daemon under test: a small pool.
const DAEMON_ARGS: &[&str] = &[
    "--driver",
    "blockcow",
    "--storage-opt",
    "dm.loopdatasize=8G",
    "--storage-opt",
    "dm.basesize=256M",
    "--storage-opt",
    "dm.loopmetadatasize=64M",
];
/// Above this many committed snapshots the workloads remove leaves.
const MAX_COMMITTED: usize = 6;

/// Relative path -> sha256 of the content, for every regular file of a
/// mounted filesystem (ext4's `lost+found` left out).
type TreeHash = BTreeMap<String, String>;

fn require_prerequisites() {
    require_root();
    assert!(Path::new("/dev/fuse").exists(), "/dev/fuse is missing: load the fuse module (modprobe fuse) or install fuse3");
    assert!(
        Path::new("/dev/loop-control").exists(),
        "/dev/loop-control is missing: load the loop module (modprobe loop)"
    );
    let mkfs = Command::new("mkfs.ext4").arg("-V").output();
    assert!(
        mkfs.map(|o| o.status.success()).unwrap_or(false),
        "mkfs.ext4 is missing or broken: install e2fsprogs (apt-get install e2fsprogs)"
    );
}

fn seed() -> u64 {
    let seed = match std::env::var("STRATA_CRASH_SEED") {
        Ok(s) => s.parse().expect("STRATA_CRASH_SEED must be a number"),
        Err(_) => rand::random(),
    };
    eprintln!("blockcow crash seed: {seed} (STRATA_CRASH_SEED={seed} replays)");
    seed
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

fn hash_tree(root: &Path) -> TreeHash {
    fn walk(root: &Path, dir: &Path, out: &mut TreeHash) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("walk stays under its root").display().to_string();
            if rel == "lost+found" {
                continue;
            }
            let ft = entry.file_type().unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
            if ft.is_dir() {
                walk(root, &path, out);
            } else if ft.is_file() {
                let content = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                out.insert(rel, hex::encode(Sha256::digest(&content)));
            }
        }
    }
    let mut out = TreeHash::new();
    walk(root, root, &mut out);
    out
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> =
        mount::mount_points().expect("read mountinfo").into_iter().filter(|p| p.starts_with(dir)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points
}

/// Loop devices whose backing file lies under `dir` (`/dev/loopN -> file`).
fn loops_backed_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else { return found };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) {
            let backing = backing.trim();
            if Path::new(backing).starts_with(dir) {
                found.push(format!("/dev/{name} -> {backing}"));
            }
        }
    }
    found
}

fn lazy_unmount(point: &Path) -> nix::Result<()> {
    nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH)
}

/// Waits up to `limit` for the loop devices on files under `dir` to detach.
fn wait_loops_gone(dir: &Path, limit: Duration) -> Result<(), Vec<String>> {
    let deadline = Instant::now() + limit;
    loop {
        let left = loops_backed_under(dir);
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(left);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether process `pid` is gone or a zombie with no thread left running.
fn exited(pid: u32) -> bool {
    let threads = match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(rd) => rd.count(),
        Err(_) => return true,
    };
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')));
    threads <= 1 && state.unwrap_or(true)
}

/// Polls until `pid` has exited or `limit` passes; returns whether it exited.
fn wait_exit(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !exited(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    exited(pid)
}

/// Kernel stacks of the threads of `pid` that are still there.
fn kernel_stacks(pid: u32) -> String {
    let mut out = String::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in rd.flatten() {
            let stack = std::fs::read_to_string(task.path().join("stack")).unwrap_or_default();
            let first: Vec<&str> = stack.lines().take(8).collect();
            out.push_str(&format!("  thread {}: {}\n", task.file_name().to_string_lossy(), first.join(" <- ")));
        }
    }
    out
}

/// A mounted active device, unmounted lazily on drop (its daemon may be dead).
struct LazyMount(PathBuf);

impl Drop for LazyMount {
    fn drop(&mut self) {
        if mount::is_mounted(&self.0).unwrap_or(false) {
            if let Err(e) = lazy_unmount(&self.0) {
                eprintln!("lazy unmount of {} failed: {e}", self.0.display());
            }
        }
    }
}

/// One daemon with the blockcow driver on a small pool in a temp directory.
/// On drop (also when the test fails) the daemon is killed, every mount
/// under the directory is detached and the loop devices must go.
struct Harness {
    daemon: Daemon,
    rt: tokio::runtime::Runtime,
    client: RemoteSnapshotter,
    dir: tempfile::TempDir,
    /// `kill` had to start the new daemon itself.
    restarted: bool,
}

impl Harness {
    fn start() -> Harness {
        binaries();
        let dir = tempfile::Builder::new().prefix("strata-blockcow-crash-").tempdir().expect("tempdir");
        let base = std::fs::canonicalize(dir.path()).expect("canonical tempdir");
        let root = base.join("root");
        let daemon = Daemon::start(&root, &base.join("snapshotd.sock"), DAEMON_ARGS).expect("start strata-snapshotd --driver blockcow");
        let rt = runtime();
        let client = rt.block_on(daemon.client("blockcow")).expect("connect");
        Harness { daemon, rt, client, dir, restarted: false }
    }

    fn base(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).expect("canonical tempdir")
    }
    fn pool_dir(&self) -> PathBuf {
        self.daemon.root().join("blockcow/pool")
    }
    fn devices_dir(&self) -> PathBuf {
        self.daemon.root().join("blockcow/devices")
    }

    /// SIGKILLs the daemon and waits up to 5 s for every thread of it to
    /// end. A thread blocked in a call that waits on the daemon's own FUSE
    /// mount cannot end by itself once the FUSE threads are dead, so the
    /// process cannot exit; nothing is done about it here: a new daemon is
    /// started beside it at once, and that one must abort the stale FUSE
    /// connection, after which the old process must exit. Returns whether
    /// that happened (the daemon is then already restarted).
    fn kill(&mut self, round: &str) -> bool {
        let pid = self.daemon.pid().unwrap_or_else(|| panic!("{round}: the daemon is not running"));
        let raw = i32::try_from(pid).expect("pid fits i32");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL)
            .unwrap_or_else(|e| panic!("{round}: SIGKILL {pid}: {e}"));
        if wait_exit(pid, Duration::from_secs(5)) {
            self.daemon.kill().unwrap_or_else(|e| panic!("{round}: reap the daemon: {e:#}"));
            self.restarted = false;
            return false;
        }
        eprintln!("{round}: the killed daemon cannot exit; threads left:\n{}", kernel_stacks(pid));
        // Its listening socket is still open: a connect to the old socket
        // file would succeed without any daemon behind it.
        let socket = self.daemon.socket().to_path_buf();
        std::fs::remove_file(&socket).unwrap_or_else(|e| panic!("{round}: remove {}: {e}", socket.display()));
        let fresh = Daemon::start(self.daemon.root(), &socket, DAEMON_ARGS)
            .unwrap_or_else(|e| panic!("{round}: start a daemon beside the one that cannot exit: {e:#}"));
        let mut old = std::mem::replace(&mut self.daemon, fresh);
        assert!(
            wait_exit(pid, Duration::from_secs(30)),
            "{round}: the killed daemon still cannot exit after the new one started:\n{}",
            kernel_stacks(pid)
        );
        old.kill().unwrap_or_else(|e| panic!("{round}: reap the killed daemon: {e:#}"));
        self.client = self.rt.block_on(self.daemon.client("blockcow")).expect("connect to the new daemon");
        self.restarted = true;
        true
    }

    /// After a kill: the test's mounts of devices go (lazily) and the loop
    /// devices on the device files detach. The dead FUSE mount is the
    /// restarted daemon's to clear.
    fn clean_after_kill(&self, round: &str) {
        let devices = self.devices_dir();
        for point in mounts_under(&self.base()) {
            if point != devices {
                lazy_unmount(&point).unwrap_or_else(|e| panic!("{round}: lazy unmount {}: {e}", point.display()));
            }
        }
        if let Err(left) = wait_loops_gone(&devices, Duration::from_secs(30)) {
            panic!("{round}: loop devices still attached 30 s after the kill: {left:?}");
        }
    }

    /// After the final stop: nothing of the daemon is left mounted.
    fn assert_nothing_mounted(&self, round: &str) {
        if let Err(left) = wait_loops_gone(&self.devices_dir(), Duration::from_secs(30)) {
            panic!("{round}: loop devices still attached 30 s after the daemon stopped: {left:?}");
        }
        let left = mounts_under(&self.base());
        assert!(left.is_empty(), "{round}: mounts left after the daemon stopped: {left:?}");
    }

    /// `stratactl pool --root <pool> check`, which must exit 0.
    fn pool_check(&self, round: &str, when: &str) {
        let out = Command::new(&binaries().stratactl)
            .args(["pool", "--root"])
            .arg(self.pool_dir())
            .arg("check")
            .output()
            .expect("run stratactl pool check");
        assert!(
            out.status.success(),
            "{round}: stratactl pool check {when} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the daemon again (unless `kill` already had to), then checks
    /// that the dead FUSE mount was cleared: one FUSE mount is left at the
    /// device files' directory, the new daemon's.
    fn restart(&mut self, round: &str) {
        if !std::mem::take(&mut self.restarted) {
            self.daemon.restart().unwrap_or_else(|e| panic!("{round}: restart strata-snapshotd: {e:#}"));
            self.client = self.rt.block_on(self.daemon.client("blockcow")).expect("reconnect");
        }
        let devices = self.devices_dir();
        let fuse: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .expect("read mountinfo")
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(devices.to_str().expect("utf-8 path")) && l.contains(" - fuse"))
            .map(str::to_string)
            .collect();
        assert_eq!(fuse.len(), 1, "{round}: FUSE mounts at {} after the restart: {fuse:#?}", devices.display());
    }

    /// Cleanup over gRPC. It must succeed even when a deferred removal (a
    /// view removed just before, its loop device detaching asynchronously)
    /// completes while Cleanup walks the pool.
    fn cleanup(&self, round: &str) {
        if let Err(e) = self.rt.block_on(self.client.cleanup()) {
            panic!("{round}: cleanup: {e}");
        }
    }

    /// List and Stat agree; the committed snapshots are `committed`; each
    /// reads back as recorded. Returns the active keys listed.
    fn verify(&self, round: &str, committed: &BTreeMap<String, (String, TreeHash)>) -> Vec<String> {
        let sn = &self.client;
        let listed = self.rt.block_on(sn.list(&[])).unwrap_or_else(|e| panic!("{round}: list: {e}"));
        let mut names = Vec::new();
        let mut actives = Vec::new();
        for info in &listed {
            let stat = self.rt.block_on(sn.stat(&info.name)).unwrap_or_else(|e| panic!("{round}: stat {}: {e}", info.name));
            assert_eq!(&stat, info, "{round}: Stat and List disagree on {}", info.name);
            match info.kind {
                Kind::Committed => names.push(info.name.clone()),
                Kind::Active => actives.push(info.name.clone()),
                Kind::View => panic!("{round}: view {} survived (views are removed before each kill)", info.name),
            }
        }
        let expected: Vec<String> = committed.keys().cloned().collect();
        names.sort();
        assert_eq!(names, expected, "{round}: committed snapshots after the restart");
        for (name, (parent, hash)) in committed {
            let info = listed.iter().find(|i| &i.name == name).expect("listed above");
            assert_eq!(&info.parent, parent, "{round}: parent of {name}");
            let key = format!("verify-{name}");
            let mounts = self.rt.block_on(sn.view(&key, name, Labels::new())).unwrap_or_else(|e| panic!("{round}: view {name}: {e}"));
            let tm = TempMount::new(&mounts).unwrap_or_else(|e| panic!("{round}: mount a view of {name} ({mounts:?}): {e}"));
            let got = hash_tree(tm.path());
            tm.unmount().unwrap_or_else(|e| panic!("{round}: unmount the view of {name}: {e}"));
            self.rt.block_on(sn.remove(&key)).unwrap_or_else(|e| panic!("{round}: remove view {key}: {e}"));
            assert_eq!(&got, hash, "{round}: committed snapshot {name} does not read back as committed");
        }
        actives
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let devices = self.devices_dir();
        if let Some(pid) = self.daemon.pid() {
            if let Ok(raw) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(500));
            if !exited(pid) {
                let _ = nix::mount::umount2(&devices, nix::mount::MntFlags::MNT_FORCE);
            }
        }
        let _ = self.daemon.kill();
        let base = self.base();
        for point in mounts_under(&base) {
            if point != devices {
                let _ = lazy_unmount(&point);
            }
        }
        if let Err(left) = wait_loops_gone(&devices, Duration::from_secs(30)) {
            eprintln!("loop devices left attached: {left:?}");
        }
        for point in mounts_under(&base) {
            let _ = lazy_unmount(&point);
        }
    }
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Prepares `name` on `parent`, writes a few files (and overwrites part of
/// one inherited file), unmounts, commits; returns the hashes taken before
/// the commit.
fn make_layer(h: &Harness, rng: &mut StdRng, name: &str, parent: &str) -> TreeHash {
    let key = format!("build-{name}");
    let mounts = h.rt.block_on(h.client.prepare(&key, parent, Labels::new())).unwrap_or_else(|e| panic!("prepare {key}: {e}"));
    let tm = TempMount::new(&mounts).unwrap_or_else(|e| panic!("mount {key} ({mounts:?}): {e}"));
    let dir = tm.path().join(name);
    std::fs::create_dir_all(&dir).expect("mkdir in layer");
    for i in 0..rng.gen_range(1..=3) {
        let len = rng.gen_range(1..=(2 << 20));
        std::fs::write(dir.join(format!("f{i}")), random_bytes(rng, len)).expect("write layer file");
    }
    let inherited: Vec<String> = hash_tree(tm.path()).into_keys().filter(|p| !p.starts_with(&format!("{name}/"))).collect();
    if !inherited.is_empty() {
        let path = tm.path().join(&inherited[rng.gen_range(0..inherited.len())]);
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).expect("open inherited file");
        let len = f.metadata().expect("stat").len();
        f.seek(SeekFrom::Start(rng.gen_range(0..len.max(1)))).expect("seek");
        f.write_all(&random_bytes(rng, 4096)).expect("overwrite inherited file");
        f.sync_all().expect("fsync");
    }
    let hash = hash_tree(tm.path());
    tm.unmount().unwrap_or_else(|e| panic!("unmount {key}: {e}"));
    h.rt.block_on(h.client.commit(name, &key, Labels::new())).unwrap_or_else(|e| panic!("commit {key} as {name}: {e}"));
    hash
}

/// Names of committed snapshots no other committed snapshot has as parent.
fn leaves(committed: &BTreeMap<String, (String, TreeHash)>) -> Vec<String> {
    committed.keys().filter(|n| !committed.values().any(|(p, _)| p == *n)).cloned().collect()
}

/// Regular files under `dir` (ext4's `lost+found` left out).
fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() && entry.file_name() != "lost+found" {
                todo.push(entry.path());
            } else if ft.is_file() {
                out.push(entry.path());
            }
        }
    }
    Ok(out)
}

/// What stopped the writer: the error and when it happened.
type WriteFailure = Option<(Instant, std::io::Error)>;

/// Writes into `dir` until stopped or failing: 1 MiB sequential writes into
/// new files, 4 KiB overwrites of inherited files (copy-on-write of shared
/// blocks), an fsync every few MiB. Returns bytes written and the error
/// that stopped it, if any.
fn heavy_writes(dir: &Path, stop: &AtomicBool, progress: &AtomicU64, seed: u64) -> (u64, WriteFailure) {
    let mut rng = StdRng::seed_from_u64(seed);
    let chunk = random_bytes(&mut rng, 1 << 20);
    let mut written = 0u64;
    let run = |written: &mut u64| -> std::io::Result<()> {
        let inherited = files_under(dir)?;
        for n in 0u64.. {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            // Six files of 8 MiB in turn: the filesystem never fills up.
            let mut f = std::fs::File::create(dir.join(format!("heavy-{}", n % 6)))?;
            for _ in 0..8 {
                f.write_all(&chunk)?;
                *written += chunk.len() as u64;
                progress.store(*written, Ordering::SeqCst);
            }
            f.sync_data()?;
            for path in &inherited {
                let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
                let len = f.metadata()?.len();
                for i in 0..16u64 {
                    f.seek(SeekFrom::Start((i * 65536 + 4096 * (n % 16)) % len.max(1)))?;
                    f.write_all(&chunk[..4096])?;
                    *written += 4096;
                }
                f.sync_data()?;
            }
        }
        Ok(())
    };
    let err = run(&mut written).err().map(|e| (Instant::now(), e));
    (written, err)
}

#[test]
fn blockcow_survives_sigkill_during_writes_into_a_mounted_device() {
    require_prerequisites();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut h = Harness::start();
    let mut committed: BTreeMap<String, (String, TreeHash)> = BTreeMap::new();
    let mut total_written = 0u64;
    let mut stuck_kills = 0;
    for round in 0..ROUNDS {
        let tag = format!("writes round {round}");
        // A new committed layer on a random parent, written while the daemon lives.
        let parents: Vec<String> = committed.keys().cloned().collect();
        let parent = if parents.is_empty() || rng.gen_bool(0.2) { String::new() } else { parents[rng.gen_range(0..parents.len())].clone() };
        let name = format!("layer-{round}");
        let hash = make_layer(&h, &mut rng, &name, &parent);
        committed.insert(name.clone(), (parent, hash));

        // The victim: an active snapshot of that layer, mounted and written to.
        let victim = format!("victim-{round}");
        let mounts = h.rt.block_on(h.client.prepare(&victim, &name, Labels::new())).unwrap_or_else(|e| panic!("{tag}: prepare: {e}"));
        let target = h.base().join("victim");
        std::fs::create_dir_all(&target).expect("mkdir victim");
        mount::mount_all(&mounts, &target).unwrap_or_else(|e| panic!("{tag}: mount {mounts:?}: {e}"));
        let guard = LazyMount(target.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let progress = Arc::new(AtomicU64::new(0));
        let writer = {
            let (stop, progress, target, seed) = (stop.clone(), progress.clone(), target.clone(), rng.gen());
            std::thread::spawn(move || {
                let result = heavy_writes(&target, &stop, &progress, seed);
                let _ = done_tx.send(());
                result
            })
        };
        // Kill at a random moment once the writes are under way.
        let started = Instant::now();
        while progress.load(Ordering::SeqCst) < 4 << 20 {
            assert!(started.elapsed() < Duration::from_secs(60), "{tag}: the writer wrote nothing in 60 s");
            assert!(!writer.is_finished(), "{tag}: the writer stopped before the kill: {:?}", writer.join().map(|r| r.1));
            std::thread::sleep(Duration::from_millis(5));
        }
        let delay = Duration::from_millis(rng.gen_range(0..1500));
        std::thread::sleep(delay);
        assert!(h.daemon.is_running(), "{tag}: the daemon died by itself; log:\n{}", h.daemon.log());
        let killed_at = Instant::now();
        stuck_kills += usize::from(h.kill(&tag));
        stop.store(true, Ordering::SeqCst);
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(Duration::from_secs(60)) {
            panic!("{tag}: the writer did not stop within 60 s of the kill (stuck in the kernel?)");
        }
        let (written, failure) = writer.join().expect("writer thread");
        total_written += written;
        if let Some((at, err)) = &failure {
            assert!(*at >= killed_at, "{tag}: writing failed {:?} before the kill: {err}", killed_at - *at);
        }
        let stopped_by = failure.map(|(_, e)| e.to_string()).unwrap_or_else(|| "the stop flag".into());
        eprintln!("{tag}: killed after {delay:?}, {} MiB written, writer stopped by {stopped_by}", written >> 20);
        assert!(written > 0, "{tag}: nothing was written before the kill");
        drop(guard);
        h.clean_after_kill(&tag);
        h.pool_check(&tag, "on the pool as the kill left it");

        h.restart(&tag);
        h.pool_check(&tag, "after the restart");
        let actives = h.verify(&tag, &committed);
        assert_eq!(actives, vec![victim.clone()], "{tag}: active snapshots after the restart");
        h.rt.block_on(h.client.remove(&victim)).unwrap_or_else(|e| panic!("{tag}: remove {victim}: {e}"));
        h.cleanup(&tag);
        if committed.len() > MAX_COMMITTED {
            let leaves = leaves(&committed);
            let gone = &leaves[rng.gen_range(0..leaves.len())];
            h.rt.block_on(h.client.remove(gone)).unwrap_or_else(|e| panic!("{tag}: remove {gone}: {e}"));
            committed.remove(gone);
        }
    }
    h.pool_check("end", "after the last round");
    h.daemon.terminate().expect("stop the daemon");
    h.assert_nothing_mounted("end");
    eprintln!(
        "{ROUNDS} kills during writes ({stuck_kills} left a daemon that could not exit until the restarted one aborted its FUSE connection), {} MiB written in all, {} committed at the end",
        total_written >> 20,
        committed.len()
    );
}

/// A pool operation the workload was making.
#[derive(Debug, Clone)]
enum Op {
    Nothing,
    Prepare { key: String, parent: String },
    Commit { key: String, name: String },
    RemoveActive { key: String },
    RemoveCommitted { name: String },
    View { key: String },
}

#[derive(Debug, Default)]
struct OpsModel {
    committed: BTreeMap<String, (String, TreeHash)>,
    /// Active key -> parent.
    actives: BTreeMap<String, String>,
    in_flight: Option<Op>,
    seq: u64,
    done: u64,
}

/// Runs pool operations until one fails; returns that error and whether the
/// daemon had been killed by then.
async fn pool_operations(
    sn: RemoteSnapshotter,
    model: Arc<Mutex<OpsModel>>,
    killed: Arc<AtomicBool>,
    seed: u64,
) -> (strata_snapshotter::Error, bool) {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        let op = {
            let mut m = model.lock().expect("model lock");
            m.seq += 1;
            let seq = m.seq;
            // Committed snapshots with no committed or active child.
            let leaves: Vec<String> =
                leaves(&m.committed).into_iter().filter(|n| !m.actives.values().any(|p| p == n)).collect();
            // Over the limit, every other call removes a leaf layer.
            let prune = m.committed.len() > MAX_COMMITTED && !leaves.is_empty() && rng.gen_bool(0.5);
            let op = match if prune { 8 } else { rng.gen_range(0..10) } {
                0..=3 => {
                    let names: Vec<&String> = m.committed.keys().collect();
                    let parent = if names.is_empty() || rng.gen_bool(0.1) { String::new() } else { names[rng.gen_range(0..names.len())].clone() };
                    Op::Prepare { key: format!("op-active-{seq}"), parent }
                }
                4..=6 if !m.actives.is_empty() => {
                    let keys: Vec<&String> = m.actives.keys().collect();
                    Op::Commit { key: keys[rng.gen_range(0..keys.len())].clone(), name: format!("op-layer-{seq}") }
                }
                7 if !m.actives.is_empty() => {
                    let keys: Vec<&String> = m.actives.keys().collect();
                    Op::RemoveActive { key: keys[rng.gen_range(0..keys.len())].clone() }
                }
                8 if m.committed.len() > MAX_COMMITTED && !leaves.is_empty() => Op::RemoveCommitted { name: leaves[rng.gen_range(0..leaves.len())].clone() },
                _ if !m.committed.is_empty() => Op::View { key: format!("op-view-{seq}") },
                _ => Op::Prepare { key: format!("op-active-{seq}"), parent: String::new() },
            };
            m.in_flight = Some(op.clone());
            op
        };
        let result = match &op {
            Op::Nothing => Ok(()),
            Op::Prepare { key, parent } => sn.prepare(key, parent, Labels::new()).await.map(drop),
            Op::Commit { key, name } => sn.commit(name, key, Labels::new()).await,
            Op::RemoveActive { key } => sn.remove(key).await,
            Op::RemoveCommitted { name } => sn.remove(name).await,
            Op::View { key } => {
                let parent = {
                    let m = model.lock().expect("model lock");
                    let names: Vec<&String> = m.committed.keys().collect();
                    names[(m.seq as usize) % names.len()].clone()
                };
                match sn.view(key, &parent, Labels::new()).await {
                    // A view is removed right away; in flight until then.
                    Ok(_) => sn.remove(key).await,
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = result {
            return (e, killed.load(Ordering::SeqCst));
        }
        let mut m = model.lock().expect("model lock");
        match op {
            Op::Nothing | Op::View { .. } => {}
            Op::Prepare { key, parent } => {
                m.actives.insert(key, parent);
            }
            Op::Commit { key, name } => {
                let parent = m.actives.remove(&key).expect("committed key was active");
                // Nothing was written: the layer reads as its parent.
                let hash = if parent.is_empty() { TreeHash::new() } else { m.committed[&parent].1.clone() };
                m.committed.insert(name, (parent, hash));
            }
            Op::RemoveActive { key } => {
                m.actives.remove(&key);
            }
            Op::RemoveCommitted { name } => {
                m.committed.remove(&name);
            }
        }
        m.in_flight = None;
        m.done += 1;
    }
}

#[test]
fn blockcow_survives_sigkill_during_pool_operations() {
    require_prerequisites();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut h = Harness::start();
    let model = Arc::new(Mutex::new(OpsModel::default()));
    // One layer with content, so views and snapshots have data to share.
    let base_hash = make_layer(&h, &mut rng, "op-base", "");
    model.lock().expect("model lock").committed.insert("op-base".into(), (String::new(), base_hash));
    let mut ambiguous = 0;
    let mut stuck_kills = 0;
    for round in 0..ROUNDS {
        let tag = format!("pool-ops round {round}");
        let killed = Arc::new(AtomicBool::new(false));
        let worker = h.rt.spawn(pool_operations(h.client.clone(), model.clone(), killed.clone(), rng.gen()));
        let delay = Duration::from_millis(rng.gen_range(50..800));
        std::thread::sleep(delay);
        assert!(h.daemon.is_running(), "{tag}: the daemon died by itself; log:\n{}", h.daemon.log());
        killed.store(true, Ordering::SeqCst);
        stuck_kills += usize::from(h.kill(&tag));
        let (stopped_by, after_kill) = h.rt.block_on(worker).expect("workload task");
        assert!(after_kill, "{tag}: a pool operation failed before the kill: {stopped_by}");
        h.clean_after_kill(&tag);
        h.pool_check(&tag, "on the pool as the kill left it");
        h.restart(&tag);
        h.pool_check(&tag, "after the restart");

        // Settle the call in flight from what the daemon reports.
        let mut m = model.lock().expect("model lock");
        let in_flight = m.in_flight.take().unwrap_or(Op::Nothing);
        let exists = |key: &str| h.rt.block_on(h.client.stat(key)).ok();
        match &in_flight {
            Op::Nothing => {}
            Op::Prepare { key, parent } => {
                if let Some(info) = exists(key) {
                    assert_eq!(info.kind, Kind::Active, "{tag}: {key}");
                    m.actives.insert(key.clone(), parent.clone());
                    ambiguous += 1;
                }
            }
            Op::Commit { key, name } => {
                let (k, n) = (exists(key), exists(name));
                assert!(k.is_some() != n.is_some(), "{tag}: commit of {key} as {name} half done: key {k:?}, name {n:?}");
                if n.is_some() {
                    let parent = m.actives.remove(key).expect("committed key was active");
                    let hash = if parent.is_empty() { TreeHash::new() } else { m.committed[&parent].1.clone() };
                    m.committed.insert(name.clone(), (parent, hash));
                    ambiguous += 1;
                }
            }
            Op::RemoveActive { key } => {
                if exists(key).is_none() {
                    m.actives.remove(key);
                    ambiguous += 1;
                }
            }
            Op::RemoveCommitted { name } => {
                if exists(name).is_none() {
                    m.committed.remove(name);
                    ambiguous += 1;
                }
            }
            Op::View { key } => {
                if exists(key).is_some() {
                    h.rt.block_on(h.client.remove(key)).unwrap_or_else(|e| panic!("{tag}: remove view {key}: {e}"));
                }
            }
        }
        eprintln!("{tag}: killed after {delay:?} during {in_flight:?} ({} calls done); stopped by: {stopped_by}", m.done);
        let mut actives = h.verify(&tag, &m.committed);
        actives.sort();
        let expected: Vec<String> = m.actives.keys().cloned().collect();
        assert_eq!(actives, expected, "{tag}: active snapshots after the restart");
        h.cleanup(&tag);
        // Keep the active set small: remove what is left over.
        if m.actives.len() > 4 {
            let keys: Vec<String> = m.actives.keys().cloned().collect();
            for key in keys {
                h.rt.block_on(h.client.remove(&key)).unwrap_or_else(|e| panic!("{tag}: remove {key}: {e}"));
                m.actives.remove(&key);
            }
        }
    }
    h.pool_check("end", "after the last round");
    h.daemon.terminate().expect("stop the daemon");
    h.assert_nothing_mounted("end");
    let m = model.lock().expect("model lock");
    eprintln!(
        "{ROUNDS} kills during pool operations ({stuck_kills} left a daemon that could not exit until the restarted one aborted its FUSE connection), {} calls, {ambiguous} in-flight calls found done, {} committed at the end",
        m.done,
        m.committed.len()
    );
}
