//! Bad input against the running `strata-snapshotd`: every request gets the
//! exact gRPC code with a message naming what was wrong, changes nothing, and
//! the daemon keeps serving (a good request succeeds afterwards).
//!
//! Needs root (the daemon's overlay driver). Run:
//! `cargo test -p strata-tests --test snapshotd_bad_input`.

use std::collections::HashMap;

use strata_proto::snapshots as pb;
use strata_proto::snapshots::snapshots_client::SnapshotsClient;
use strata_snapshotter::grpc::client::connect_channel;
use strata_snapshotter::grpc::RemoteSnapshotter;
use strata_snapshotter::{Labels, Snapshotter, MAX_LABEL_BYTES};
use strata_tests::daemon::{require_root, Daemon};
use tonic::transport::Channel;
use tonic::{Code, Status};

const DRIVERS: [&str; 2] = ["overlay", "vfs"];

struct Setup {
    daemon: Daemon,
    _dir: tempfile::TempDir,
}

fn start() -> Setup {
    require_root();
    let dir = tempfile::Builder::new().prefix("strata-bad-input-").tempdir().expect("tempdir");
    let daemon = Daemon::start(
        &dir.path().join("root"),
        &dir.path().join("snapshotd.sock"),
        &["--driver", "overlay", "--driver", "vfs"],
    )
    .expect("start strata-snapshotd");
    Setup { daemon, _dir: dir }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

async fn raw(daemon: &Daemon) -> SnapshotsClient<Channel> {
    SnapshotsClient::new(connect_channel(&daemon.address()).await.expect("connect"))
}

/// Asserts the call failed with `code` and a message containing `needle`.
#[track_caller]
fn expect_code<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, code: Code, needle: &str) {
    match result {
        Ok(v) => panic!("{what}: expected {code:?}, got success {v:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: wrong code (message: {:?})", status.message());
            assert!(!status.message().is_empty(), "{what}: empty message");
            assert!(
                status.message().contains(needle),
                "{what}: message {:?} does not mention {needle:?}",
                status.message()
            );
        }
    }
}

/// The daemon is alive and serves a good request on `driver`.
async fn still_serving(setup: &mut Setup, client: &mut SnapshotsClient<Channel>, driver: &str) {
    assert!(setup.daemon.is_running(), "strata-snapshotd died; log:\n{}", setup.daemon.log());
    let probe = format!("probe-{}", rand::random::<u64>());
    client
        .prepare(pb::PrepareSnapshotRequest { snapshotter: driver.into(), key: probe.clone(), ..Default::default() })
        .await
        .expect("a good prepare after bad input");
    client
        .remove(pb::RemoveSnapshotRequest { snapshotter: driver.into(), key: probe })
        .await
        .expect("a good remove after bad input");
}

/// Names of all snapshots of `driver`, sorted.
async fn names(client: &RemoteSnapshotter) -> Vec<String> {
    let mut names: Vec<String> = client.list(&[]).await.expect("list").into_iter().map(|i| i.name).collect();
    names.sort();
    names
}

fn prepare_req(driver: &str, key: &str, parent: &str) -> pb::PrepareSnapshotRequest {
    pb::PrepareSnapshotRequest { snapshotter: driver.into(), key: key.into(), parent: parent.into(), labels: HashMap::new() }
}

fn commit_req(driver: &str, name: &str, key: &str) -> pb::CommitSnapshotRequest {
    pb::CommitSnapshotRequest { snapshotter: driver.into(), name: name.into(), key: key.into(), ..Default::default() }
}

#[test]
fn empty_unknown_and_duplicate_keys() {
    let mut setup = start();
    runtime().block_on(async {
        let mut c = raw(&setup.daemon).await;
        for d in DRIVERS {
            let sn = setup.daemon.client(d).await.expect("client");
            c.prepare(prepare_req(d, "base-active", "")).await.expect("prepare base");
            c.commit(commit_req(d, "base", "base-active")).await.expect("commit base");
            c.prepare(prepare_req(d, "active", "base")).await.expect("prepare active");
            c.view(pb::ViewSnapshotRequest { snapshotter: d.into(), key: "view".into(), parent: "base".into(), ..Default::default() })
                .await
                .expect("view");
            let before = names(&sn).await;
            assert_eq!(before, ["active", "base", "view"]);

            expect_code("prepare with empty key", c.prepare(prepare_req(d, "", "")).await, Code::InvalidArgument, "key");
            expect_code("stat of empty key", c.stat(pb::StatSnapshotRequest { snapshotter: d.into(), key: "".into() }).await, Code::InvalidArgument, "key");
            expect_code("remove of empty key", c.remove(pb::RemoveSnapshotRequest { snapshotter: d.into(), key: "".into() }).await, Code::InvalidArgument, "key");
            expect_code("commit with empty name", c.commit(commit_req(d, "", "active")).await, Code::InvalidArgument, "name");

            expect_code("prepare on unknown parent", c.prepare(prepare_req(d, "x", "no-such-parent")).await, Code::NotFound, "no-such-parent");
            expect_code(
                "view on unknown parent",
                c.view(pb::ViewSnapshotRequest { snapshotter: d.into(), key: "x".into(), parent: "no-such-parent".into(), ..Default::default() }).await,
                Code::NotFound,
                "no-such-parent",
            );
            expect_code("prepare on an active parent", c.prepare(prepare_req(d, "x", "active")).await, Code::InvalidArgument, "active");
            expect_code("prepare on a view parent", c.prepare(prepare_req(d, "x", "view")).await, Code::InvalidArgument, "view");

            for taken in ["active", "view", "base"] {
                expect_code(&format!("prepare of taken {taken}"), c.prepare(prepare_req(d, taken, "")).await, Code::AlreadyExists, taken);
            }
            expect_code(
                "view of taken key",
                c.view(pb::ViewSnapshotRequest { snapshotter: d.into(), key: "active".into(), ..Default::default() }).await,
                Code::AlreadyExists,
                "active",
            );

            for (what, result) in [
                ("stat", c.stat(pb::StatSnapshotRequest { snapshotter: d.into(), key: "ghost".into() }).await.map(drop)),
                ("remove", c.remove(pb::RemoveSnapshotRequest { snapshotter: d.into(), key: "ghost".into() }).await.map(drop)),
                ("mounts", c.mounts(pb::MountsRequest { snapshotter: d.into(), key: "ghost".into() }).await.map(drop)),
                ("usage", c.usage(pb::UsageRequest { snapshotter: d.into(), key: "ghost".into() }).await.map(drop)),
                ("commit", c.commit(commit_req(d, "new", "ghost")).await.map(drop)),
            ] {
                expect_code(&format!("{what} of a missing key"), result, Code::NotFound, "ghost");
            }

            expect_code("remove of a parent", c.remove(pb::RemoveSnapshotRequest { snapshotter: d.into(), key: "base".into() }).await, Code::FailedPrecondition, "base");

            assert_eq!(names(&sn).await, before, "bad input changed the snapshot set of {d}");
            still_serving(&mut setup, &mut c, d).await;
        }
    });
}

#[test]
fn commit_views_cycles_and_parents() {
    let mut setup = start();
    runtime().block_on(async {
        let mut c = raw(&setup.daemon).await;
        for d in DRIVERS {
            let sn = setup.daemon.client(d).await.expect("client");
            c.prepare(prepare_req(d, "l1-active", "")).await.expect("prepare l1");
            c.commit(commit_req(d, "l1", "l1-active")).await.expect("commit l1");
            c.prepare(prepare_req(d, "l2-active", "l1")).await.expect("prepare l2");
            c.commit(commit_req(d, "l2", "l2-active")).await.expect("commit l2");
            c.prepare(prepare_req(d, "work", "l2")).await.expect("prepare work");
            c.view(pb::ViewSnapshotRequest { snapshotter: d.into(), key: "look".into(), parent: "l2".into(), ..Default::default() })
                .await
                .expect("view");
            let before = names(&sn).await;

            expect_code("commit of a view", c.commit(commit_req(d, "from-view", "look")).await, Code::FailedPrecondition, "look");
            expect_code("commit of a committed name", c.commit(commit_req(d, "again", "l2")).await, Code::FailedPrecondition, "l2");
            // A name that is the key's own parent or grandparent: committing
            // there would make the snapshot its own ancestor.
            expect_code("commit onto its parent's name", c.commit(commit_req(d, "l2", "work")).await, Code::AlreadyExists, "l2");
            expect_code("commit onto its grandparent's name", c.commit(commit_req(d, "l1", "work")).await, Code::AlreadyExists, "l1");
            expect_code("commit onto its own key", c.commit(commit_req(d, "work", "work")).await, Code::AlreadyExists, "work");
            expect_code("commit onto a view's key", c.commit(commit_req(d, "look", "work")).await, Code::AlreadyExists, "look");

            let mut with_parent = commit_req(d, "rebased", "work");
            with_parent.parent = "l1".into();
            expect_code("commit with a different parent (rebase)", c.commit(with_parent).await, Code::InvalidArgument, "l1");

            assert_eq!(names(&sn).await, before, "bad commits changed the snapshot set of {d}");
            let work = sn.stat("work").await.expect("work is still there");
            assert_eq!((work.kind, work.parent.as_str()), (strata_snapshotter::Kind::Active, "l2"));

            let mut same_parent = commit_req(d, "work-done", "work");
            same_parent.parent = "l2".into();
            c.commit(same_parent).await.expect("commit naming the snapshot's own parent is accepted");
            let done = sn.stat("work-done").await.expect("stat committed");
            assert_eq!((done.kind, done.parent.as_str()), (strata_snapshotter::Kind::Committed, "l2"));
            still_serving(&mut setup, &mut c, d).await;
        }
    });
}

#[test]
fn oversized_labels_and_bad_updates() {
    let mut setup = start();
    runtime().block_on(async {
        let mut c = raw(&setup.daemon).await;
        for d in DRIVERS {
            let sn = setup.daemon.client(d).await.expect("client");
            let key = "k".to_string();
            let exact = Labels::from([(key.clone(), "v".repeat(MAX_LABEL_BYTES - key.len()))]);
            let over = Labels::from([(key.clone(), "v".repeat(MAX_LABEL_BYTES - key.len() + 1))]);

            sn.prepare("exact", "", exact.clone()).await.expect("a label of exactly 4096 bytes is accepted");
            let before = names(&sn).await;
            let mut req = prepare_req(d, "too-big", "");
            req.labels = over.clone().into_iter().collect();
            expect_code("prepare with a 4097-byte label", c.prepare(req).await, Code::InvalidArgument, "label");
            let mut req = commit_req(d, "too-big", "exact");
            req.labels = over.clone().into_iter().collect();
            expect_code("commit with a 4097-byte label", c.commit(req).await, Code::InvalidArgument, "label");
            let mut info = sn.stat("exact").await.expect("stat");
            info.labels = over.clone();
            let err = sn.update(info.clone(), &[]).await.expect_err("update with a 4097-byte label must fail");
            assert_eq!(err.kind(), strata_snapshotter::ErrorKind::InvalidArgument, "{err}");
            assert_eq!(sn.stat("exact").await.expect("stat").labels, exact, "failed update changed labels");

            expect_code(
                "update without info",
                c.update(pb::UpdateSnapshotRequest { snapshotter: d.into(), info: None, update_mask: None }).await,
                Code::InvalidArgument,
                "info",
            );
            let empty = pb::Info { kind: pb::Kind::Active as i32, ..Default::default() };
            expect_code(
                "update with an empty name",
                c.update(pb::UpdateSnapshotRequest { snapshotter: d.into(), info: Some(empty), update_mask: None }).await,
                Code::InvalidArgument,
                "name",
            );
            for path in ["parent", "name", "kind"] {
                info.labels = Labels::new();
                let err = sn.update(info.clone(), &[path.to_string()]).await.expect_err("immutable field path must fail");
                assert_eq!(err.kind(), strata_snapshotter::ErrorKind::InvalidArgument, "update of {path}: {err}");
            }
            info.name = "ghost".into();
            let err = sn.update(info.clone(), &[]).await.expect_err("update of a missing key must fail");
            assert_eq!(err.kind(), strata_snapshotter::ErrorKind::NotFound, "{err}");
            assert_eq!(names(&sn).await, before);
            still_serving(&mut setup, &mut c, d).await;
        }
    });
}

#[test]
fn malformed_filters_and_unknown_snapshotter() {
    let mut setup = start();
    runtime().block_on(async {
        let mut c = raw(&setup.daemon).await;
        for d in DRIVERS {
            for filter in ["name==", "labels.\"x==y", "kind==", "==a", "name~=(", "name==a,"] {
                let stream = c.list(pb::ListSnapshotsRequest { snapshotter: d.into(), filters: vec![filter.into()] }).await;
                // A server-streaming error can arrive with the headers or as the first message.
                let result = match stream {
                    Ok(response) => response.into_inner().message().await.map(|first| first.map(|m| m.info.len())),
                    Err(status) => Err(status),
                };
                expect_code(&format!("list with filter {filter:?}"), result, Code::InvalidArgument, "");
            }
            still_serving(&mut setup, &mut c, d).await;
        }
        let result = c.stat(pb::StatSnapshotRequest { snapshotter: "nope".into(), key: "x".into() }).await;
        expect_code("unknown snapshotter", result, Code::InvalidArgument, "snapshotter not loaded: nope");
        let result = c.cleanup(pb::CleanupRequest { snapshotter: "".into() }).await;
        expect_code("empty snapshotter name with two drivers", result, Code::InvalidArgument, "snapshotter not loaded");

        // containerd's namespace header is accepted and ignored.
        let mut request = tonic::Request::new(prepare_req("vfs", "default/1/with-namespace", ""));
        request.metadata_mut().insert("containerd-namespace", "default".parse().expect("header value"));
        c.prepare(request).await.expect("prepare with a containerd-namespace header");
        still_serving(&mut setup, &mut c, "overlay").await;
    });
}
