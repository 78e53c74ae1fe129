//! Processes started in a running container (`docker exec`), and the pty
//! plumbing shared with containers that have a terminal: runc sends the
//! pty master over a unix socket (`--console-socket`).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::logs::StreamKind;
use super::store::Status;
use super::{runtime, spec, store, strings, text, ContainerService, Output};
use crate::error::EngineError;

/// What `POST /containers/{id}/exec` asked for.
#[derive(Debug, Clone, Default)]
pub struct ExecConfig {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub tty: bool,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub user: String,
    pub working_dir: String,
    pub privileged: bool,
    /// `DetachKeys` as given (empty: the default).
    pub detach_keys: String,
}

/// The changing part of an exec.
#[derive(Debug, Clone, Default)]
pub struct ExecState {
    pub running: bool,
    pub started: bool,
    pub exit_code: Option<i64>,
    pub pid: i32,
}

/// One exec instance.
pub struct Exec {
    pub id: String,
    pub container_id: String,
    pub config: ExecConfig,
    state: Mutex<ExecState>,
    console: Mutex<Option<OwnedFd>>,
}

impl Exec {
    pub fn state(&self) -> ExecState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut ExecState)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Resizes the exec's terminal.
    pub fn resize(&self, height: u16, width: u16) -> Result<(), EngineError> {
        let console = self.console.lock().unwrap_or_else(|p| p.into_inner());
        match console.as_ref() {
            Some(fd) => set_winsize(fd, height, width),
            None => Err(EngineError::conflict(format!("exec {} has no terminal", self.id))),
        }
    }
}

/// A started exec: its output (ending with [`Output::End`] once the exit
/// code is recorded) and its stdin when attached.
pub struct ExecRun {
    pub output: mpsc::Receiver<Output>,
    pub stdin: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    pub tty: bool,
    /// Why the process could not be started (also sent on `output`); a
    /// detached start reports it as the request's error, as dockerd does.
    pub failure: Option<String>,
}

impl ContainerService {
    /// `POST /containers/{id}/exec`: returns the exec ID.
    pub fn create_exec(&self, name: &str, body: &Value) -> Result<String, EngineError> {
        let c = self.get(name)?;
        let cmd = strings(body.get("Cmd")).unwrap_or_default();
        if cmd.is_empty() {
            return Err(EngineError::invalid("No exec command specified"));
        }
        match c.status() {
            Status::Running => {}
            Status::Paused => {
                return Err(EngineError::conflict(format!(
                    "container {} is paused, unpause the container before exec",
                    c.id
                )))
            }
            Status::Restarting => {
                return Err(EngineError::conflict(format!(
                    "Container {} is restarting, wait until the container is running",
                    c.id
                )))
            }
            _ => return Err(EngineError::conflict(format!("container {} is not running", c.id))),
        }
        let flag = |k: &str| body.get(k).and_then(Value::as_bool).unwrap_or(false);
        let config = ExecConfig {
            cmd,
            env: strings(body.get("Env")).unwrap_or_default(),
            tty: flag("Tty"),
            attach_stdin: flag("AttachStdin"),
            attach_stdout: flag("AttachStdout"),
            attach_stderr: flag("AttachStderr"),
            user: text(body.get("User")),
            working_dir: text(body.get("WorkingDir")),
            privileged: flag("Privileged"),
            // docker-py spells it `detachKeys` (dockerd's JSON decoding ignores case).
            detach_keys: text(body.get("DetachKeys").or_else(|| body.get("detachKeys"))),
        };
        if !config.working_dir.is_empty() && !config.working_dir.starts_with('/') {
            return Err(EngineError::invalid(format!(
                "the working directory '{}' is invalid, it needs to be an absolute path",
                config.working_dir
            )));
        }
        let id = store::new_id()?;
        let command = config.cmd.join(" ");
        let exec = Arc::new(Exec {
            id: id.clone(),
            container_id: c.id.clone(),
            config,
            state: Mutex::new(ExecState::default()),
            console: Mutex::new(None),
        });
        self.execs_lock().insert(id.clone(), exec);
        self.emit(&c, &format!("exec_create: {command}"), &[("execID", id.clone())]);
        Ok(id)
    }

    /// Finds an exec by ID.
    pub fn get_exec(&self, id: &str) -> Result<Arc<Exec>, EngineError> {
        self.execs_lock()
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::not_found(format!("No such exec instance: {id}")))
    }

    /// `POST /exec/{id}/start`.
    pub async fn start_exec(self: &Arc<Self>, id: &str) -> Result<ExecRun, EngineError> {
        let exec = self.get_exec(id)?;
        let c = self.get(&exec.container_id)?;
        if c.status() != Status::Running {
            return Err(EngineError::conflict(format!("container {} is not running", c.id)));
        }
        {
            let mut st = exec.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.started {
                return Err(EngineError::conflict(format!("Error: Exec command {id} has already run")));
            }
            st.started = true;
            st.running = true;
        }
        let runc = self.runc()?.clone();
        let record = c.record().clone();
        let rootfs = c.dir.rootfs();
        let user_text = if exec.config.user.is_empty() { text(record.config.get("User")) } else { exec.config.user.clone() };
        let user = spec::resolve_user(&rootfs, &user_text, &super::group_add(&record.host_config))?;
        let mut env = strings(record.config.get("Env")).unwrap_or_default();
        env = spec::merge_env(&env, &exec.config.env, &text(record.config.get("Hostname")), exec.config.tty);
        let cwd = if exec.config.working_dir.is_empty() { text(record.config.get("WorkingDir")) } else { exec.config.working_dir.clone() };
        let mut security = spec::Security::from_host_config(&record.host_config)?;
        if exec.config.privileged {
            security.capabilities = spec::grantable_capabilities();
        }
        let input = spec::SpecInput {
            id: c.id.clone(),
            args: exec.config.cmd.clone(),
            env,
            cwd,
            user,
            terminal: exec.config.tty,
            hostname: String::new(),
            host_network: record.network_mode == "host",
            host_uts: false,
            readonly_rootfs: false,
            host_pid: false,
            ipc: spec::IpcMode::Private,
            joins: Vec::new(),
            security,
            etc: None,
            mounts: Vec::new(),
        };
        let process_file = c.dir.dir.join(format!("exec-{id}.json"));
        store::write_json(&process_file, &spec::exec_process(&input))?;

        let (tx, rx) = mpsc::channel::<Output>(256);
        let mut stdin_out: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>> = None;
        let mut readers: Vec<(StreamKind, Box<dyn tokio::io::AsyncRead + Send + Unpin>)> = Vec::new();
        let fail = |exec: &Exec| {
            exec.update(|s| {
                s.running = false;
                s.exit_code = Some(126);
            });
        };
        let pid_file = c.dir.dir.join(format!("exec-{}.pid", &id[..16]));
        let _ = std::fs::remove_file(&pid_file);
        // runc runs detached in both modes: its exit status says whether the
        // process started; the process's status comes from waiting for it.
        let launched: Result<(), String> = if exec.config.tty {
            let receiver = ConsoleReceiver::bind_temp()?;
            let mut cmd = runc.exec_command(&c.id, &process_file, &pid_file, Some(receiver.path()));
            cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
            let out = match cmd.output().await {
                Ok(out) => out,
                Err(e) => {
                    fail(&exec);
                    let _ = std::fs::remove_file(&process_file);
                    return Err(EngineError::internal(format!("run runc exec: {e}")));
                }
            };
            if out.status.success() {
                let master = match receiver.receive().await {
                    Ok(m) => m,
                    Err(e) => {
                        fail(&exec);
                        return Err(e);
                    }
                };
                let (r, w) = split_pty(&master)?;
                *exec.console.lock().unwrap_or_else(|p| p.into_inner()) = Some(master);
                readers.push((StreamKind::Stdout, Box::new(r)));
                if exec.config.attach_stdin {
                    stdin_out = Some(Box::new(w));
                }
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        } else {
            let (out_r, out_w) = runtime::pipe()?;
            let (err_r, err_w) = runtime::pipe()?;
            let stdin = if exec.config.attach_stdin {
                let (in_r, in_w) = runtime::pipe()?;
                let sender = tokio::net::unix::pipe::Sender::from_owned_fd(in_w).map_err(|e| EngineError::io("stdin pipe", e))?;
                stdin_out = Some(Box::new(sender));
                std::process::Stdio::from(in_r)
            } else {
                std::process::Stdio::null()
            };
            let out_reader =
                tokio::net::unix::pipe::Receiver::from_owned_fd(out_r).map_err(|e| EngineError::io("stdout pipe", e))?;
            let mut err_reader =
                tokio::net::unix::pipe::Receiver::from_owned_fd(err_r).map_err(|e| EngineError::io("stderr pipe", e))?;
            let mut cmd = runc.exec_command(&c.id, &process_file, &pid_file, None);
            cmd.stdin(stdin).stdout(std::process::Stdio::from(out_w)).stderr(std::process::Stdio::from(err_w));
            let spawned = cmd.spawn();
            // Our copies of the pipe ends given to runc must close now.
            drop(cmd);
            let status = match spawned {
                Ok(mut child) => child.wait().await,
                Err(e) => Err(e),
            };
            match status {
                Ok(st) if st.success() => {
                    readers.push((StreamKind::Stdout, Box::new(out_reader)));
                    readers.push((StreamKind::Stderr, Box::new(err_reader)));
                    Ok(())
                }
                Ok(_) => {
                    // No process started: what is on stderr is runc's error.
                    stdin_out = None;
                    let mut buf = Vec::new();
                    let _ = tokio::time::timeout(Duration::from_secs(5), err_reader.read_to_end(&mut buf)).await;
                    Err(String::from_utf8_lossy(&buf).into_owned())
                }
                Err(e) => {
                    fail(&exec);
                    let _ = std::fs::remove_file(&process_file);
                    return Err(EngineError::internal(format!("run runc exec: {e}")));
                }
            }
        };
        let _ = std::fs::remove_file(&process_file);
        if let Err(runc_output) = launched {
            // As dockerd: the error goes to the client's output stream and
            // the exec's exit code is 126; exec_start is emitted, exec_die not.
            let message = runtime::exec_failure_message(&runc_output);
            tracing::debug!(exec = %id, %message, "exec failed to start");
            fail(&exec);
            let _ = std::fs::remove_file(&pid_file);
            let command = exec.config.cmd.join(" ");
            self.emit(&c, &format!("exec_start: {command}"), &[("execID", id.to_string())]);
            let _ = tx.send(Output::Data(StreamKind::Stdout, Bytes::from(format!("{message}\r\n")))).await;
            let _ = tx.send(Output::End).await;
            return Ok(ExecRun { output: rx, stdin: None, tty: exec.config.tty, failure: Some(message) });
        }
        let pid = std::fs::read_to_string(&pid_file).ok().and_then(|t| t.trim().parse::<i32>().ok()).unwrap_or(0);
        let _ = std::fs::remove_file(&pid_file);
        exec.update(|s| s.pid = pid);
        let command = exec.config.cmd.join(" ");
        self.emit(&c, &format!("exec_start: {command}"), &[("execID", id.to_string())]);

        let mut copiers = Vec::new();
        for (kind, mut reader) in readers {
            let tx = tx.clone();
            copiers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            // A detached exec has no reader: its output is dropped.
                            let _ = tx.send(Output::Data(kind, Bytes::copy_from_slice(&buf[..n]))).await;
                        }
                    }
                }
            }));
        }
        let service = self.clone();
        let exec2 = exec.clone();
        let container = c.clone();
        tokio::spawn(async move {
            let code = if pid > 0 { super::wait_for_exit(pid).await } else { 255 };
            // With a pty the master read ends with EIO once the process exits.
            for h in copiers {
                let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
            }
            exec2.update(|s| {
                s.running = false;
                s.exit_code = Some(code);
            });
            *exec2.console.lock().unwrap_or_else(|p| p.into_inner()) = None;
            service.emit(&container, "exec_die", &[("execID", exec2.id.clone()), ("exitCode", code.to_string())]);
            let _ = tx.send(Output::End).await;
        });
        Ok(ExecRun { output: rx, stdin: stdin_out, tty: exec.config.tty, failure: None })
    }

    /// `POST /containers/{id}/resize`.
    pub fn resize(&self, name: &str, height: u16, width: u16) -> Result<(), EngineError> {
        let c = self.get(name)?;
        let console = c.console.lock().unwrap_or_else(|p| p.into_inner());
        match console.as_ref() {
            Some(fd) => set_winsize(fd, height, width),
            None => Err(EngineError::conflict(format!("container {} has no running terminal", c.id))),
        }
    }
}

fn set_winsize(fd: &OwnedFd, height: u16, width: u16) -> Result<(), EngineError> {
    let size = rustix::termios::Winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    rustix::termios::tcsetwinsize(fd, size).map_err(|e| EngineError::internal(format!("resize the terminal: {e}")))
}

/// A unix socket on which runc hands over a pty master.
pub struct ConsoleReceiver {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl ConsoleReceiver {
    pub fn bind(path: &Path) -> Result<ConsoleReceiver, EngineError> {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)
            .map_err(|e| EngineError::io(format!("bind console socket {}", path.display()), e))?;
        Ok(ConsoleReceiver { listener, path: path.to_path_buf() })
    }

    /// Binds a fresh socket in the temporary directory (a short path: a
    /// unix socket path is limited to 108 bytes).
    pub fn bind_temp() -> Result<ConsoleReceiver, EngineError> {
        let name = format!("strata-console-{}.sock", &store::new_id()?[..16]);
        Self::bind(&std::env::temp_dir().join(name))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts runc's connection and receives the pty master.
    pub async fn receive(self) -> Result<OwnedFd, EngineError> {
        let accepted = tokio::time::timeout(Duration::from_secs(30), self.listener.accept()).await;
        let (stream, _) = accepted
            .map_err(|_| EngineError::internal("runc did not send the terminal"))?
            .map_err(|e| EngineError::io("accept on the console socket", e))?;
        let stream = stream.into_std().map_err(|e| EngineError::io("console socket", e))?;
        stream.set_nonblocking(false).map_err(|e| EngineError::io("console socket", e))?;
        tokio::task::spawn_blocking(move || receive_fd(&stream))
            .await
            .map_err(|e| EngineError::internal(format!("receiving the terminal failed: {e}")))?
    }
}

impl Drop for ConsoleReceiver {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn receive_fd(stream: &std::os::unix::net::UnixStream) -> Result<OwnedFd, EngineError> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::mem::MaybeUninit;
    let mut buf = [0u8; 4096];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    rustix::net::recvmsg(stream, &mut [std::io::IoSliceMut::new(&mut buf)], &mut ancillary, RecvFlags::CMSG_CLOEXEC)
        .map_err(|e| EngineError::internal(format!("receive the terminal: {e}")))?;
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    Err(EngineError::internal("runc sent no terminal descriptor"))
}

/// Two async handles (read, write) on a pty master.
pub fn split_pty(master: &OwnedFd) -> Result<(tokio::fs::File, tokio::fs::File), EngineError> {
    let r = master.try_clone().map_err(|e| EngineError::io("duplicate the terminal", e))?;
    let w = master.try_clone().map_err(|e| EngineError::io("duplicate the terminal", e))?;
    Ok((tokio::fs::File::from_std(std::fs::File::from(r)), tokio::fs::File::from_std(std::fs::File::from(w))))
}
