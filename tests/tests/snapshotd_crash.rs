//! Crash safety of `strata-snapshotd`: a workload of Prepare / write through
//! the mounts / Commit / Remove runs over gRPC while the daemon is SIGKILLed
//! at random moments, at least 20 times per driver, and restarted. After each
//! restart:
//! - every committed snapshot is intact: a view of it shows exactly the files
//!   each layer of its chain wrote;
//! - List and Stat agree with each other and with what the workload knows;
//! - the call in flight at the kill either happened or did not: a Commit left
//!   either the committed name (key gone) or the active key (name absent);
//! - after Cleanup, `snapshots/` holds exactly one directory per snapshot;
//! - the workload continues on the same state, so no call fails because of
//!   debris left by the kill.
//!
//! Needs root. The random seed is printed; set `STRATA_CRASH_SEED` to replay.
//! Run: `cargo test -p strata-tests --test snapshotd_crash`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_snapshotter::grpc::RemoteSnapshotter;
use strata_snapshotter::mount::TempMount;
use strata_snapshotter::{ErrorKind, Kind, Labels, Snapshotter};
use strata_tests::daemon::{require_root, Daemon};

/// How many times the daemon is killed per driver.
const KILLS: usize = 22;
/// Above this many committed snapshots the workload prefers removing.
const MAX_COMMITTED: usize = 24;
const REF_LABEL: &str = "containerd.io/snapshot.ref";

/// A committed snapshot as the workload made it.
#[derive(Debug, Clone)]
struct Layer {
    parent: String,
    /// The content this layer wrote to `files/<name>`.
    content: Vec<u8>,
}

/// What the workload knows exists.
#[derive(Debug, Default, Clone)]
struct Model {
    committed: BTreeMap<String, Layer>,
    /// Active key -> (parent, name it will be committed as, content written).
    active: BTreeMap<String, (String, String, Vec<u8>)>,
    seq: u64,
}

/// The call that was running (or about to run) when the workload stopped.
#[derive(Debug, Clone)]
enum InFlight {
    Nothing,
    Prepare { key: String, parent: String, name: String, content: Vec<u8> },
    Write { key: String },
    Commit { key: String, name: String },
    Remove { key: String },
}

#[derive(Debug, Default)]
struct Stats {
    commits_in_flight: usize,
    commits_happened: usize,
    prepares_in_flight: usize,
    removes_in_flight: usize,
    snapshots_checked: usize,
}

fn ancestors<'a>(model: &'a Model, name: &'a str) -> Vec<(&'a str, &'a Layer)> {
    let mut chain = Vec::new();
    let mut cur = name;
    while let Some(layer) = model.committed.get(cur) {
        chain.push((cur, layer));
        if layer.parent.is_empty() {
            break;
        }
        cur = &layer.parent;
    }
    chain
}

fn has_children(model: &Model, name: &str) -> bool {
    model.committed.values().any(|l| l.parent == name) || model.active.values().any(|(p, _, _)| p == name)
}

/// Why the workload stopped: a call failed (with its error kind), or
/// something on the test's side failed (mounting, writing), which no kill of
/// the daemon can cause.
#[derive(Debug)]
#[allow(dead_code, reason = "the fields are read through Debug in failure messages")]
enum Stop {
    Call(ErrorKind, String),
    Local(String),
}

fn call_failed(what: String, e: strata_snapshotter::Error) -> Stop {
    Stop::Call(e.kind(), format!("{what}: {e}"))
}

impl InFlight {
    /// One line without the layer content.
    fn describe(&self) -> String {
        match self {
            InFlight::Nothing => "nothing".into(),
            InFlight::Prepare { key, parent, .. } => format!("prepare {key:?} on {parent:?}"),
            InFlight::Write { key } => format!("writing into {key:?}"),
            InFlight::Commit { key, name } => format!("commit {key:?} as {name:?}"),
            InFlight::Remove { key } => format!("remove {key:?}"),
        }
    }
}

/// Runs operations until one fails. Returns the failure and what was in
/// flight; the model holds only what certainly happened.
async fn workload(
    sn: &RemoteSnapshotter,
    model: &mut Model,
    rng: &mut StdRng,
    work: &Path,
    in_flight: &mut InFlight,
) -> Stop {
    loop {
        *in_flight = InFlight::Nothing;
        let roll: u32 = rng.gen_range(0..100);
        let removable: Vec<String> =
            model.committed.keys().filter(|n| !has_children(model, n)).cloned().collect();
        if (roll < 20 || model.committed.len() > MAX_COMMITTED) && !removable.is_empty() {
            let key = removable[rng.gen_range(0..removable.len())].clone();
            *in_flight = InFlight::Remove { key: key.clone() };
            if let Err(e) = sn.remove(&key).await {
                return call_failed(format!("remove {key:?}"), e);
            }
            model.committed.remove(&key);
            continue;
        }
        if roll < 28 && !model.active.is_empty() {
            let keys: Vec<String> = model.active.keys().cloned().collect();
            let key = keys[rng.gen_range(0..keys.len())].clone();
            *in_flight = InFlight::Remove { key: key.clone() };
            if let Err(e) = sn.remove(&key).await {
                return call_failed(format!("remove {key:?}"), e);
            }
            model.active.remove(&key);
            continue;
        }
        // Build a layer: prepare, write through the mounts, commit.
        model.seq += 1;
        let n = model.seq;
        let parents: Vec<String> = model.committed.keys().cloned().collect();
        let parent = if parents.is_empty() || rng.gen_bool(0.15) {
            String::new()
        } else {
            parents[rng.gen_range(0..parents.len())].clone()
        };
        let name = format!("sha256:{n:064x}");
        let key = format!("default/{n}/extract-{n} {name}");
        let size = rng.gen_range(1..8192);
        let content: Vec<u8> = (0..size).map(|_| rng.gen()).collect();
        *in_flight = InFlight::Prepare { key: key.clone(), parent: parent.clone(), name: name.clone(), content: content.clone() };
        let labels = Labels::from([(REF_LABEL.to_string(), name.clone())]);
        let mounts = match sn.prepare(&key, &parent, labels.clone()).await {
            Ok(m) => m,
            Err(e) => return call_failed(format!("prepare {key:?}"), e),
        };
        model.active.insert(key.clone(), (parent.clone(), name.clone(), content.clone()));
        *in_flight = InFlight::Write { key: key.clone() };
        if let Err(e) = write_layer(&mounts, work, &name, &content) {
            return Stop::Local(format!("write into {key:?}: {e}"));
        }
        *in_flight = InFlight::Commit { key: key.clone(), name: name.clone() };
        if let Err(e) = sn.commit(&name, &key, labels).await {
            return call_failed(format!("commit {key:?} as {name:?}"), e);
        }
        model.active.remove(&key);
        model.committed.insert(name, Layer { parent, content });
    }
}

/// Mounts, writes `files/<name>` and `top`, unmounts.
fn write_layer(mounts: &[strata_snapshotter::Mount], work: &Path, name: &str, content: &[u8]) -> Result<(), String> {
    let m = TempMount::new_in(mounts, work).map_err(|e| format!("mount: {e}"))?;
    let files = m.path().join("files");
    std::fs::create_dir_all(&files).map_err(|e| format!("mkdir files: {e}"))?;
    std::fs::write(files.join(name), content).map_err(|e| format!("write: {e}"))?;
    std::fs::write(m.path().join("top"), name).map_err(|e| format!("write top: {e}"))?;
    m.unmount().map_err(|e| format!("unmount: {e}"))
}

/// Folds the outcome of the interrupted call into the model, checking it is
/// all-or-nothing.
fn resolve(model: &mut Model, in_flight: &InFlight, listed: &BTreeMap<String, strata_snapshotter::Info>, stats: &mut Stats) {
    match in_flight {
        InFlight::Nothing | InFlight::Write { .. } => {}
        InFlight::Prepare { key, parent, name, content } => {
            stats.prepares_in_flight += 1;
            if let Some(info) = listed.get(key) {
                assert_eq!((info.kind, info.parent.as_str()), (Kind::Active, parent.as_str()), "interrupted prepare {key:?}");
                model.active.insert(key.clone(), (parent.clone(), name.clone(), content.clone()));
            }
        }
        InFlight::Commit { key, name } => {
            stats.commits_in_flight += 1;
            let has_key = listed.contains_key(key);
            let has_name = listed.contains_key(name);
            assert!(
                has_key != has_name,
                "interrupted commit of {key:?} as {name:?} is half done: key present {has_key}, name present {has_name}"
            );
            if has_name {
                stats.commits_happened += 1;
                let (parent, _, content) = model.active.remove(key).expect("an in-flight commit's key is in the model");
                model.committed.insert(name.clone(), Layer { parent, content });
            }
        }
        InFlight::Remove { key } => {
            stats.removes_in_flight += 1;
            if !listed.contains_key(key) {
                model.committed.remove(key);
                model.active.remove(key);
            }
        }
    }
}

/// Every check after a restart (see the module doc).
async fn verify(sn: &RemoteSnapshotter, model: &Model, driver_root: &Path, work: &Path, stats: &mut Stats) {
    let listed: BTreeMap<String, strata_snapshotter::Info> =
        sn.list(&[]).await.expect("list after restart").into_iter().map(|i| (i.name.clone(), i)).collect();
    let expected: BTreeSet<&String> = model.committed.keys().chain(model.active.keys()).collect();
    let got: BTreeSet<&String> = listed.keys().collect();
    assert_eq!(got, expected, "List after restart differs from what the workload made");

    for (name, info) in &listed {
        let stat = sn.stat(name).await.unwrap_or_else(|e| panic!("stat {name:?} (listed): {e}"));
        assert_eq!(&stat, info, "Stat and List disagree on {name:?}");
        if let Some(layer) = model.committed.get(name) {
            assert_eq!((info.kind, info.parent.as_str()), (Kind::Committed, layer.parent.as_str()), "{name:?}");
            assert_eq!(info.labels.get(REF_LABEL), Some(name), "labels of {name:?}");
        } else if let Some((parent, _, _)) = model.active.get(name) {
            assert_eq!((info.kind, info.parent.as_str()), (Kind::Active, parent.as_str()), "{name:?}");
        }
    }

    // Content: a view of each committed snapshot shows its whole chain.
    for name in model.committed.keys() {
        let view_key = format!("check {name}");
        let mounts = sn.view(&view_key, name, Labels::new()).await.unwrap_or_else(|e| panic!("view of {name:?}: {e}"));
        let m = TempMount::new_in(&mounts, work).unwrap_or_else(|e| panic!("mount view of {name:?}: {e}"));
        let chain = ancestors(model, name);
        let files: BTreeSet<String> = std::fs::read_dir(m.path().join("files"))
            .unwrap_or_else(|e| panic!("read files/ of {name:?}: {e}"))
            .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
            .collect();
        let want: BTreeSet<String> = chain.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(files, want, "files of {name:?}");
        for (layer_name, layer) in &chain {
            let data = std::fs::read(m.path().join("files").join(layer_name)).expect("read layer file");
            assert!(data == layer.content, "content of {layer_name:?} seen from {name:?} differs");
        }
        let top = std::fs::read_to_string(m.path().join("top")).expect("read top");
        assert_eq!(&top, name, "top file of {name:?}");
        m.unmount().unwrap_or_else(|e| panic!("unmount view of {name:?}: {e}"));
        sn.remove(&view_key).await.unwrap_or_else(|e| panic!("remove view of {name:?}: {e}"));
        stats.snapshots_checked += 1;
    }

    // Cleanup leaves exactly one directory per snapshot, besides the empty
    // `new-*` directories the store keeps ready for creates.
    sn.cleanup().await.expect("cleanup");
    let dir = driver_root.join("snapshots");
    let spare = |name: &str| {
        name.starts_with("new-") && std::fs::read_dir(dir.join(name)).map(|mut d| d.next().is_none()).unwrap_or(false)
    };
    let entries: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .filter(|name| !spare(name))
        .collect();
    let stray: Vec<&String> = entries.iter().filter(|e| e.parse::<u64>().is_err()).collect();
    assert!(stray.is_empty(), "after cleanup {} holds non-snapshot entries {stray:?}", dir.display());
    assert_eq!(entries.len(), listed.len(), "after cleanup {} holds {entries:?} for {} snapshots", dir.display(), listed.len());
}

fn crash_loop(driver: &str) {
    require_root();
    let seed: u64 = std::env::var("STRATA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{driver}: seed {seed} (set STRATA_CRASH_SEED={seed} to replay)");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = tempfile::Builder::new().prefix(&format!("strata-crash-{driver}-")).tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let work: PathBuf = dir.path().join("work");
    std::fs::create_dir(&work).expect("mkdir work");
    let mut daemon = Daemon::start(&root, &dir.path().join("snapshotd.sock"), &["--driver", driver]).expect("start strata-snapshotd");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");

    let mut model = Model::default();
    let mut stats = Stats::default();
    for round in 0..KILLS {
        let sn = runtime.block_on(daemon.client(driver)).expect("connect");
        let killed = Arc::new(AtomicBool::new(false));
        let worker = {
            let (sn, killed, work) = (sn.clone(), killed.clone(), work.clone());
            let mut model = model.clone();
            let mut wrng = StdRng::seed_from_u64(rng.gen());
            runtime.spawn(async move {
                let mut in_flight = InFlight::Nothing;
                let failure = workload(&sn, &mut model, &mut wrng, &work, &mut in_flight).await;
                (model, in_flight, failure, killed.load(Ordering::SeqCst))
            })
        };
        let delay = Duration::from_millis(rng.gen_range(20..400));
        std::thread::sleep(delay);
        killed.store(true, Ordering::SeqCst);
        daemon.kill().expect("SIGKILL the daemon");
        let (new_model, in_flight, failure, was_killed) = runtime.block_on(worker).expect("workload task");
        match &failure {
            Stop::Call(ErrorKind::Unavailable, _) if was_killed => {}
            other => panic!("round {round}: the workload failed by itself, not by the kill: {other:?}"),
        }
        eprintln!("{driver} round {round}: killed after {delay:?} during {}; stopped by {failure:?}", in_flight.describe());
        model = new_model;

        daemon.restart().expect("restart strata-snapshotd");
        let sn = runtime.block_on(daemon.client(driver)).expect("connect after restart");
        let listed: BTreeMap<String, strata_snapshotter::Info> = runtime
            .block_on(sn.list(&[]))
            .expect("list after restart")
            .into_iter()
            .map(|i| (i.name.clone(), i))
            .collect();
        resolve(&mut model, &in_flight, &listed, &mut stats);
        runtime.block_on(verify(&sn, &model, &root.join(driver), &work, &mut stats));
    }
    let status = daemon.terminate().expect("SIGTERM the daemon");
    assert!(status.success(), "strata-snapshotd exited with {status} on SIGTERM");
    eprintln!("{driver}: {KILLS} kills, {stats:?}, final: {} committed, {} active", model.committed.len(), model.active.len());
    assert!(stats.snapshots_checked > 0, "no committed snapshot was ever checked");
}

#[test]
fn overlay_survives_sigkill() {
    crash_loop("overlay");
}

#[test]
fn vfs_survives_sigkill() {
    crash_loop("vfs");
}
