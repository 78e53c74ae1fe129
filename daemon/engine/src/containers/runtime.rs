//! runc, driven as a subprocess: `runc --root <state dir> create|start|
//! kill|delete|state|ps|pause|resume|exec`.
//!
//! The container's stdio are pipes (or a pty, see [`ConsoleSocket`]) that
//! `runc create` hands to the container's init, so the engine keeps the
//! other ends after runc has exited. runc's own error messages arrive on
//! the stderr pipe when create fails; [`runc_message`] extracts them.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use crate::error::EngineError;

/// The message shown when runc is missing.
pub const RUNC_MISSING: &str = "runc not found: install it (apt-get install runc)";

/// A runc binary and its state directory.
#[derive(Debug, Clone)]
pub struct Runc {
    pub binary: PathBuf,
    pub root: PathBuf,
}

/// Finds `runc` in `PATH` (and the usual sbin directories).
pub fn find_runc() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin", "/usr/local/bin"].iter().map(PathBuf::from))
        .map(|d| d.join("runc"))
        .find(|p| p.is_file())
}

/// The stdio given to `runc create`.
pub enum CreateIo {
    /// Pipes (or /dev/null) for stdin, stdout and stderr.
    Pipes { stdin: Stdio, stdout: Stdio, stderr: Stdio },
    /// A terminal: runc sends the pty master to this socket.
    Console(PathBuf),
}

/// Picks runc's error text out of its log lines
/// (`time=… level=error msg="…"`), or returns the text as is.
pub fn runc_message(output: &str) -> String {
    let mut messages = Vec::new();
    for line in output.lines() {
        if let Some(start) = line.find("msg=\"") {
            let rest = &line[start + 5..];
            let mut msg = String::new();
            let mut chars = rest.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            msg.push(n);
                        }
                    }
                    '"' => break,
                    c => msg.push(c),
                }
            }
            messages.push(msg);
        } else if !line.trim().is_empty() {
            messages.push(line.trim().to_string());
        }
    }
    messages.join("; ")
}

impl Runc {
    /// A runc keeping its state in `root`; fails when runc is missing.
    pub fn new(root: &Path) -> Result<Self, EngineError> {
        let binary = find_runc().ok_or_else(|| EngineError::internal(RUNC_MISSING))?;
        Ok(Self { binary, root: root.to_path_buf() })
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        cmd.kill_on_drop(false);
        cmd
    }

    /// Runs one runc verb to completion and returns its stdout.
    async fn run(&self, args: &[&str]) -> Result<String, EngineError> {
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| EngineError::internal(format!("run {}: {e}", self.binary.display())))?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stderr);
            let text = if text.trim().is_empty() { String::from_utf8_lossy(&out.stdout) } else { text };
            return Err(EngineError::internal(format!("runc {}: {}", args.first().copied().unwrap_or(""), runc_message(&text))));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `runc create`: sets the container up with its init waiting for
    /// `start`. The error carries runc's message (read from `stderr_text`
    /// when stderr is the container's pipe).
    pub async fn create(&self, id: &str, bundle: &Path, pid_file: &Path, io: CreateIo) -> Result<(), String> {
        let mut cmd = self.command();
        cmd.arg("create").arg("--bundle").arg(bundle).arg("--pid-file").arg(pid_file);
        match io {
            CreateIo::Pipes { stdin, stdout, stderr } => {
                cmd.stdin(stdin).stdout(stdout).stderr(stderr);
            }
            CreateIo::Console(socket) => {
                cmd.arg("--console-socket").arg(socket);
                cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
            }
        }
        cmd.arg(id);
        let child = cmd.spawn().map_err(|e| format!("run {}: {e}", self.binary.display()))?;
        // Our copies of the pipe ends given to runc must close now.
        drop(cmd);
        let out = child.wait_with_output().await.map_err(|e| format!("wait for runc create: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(runc_message(&String::from_utf8_lossy(&out.stderr)))
        }
    }

    pub async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.run(&["start", id]).await.map(drop)
    }

    /// Sends `signal` (a number) to the init, or to every process with `all`.
    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), EngineError> {
        let sig = signal.to_string();
        if all {
            self.run(&["kill", "--all", id, &sig]).await.map(drop)
        } else {
            self.run(&["kill", id, &sig]).await.map(drop)
        }
    }

    /// `runc delete --force`; a container runc does not know is fine.
    pub async fn delete(&self, id: &str) -> Result<(), EngineError> {
        match self.run(&["delete", "--force", id]).await {
            Ok(_) => Ok(()),
            Err(e) if e.message().contains("does not exist") || e.message().contains("not exist") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `runc delete --force` without a runtime (at daemon start-up).
    pub fn delete_blocking(&self, id: &str) -> Result<(), EngineError> {
        let out = std::process::Command::new(&self.binary)
            .arg("--root")
            .arg(&self.root)
            .args(["delete", "--force", id])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| EngineError::internal(format!("run {}: {e}", self.binary.display())))?;
        let text = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || text.contains("not exist") {
            Ok(())
        } else {
            Err(EngineError::internal(format!("runc delete: {}", runc_message(&text))))
        }
    }

    /// `runc state`: the runtime status (`created`, `running`, `paused`,
    /// `stopped`), or `None` when runc does not know the container.
    pub async fn status(&self, id: &str) -> Option<String> {
        let out = self.run(&["state", id]).await.ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v.get("status").and_then(|s| s.as_str()).map(str::to_string)
    }

    /// The host PIDs of the container's processes.
    pub async fn ps(&self, id: &str) -> Result<Vec<i32>, EngineError> {
        let out = self.run(&["ps", "--format", "json", id]).await?;
        let pids: Option<Vec<i32>> = serde_json::from_str(out.trim()).ok();
        pids.ok_or_else(|| EngineError::internal(format!("runc ps: unexpected output {out:?}")))
    }

    /// `runc update --resources -`: applies `resources` (the OCI
    /// `linux.resources` limits as JSON) to the running container's cgroup.
    pub async fn update(&self, id: &str, resources: &[u8]) -> Result<(), EngineError> {
        use tokio::io::AsyncWriteExt;
        let mut child = self
            .command()
            .args(["update", "--resources", "-", id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| EngineError::internal(format!("run {}: {e}", self.binary.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(resources).await.map_err(|e| EngineError::internal(format!("write to runc update: {e}")))?;
        }
        let out = child.wait_with_output().await.map_err(|e| EngineError::internal(format!("wait for runc update: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&out.stderr);
        let text = if text.trim().is_empty() { String::from_utf8_lossy(&out.stdout) } else { text };
        Err(EngineError::internal(runc_message(&text)))
    }

    pub async fn pause(&self, id: &str) -> Result<(), EngineError> {
        self.run(&["pause", id]).await.map(drop)
    }

    pub async fn resume(&self, id: &str) -> Result<(), EngineError> {
        self.run(&["resume", id]).await.map(drop)
    }

    /// A `runc exec --detach --process <file> --pid-file <file> <id>`
    /// command, to be given stdio and spawned. runc exits once the process
    /// runs (status 0; the process is then reparented to the daemon as
    /// subreaper) or failed to start (non-zero, with its error on stderr),
    /// so a failure to start is never mistaken for the process's own exit
    /// status. With a console socket runc sends the pty master there.
    pub fn exec_command(&self, id: &str, process_file: &Path, pid_file: &Path, console: Option<&Path>) -> Command {
        let mut cmd = self.command();
        cmd.arg("exec").arg("--detach").arg("--process").arg(process_file).arg("--pid-file").arg(pid_file);
        if let Some(socket) = console {
            cmd.arg("--console-socket").arg(socket);
        }
        cmd.arg(id);
        cmd
    }
}

/// dockerd's text for an exec whose process could not be started, from
/// runc's error output.
pub fn exec_failure_message(runc_output: &str) -> String {
    let message = runc_message(runc_output);
    let message = message.strip_prefix("runc exec failed: ").unwrap_or(&message);
    let message = if message.starts_with("exec failed: ") { message.to_string() } else { format!("exec failed: {message}") };
    format!("OCI runtime exec failed: {message}: unknown")
}

/// A pipe as (read end, write end), both close-on-exec.
pub fn pipe() -> Result<(OwnedFd, OwnedFd), EngineError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| EngineError::internal(format!("pipe: {e}")))
}

/// Parses a Docker signal (`SIGTERM`, `TERM`, `15`) into its number.
pub fn parse_signal(text: &str) -> Result<i32, EngineError> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(EngineError::invalid(format!("Invalid signal: {text}")));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| EngineError::invalid(format!("Invalid signal: {text}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("hup").unwrap(), 1);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("").is_err());
    }

    #[test]
    fn runc_messages() {
        let line = r#"time="2026-01-01T00:00:00Z" level=error msg="runc create failed: exec: \"nope\": executable file not found in $PATH""#;
        assert_eq!(runc_message(line), r#"runc create failed: exec: "nope": executable file not found in $PATH"#);
        assert_eq!(runc_message("plain\n"), "plain");
        let exec = r#"time="2026-01-01T00:00:00Z" level=error msg="exec failed: unable to start container process: exec: \"nope\": executable file not found in $PATH""#;
        assert_eq!(
            exec_failure_message(exec),
            r#"OCI runtime exec failed: exec failed: unable to start container process: exec: "nope": executable file not found in $PATH: unknown"#
        );
        assert_eq!(exec_failure_message("runc exec failed: boom"), "OCI runtime exec failed: exec failed: boom: unknown");
    }
}
