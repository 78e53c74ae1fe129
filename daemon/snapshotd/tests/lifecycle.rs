//! The `strata-snapshotd` binary's life cycle: socket set-up (parent
//! directories, mode 0660, stale socket replaced, live socket kept), clean
//! shutdown on SIGTERM and SIGINT, the `--debug` RPC log, driver selection,
//! and clear errors for bad arguments.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use strata_snapshotter::grpc::RemoteSnapshotter;
use strata_snapshotter::{ErrorKind, Labels, Snapshotter};

const BIN: &str = env!("CARGO_BIN_EXE_strata-snapshotd");

/// A daemon process, killed on drop.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(args: &[&str], log: &Path) -> Proc {
        let file = File::create(log).expect("create log");
        let child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log"))
            .stderr(file)
            .spawn()
            .expect("spawn strata-snapshotd");
        Proc { child: Some(child), log: log.to_path_buf() }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `socket` accepts connections.
    fn wait_ready(&mut self, socket: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("strata-snapshotd exited early ({status}); log:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "no socket after 30 s; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to 30 s for the process to exit by itself.
    fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("poll") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("strata-snapshotd did not exit; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&mut self, signal: Signal) -> ExitStatus {
        let pid = self.child.as_ref().map(|c| c.id()).expect("running");
        kill(Pid::from_raw(pid as i32), signal).expect("send signal");
        self.wait()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- strata-snapshotd log ----\n{}", self.log());
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn args<'a>(root: &'a str, address: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--root", root, "--address", address];
    v.extend_from_slice(extra);
    v
}

#[test]
fn socket_setup_and_clean_shutdown_on_sigterm_and_sigint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let socket = dir.path().join("run/nested/snapshotd.sock");
    let address = format!("unix://{}", socket.display());
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let mut p = Proc::spawn(&args(root.to_str().expect("utf-8"), &address, &["--driver", "vfs"]), &dir.path().join("log"));
        p.wait_ready(&socket);
        let mode = std::fs::metadata(&socket).expect("socket metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o660, "socket mode");
        assert!(p.log().contains(&format!("listening on {}", socket.display())), "{}", p.log());
        runtime().block_on(async {
            let sn = RemoteSnapshotter::connect(&address, "vfs").await.expect("connect");
            sn.prepare("k", "", Labels::new()).await.expect("prepare");
        });
        let status = p.signal(signal);
        assert!(status.success(), "{signal} gave {status}; log:\n{}", p.log());
        assert!(!socket.exists(), "socket left behind after {signal}");
        assert!(p.log().contains("shutting down"), "{}", p.log());
        // State survives a clean restart.
        let mut again = Proc::spawn(&args(root.to_str().expect("utf-8"), &address, &["--driver", "vfs"]), &dir.path().join("log2"));
        again.wait_ready(&socket);
        runtime().block_on(async {
            let sn = RemoteSnapshotter::connect(&address, "vfs").await.expect("connect");
            assert_eq!(sn.stat("k").await.expect("stat after restart").name, "k");
            sn.remove("k").await.expect("remove");
        });
        assert!(again.signal(Signal::SIGTERM).success());
    }
}

#[test]
fn stale_socket_is_replaced_and_a_live_one_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let socket = dir.path().join("s.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind a socket that nobody serves"));
    assert!(socket.exists());
    let address = socket.display().to_string();
    let root_s = root.to_str().expect("utf-8");
    let mut first = Proc::spawn(&args(root_s, &address, &["--driver", "vfs"]), &dir.path().join("log1"));
    first.wait_ready(&socket);

    let mut second = Proc::spawn(&args(root_s, &address, &["--driver", "vfs"]), &dir.path().join("log2"));
    let status = second.wait();
    assert!(!status.success());
    assert!(second.log().contains("already listening"), "{}", second.log());
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok(), "the first daemon lost its socket");
    assert!(first.signal(Signal::SIGTERM).success());

    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a socket").expect("write");
    let mut third = Proc::spawn(&args(root_s, file.to_str().expect("utf-8"), &["--driver", "vfs"]), &dir.path().join("log3"));
    assert!(!third.wait().success());
    assert!(third.log().contains("is not a socket"), "{}", third.log());
    assert_eq!(std::fs::read(&file).expect("read"), b"not a socket", "a regular file was replaced");
}

#[test]
fn debug_logs_every_rpc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("s.sock");
    let address = socket.display().to_string();
    let root = dir.path().join("root");
    for debug in [true, false] {
        let mut extra = vec!["--driver", "vfs"];
        if debug {
            extra.push("--debug");
        }
        let mut p = Proc::spawn(&args(root.to_str().expect("utf-8"), &address, &extra), &dir.path().join("log"));
        p.wait_ready(&socket);
        runtime().block_on(async {
            let mut c = strata_proto_client(&address).await;
            let mut request = tonic_request("ghost-key");
            request.metadata_mut().insert("containerd-namespace", "k8s.io".parse().expect("header"));
            let status = c.stat(request).await.expect_err("missing key");
            assert_eq!(status.code(), tonic::Code::NotFound);
        });
        assert!(p.signal(Signal::SIGTERM).success());
        let log = p.log();
        let rpc_line = log.lines().find(|l| l.contains("method=\"Stat\""));
        if debug {
            let line = rpc_line.unwrap_or_else(|| panic!("no RPC line in:\n{log}"));
            for field in ["snapshotter=\"vfs\"", "key=\"ghost-key\"", "namespace=\"k8s.io\"", "code=NotFound", "duration_us="] {
                assert!(line.contains(field), "{field} missing from {line}");
            }
        } else {
            assert!(rpc_line.is_none(), "RPCs logged without --debug:\n{log}");
        }
    }
}

async fn strata_proto_client(address: &str) -> strata_proto::snapshots::snapshots_client::SnapshotsClient<tonic::transport::Channel> {
    let channel = strata_snapshotter::grpc::client::connect_channel(address).await.expect("connect");
    strata_proto::snapshots::snapshots_client::SnapshotsClient::new(channel)
}

fn tonic_request(key: &str) -> tonic::Request<strata_proto::snapshots::StatSnapshotRequest> {
    tonic::Request::new(strata_proto::snapshots::StatSnapshotRequest { snapshotter: "vfs".into(), key: key.into() })
}

#[test]
fn default_drivers_are_every_supported_one() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root (the overlay support probe mounts): run it as root");
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("s.sock");
    let address = socket.display().to_string();
    let mut p = Proc::spawn(&args(dir.path().join("root").to_str().expect("utf-8"), &address, &[]), &dir.path().join("log"));
    p.wait_ready(&socket);
    runtime().block_on(async {
        for driver in ["overlay", "vfs"] {
            let sn = RemoteSnapshotter::connect(&address, driver).await.expect("connect");
            sn.prepare(&format!("on-{driver}"), "", Labels::new()).await.expect("prepare");
            let names: Vec<String> = sn.list(&[]).await.expect("list").into_iter().map(|i| i.name).collect();
            assert_eq!(names, [format!("on-{driver}")], "drivers are partitioned");
        }
        let sn = RemoteSnapshotter::connect(&address, "nope").await.expect("connect");
        assert_eq!(sn.list(&[]).await.expect_err("unknown driver").kind(), ErrorKind::InvalidArgument);
    });
    assert!(dir.path().join("root/overlay").is_dir() && dir.path().join("root/vfs").is_dir());
    assert!(p.signal(Signal::SIGTERM).success());
}

#[test]
fn bad_arguments_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let root_s = root.to_str().expect("utf-8");
    let sock = dir.path().join("s.sock");
    let sock_s = sock.to_str().expect("utf-8");
    for (extra, needle) in [
        (vec!["--driver", "zfs"], "unknown driver \"zfs\""),
        (vec!["--driver", "vfs", "--driver", "vfs"], "given twice"),
        (vec!["--driver", "vfs", "--storage-opt", "novalue"], "is not KEY=VALUE"),
        (vec!["--driver", "vfs", "--storage-opt", "vfs.bogus=1"], "bogus"),
    ] {
        let out = Command::new(BIN).args(args(root_s, sock_s, &extra)).output().expect("run");
        assert!(!out.status.success(), "{extra:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{extra:?}: {needle:?} not in {stderr}");
        assert!(!sock.exists(), "{extra:?} left a socket");
    }
    let out = Command::new(BIN).args(args(root_s, "tcp://127.0.0.1:1", &["--driver", "vfs"])).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported address"));
}

/// A client that stays connected (as containerd does) does not hold up
/// shutdown.
#[test]
fn connected_clients_do_not_block_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("s.sock");
    let address = socket.display().to_string();
    let mut p = Proc::spawn(&args(dir.path().join("root").to_str().expect("utf-8"), &address, &["--driver", "vfs"]), &dir.path().join("log"));
    p.wait_ready(&socket);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let sn = rt.block_on(async {
        let sn = RemoteSnapshotter::connect(&address, "vfs").await.expect("connect");
        sn.list(&[]).await.expect("list");
        sn
    });
    let started = Instant::now();
    let status = p.signal(Signal::SIGTERM);
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(10), "shutdown took {:?} with a client connected", started.elapsed());
    let err = rt.block_on(sn.list(&[])).expect_err("the daemon is gone");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}
