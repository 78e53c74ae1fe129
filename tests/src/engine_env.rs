//! One container-test environment for the engine's end-to-end tests.
//!
//! [`ContainerEnv::start`] checks what running containers needs (root, the
//! docker CLI, runc, the static busybox the test images are built from),
//! makes a temporary directory, starts `stratad` in it on one storage driver
//! (data root `root`, socket `d.sock`), builds the test images and loads the
//! `busybox` image. The environment derefs to its [`Docker`] client
//! (`env.ok(…)`, `env.fails(…)`, `env.output(…)`), keeps the daemon's flags
//! so it can be stopped, killed and started again on the same data root, and
//! stops the daemon on drop.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::engine::{http_unix, require_docker, require_program, Docker, Stratad};
use crate::image::{self, TestImages};

/// Longest a single docker command may take before the test fails.
pub const COMMAND_TIMEOUT: u64 = 60;

/// Fails with a clear message unless the test runs as root and runc, the
/// docker CLI and the static busybox are installed.
pub fn require_container_prerequisites() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root (mounts, runc): run it as root");
    require_docker();
    require_program("runc", "install it: apt-get install runc");
    assert!(
        Path::new(image::BUSYBOX).is_file(),
        "{} is missing: apt-get install busybox-static (or run scripts/deps.sh)",
        image::BUSYBOX
    );
}

/// Seconds since the epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A running `stratad` in a temporary directory with `busybox` loaded.
pub struct ContainerEnv {
    /// The temporary directory holding everything (removed on drop).
    pub dir: tempfile::TempDir,
    /// The daemon's data root (`dir/root`).
    pub root: PathBuf,
    /// The daemon's unix socket (`dir/d.sock`).
    pub sock: PathBuf,
    /// The storage driver under test.
    pub driver: &'static str,
    /// The daemon; `None` while it is stopped.
    pub daemon: Option<Stratad>,
    /// The docker CLI pointed at the daemon, labelled with the driver.
    pub docker: Docker,
    /// `--storage-driver <driver>` plus the extra flags of the start.
    daemon_args: Vec<String>,
}

impl ContainerEnv {
    /// Checks the prerequisites, starts stratad in a new temporary directory
    /// named `prefix…` with `--storage-driver driver` and the `extra` flags,
    /// and loads the `busybox` image (built from the static busybox).
    pub fn start(prefix: &str, driver: &'static str, extra: &[&str]) -> ContainerEnv {
        require_container_prerequisites();
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("temp dir");
        let root = dir.path().join("root");
        let sock = dir.path().join("d.sock");
        let mut daemon_args = vec!["--storage-driver".to_string(), driver.to_string()];
        daemon_args.extend(extra.iter().map(|s| s.to_string()));
        let docker = Docker::new(&format!("unix://{}", sock.display())).with_timeout(COMMAND_TIMEOUT).labelled(driver);
        let mut env = ContainerEnv { dir, root, sock, driver, daemon: None, docker, daemon_args };
        env.start_daemon();
        let images = TestImages::build(env.dir.path()).expect("build the busybox images");
        let path = images.docker_archive.path.display().to_string();
        env.ok(&["load", "-i", &path]);
        env
    }

    /// A path in the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The running daemon.
    pub fn daemon(&mut self) -> &mut Stratad {
        self.daemon.as_mut().expect("daemon running")
    }

    /// Starts the daemon (again) on the same data root and socket with the
    /// flags of [`ContainerEnv::start`].
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "stratad is already running");
        let args: Vec<&str> = self.daemon_args.iter().map(String::as_str).collect();
        self.daemon = Some(Stratad::start_simple(&self.root, &self.sock, &args).expect("start stratad"));
    }

    /// Stops the daemon (SIGTERM) and waits for its clean exit.
    pub fn stop_daemon(&mut self) {
        self.daemon.take().expect("daemon running").stop().expect("stop stratad");
    }

    /// Kills the daemon outright (SIGKILL) and reaps it.
    pub fn kill_daemon(&mut self) {
        let pid = self.daemon().pid().expect("daemon pid");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)
            .expect("SIGKILL stratad");
        let _ = self.daemon.take().map(|mut d| d.stop());
    }

    /// Stops the daemon (SIGTERM) and starts it again on the same root.
    pub fn restart_daemon(&mut self) {
        self.stop_daemon();
        self.start_daemon();
    }

    /// `docker inspect -f format name`, trimmed.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        self.ok(&["inspect", "-f", format, name]).trim().to_string()
    }

    /// Polls `docker inspect` until `format` renders `want` (30 s at most).
    pub fn wait_for(&self, name: &str, format: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.inspect(name, format);
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "[{}] {name}: {format} is {got:?}, expected {want:?}", self.driver);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A raw API request on the daemon's socket: (status code, body).
    pub fn api(&self, method: &str, target: &str, body: &str) -> (u16, String) {
        let (status, text) = http_unix(&self.sock, method, target, Some(body.as_bytes())).expect("API request");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }
}

/// `env.ok(…)`, `env.fails(…)`, `env.output(…)`, `env.command(…)`: the
/// docker CLI of the test.
impl Deref for ContainerEnv {
    type Target = Docker;
    fn deref(&self) -> &Docker {
        &self.docker
    }
}

impl Drop for ContainerEnv {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.stop();
        }
    }
}
