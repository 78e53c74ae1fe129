//! Running the built `strata-snapshotd` and `stratactl` binaries.
//!
//! # Finding the binaries
//! `env!("CARGO_BIN_EXE_…")` only covers binaries of the test's own package,
//! so [`binaries`] builds both with `cargo build -p strata-snapshotd -p
//! stratactl` once per test process, into the same target directory as the
//! running test (found from the test executable's path,
//! `<target>/<profile>/deps/<test>`), and returns their paths. A stale binary
//! is therefore never tested.
//!
//! # Guards
//! [`Daemon`] kills its process on drop and prints the daemon's log when the
//! test is failing, so a panicking test leaves no daemon behind.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use strata_snapshotter::grpc::RemoteSnapshotter;

/// Paths of the freshly built binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub snapshotd: PathBuf,
    pub stratactl: PathBuf,
}

/// Fails the test with a clear message unless it runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (mounts, overlayfs): run it as root, e.g. `sudo -E cargo test -p strata-tests`"
    );
}

/// Builds `strata-snapshotd` and `stratactl` once and returns their paths.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| match build_binaries() {
        Ok(b) => b,
        Err(err) => panic!("building strata-snapshotd and stratactl failed: {err:#}"),
    })
}

fn build_binaries() -> Result<Binaries> {
    let built = build_workspace_binaries(&[("strata-snapshotd", "strata-snapshotd"), ("stratactl", "stratactl")])?;
    let mut paths = built.into_iter();
    match (paths.next(), paths.next()) {
        (Some(snapshotd), Some(stratactl)) => Ok(Binaries { snapshotd, stratactl }),
        _ => bail!("the build returned fewer binaries than asked for"),
    }
}

/// Builds the workspace binaries `bins` (pairs of package and binary name)
/// into the target directory and profile of the running test executable, so
/// a test always runs the current code, and returns their paths in order.
pub fn build_workspace_binaries(bins: &[(&str, &str)]) -> Result<Vec<PathBuf>> {
    let exe = std::env::current_exe().context("locate the test executable")?;
    // <target>/<profile>/deps/<test-exe>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable is not in <target>/<profile>/deps")?
        .to_path_buf();
    let target_dir = profile_dir.parent().context("no target directory above the profile directory")?;
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace).args(["build", "--quiet"]).env("CARGO_TARGET_DIR", target_dir);
    for (package, _) in bins {
        cmd.args(["-p", package]);
    }
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd.status().with_context(|| format!("run {cargo} build"))?;
    let packages: Vec<&str> = bins.iter().map(|(p, _)| *p).collect();
    if !status.success() {
        bail!("{cargo} build -p {} failed: {status}", packages.join(" -p "));
    }
    let mut paths = Vec::new();
    for (_, bin) in bins {
        let path = profile_dir.join(bin);
        if !path.is_file() {
            bail!("{} was not produced by the build", path.display());
        }
        paths.push(path);
    }
    Ok(paths)
}

/// Opens (to append) the log file a daemon's stdout and stderr go to;
/// returns a handle for each.
pub(crate) fn log_stdio(path: &Path) -> Result<(File, File)> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open daemon log {}", path.display()))?;
    let stdout = log.try_clone().context("clone log handle")?;
    Ok((stdout, log))
}

/// Sends SIGTERM to the daemon `child` (called `name` in errors) and waits
/// up to 30 s for it to exit; past that, kills it and fails with `log()`.
pub(crate) fn sigterm_and_wait(mut child: Child, name: &str, log: impl FnOnce() -> String) -> Result<ExitStatus> {
    let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
    kill(pid, Signal::SIGTERM).with_context(|| format!("SIGTERM {name}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().with_context(|| format!("wait for {name}"))? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{name} did not exit within 30 s of SIGTERM; log:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `strata-snapshotd`, killed on drop.
pub struct Daemon {
    child: Option<Child>,
    root: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    starts: u32,
}

impl Daemon {
    /// Starts the daemon on `root` and `socket` with `extra` arguments (e.g.
    /// `["--driver", "vfs"]`) and waits until its socket answers.
    pub fn start(root: &Path, socket: &Path, extra: &[&str]) -> Result<Daemon> {
        let mut args = vec![
            "--root".to_string(),
            root.display().to_string(),
            "--address".to_string(),
            format!("unix://{}", socket.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = socket.with_extension("log");
        let mut daemon = Daemon { child: None, root: root.to_path_buf(), socket: socket.to_path_buf(), log, args, starts: 0 };
        daemon.spawn()?;
        Ok(daemon)
    }

    fn spawn(&mut self) -> Result<()> {
        let (stdout, stderr) = log_stdio(&self.log)?;
        let child = Command::new(&binaries().snapshotd)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .context("spawn strata-snapshotd")?;
        self.child = Some(child);
        self.starts += 1;
        self.wait_ready()
    }

    /// Waits until the socket accepts connections; fails (with the log) when
    /// the process exits first or 30 s pass.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("poll daemon")? {
                    self.child = None;
                    bail!("strata-snapshotd exited during start-up ({status}); log:\n{}", self.log());
                }
            }
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("strata-snapshotd did not listen on {} within 30 s; log:\n{}", self.socket.display(), self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address to give clients: `unix:///…`.
    pub fn address(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many times the process was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Everything the daemon logged so far, over all its starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|err| format!("(no log at {}: {err})", self.log.display()))
    }

    /// A gRPC client for driver `snapshotter`.
    pub async fn client(&self, snapshotter: &str) -> Result<RemoteSnapshotter> {
        RemoteSnapshotter::connect(&self.address(), snapshotter)
            .await
            .with_context(|| format!("connect to {}", self.address()))
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("SIGKILL strata-snapshotd")?;
            child.wait().context("reap strata-snapshotd")?;
        }
        Ok(())
    }

    /// Sends SIGTERM and waits up to 30 s for the process to exit.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let Some(child) = self.child.take() else { bail!("daemon is not running") };
        sigterm_and_wait(child, "strata-snapshotd", || self.log())
    }

    /// Starts the process again with the same arguments (after a kill).
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn()
    }

    /// Runs `stratactl --address <this daemon> ARGS…` and returns its output.
    pub fn stratactl(&self, args: &[&str]) -> Result<Output> {
        Command::new(&binaries().stratactl)
            .arg("--address")
            .arg(self.address())
            .args(args)
            .env_remove("STRATA_SNAPSHOTD_ADDRESS")
            .output()
            .context("run stratactl")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- strata-snapshotd log ({}) ----\n{}", self.log.display(), self.log());
        }
    }
}
