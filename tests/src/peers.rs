//! Real peers for end-to-end tests: a private containerd 1.6 and the
//! project's `strata-snapshotd`, each on its own temp root and socket.
//!
//! [`Containerd::start`] runs the Debian `containerd` package's daemon with
//! its own root, state, sockets and config under a temp dir: the CRI plugin
//! and the snapshotters this host cannot run are disabled, runc runs tasks on
//! cgroup v1, and each requested proxy snapshotter (`overlay`, `vfs`,
//! `blockcow`, ...) points at one project socket. Dropping it kills the tasks
//! of every namespace, stops the daemon and its shims, unmounts what is left
//! below its dir and removes the per-namespace cgroups it created.
//!
//! [`Snapshotd::start`] runs the built `strata-snapshotd` binary on a temp
//! root and socket and stops it on drop.
//!
//! Missing prerequisites are errors that say what to install; nothing is
//! skipped.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The hint every containerd-related prerequisite failure carries.
pub const INSTALL_CONTAINERD: &str = "install containerd and runc: apt-get install containerd runc";

/// What can go wrong while running a peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// A program the test needs is not installed or not built.
    #[error("{what} not found: {hint}")]
    Missing { what: String, hint: String },
    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}):\nstdout: {stdout}\nstderr: {stderr}")]
    Command { command: String, status: String, stdout: String, stderr: String },
    /// A daemon did not become ready, or exited early.
    #[error("{what} did not become ready: {detail}\n--- log {log_path} ---\n{log}")]
    NotReady { what: String, detail: String, log_path: String, log: String },
}

pub type Result<T> = std::result::Result<T, PeerError>;

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PeerError {
    let context = context.into();
    move |source| PeerError::Io { context, source }
}

/// Finds `program` in `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// Fails unless `containerd`, `ctr` and `runc` are installed.
pub fn require_containerd() -> Result<()> {
    for program in ["containerd", "ctr", "runc"] {
        if which(program).is_none() {
            return Err(PeerError::Missing { what: program.to_string(), hint: INSTALL_CONTAINERD.to_string() });
        }
    }
    Ok(())
}

/// The directory holding the workspace's built binaries: `STRATA_BIN_DIR` if
/// set, else the profile dir of the running test (`target/<profile>/deps/..`).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("STRATA_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(io_err("locate the running test binary"))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The path of a workspace binary (`strata-snapshotd`, `stratactl`, ...),
/// which must have been built.
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(PeerError::Missing {
            what: path.display().to_string(),
            hint: "build the workspace first: cargo build --workspace (scripts/test.sh does)".to_string(),
        })
    }
}

/// Runs a command to completion and returns its stdout, or a
/// [`PeerError::Command`] with both streams when it fails.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(command_error(cmd, &out))
    }
}

/// Runs a command to completion and returns its output, whatever its status.
pub fn run(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null()).output().map_err(io_err(format!("run {}", describe(cmd))))
}

/// A [`PeerError::Command`] for a finished command.
pub fn command_error(cmd: &Command, out: &Output) -> PeerError {
    PeerError::Command {
        command: describe(cmd),
        status: out.status.to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn read_log(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    // the tail is what matters when a daemon fails
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Quotes a string for a TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A daemon process we started, stopped (TERM, then KILL after a grace
/// period) when dropped.
#[derive(Debug)]
struct Daemon {
    child: Child,
    what: String,
    log: PathBuf,
}

impl Daemon {
    fn spawn(what: &str, mut cmd: Command, log: &Path) -> Result<Daemon> {
        let out = File::create(log).map_err(io_err(format!("create {}", log.display())))?;
        let err = out.try_clone().map_err(io_err("dup log file"))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().map_err(io_err(format!("start {what}: {}", describe(&cmd))))?;
        Ok(Daemon { child, what: what.to_string(), log: log.to_path_buf() })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the daemon has exited.
    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.not_ready(format!("exited with {status}"))),
            Err(e) => Err(PeerError::Io { context: format!("wait for {}", self.what), source: e }),
        }
    }

    fn not_ready(&self, detail: String) -> PeerError {
        PeerError::NotReady {
            what: self.what.clone(),
            detail,
            log_path: self.log.display().to_string(),
            log: read_log(&self.log),
        }
    }

    /// Polls `ready` every 50 ms until it is true, the daemon exits, or
    /// `timeout` passes.
    fn wait_ready(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
        let start = Instant::now();
        loop {
            self.check_alive()?;
            if ready() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(self.not_ready(format!("not ready after {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(15));
    }
}

/// Mount points at or below `dir`, deepest first.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Undoes the octal escapes (`\040` for a space, ...) of /proc/self/mountinfo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts everything at or below `dir`, deepest first (lazily when busy).
pub fn unmount_below(dir: &Path) {
    for m in mounts_below(dir) {
        if umount2(&m, MntFlags::empty()).is_err() {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
    }
}

/// Which proxy snapshotters a private containerd declares, and where they dial.
#[derive(Debug, Clone, Default)]
pub struct ProxySnapshotters {
    /// The project's socket (a path, no scheme).
    pub socket: PathBuf,
    /// One `[proxy_plugins.<name>]` entry per name, e.g. `overlay`, `vfs`.
    pub names: Vec<String>,
}

/// A private containerd 1.6 with its own root, state, sockets and config.
#[derive(Debug)]
pub struct Containerd {
    // field order: the daemon is stopped (in `Drop for Containerd`) before the dir goes
    daemon: Option<Daemon>,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts containerd and waits until `ctr version` answers.
    pub fn start(proxies: Option<&ProxySnapshotters>) -> Result<Containerd> {
        require_containerd()?;
        let dir = tempfile::Builder::new()
            .prefix("strata-containerd-")
            .tempdir_in("/tmp")
            .map_err(io_err("create a temp dir for containerd"))?;
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let config = d.join("config.toml");
        std::fs::write(&config, Self::config(d, proxies)).map_err(io_err(format!("write {}", config.display())))?;

        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&config).current_dir(d);
        let mut daemon = Daemon::spawn("containerd", cmd, &d.join("containerd.log"))?;
        let probe_socket = socket.clone();
        daemon.wait_ready(Duration::from_secs(30), || {
            Command::new("ctr")
                .arg("-a")
                .arg(&probe_socket)
                .arg("version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })?;
        Ok(Containerd { daemon: Some(daemon), socket, dir })
    }

    /// The config file's text.
    fn config(d: &Path, proxies: Option<&ProxySnapshotters>) -> String {
        let p = |name: &str| toml_str(&d.join(name).to_string_lossy());
        let mut c = String::new();
        c.push_str("# private containerd for Strata's end-to-end tests\nversion = 2\n");
        c.push_str(&format!("root = {}\nstate = {}\n", p("root"), p("state")));
        // CRI needs networking (CNI) and images from registries; the others need
        // kernel features or tools this project does not test against.
        c.push_str(
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.aufs\", \
             \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \
             \"io.containerd.snapshotter.v1.devmapper\"]\n",
        );
        c.push_str(&format!("\n[grpc]\n  address = {}\n", p("containerd.sock")));
        c.push_str(&format!("\n[ttrpc]\n  address = {}\n", p("containerd.sock.ttrpc")));
        c.push_str(&format!("\n[debug]\n  address = {}\n  level = \"info\"\n", p("debug.sock")));
        c.push_str("\n[metrics]\n  address = \"\"\n");
        c.push_str(&format!("\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}\n", p("opt")));
        // tasks run with runc (io.containerd.runc.v2) on cgroupfs, i.e. cgroup v1
        // here: the defaults, as SystemdCgroup is off unless configured
        if let Some(px) = proxies {
            let addr = toml_str(&px.socket.to_string_lossy());
            for name in &px.names {
                c.push_str(&format!(
                    "\n[proxy_plugins.{}]\n  type = \"snapshot\"\n  address = {addr}\n",
                    toml_str(name)
                ));
            }
        }
        c
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The temp dir holding root, state, config and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Daemon::pid)
    }

    /// The tail of containerd's log, for failure messages.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("containerd.log"))
    }

    /// `ctr -a <socket> -n <namespace>`, ready for more arguments.
    pub fn ctr(&self, namespace: &str) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a").arg(&self.socket).arg("-n").arg(namespace);
        cmd
    }

    /// Runs `ctr -a <socket> -n <namespace> <args>` and returns its stdout.
    pub fn ctr_ok(&self, namespace: &str, args: &[&str]) -> Result<String> {
        run_ok(self.ctr(namespace).args(args))
    }

    fn namespaces(&self) -> Vec<String> {
        let Ok(out) = run(Command::new("ctr").arg("-a").arg(&self.socket).args(["namespaces", "ls", "-q"])) else {
            return Vec::new();
        };
        String::from_utf8_lossy(&out.stdout).lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
    }

    /// Kills and deletes every task and container, in every namespace.
    fn kill_tasks(&self, namespaces: &[String]) {
        for ns in namespaces {
            let list = |what: &str| -> Vec<String> {
                run(self.ctr(ns).args([what, "ls", "-q"]))
                    .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(|l| l.trim().to_string()).collect())
                    .unwrap_or_default()
            };
            for task in list("tasks").into_iter().filter(|t| !t.is_empty()) {
                let _ = run(self.ctr(ns).args(["tasks", "kill", "-s", "SIGKILL", &task]));
                let _ = run(self.ctr(ns).args(["tasks", "rm", "-f", &task]));
            }
            for c in list("containers").into_iter().filter(|c| !c.is_empty()) {
                let _ = run(self.ctr(ns).args(["containers", "rm", &c]));
            }
        }
    }

    /// Shim processes serving this containerd (their command line names our socket).
    fn shim_pids(&self) -> Vec<i32> {
        let sock = self.socket.to_string_lossy().into_owned();
        let mut pids = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else { return pids };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
            let args: Vec<String> =
                cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            let is_shim = args.first().is_some_and(|a| a.contains("containerd-shim"));
            if is_shim && args.iter().any(|a| a == &sock) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let namespaces = self.namespaces();
        self.kill_tasks(&namespaces);
        let shims = self.shim_pids();
        if let Some(mut d) = self.daemon.take() {
            d.stop(Duration::from_secs(15));
        }
        for pid in shims {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        unmount_below(self.dir.path());
        // `ctr run` puts tasks in /<namespace>/<id> of every cgroup v1 hierarchy;
        // runc removes the leaf, the namespace level stays behind when empty
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                for ns in &namespaces {
                    let g = h.path().join(ns);
                    if g.is_dir() {
                        let _ = std::fs::remove_dir(&g);
                    }
                }
            }
        }
    }
}

/// The project's `strata-snapshotd`, on a temp root and socket.
#[derive(Debug)]
pub struct Snapshotd {
    daemon: Option<Daemon>,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Snapshotd {
    /// Starts the built `strata-snapshotd` serving `drivers` (all supported
    /// ones when empty) and waits until its socket accepts connections.
    pub fn start(drivers: &[&str]) -> Result<Snapshotd> {
        Self::start_bin(&workspace_bin("strata-snapshotd")?, drivers, &[])
    }

    /// Like [`Snapshotd::start`], with the daemon binary at `bin` and
    /// `--storage-opt` values such as `blockcow.basesize=256M`.
    pub fn start_bin(bin: &Path, drivers: &[&str], storage_opts: &[&str]) -> Result<Snapshotd> {
        let dir = tempfile::Builder::new()
            .prefix("strata-snapshotd-")
            .tempdir_in("/tmp")
            .map_err(io_err("create a temp dir for strata-snapshotd"))?;
        let socket = dir.path().join("snapshotd.sock");
        let root = dir.path().join("root");
        let mut cmd = Command::new(bin);
        cmd.arg("--root").arg(&root).arg("--address").arg(format!("unix://{}", socket.display()));
        for d in drivers {
            cmd.arg("--driver").arg(d);
        }
        for o in storage_opts {
            cmd.arg("--storage-opt").arg(o);
        }
        let mut daemon = Daemon::spawn("strata-snapshotd", cmd, &dir.path().join("snapshotd.log"))?;
        let probe = socket.clone();
        daemon.wait_ready(Duration::from_secs(30), || std::os::unix::net::UnixStream::connect(&probe).is_ok())?;
        Ok(Snapshotd { daemon: Some(daemon), socket, dir })
    }

    /// The socket path (what containerd's `proxy_plugins` address takes).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `unix://<socket>`, what `stratactl --address` and gRPC clients take.
    pub fn address(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The daemon's state directory.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The tail of the daemon's log, for failure messages.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("snapshotd.log"))
    }

    /// Fails if the daemon has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.daemon.as_mut() {
            Some(d) => d.check_alive(),
            None => Ok(()),
        }
    }
}

impl Drop for Snapshotd {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop(Duration::from_secs(15));
        }
        unmount_below(self.dir.path());
    }
}

/// A fresh ctr namespace name for this test process: `strata-<pid>-<tag>`.
pub fn namespace(tag: &str) -> String {
    format!("strata-{}-{tag}", std::process::id())
}

/// The distinct namespaces seen in containerd-rewritten backend keys
/// (`<namespace>/<seq>/<key>`).
pub fn key_namespaces<'a>(keys: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    keys.into_iter().filter_map(|k| k.split_once('/').map(|(ns, _)| ns.to_string())).collect()
}

/// Splits a backend key `<namespace>/<seq>/<key>` into (namespace, key) as
/// the containerd client sees it.
pub fn split_backend_key(backend: &str) -> Option<(&str, &str)> {
    let (ns, rest) = backend.split_once('/')?;
    let (seq, key) = rest.split_once('/')?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((ns, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_keys_split_into_namespace_and_client_key() {
        assert_eq!(split_backend_key("ns/12/extract-1 sha256:ab"), Some(("ns", "extract-1 sha256:ab")));
        assert_eq!(split_backend_key("ns/7/a/b"), Some(("ns", "a/b")));
        assert_eq!(split_backend_key("plain"), None);
        assert_eq!(split_backend_key("ns/x/key"), None);
        let ns = key_namespaces(["a/1/k", "b/2/k", "a/3/j"]);
        assert_eq!(ns.into_iter().collect::<Vec<_>>(), vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str(r#"/tmp/a"b\c"#), r#""/tmp/a\"b\\c""#);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
    }

    #[test]
    fn config_declares_proxies_and_private_paths() {
        let px = ProxySnapshotters { socket: "/tmp/x/s.sock".into(), names: vec!["overlay".into(), "vfs".into()] };
        let c = Containerd::config(Path::new("/tmp/d"), Some(&px));
        assert!(c.contains("root = \"/tmp/d/root\""));
        assert!(c.contains("[proxy_plugins.\"overlay\"]"));
        assert!(c.contains("[proxy_plugins.\"vfs\"]"));
        assert!(c.contains("address = \"/tmp/x/s.sock\""));
        assert!(c.contains("io.containerd.grpc.v1.cri"));
    }

    /// Starts and stops a real containerd; fails when it is not installed.
    #[test]
    fn private_containerd_starts_and_stops() {
        let c = Containerd::start(None).expect("start containerd");
        let out = c.ctr_ok(&namespace("peers"), &["plugins", "ls"]).expect("ctr plugins ls");
        assert!(out.contains("io.containerd.snapshotter.v1"), "{out}");
        assert!(!out.lines().any(|l| l.contains("cri") && l.contains(" ok")), "CRI must be disabled:\n{out}");
        let pid = c.pid().expect("pid");
        let dir = c.dir().to_path_buf();
        drop(c);
        // stopped and reaped: no process, not even a zombie, is left
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "containerd (pid {pid}) still exists");
        assert!(!dir.exists(), "temp dir removed");
    }
}
