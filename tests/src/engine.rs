//! Running the built `stratad` and the real docker CLI against it.
//!
//! [`stratad_binary`] builds `stratad` once per test process (into the test's
//! own target directory, as [`crate::daemon`] does for the snapshotter), so a
//! stale binary is never tested. [`Stratad`] starts it on a temporary data
//! root and socket, waits until it answers `/_ping`, and on drop stops it
//! (SIGTERM, then SIGKILL) and prints its log when the test is failing.
//! [`Docker`] runs `/usr/local/bin/docker` with a private config directory
//! and no inherited `DOCKER_*` variables.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The docker CLI the tests drive.
pub const DOCKER: &str = "/usr/local/bin/docker";

/// Fails with a clear message when a required program is missing.
pub fn require_program(path: &str, install_hint: &str) {
    let found = if path.contains('/') {
        Path::new(path).is_file()
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(path).is_file()))
            .unwrap_or(false)
    };
    assert!(found, "{path} is required for this test: {install_hint}");
}

/// Fails unless the docker CLI is installed.
pub fn require_docker() {
    require_program(DOCKER, "install the docker CLI 28.x as /usr/local/bin/docker");
}

/// Builds `stratad` once and returns its path.
pub fn stratad_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match build_stratad() {
        Ok(p) => p,
        Err(err) => panic!("building stratad failed: {err:#}"),
    })
}

fn build_stratad() -> Result<PathBuf> {
    let mut built = crate::daemon::build_workspace_binaries(&[("stratad", "stratad")])?;
    built.pop().context("the build returned no binary")
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// How a started daemon is reached to check it is up.
#[derive(Debug, Clone)]
pub enum Probe {
    Unix(PathBuf),
    /// A plain or TLS TCP port: only the TCP connect is checked.
    Tcp(u16),
}

/// A running `stratad`, stopped on drop.
pub struct Stratad {
    child: Option<Child>,
    log: PathBuf,
    args: Vec<String>,
    probe: Probe,
    /// A program that execs stratad (e.g. `systemd-socket-activate -l …`).
    wrapper: Vec<String>,
}

impl Stratad {
    /// Starts `stratad` with exactly `args` and waits until `probe` answers.
    /// Every test passes its own `--config-file`, so a host
    /// `/etc/strata/daemon.json` never leaks in.
    pub fn start(args: &[String], probe: Probe, log: &Path) -> Result<Stratad> {
        Self::start_wrapped(&[], args, probe, log)
    }

    /// Starts `wrapper… <stratad> args…`: the wrapper must exec stratad in
    /// its own process (as `systemd-socket-activate` does), so signals reach it.
    pub fn start_wrapped(wrapper: &[String], args: &[String], probe: Probe, log: &Path) -> Result<Stratad> {
        let mut daemon = Stratad {
            child: None,
            log: log.to_path_buf(),
            args: args.to_vec(),
            probe,
            wrapper: wrapper.to_vec(),
        };
        daemon.spawn()?;
        Ok(daemon)
    }

    /// The usual start: data root `root`, one unix socket `sock`, an empty
    /// config file next to it, plus `extra`.
    pub fn start_simple(root: &Path, sock: &Path, extra: &[&str]) -> Result<Stratad> {
        let config = sock.with_extension("json");
        if !config.exists() {
            std::fs::write(&config, "{}").context("write empty daemon.json")?;
        }
        let mut args = vec![
            "--data-root".to_string(),
            root.display().to_string(),
            "-H".to_string(),
            format!("unix://{}", sock.display()),
            "--config-file".to_string(),
            config.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start(&args, Probe::Unix(sock.to_path_buf()), &sock.with_extension("log"))
    }

    fn spawn(&mut self) -> Result<()> {
        let (stdout, stderr) = crate::daemon::log_stdio(&self.log)?;
        let mut command = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(stratad_binary());
                c
            }
            None => Command::new(stratad_binary()),
        };
        let child = command
            .args(&self.args)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .context("spawn stratad")?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("poll stratad")? {
                    self.child = None;
                    bail!("stratad exited during start-up ({status}); log:\n{}", self.log());
                }
            }
            let up = match &self.probe {
                Probe::Unix(path) => ping_unix(path).is_ok(),
                Probe::Tcp(port) => TcpStream::connect(("127.0.0.1", *port)).is_ok(),
            };
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("stratad did not answer within 60 s; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log at {}: {e})", self.log.display()))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM and wait (up to 30 s) for a clean exit; returns its status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let Some(child) = self.child.take() else { bail!("stratad is not running") };
        crate::daemon::sigterm_and_wait(child, "stratad", || self.log())
    }
}

impl Drop for Stratad {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(raw) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- stratad log ({}) ----\n{}", self.log.display(), self.log());
        }
    }
}

/// Runs stratad to completion (for start-up refusals) and returns its
/// output; kills it if it is still running after 30 s.
pub fn run_to_exit(args: &[String]) -> Result<Output> {
    let mut child = Command::new(stratad_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn stratad")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().context("poll stratad")?.is_some() {
            return child.wait_with_output().context("collect stratad output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().context("collect stratad output")?;
            bail!(
                "stratad kept running although it was expected to refuse to start; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `HEAD /_ping` over a unix socket with a raw HTTP/1.1 request.
pub fn ping_unix(path: &Path) -> Result<()> {
    let (status, _) = http_unix(path, "HEAD", "/_ping", None)?;
    if status != 200 {
        bail!("/_ping answered {status}");
    }
    Ok(())
}

/// A raw HTTP/1.1 request over a unix socket: (status, whole response text).
pub fn http_unix(path: &Path, method: &str, target: &str, body: Option<&[u8]>) -> Result<(u16, String)> {
    let mut stream = UnixStream::connect(path).with_context(|| format!("connect {}", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).context("set timeout")?;
    let body = body.unwrap_or_default();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).context("send request")?;
    stream.write_all(body).context("send body")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).context("read response")?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("malformed response: {text:?}"))?;
    Ok((status, text))
}

/// The docker CLI with a private config dir and a clean environment.
pub struct Docker {
    config_dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    /// Each command is killed after this many seconds (through `timeout`).
    timeout: Option<u64>,
    /// Prefixes failure messages (e.g. the storage driver under test).
    label: String,
}

impl Docker {
    /// A client for `host` (`unix:///…` or `tcp://…`), set through DOCKER_HOST.
    pub fn new(host: &str) -> Docker {
        let config_dir = tempfile::tempdir().expect("create a docker config dir");
        Docker { config_dir, env: vec![("DOCKER_HOST".to_string(), host.to_string())], timeout: None, label: String::new() }
    }

    /// A client with no DOCKER_HOST: pass `-H` yourself.
    pub fn bare() -> Docker {
        let config_dir = tempfile::tempdir().expect("create a docker config dir");
        Docker { config_dir, env: Vec::new(), timeout: None, label: String::new() }
    }

    /// Adds an environment variable for every command.
    pub fn env(mut self, key: &str, value: &str) -> Docker {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Kills each command that runs longer than `seconds`.
    pub fn with_timeout(mut self, seconds: u64) -> Docker {
        self.timeout = Some(seconds);
        self
    }

    /// Names the setup in failure messages (`[label] docker … failed`).
    pub fn labelled(mut self, label: &str) -> Docker {
        self.label = format!("[{label}] ");
        self
    }

    /// The client's private config directory (DOCKER_CONFIG).
    pub fn config_dir(&self) -> &Path {
        self.config_dir.path()
    }

    /// Runs `docker args…` with stdin from /dev/null and returns its output,
    /// whatever the exit status.
    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("run {DOCKER} {args:?}: {e}"))
    }

    /// Runs `docker args…` with `stdin` bytes.
    pub fn output_with_input(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {DOCKER} {args:?}: {e}"));
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin).unwrap_or_else(|e| panic!("write stdin of docker {args:?}: {e}"));
        }
        child.wait_with_output().unwrap_or_else(|e| panic!("wait for docker {args:?}: {e}"))
    }

    /// Runs `docker args…`, fails the test unless it succeeds, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "{}docker {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            self.label,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `docker args…`, fails the test if it succeeds, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            !out.status.success(),
            "{}docker {args:?} unexpectedly succeeded:\nstdout: {}",
            self.label,
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The `docker args…` command, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match self.timeout {
            Some(seconds) => {
                let mut cmd = Command::new("timeout");
                cmd.args(["-s", "KILL", &seconds.to_string(), DOCKER]);
                cmd
            }
            None => Command::new(DOCKER),
        };
        for (key, _) in std::env::vars() {
            if key.starts_with("DOCKER_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("DOCKER_CONFIG", self.config_dir.path());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.args(args);
        cmd
    }
}

/// Test certificates made with the classic openssl recipe: a CA, a server
/// certificate for `IP:127.0.0.1`, and a client certificate with
/// `extendedKeyUsage = clientAuth`. Files use the docker names (`ca.pem`,
/// `cert.pem`, `key.pem` for the client; `server-cert.pem`,
/// `server-key.pem`) so the directory works as `DOCKER_CERT_PATH`.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server-cert.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// Generates a CA and both certificates in `dir`.
    pub fn generate(dir: &Path) -> Result<Certs> {
        require_program("openssl", "apt-get install openssl");
        std::fs::create_dir_all(dir).context("create cert dir")?;
        let run = |args: &[&str]| -> Result<()> {
            let out = Command::new("openssl").current_dir(dir).args(args).output().context("run openssl")?;
            if !out.status.success() {
                bail!("openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        run(&["genrsa", "-out", "ca-key.pem", "2048"])?;
        run(&["req", "-new", "-x509", "-days", "2", "-key", "ca-key.pem", "-sha256", "-subj", "/CN=strata test CA", "-out", "ca.pem"])?;
        run(&["genrsa", "-out", "server-key.pem", "2048"])?;
        run(&["req", "-subj", "/CN=127.0.0.1", "-sha256", "-new", "-key", "server-key.pem", "-out", "server.csr"])?;
        std::fs::write(dir.join("extfile.cnf"), "subjectAltName = DNS:localhost,IP:127.0.0.1\nextendedKeyUsage = serverAuth\n")
            .context("write extfile.cnf")?;
        run(&[
            "x509", "-req", "-days", "2", "-sha256", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
            "-CAcreateserial", "-out", "server-cert.pem", "-extfile", "extfile.cnf",
        ])?;
        run(&["genrsa", "-out", "key.pem", "2048"])?;
        run(&["req", "-subj", "/CN=client", "-new", "-key", "key.pem", "-out", "client.csr"])?;
        std::fs::write(dir.join("extfile-client.cnf"), "extendedKeyUsage = clientAuth\n").context("write extfile-client.cnf")?;
        run(&[
            "x509", "-req", "-days", "2", "-sha256", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
            "-CAcreateserial", "-out", "cert.pem", "-extfile", "extfile-client.cnf",
        ])?;
        Ok(Certs { dir: dir.to_path_buf() })
    }
}

/// Runs curl with `args` and returns its output.
pub fn curl(args: &[&str]) -> Output {
    require_program("curl", "apt-get install curl");
    Command::new("curl").args(args).output().unwrap_or_else(|e| panic!("run curl {args:?}: {e}"))
}

/// Snapshots in a driver's `snapshots/` directory: the numbered ones, and
/// any `new-*` directory with something in it (a half-built snapshot). Empty
/// `new-*` directories are kept ready for creates; `rm-*` ones are removed
/// snapshots being deleted.
pub fn snapshots_in(dir: &Path) -> usize {
    let rd = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    rd.flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.parse::<u64>().is_ok()
                || (name.starts_with("new-") && std::fs::read_dir(e.path()).map(|mut d| d.next().is_some()).unwrap_or(false))
        })
        .count()
}
