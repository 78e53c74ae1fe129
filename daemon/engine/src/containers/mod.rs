//! The container service: create, start, stop, kill, pause, remove,
//! attach, wait, logs, exec, top and the numbers of `docker stats`.
//!
//! # Layout
//! - [`store`]: the persisted record and state of each container.
//! - [`spec`]: the OCI runtime spec written into each bundle.
//! - [`seccomp`]: Docker's default seccomp profile and custom profiles.
//! - [`etc`]: the container's hostname, hosts and resolv.conf files.
//! - [`runtime`]: runc as a subprocess.
//! - [`logs`]: the json-file log and the multiplexed framing.
//! - [`exec`]: processes started in running containers.
//! - [`changes`]: `docker diff`, `export` and the layer of `commit`.
//! - [`stats`]: cgroup and network numbers of `docker stats`.
//! - [`restart`]: restart policies and the delay between restarts.
//! - [`resources`]: memory, CPU and pids limits (create, `docker update`).
//! - [`mounts`]: bind mounts, volumes and tmpfs mounts of a container.
//!
//! A container's root filesystem is the active snapshot named by its ID,
//! prepared on the image's top layer at create and mounted on
//! `bundle/rootfs` only while it runs. runc's `create` hands the container
//! pipes for its stdio; a task per stream copies them into the json-file
//! log and to attached clients. The daemon is a child subreaper, so the
//! container's init is reparented to it when runc exits; a supervisor task
//! waits for that process, records the exit code, and emits `die`. When
//! the restart policy says so, the container is marked restarting and a
//! task starts it again after the policy's delay (same container, same
//! writable layer); a stop, kill or removal meanwhile cancels that start.

pub mod archive;
pub mod changes;
pub mod etc;
pub mod exec;
pub mod logs;
pub mod mounts;
pub mod resources;
pub mod restart;
pub mod runtime;
pub mod seccomp;
pub mod spec;
pub mod stats;
pub mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use strata_snapshotter::{Labels, Snapshotter};
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, watch};

use crate::error::EngineError;
use crate::events::EventBus;
use crate::images::config::now_rfc3339;
use crate::images::reference::Reference;
use crate::images::{ContainerRef, ContainerUsage, ImageService};
use crate::volumes::{VolumeService, VolumeUsers};
use logs::{LogWriter, StreamKind};
use runtime::{CreateIo, Runc};
use store::{ContainerDir, ContainerRecord, ContainerState, Status};

/// Output of a container (or exec) as attached clients see it.
#[derive(Debug, Clone)]
pub enum Output {
    Data(StreamKind, Bytes),
    /// The process exited and its streams are drained.
    End,
}

/// Lifecycle counters that waiters watch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub starts: u64,
    pub exits: u64,
    pub removed: bool,
    pub running: bool,
    pub exit_code: i64,
}

/// One container.
pub struct Container {
    pub id: String,
    dir: ContainerDir,
    record: Mutex<ContainerRecord>,
    state: Mutex<ContainerState>,
    output: broadcast::Sender<Output>,
    progress: watch::Sender<Progress>,
    stdin: tokio::sync::Mutex<Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>>,
    /// The pty master of a container with a terminal (for resize).
    console: Mutex<Option<std::os::fd::OwnedFd>>,
    /// Serialises start, stop, restart and remove.
    op: tokio::sync::Mutex<()>,
    /// Changes whenever a pending restart is scheduled or cancelled, so a
    /// restart task that wakes up late knows it is no longer wanted.
    restart_epoch: AtomicU64,
    /// Wakes a restart task that waits out its delay when it is cancelled.
    restart_wake: tokio::sync::Notify,
    /// The delay before the next restart.
    backoff: Mutex<restart::Backoff>,
}

/// A consistent copy of a container's record and state.
#[derive(Debug, Clone)]
pub struct ContainerView {
    pub record: ContainerRecord,
    pub state: ContainerState,
}

impl Container {
    fn new(root: &Path, record: ContainerRecord, state: ContainerState) -> Arc<Container> {
        let (output, _) = broadcast::channel(1024);
        let progress = Progress {
            running: state.status.is_alive(),
            exit_code: state.exit_code,
            ..Default::default()
        };
        let (progress, _) = watch::channel(progress);
        Arc::new(Container {
            id: record.id.clone(),
            dir: ContainerDir::new(root, &record.id),
            record: Mutex::new(record),
            state: Mutex::new(state),
            output,
            progress,
            stdin: tokio::sync::Mutex::new(None),
            console: Mutex::new(None),
            op: tokio::sync::Mutex::new(()),
            restart_epoch: AtomicU64::new(0),
            restart_wake: tokio::sync::Notify::new(),
            backoff: Mutex::new(restart::Backoff::default()),
        })
    }

    fn record(&self) -> MutexGuard<'_, ContainerRecord> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self) -> MutexGuard<'_, ContainerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn view(&self) -> ContainerView {
        ContainerView { record: self.record().clone(), state: self.state().clone() }
    }

    pub fn name(&self) -> String {
        self.record().name.clone()
    }

    pub fn status(&self) -> Status {
        self.state().status
    }

    pub fn tty(&self) -> bool {
        self.record().config.get("Tty").and_then(Value::as_bool).unwrap_or(false)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.log()
    }

    /// Subscribes to the output of the next run(s).
    pub fn subscribe_output(&self) -> broadcast::Receiver<Output> {
        self.output.subscribe()
    }

    pub fn watch_progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Tells waiters that the process exited with `code`.
    fn announce_exit(&self, code: i64) {
        self.progress.send_modify(|p| {
            p.exits += 1;
            p.running = false;
            p.exit_code = code;
        });
    }

    /// The container's restart policy.
    pub fn restart_policy(&self) -> restart::Policy {
        restart::Policy::of_host_config(&self.record().host_config)
    }

    /// The json-file rotation options of the container.
    fn log_options(&self) -> logs::LogOptions {
        let r = self.record();
        let driver = r.host_config.pointer("/LogConfig/Type").and_then(Value::as_str).unwrap_or("json-file");
        match r.host_config.pointer("/LogConfig/Config").and_then(Value::as_object) {
            Some(config) => logs::check_options(driver, config).unwrap_or_default(),
            None => logs::LogOptions::default(),
        }
    }

    /// Cancels a pending restart: the container is recorded as exited
    /// (its last exit code kept). Returns whether one was pending. The
    /// caller holds the operation lock.
    fn cancel_restart(&self) -> bool {
        if self.status() != Status::Restarting {
            return false;
        }
        self.restart_epoch.fetch_add(1, Ordering::SeqCst);
        let _ = self.update_state(|s| s.status = Status::Exited);
        self.restart_wake.notify_waiters();
        true
    }

    /// `HostConfig.AutoRemove`: the container goes once its process exits.
    fn auto_remove(&self) -> bool {
        self.record().host_config.get("AutoRemove").and_then(Value::as_bool).unwrap_or(false)
    }

    fn save_state(&self) -> Result<(), EngineError> {
        let state = self.state().clone();
        store::write_json(&self.dir.state(), &state)
    }

    fn update_state(&self, f: impl FnOnce(&mut ContainerState)) -> Result<(), EngineError> {
        f(&mut self.state());
        self.save_state()
    }

    /// Writes to the container's stdin; `None` closes it. Before the
    /// container starts (`docker run` attaches first), this waits up to a
    /// minute for the start, so input sent early is not lost.
    pub async fn write_stdin(&self, data: Option<&[u8]>) -> Result<(), EngineError> {
        use tokio::io::AsyncWriteExt;
        let mut progress = self.watch_progress();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            {
                let mut slot = self.stdin.lock().await;
                if let Some(pipe) = slot.as_mut() {
                    return match data {
                        None => {
                            *slot = None;
                            Ok(())
                        }
                        Some(bytes) => {
                            let written = pipe.write_all(bytes).await;
                            let _ = pipe.flush().await;
                            written.map_err(|e| EngineError::io("write to the container's stdin", e))
                        }
                    };
                }
            }
            if self.status().is_alive() {
                // Running without an open stdin: the input has nowhere to go.
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, progress.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Ok(()),
            }
        }
    }
}

/// What `POST /containers/create` asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub name: Option<String>,
    /// The request body: Docker's Config with HostConfig inside.
    pub body: Value,
}

/// What `POST /commit` asks for.
#[derive(Debug, Clone, Default)]
pub struct CommitRequest {
    pub repo: Option<String>,
    pub tag: Option<String>,
    pub comment: String,
    pub author: String,
    /// Dockerfile-style instructions (`CMD ["sh"]`).
    pub changes: Vec<String>,
    /// Pause the container while its changes are read.
    pub pause: bool,
    /// A `Config` object from the request body, overriding the container's.
    pub config: Option<Value>,
}

/// Waiting conditions of `POST /containers/{id}/wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    NotRunning,
    NextExit,
    Removed,
}

impl WaitCondition {
    pub fn parse(text: Option<&str>) -> Result<Self, EngineError> {
        match text.unwrap_or("") {
            "" | "not-running" => Ok(Self::NotRunning),
            "next-exit" => Ok(Self::NextExit),
            "removed" => Ok(Self::Removed),
            other => Err(EngineError::invalid(format!("invalid condition: {other:?}"))),
        }
    }
}

/// The container service of one storage driver.
pub struct ContainerService {
    root: PathBuf,
    driver: String,
    log_driver: String,
    /// The daemon's `--log-opt`s: defaults for containers of `log_driver`.
    log_opts: serde_json::Map<String, Value>,
    snapshotter: Arc<dyn Snapshotter>,
    images: Arc<ImageService>,
    volumes: Arc<VolumeService>,
    events: EventBus,
    runc: Option<Runc>,
    containers: Mutex<BTreeMap<String, Arc<Container>>>,
    execs: Mutex<BTreeMap<String, Arc<exec::Exec>>>,
    /// Names of containers being created (their snapshot is prepared
    /// outside any lock, so creates run in parallel).
    reserved: Mutex<std::collections::BTreeSet<String>>,
    /// Serialises renames.
    create_lock: tokio::sync::Mutex<()>,
    /// Set when the daemon shuts down: exits are then not restarted and
    /// stops do not count as stopped on request.
    shutting_down: AtomicBool,
}

/// The default time `stop` waits before SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: i64 = 10;

fn no_such_container(name: &str) -> EngineError {
    EngineError::not_found(format!("No such container: {name}"))
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    match v {
        Some(Value::Array(items)) => Some(items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect()),
        Some(Value::String(s)) => Some(vec![s.clone()]),
        _ => None,
    }
}

fn text(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).unwrap_or("").to_string()
}

impl ContainerService {
    /// Opens the containers of one driver kept under `driver_dir`. Running
    /// containers of a previous daemon are stopped (`runc delete --force`)
    /// and recorded as exited, with exit code 255 when none was recorded.
    /// Blocking: runs once at start-up.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        driver_dir: &Path,
        driver: &str,
        log_driver: &str,
        log_opts: &BTreeMap<String, String>,
        snapshotter: Arc<dyn Snapshotter>,
        images: Arc<ImageService>,
        volumes: Arc<VolumeService>,
        events: EventBus,
    ) -> Result<Arc<ContainerService>, EngineError> {
        let root = driver_dir.join("containers");
        std::fs::create_dir_all(&root).map_err(|e| EngineError::io(format!("create {}", root.display()), e))?;
        strata_snapshotter::store::spread_subdirectories(&root);
        let runc_root = driver_dir.join("runc");
        let runc = match Runc::new(&runc_root) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("{e}; containers cannot be started");
                None
            }
        };
        // The containers' init processes are reparented to the daemon when
        // runc exits, so their exit status can be collected.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(error = %e, "cannot become a child subreaper; exit codes will be unknown");
        }
        let service = Arc::new(ContainerService {
            root: root.clone(),
            driver: driver.to_string(),
            log_driver: if log_driver.is_empty() { "json-file".to_string() } else { log_driver.to_string() },
            log_opts: log_opts.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect(),
            snapshotter,
            images,
            volumes,
            events,
            runc,
            containers: Mutex::new(BTreeMap::new()),
            execs: Mutex::new(BTreeMap::new()),
            reserved: Mutex::new(std::collections::BTreeSet::new()),
            create_lock: tokio::sync::Mutex::new(()),
            shutting_down: AtomicBool::new(false),
        });
        for (record, mut state) in store::load_all(&root) {
            let dir = ContainerDir::new(&root, &record.id);
            if state.status.is_alive() || state.status == Status::Removing {
                if let Some(runc) = &service.runc {
                    if let Err(e) = runc.delete_blocking(&record.id) {
                        tracing::warn!(id = %record.id, error = %e, "cannot delete a container left by the previous daemon");
                    }
                }
                state.status = Status::Exited;
                state.pid = 0;
                if state.exit_code == 0 {
                    state.exit_code = 255;
                }
                state.finished_at = now_rfc3339();
                if let Err(e) = store::write_json(&dir.state(), &state) {
                    tracing::warn!(id = %record.id, error = %e, "cannot record the container as exited");
                }
            }
            unmount_if_mounted(&dir.rootfs());
            let container = Container::new(&root, record, state);
            service.lock().insert(container.id.clone(), container);
        }
        tracing::info!(containers = service.lock().len(), "container store loaded");
        service.images.set_container_usage(service.clone());
        let users: Arc<dyn VolumeUsers> = service.clone();
        service.volumes.set_users(Arc::downgrade(&users));
        // Restart policies at daemon start: `always`, `unless-stopped` ones
        // not stopped on request, `on-failure` ones that failed.
        let boot: Vec<Arc<Container>> = service
            .all()
            .into_iter()
            .filter(|c| {
                let state = c.state().clone();
                c.restart_policy().restarts_at_boot(state.exit_code, state.stopped_by_user, state.restart_count)
            })
            .collect();
        if !boot.is_empty() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    let svc = service.clone();
                    handle.spawn(async move {
                        for c in boot {
                            let _op = c.op.lock().await;
                            if svc.shutting_down.load(Ordering::SeqCst) {
                                return;
                            }
                            match svc.start_locked(&c, true).await {
                                Ok(()) | Err(EngineError::NotModified(_)) => {}
                                Err(e) => tracing::warn!(id = %c.id, error = %e, "cannot start a container by its restart policy"),
                            }
                        }
                    });
                }
                Err(_) => tracing::warn!("no async runtime: containers with a restart policy are not started"),
            }
        }
        Ok(service)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn runc(&self) -> Result<&Runc, EngineError> {
        self.runc.as_ref().ok_or_else(|| EngineError::internal(runtime::RUNC_MISSING))
    }

    pub fn driver(&self) -> &str {
        &self.driver
    }

    pub fn log_driver(&self) -> &str {
        &self.log_driver
    }

    pub fn snapshotter(&self) -> &Arc<dyn Snapshotter> {
        &self.snapshotter
    }

    pub fn images(&self) -> &Arc<ImageService> {
        &self.images
    }

    pub fn volumes(&self) -> &Arc<VolumeService> {
        &self.volumes
    }

    /// Finds a container by full ID, name (with or without `/`) or an
    /// unambiguous ID prefix.
    pub fn get(&self, name: &str) -> Result<Arc<Container>, EngineError> {
        let map = self.lock();
        if let Some(c) = map.get(name) {
            return Ok(c.clone());
        }
        let plain = name.strip_prefix('/').unwrap_or(name);
        if let Some(c) = map.values().find(|c| c.record().name == plain) {
            return Ok(c.clone());
        }
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            let found: Vec<&Arc<Container>> = map.iter().filter(|(id, _)| id.starts_with(name)).map(|(_, c)| c).collect();
            match found.as_slice() {
                [one] => return Ok((*one).clone()),
                [] => {}
                _ => return Err(EngineError::invalid(format!("multiple IDs found with provided prefix: {name}"))),
            }
        }
        Err(no_such_container(name))
    }

    /// Every container, oldest first.
    pub fn all(&self) -> Vec<Arc<Container>> {
        let mut list: Vec<Arc<Container>> = self.lock().values().cloned().collect();
        list.sort_by(|a, b| a.record().created.cmp(&b.record().created));
        list
    }

    pub(crate) fn emit(&self, c: &Container, action: &str, extra: &[(&str, String)]) {
        let (mut attrs, image, name) = {
            let r = c.record();
            (r.labels.clone(), r.image.clone(), r.name.clone())
        };
        attrs.insert("image".to_string(), image);
        attrs.insert("name".to_string(), name);
        for (k, v) in extra {
            attrs.insert(k.to_string(), v.clone());
        }
        self.events.emit("container", action, &c.id, attrs);
    }

    /// `POST /containers/create`: returns the ID and warnings.
    pub async fn create(&self, request: CreateRequest) -> Result<(String, Vec<String>), EngineError> {
        let body = match &request.body {
            Value::Object(_) => request.body.clone(),
            Value::Null => return Err(EngineError::invalid("config cannot be empty in order to create a container")),
            _ => return Err(EngineError::invalid("the request body must be a JSON object")),
        };
        let image = text(body.get("Image"));
        if image.is_empty() {
            return Err(EngineError::invalid("no image was specified"));
        }
        let host_config = body.get("HostConfig").cloned().unwrap_or_else(|| json!({}));
        if !host_config.is_object() {
            return Err(EngineError::invalid("HostConfig must be a JSON object"));
        }
        let network_mode: String = match host_config.get("NetworkMode").and_then(Value::as_str).unwrap_or("") {
            "" | "default" | "bridge" | "none" => "none".into(),
            "host" => "host".into(),
            other if other.strip_prefix("container:").is_some_and(|t| !t.is_empty()) => other.into(),
            other => {
                return Err(EngineError::invalid(format!(
                    "network mode {other:?} is not supported: use none, host or container:<name|id>"
                )))
            }
        };
        let snapshot_labels = match host_config.get("StorageOpt") {
            None | Some(Value::Null) => Labels::new(),
            Some(Value::Object(opts)) => crate::storage::container_snapshot_labels(&self.driver, opts)?,
            Some(_) => return Err(EngineError::invalid("HostConfig.StorageOpt must be a JSON object")),
        };
        let log_type = host_config.pointer("/LogConfig/Type").and_then(Value::as_str).unwrap_or("").to_string();
        if !matches!(log_type.as_str(), "" | "json-file" | "none") {
            // dockerd's words for a driver it does not know.
            return Err(EngineError::invalid(format!("logger: no log driver named '{log_type}' is registered")));
        }
        let mut log_config = match host_config.pointer("/LogConfig/Config") {
            None | Some(Value::Null) => serde_json::Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(EngineError::invalid("HostConfig.LogConfig.Config must be a JSON object")),
        };
        let effective_log_type = if log_type.is_empty() { self.log_driver.clone() } else { log_type.clone() };
        // As dockerd: a container of the daemon's log driver takes the
        // daemon's options for the keys it does not set itself.
        if effective_log_type == self.log_driver {
            for (k, v) in &self.log_opts {
                log_config.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        logs::check_options(&effective_log_type, &log_config).map_err(EngineError::invalid)?;
        let restart_policy = restart::Policy::parse(host_config.get("RestartPolicy"))?;
        restart::check_auto_remove(restart_policy, host_config.get("AutoRemove").and_then(Value::as_bool).unwrap_or(false))?;
        let limits = resources::Limits::from_json(&host_config)?
            .for_create(resources::cpu_count(), resources::swap_accounting())?;
        // runc is the one runtime; HostConfig.Runtime records it, as dockerd does.
        match host_config.get("Runtime").and_then(Value::as_str) {
            None | Some("") | Some("runc") => {}
            Some(other) => return Err(EngineError::invalid(format!("Unknown runtime specified {other}"))),
        }

        let details = self.images.inspect(&image).map_err(|e| match e {
            EngineError::NotFound(_) => EngineError::not_found(format!("No such image: {}", image_display(&image))),
            other => other,
        })?;
        let image_id = details.summary.id.clone();
        let img_cfg = details.view.config.clone().unwrap_or(Value::Null);
        let chain = crate::images::layer::chain_ids(&details.view.rootfs.diff_ids);
        let parent = chain.last().cloned().unwrap_or_default();

        let req_entry = strings(body.get("Entrypoint")).filter(|v| !v.is_empty());
        let req_cmd = strings(body.get("Cmd")).filter(|v| !v.is_empty());
        let entrypoint = req_entry.clone().or_else(|| strings(img_cfg.get("Entrypoint"))).unwrap_or_default();
        let cmd = match (&req_cmd, &req_entry) {
            (Some(c), _) => c.clone(),
            (None, Some(_)) => Vec::new(),
            (None, None) => strings(img_cfg.get("Cmd")).unwrap_or_default(),
        };
        let mut argv = entrypoint.clone();
        argv.extend(cmd.iter().cloned());
        if argv.is_empty() {
            return Err(EngineError::invalid("No command specified"));
        }
        let tty = body.get("Tty").and_then(Value::as_bool).unwrap_or(false);
        let env = strings(body.get("Env")).unwrap_or_default();
        let image_env = strings(img_cfg.get("Env")).unwrap_or_default();
        let mut labels: BTreeMap<String, String> = img_cfg
            .get("Labels")
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
            .unwrap_or_default();
        if let Some(m) = body.get("Labels").and_then(Value::as_object) {
            for (k, v) in m {
                labels.insert(k.clone(), v.as_str().unwrap_or("").to_string());
            }
        }
        let working_dir = match text(body.get("WorkingDir")) {
            w if w.is_empty() => text(img_cfg.get("WorkingDir")),
            w => w,
        };
        if !working_dir.is_empty() && !working_dir.starts_with('/') {
            return Err(EngineError::invalid(format!("the working directory '{working_dir}' is invalid, it needs to be an absolute path")));
        }
        let user = match text(body.get("User")) {
            u if u.is_empty() => text(img_cfg.get("User")),
            u => u,
        };

        let requested = request.name.as_deref().map(|n| n.strip_prefix('/').unwrap_or(n)).filter(|n| !n.is_empty());
        if let Some(n) = requested {
            if !store::valid_name(n) {
                return Err(EngineError::invalid(format!(
                    "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                )));
            }
        }
        let id = store::new_id()?;
        let name = {
            let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
            let map = self.lock();
            let owner = |n: &str| map.values().find(|c| c.record().name == n).map(|c| c.id.clone());
            let name = match requested {
                Some(n) => {
                    if reserved.contains(n) || owner(n).is_some() {
                        let other = owner(n).unwrap_or_else(|| "(being created)".to_string());
                        return Err(EngineError::conflict(format!(
                            "Conflict. The container name \"/{n}\" is already in use by container \"{other}\". You have to remove (or rename) that container to be able to reuse that name."
                        )));
                    }
                    n.to_string()
                }
                None => store::generate_name(&id, |n| reserved.contains(n) || owner(n).is_some()),
            };
            reserved.insert(name.clone());
            name
        };
        let _reservation = NameReservation { set: &self.reserved, name: name.clone() };
        let host_uts = match host_config.get("UTSMode").and_then(Value::as_str).unwrap_or("") {
            "" => false,
            "host" => true,
            other => return Err(EngineError::invalid(format!("invalid UTS mode: {other}"))),
        };
        if host_uts && !text(body.get("Hostname")).is_empty() {
            return Err(EngineError::invalid("conflicting options: hostname and the UTS mode"));
        }
        let hostname = match text(body.get("Hostname")) {
            // As dockerd: the host's name with the host's network (with the
            // host's UTS namespace only /etc/hostname shows this one).
            h if h.is_empty() && network_mode == "host" => nix::sys::utsname::uname()
                .ok()
                .and_then(|u| u.nodename().to_str().map(str::to_string))
                .unwrap_or_else(|| id[..12].to_string()),
            h if h.is_empty() => id[..12].to_string(),
            h => h,
        };
        spec::Security::from_host_config(&host_config)?;
        spec::namespace_modes(&host_config)?;
        etc::EtcConfig::from_host_config(&hostname, network_mode == "host", &host_config)?;
        let mut mount_points = mounts::parse(&body, &host_config, &img_cfg)?;
        // `--volumes-from`: the other containers' binds and volumes, where
        // this container mounts nothing itself.
        for entry in strings(host_config.get("VolumesFrom")).unwrap_or_default() {
            let (from, mode) = entry.split_once(':').unwrap_or((entry.as_str(), ""));
            let rw = match mode {
                "" => None,
                "rw" => Some(true),
                "ro" => Some(false),
                other => return Err(EngineError::invalid(format!("invalid mode: {other}"))),
            };
            // 400, as dockerd: a 404 would make the CLI pull the image.
            let other = self.get(from).map_err(|e| EngineError::invalid(e.message().to_string()))?;
            let inherited: Vec<mounts::MountPoint> = other.record().mounts.iter().filter(|p| p.typ != "tmpfs").cloned().collect();
            for mut p in inherited {
                if mount_points.iter().any(|m| m.destination == p.destination) {
                    continue;
                }
                if let Some(rw) = rw {
                    p.rw = rw;
                }
                p.create_source = false;
                mount_points.push(p);
            }
        }

        let mut config = body.clone();
        if let Some(obj) = config.as_object_mut() {
            obj.remove("HostConfig");
            obj.remove("NetworkingConfig");
            obj.insert("Hostname".into(), json!(hostname));
            obj.insert("Image".into(), json!(image));
            obj.insert("Cmd".into(), json!(cmd));
            obj.insert("Entrypoint".into(), if entrypoint.is_empty() { Value::Null } else { json!(entrypoint) });
            obj.insert("Env".into(), json!(spec::merge_config_env(&image_env, &env)));
            obj.insert("WorkingDir".into(), json!(working_dir));
            obj.insert("User".into(), json!(user));
            obj.insert("Labels".into(), json!(labels));
            obj.insert("Tty".into(), json!(tty));
            // As dockerd: the image's volumes join the container's.
            let mut volumes = body.get("Volumes").and_then(Value::as_object).cloned().unwrap_or_default();
            if let Some(image_volumes) = img_cfg.get("Volumes").and_then(Value::as_object) {
                for k in image_volumes.keys() {
                    volumes.entry(k.clone()).or_insert_with(|| json!({}));
                }
            }
            obj.insert("Volumes".into(), if volumes.is_empty() { Value::Null } else { Value::Object(volumes) });
            for key in ["AttachStdin", "AttachStdout", "AttachStderr", "OpenStdin", "StdinOnce"] {
                let v = body.get(key).and_then(Value::as_bool).unwrap_or(false);
                obj.insert(key.into(), json!(v));
            }
        }
        let mut host_config = host_config;
        if let Some(obj) = host_config.as_object_mut() {
            obj.insert("NetworkMode".into(), json!(network_mode));
            obj.insert("LogConfig".into(), json!({"Type": effective_log_type, "Config": log_config}));
            obj.insert("Runtime".into(), json!("runc"));
            if !obj.contains_key("RestartPolicy") || obj.get("RestartPolicy") == Some(&Value::Null) {
                obj.insert("RestartPolicy".into(), restart_policy.to_json());
            }
        }
        limits.store(&mut host_config);

        // Volumes: named ones are made on first use, anonymous ones now.
        let mut new_anonymous: Vec<String> = Vec::new();
        let resolved = (|| -> Result<(), EngineError> {
            // (Volumes of --volumes-from are resolved already.)
            for p in mount_points.iter_mut().filter(|p| p.typ == "volume" && p.source.is_empty()) {
                let volume = if p.anonymous {
                    let v = self.volumes.create_anonymous()?;
                    new_anonymous.push(v.record.name.clone());
                    v
                } else {
                    self.volumes.get_or_create(&p.name, std::mem::take(&mut p.volume_labels))?.0
                };
                p.name = volume.record.name.clone();
                p.source = volume.mountpoint.display().to_string();
            }
            Ok(())
        })();
        let drop_anonymous = |names: &[String]| {
            for name in names {
                if let Err(e) = self.volumes.remove(name, true) {
                    tracing::warn!(volume = %name, error = %e, "cannot remove the anonymous volume of a failed create");
                }
            }
        };
        if let Err(e) = resolved {
            drop_anonymous(&new_anonymous);
            return Err(e);
        }
        let dir = ContainerDir::new(&self.root, &id);
        if let Err(e) = std::fs::create_dir_all(dir.rootfs()) {
            drop_anonymous(&new_anonymous);
            return Err(EngineError::io(format!("create {}", dir.rootfs().display()), e));
        }
        if let Err(e) = self.snapshotter.prepare(&id, &parent, snapshot_labels).await {
            let _ = std::fs::remove_dir_all(&dir.dir);
            drop_anonymous(&new_anonymous);
            return Err(e.into());
        }
        let record = ContainerRecord {
            id: id.clone(),
            name,
            created: now_rfc3339(),
            image: image.clone(),
            image_id,
            path: argv[0].clone(),
            args: argv[1..].to_vec(),
            config,
            host_config,
            network_mode: network_mode.to_string(),
            driver: self.driver.clone(),
            snapshot_key: id.clone(),
            parent_chain_id: parent,
            labels,
            mounts: mount_points,
        };
        let state = ContainerState::default();
        // A created container outlives a crash: its files, then its
        // directory's entries, then its directory's own entry are flushed.
        let saved = store::write_json(&dir.config(), &record)
            .and_then(|_| store::write_json(&dir.state(), &state))
            .and_then(|_| store::sync_dir(&dir.dir))
            .and_then(|_| store::sync_dir(&self.root));
        if let Err(e) = saved {
            let _ = self.snapshotter.remove(&id).await;
            let _ = std::fs::remove_dir_all(&dir.dir);
            drop_anonymous(&new_anonymous);
            return Err(e);
        }
        let container = Container::new(&self.root, record, state);
        self.lock().insert(id.clone(), container.clone());
        self.emit(&container, "create", &[]);
        Ok((id, Vec::new()))
    }

    /// The namespaces a container joins at start (`--network`, `--pid`,
    /// `--ipc` `container:<name|id>`): each target must be running; its
    /// init process's namespaces are joined. dockerd's words on refusal.
    fn namespace_joins(&self, own_id: &str, record: &ContainerRecord) -> Result<Vec<(String, i32)>, EngineError> {
        let hc = &record.host_config;
        let modes = [
            ("network", record.network_mode.clone()),
            ("pid", text(hc.get("PidMode"))),
            ("ipc", text(hc.get("IpcMode"))),
        ];
        let mut joins = Vec::new();
        for (kind, mode) in modes {
            let Some(target) = mode.strip_prefix("container:") else { continue };
            let other = self.get(target).map_err(|e| match kind {
                "network" => e,
                _ => EngineError::invalid(e.message().to_string()),
            })?;
            if other.id == own_id {
                return Err(EngineError::invalid(match kind {
                    "network" => "cannot join own network".to_string(),
                    _ => format!("cannot join own {} namespace", kind.to_uppercase()),
                }));
            }
            let (status, pid) = {
                let s = other.state();
                (s.status, s.pid)
            };
            if status == Status::Restarting {
                return Err(EngineError::conflict(format!(
                    "Container {} is restarting, wait until the container is running",
                    other.id
                )));
            }
            if !matches!(status, Status::Running | Status::Paused) || pid <= 0 {
                return Err(EngineError::conflict(match kind {
                    "network" => format!("cannot join network of a non running container: {target}"),
                    _ => format!("container {} is not running", other.id),
                }));
            }
            joins.push((kind.to_string(), pid));
        }
        Ok(joins)
    }

    /// `POST /containers/{id}/start`.
    pub async fn start(self: &Arc<Self>, name: &str) -> Result<(), EngineError> {
        let c = self.get(name)?;
        let _op = c.op.lock().await;
        self.start_locked(&c, true).await
    }

    /// Starts the container. `manual`: on request (start, restart, or the
    /// daemon's own start), which resets the restart count and delay;
    /// otherwise a restart by the policy of a container marked restarting.
    async fn start_locked(self: &Arc<Self>, c: &Arc<Container>, manual: bool) -> Result<(), EngineError> {
        match c.status() {
            Status::Restarting if !manual => {}
            Status::Running | Status::Restarting => {
                return Err(EngineError::NotModified("container is already running".into()))
            }
            Status::Paused => {
                return Err(EngineError::conflict("cannot start a paused container, try unpause instead"))
            }
            Status::Removing | Status::Dead => {
                return Err(EngineError::conflict(format!("container {} is marked for removal and cannot be started", c.id)))
            }
            Status::Created | Status::Exited => {}
        }
        let runc = self.runc()?.clone();
        let record = c.record().clone();
        let joins = match self.namespace_joins(&c.id, &record) {
            Ok(j) => j,
            Err(e) => {
                // Attached clients (docker run) must see the end.
                self.fail_start(c, &runc, &e).await;
                return Err(e);
            }
        };
        let rootfs = c.dir.rootfs();
        let bundle = c.dir.bundle();
        let tty = c.tty();
        let open_stdin = record.config.get("OpenStdin").and_then(Value::as_bool).unwrap_or(false);
        let first_start = c.state().started_at.is_empty();
        let prepared = async {
            let mounts = self.snapshotter.mounts(&record.snapshot_key).await?;
            let rootfs = rootfs.clone();
            let bundle = bundle.clone();
            let record = record.clone();
            let container_dir = c.dir.dir.clone();
            tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
                unmount_if_mounted(&rootfs);
                std::fs::create_dir_all(&rootfs).map_err(|e| EngineError::io(format!("create {}", rootfs.display()), e))?;
                strata_snapshotter::mount::mount_all(&mounts, &rootfs)?;
                let result = (|| {
                    let user = spec::resolve_user(&rootfs, &text(record.config.get("User")), &group_add(&record.host_config))?;
                    let mut input = spec_input(&record, user, tty)?;
                    input.joins = joins;
                    let etc_config = etc::EtcConfig::from_host_config(&input.hostname, input.host_network, &record.host_config)?;
                    input.etc = Some(etc_config.write(&container_dir)?);
                    prepare_mounts(&record.mounts, &rootfs, first_start)?;
                    let mut oci = spec::build(&input);
                    oci.linux.resources.limits = resources::Limits::from_json(&record.host_config)?.to_oci();
                    store::write_json(&bundle.join("config.json"), &oci)
                })();
                if result.is_err() {
                    unmount_if_mounted(&rootfs);
                }
                result
            })
            .await
            .map_err(|e| EngineError::internal(format!("preparing the bundle failed: {e}")))?
        }
        .await;
        if let Err(e) = prepared {
            // An unknown user, a bad mount, ...: attached clients (docker
            // run) must see the end, as for a failed launch.
            self.fail_start(c, &runc, &e).await;
            return Err(e);
        }
        let launched = self.launch(c, &runc, &record, tty, open_stdin).await;
        let (pid, copiers, log) = match launched {
            Ok(parts) => parts,
            Err(e) => {
                self.fail_start(c, &runc, &e).await;
                return Err(e);
            }
        };
        c.update_state(|s| {
            s.status = Status::Running;
            s.pid = pid;
            s.exit_code = 0;
            s.started_at = now_rfc3339();
            s.error.clear();
            s.stopped_by_user = false;
            if manual {
                s.restart_count = 0;
            }
        })?;
        if manual {
            c.backoff.lock().unwrap_or_else(|p| p.into_inner()).reset();
        }
        c.progress.send_modify(|p| {
            p.starts += 1;
            p.running = true;
        });
        self.emit_volume_events(&record, "mount");
        self.emit(c, "start", &[]);
        let service = self.clone();
        let container = c.clone();
        tokio::spawn(async move { service.supervise(container, pid, copiers, log).await });
        Ok(())
    }

    /// Undoes a start that failed after the root was mounted: the runtime's
    /// container, the mount, the stdio; records the error and exit code,
    /// ends attached streams, wakes waiters and honours auto-remove.
    async fn fail_start(self: &Arc<Self>, c: &Arc<Container>, runc: &Runc, err: &EngineError) {
        *c.stdin.lock().await = None;
        *c.console.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let _ = runc.delete(&c.id).await;
        let rootfs = c.dir.rootfs();
        let _ = tokio::task::spawn_blocking(move || unmount_if_mounted(&rootfs)).await;
        let message = err.message().to_string();
        let code = if message.contains("executable file not found") || message.contains("no such file or directory") {
            127
        } else if message.contains("permission denied") || message.contains("is a directory") {
            126
        } else {
            128
        };
        let _ = c.update_state(|s| {
            s.error = message.clone();
            s.exit_code = code;
            s.pid = 0;
        });
        let _ = c.output.send(Output::End);
        c.announce_exit(code);
        let auto_remove = c.auto_remove();
        if auto_remove {
            let service = self.clone();
            let id = c.id.clone();
            // The caller holds the container's operation lock.
            tokio::spawn(async move {
                if let Err(e) = service.remove(&id, true, true).await {
                    tracing::warn!(id, error = %e, "auto-remove after a failed start failed");
                }
            });
        }
    }

    /// Creates and starts the runtime container of a mounted bundle: its
    /// stdio, log and copy tasks. Returns the init's PID.
    #[allow(clippy::type_complexity)]
    async fn launch(
        &self,
        c: &Arc<Container>,
        runc: &Runc,
        record: &ContainerRecord,
        tty: bool,
        open_stdin: bool,
    ) -> Result<(i32, Vec<tokio::task::JoinHandle<()>>, Option<Arc<LogWriter>>), EngineError> {
        let bundle = c.dir.bundle();
        let pid_file = c.dir.pid_file();
        let _ = std::fs::remove_file(&pid_file);
        if runc_has_state(runc, &c.id) {
            let _ = runc.delete(&c.id).await;
        }

        let log = if record.host_config.pointer("/LogConfig/Type").and_then(Value::as_str) == Some("none") {
            None
        } else {
            Some(Arc::new(
                LogWriter::open_with(&c.dir.log(), c.log_options()).map_err(|e| EngineError::io("open the container log", e))?,
            ))
        };
        let mut readers: Vec<(StreamKind, tokio::net::unix::pipe::Receiver)> = Vec::new();
        let mut console: Option<exec::ConsoleReceiver> = None;
        let created = if tty {
            let receiver = exec::ConsoleReceiver::bind_temp()?;
            let path = receiver.path().to_path_buf();
            console = Some(receiver);
            runc.create(&c.id, &bundle, &pid_file, CreateIo::Console(path)).await
        } else {
            let (out_r, out_w) = runtime::pipe()?;
            let (err_r, err_w) = runtime::pipe()?;
            let stdin = if open_stdin {
                let (in_r, in_w) = runtime::pipe()?;
                let sender = tokio::net::unix::pipe::Sender::from_owned_fd(in_w)
                    .map_err(|e| EngineError::io("stdin pipe", e))?;
                *c.stdin.lock().await = Some(Box::new(sender));
                std::process::Stdio::from(in_r)
            } else {
                std::process::Stdio::null()
            };
            readers.push((
                StreamKind::Stdout,
                tokio::net::unix::pipe::Receiver::from_owned_fd(out_r).map_err(|e| EngineError::io("stdout pipe", e))?,
            ));
            let err_reader =
                tokio::net::unix::pipe::Receiver::from_owned_fd(err_r).map_err(|e| EngineError::io("stderr pipe", e))?;
            let io = CreateIo::Pipes { stdin, stdout: out_w.into(), stderr: err_w.into() };
            match runc.create(&c.id, &bundle, &pid_file, io).await {
                Ok(()) => {
                    readers.push((StreamKind::Stderr, err_reader));
                    Ok(())
                }
                Err(_) => {
                    // runc wrote its error on the container's stderr.
                    let mut reader = err_reader;
                    let mut buf = Vec::new();
                    let _ = tokio::time::timeout(Duration::from_secs(2), reader.read_to_end(&mut buf)).await;
                    Err(runtime::runc_message(&String::from_utf8_lossy(&buf)))
                }
            }
        };
        if let Err(message) = created {
            return Err(start_error(format!("failed to create shim task: OCI runtime create failed: {message}: unknown")));
        }
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .unwrap_or(0);

        let mut copiers = Vec::new();
        if let Some(receiver) = console {
            let master = receiver.receive().await?;
            let (read_half, write_half) = exec::split_pty(&master)?;
            *c.stdin.lock().await = Some(Box::new(write_half));
            *c.console.lock().unwrap_or_else(|p| p.into_inner()) = Some(master);
            copiers.push(spawn_copier(read_half, StreamKind::Stdout, log.clone(), c.output.clone()));
        }
        for (kind, reader) in readers {
            copiers.push(spawn_copier(reader, kind, log.clone(), c.output.clone()));
        }
        if let Err(e) = runc.start(&c.id).await {
            let _ = runc.delete(&c.id).await;
            for h in copiers {
                let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
            }
            return Err(start_error(e.message().to_string()));
        }
        Ok((pid, copiers, log))
    }

    /// Waits for the init to exit, drains its output, records the exit
    /// and tears the run down.
    async fn supervise(
        self: Arc<Self>,
        c: Arc<Container>,
        pid: i32,
        copiers: Vec<tokio::task::JoinHandle<()>>,
        log: Option<Arc<LogWriter>>,
    ) {
        let started = std::time::Instant::now();
        let code = wait_for_exit(pid).await;
        for h in copiers {
            let _ = h.await;
        }
        if let Some(log) = &log {
            log.flush(StreamKind::Stdout);
            log.flush(StreamKind::Stderr);
        }
        let _ = c.output.send(Output::End);
        *c.stdin.lock().await = None;
        *c.console.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Ok(runc) = self.runc() {
            if let Err(e) = runc.delete(&c.id).await {
                tracing::warn!(id = %c.id, error = %e, "runc delete after exit failed");
            }
        }
        let rootfs = c.dir.rootfs();
        let _ = tokio::task::spawn_blocking(move || unmount_if_mounted(&rootfs)).await;
        let record = c.record().clone();
        self.emit_volume_events(&record, "unmount");
        let ran = started.elapsed();
        let policy = c.restart_policy();
        let mut restart_epoch = None;
        if let Err(e) = c.update_state(|s| {
            let manual = s.stopped_by_user || self.shutting_down.load(Ordering::SeqCst);
            let restart = policy.restarts_after_exit(code, manual, s.restart_count) && s.status != Status::Removing;
            s.status = if restart { Status::Restarting } else { Status::Exited };
            s.pid = 0;
            s.exit_code = code;
            s.finished_at = now_rfc3339();
            if restart {
                s.restart_count += 1;
                restart_epoch = Some(c.restart_epoch.fetch_add(1, Ordering::SeqCst) + 1);
            }
        }) {
            tracing::warn!(id = %c.id, error = %e, "cannot record the container's exit");
        }
        self.emit(&c, "die", &[("exitCode", code.to_string()), ("execDuration", ran.as_secs().to_string())]);
        c.announce_exit(code);
        if let Some(epoch) = restart_epoch {
            let delay = c.backoff.lock().unwrap_or_else(|p| p.into_inner()).next(ran);
            self.restart_later(c, epoch, delay);
            return;
        }
        let auto_remove = c.auto_remove();
        if auto_remove {
            if let Err(e) = self.remove(&c.id, true, true).await {
                if !matches!(e, EngineError::NotFound(_)) {
                    tracing::warn!(id = %c.id, error = %e, "auto-remove failed");
                }
            }
        }
    }

    /// Starts a container marked restarting after `delay`, unless the
    /// restart was cancelled meanwhile (its epoch moved on).
    fn restart_later(self: &Arc<Self>, c: Arc<Container>, epoch: u64, delay: Duration) {
        let service = self.clone();
        tokio::spawn(async move {
            let woken = c.restart_wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if c.restart_epoch.load(Ordering::SeqCst) == epoch {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = woken => {}
                }
            }
            let _op = c.op.lock().await;
            if c.restart_epoch.load(Ordering::SeqCst) != epoch || c.status() != Status::Restarting {
                return;
            }
            if service.shutting_down.load(Ordering::SeqCst) {
                let _ = c.update_state(|s| s.status = Status::Exited);
                return;
            }
            if let Err(e) = service.start_locked(&c, false).await {
                tracing::warn!(id = %c.id, error = %e, "restart by the restart policy failed");
                let message = e.message().to_string();
                let _ = c.update_state(|s| {
                    s.status = Status::Exited;
                    if s.error.is_empty() {
                        s.error = message;
                    }
                });
                // Wake waiters that watch for the end of the restarting state.
                c.progress.send_modify(|_| {});
            }
        });
    }

    /// Sends `signal` and emits `kill`.
    async fn signal(&self, c: &Container, signal: i32) -> Result<(), EngineError> {
        self.runc()?.kill(&c.id, signal, false).await?;
        self.emit(c, "kill", &[("signal", signal.to_string())]);
        Ok(())
    }

    /// `POST /containers/{id}/kill`.
    pub async fn kill(&self, name: &str, signal: Option<&str>) -> Result<(), EngineError> {
        let c = self.get(name)?;
        let sig = runtime::parse_signal(signal.filter(|s| !s.is_empty()).unwrap_or("SIGKILL"))?;
        if !c.status().is_alive() {
            return Err(EngineError::conflict(format!("cannot kill container: {name}: container {} is not running", c.id)));
        }
        // As dockerd: a container killed on request is not restarted by
        // its policy, and one waiting to restart just stays stopped.
        c.update_state(|s| s.stopped_by_user = true)?;
        if c.status() == Status::Restarting {
            let _op = c.op.lock().await;
            if c.cancel_restart() || !c.status().is_alive() {
                return Ok(());
            }
        }
        let mut progress = c.watch_progress();
        let exits = progress.borrow().exits;
        if let Err(e) = self.signal(&c, sig).await {
            if exited_under_signal(&e) {
                return Err(EngineError::conflict(format!("cannot kill container: {name}: container {} is not running", c.id)));
            }
            return Err(e);
        }
        if sig == 9 {
            // As dockerd: SIGKILL returns once the container is gone.
            if c.status() == Status::Paused {
                let _ = self.runc()?.resume(&c.id).await;
            }
            wait_exits(&mut progress, exits, Some(Duration::from_secs(10))).await;
        }
        Ok(())
    }

    /// `POST /containers/{id}/stop`.
    pub async fn stop(&self, name: &str, timeout: Option<i64>, signal: Option<&str>) -> Result<(), EngineError> {
        let c = self.get(name)?;
        let _op = c.op.lock().await;
        self.stop_locked(&c, timeout, signal, true).await?;
        self.emit(&c, "stop", &[]);
        Ok(())
    }

    /// Stops the process; `manual`: on request (so the restart policy does
    /// not start it again), not by the daemon's shutdown.
    async fn stop_locked(&self, c: &Container, timeout: Option<i64>, signal: Option<&str>, manual: bool) -> Result<(), EngineError> {
        if !c.status().is_alive() {
            return Err(EngineError::NotModified("container is already stopped".into()));
        }
        if manual {
            c.update_state(|s| s.stopped_by_user = true)?;
        }
        if c.cancel_restart() {
            return Ok(());
        }
        let configured = c.record().config.get("StopSignal").and_then(Value::as_str).map(str::to_string);
        let sig = runtime::parse_signal(signal.filter(|s| !s.is_empty()).or(configured.as_deref()).unwrap_or("SIGTERM"))?;
        let timeout = timeout
            .or_else(|| c.record().config.get("StopTimeout").and_then(Value::as_i64))
            .unwrap_or(DEFAULT_STOP_TIMEOUT);
        let mut progress = c.watch_progress();
        let exits = progress.borrow().exits;
        if c.status() == Status::Paused {
            // A frozen process cannot act on the signal: thaw it after sending.
            self.signal(c, sig).await?;
            let _ = self.runc()?.resume(&c.id).await;
        } else if let Err(e) = self.signal(c, sig).await {
            tracing::debug!(id = %c.id, error = %e, "stop signal failed");
        }
        let exited = wait_exits(&mut progress, exits, (timeout >= 0).then(|| Duration::from_secs(timeout as u64))).await;
        if !exited {
            self.signal(c, 9).await?;
            if !wait_exits(&mut progress, exits, Some(Duration::from_secs(30))).await {
                return Err(EngineError::internal(format!("container {} did not exit after SIGKILL", c.id)));
            }
        }
        Ok(())
    }

    /// `POST /containers/{id}/restart`.
    pub async fn restart(self: &Arc<Self>, name: &str, timeout: Option<i64>, signal: Option<&str>) -> Result<(), EngineError> {
        let c = self.get(name)?;
        let _op = c.op.lock().await;
        match self.stop_locked(&c, timeout, signal, true).await {
            Ok(()) => self.emit(&c, "stop", &[]),
            Err(EngineError::NotModified(_)) => {}
            Err(e) => return Err(e),
        }
        self.start_locked(&c, true).await?;
        self.emit(&c, "restart", &[]);
        Ok(())
    }

    /// `POST /containers/{id}/pause` and `unpause`.
    pub async fn set_paused(&self, name: &str, pause: bool) -> Result<(), EngineError> {
        let c = self.get(name)?;
        let _op = c.op.lock().await;
        match (c.status(), pause) {
            (Status::Running, true) => {
                self.runc()?.pause(&c.id).await?;
                c.update_state(|s| s.status = Status::Paused)?;
                self.emit(&c, "pause", &[]);
            }
            (Status::Paused, false) => {
                self.runc()?.resume(&c.id).await?;
                c.update_state(|s| s.status = Status::Running)?;
                self.emit(&c, "unpause", &[]);
            }
            (Status::Paused, true) => return Err(EngineError::conflict(format!("container {} is already paused", c.id))),
            (Status::Running, false) => return Err(EngineError::conflict(format!("container {} is not paused", c.id))),
            (Status::Restarting, _) => {
                return Err(EngineError::conflict(format!(
                    "Container {} is restarting, wait until the container is running",
                    c.id
                )))
            }
            _ => return Err(EngineError::conflict(format!("container {} is not running", c.id))),
        }
        Ok(())
    }

    /// `DELETE /containers/{id}`; `volumes` (`-v`, and auto-remove) also
    /// removes the container's anonymous volumes no other container uses.
    pub async fn remove(&self, name: &str, force: bool, volumes: bool) -> Result<(), EngineError> {
        let c = self.get(name)?;
        let _op = c.op.lock().await;
        if !self.lock().contains_key(&c.id) {
            return Err(no_such_container(name));
        }
        if c.status() == Status::Restarting {
            if !force {
                return Err(EngineError::conflict(format!(
                    "You cannot remove a restarting container {}. Stop the container before attempting removal or force remove",
                    c.id
                )));
            }
            c.update_state(|s| s.stopped_by_user = true)?;
            c.cancel_restart();
        }
        if c.status().is_alive() {
            if !force {
                let verb = if c.status() == Status::Paused { "paused" } else { "running" };
                return Err(EngineError::conflict(format!(
                    "cannot remove container \"{name}\": container is {verb}: stop the container before removing or force remove"
                )));
            }
            let mut progress = c.watch_progress();
            let exits = progress.borrow().exits;
            c.update_state(|s| s.stopped_by_user = true)?;
            if let Err(e) = self.signal(&c, 9).await {
                // Already exiting: the supervisor records the exit, waited for below.
                if !exited_under_signal(&e) {
                    return Err(e);
                }
            }
            if c.status() == Status::Paused {
                let _ = self.runc()?.resume(&c.id).await;
            }
            if !wait_exits(&mut progress, exits, Some(Duration::from_secs(30))).await {
                return Err(EngineError::internal(format!("container {} did not exit after SIGKILL", c.id)));
            }
        }
        c.update_state(|s| s.status = Status::Removing)?;
        if let Ok(runc) = self.runc() {
            if runc_has_state(runc, &c.id) {
                runc.delete(&c.id).await?;
            }
        }
        let rootfs = c.dir.rootfs();
        let _ = tokio::task::spawn_blocking(move || unmount_if_mounted(&rootfs)).await;
        let key = c.record().snapshot_key.clone();
        match self.snapshotter.remove(&key).await {
            Ok(()) => {}
            Err(e) if e.kind() == strata_snapshotter::ErrorKind::NotFound => {}
            Err(e) => {
                let _ = c.update_state(|s| s.status = Status::Dead);
                return Err(e.into());
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&c.dir.dir) {
            tracing::warn!(id = %c.id, error = %e, "cannot remove the container directory");
        }
        self.lock().remove(&c.id);
        self.execs_lock().retain(|_, e| e.container_id != c.id);
        self.emit(&c, "destroy", &[]);
        if volumes {
            let anonymous: Vec<String> =
                c.record().mounts.iter().filter(|p| p.typ == "volume" && p.anonymous).map(|p| p.name.clone()).collect();
            for name in anonymous {
                match self.volumes.remove(&name, true) {
                    Ok(()) | Err(EngineError::Conflict(_)) => {}
                    Err(e) => tracing::warn!(id = %c.id, volume = %name, error = %e, "cannot remove an anonymous volume"),
                }
            }
        }
        c.progress.send_modify(|p| p.removed = true);
        // The container may have been the last user of layers whose image
        // was deleted meanwhile.
        if let Err(e) = self.images.remove_unused_layers().await {
            tracing::warn!(error = %e, "cannot remove unused layers after a container removal");
        }
        Ok(())
    }

    /// `POST /commit`: the container's changes become a new layer on top of
    /// its image; returns the new image ID.
    pub async fn commit(&self, name: &str, request: CommitRequest) -> Result<String, EngineError> {
        let c = self.get(name)?;
        let record = c.record().clone();
        let mut config = match &record.config {
            Value::Object(m) => m.clone(),
            _ => serde_json::Map::new(),
        };
        if let Some(Value::Object(overrides)) = &request.config {
            for (k, v) in overrides {
                config.insert(k.clone(), v.clone());
            }
        }
        crate::images::config::apply_changes(&mut config, &request.changes).map_err(EngineError::invalid)?;
        let tmp = self.root.join(".tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| EngineError::io(format!("create {}", tmp.display()), e))?;
        let layer_path = tmp.join(format!("commit-{}.tar", &store::new_id()?[..16]));
        let file = std::fs::File::create(&layer_path).map_err(|e| EngineError::io(format!("create {}", layer_path.display()), e))?;
        let paused = request.pause && c.status() == Status::Running && self.runc()?.pause(&c.id).await.is_ok();
        let written = self.write_layer(name, std::io::BufWriter::new(file)).await;
        if paused {
            if let Err(e) = self.runc()?.resume(&c.id).await {
                tracing::warn!(id = %c.id, error = %e, "cannot resume the container after commit");
            }
        }
        let result = async {
            let mut out = written?;
            std::io::Write::flush(&mut out).map_err(|e| EngineError::io("write the layer", e))?;
            drop(out);
            let mut created_by = vec![record.path.clone()];
            created_by.extend(record.args.iter().cloned());
            let opts = crate::images::CommitOptions {
                parent: Some(record.image_id.clone()),
                repo: request.repo.clone().filter(|r| !r.is_empty()),
                tag: request.tag.clone().filter(|t| !t.is_empty()),
                config,
                comment: request.comment.clone(),
                author: request.author.clone(),
                created_by: created_by.join(" "),
                container: record.id.clone(),
                container_config: Some(record.config.clone()),
            };
            self.images.commit(&layer_path, opts).await
        }
        .await;
        let _ = std::fs::remove_file(&layer_path);
        let id = result?;
        let image_ref = match (request.repo.as_deref().filter(|r| !r.is_empty()), request.tag.as_deref().filter(|t| !t.is_empty())) {
            (Some(r), Some(t)) => format!("{r}:{t}"),
            (Some(r), None) => format!("{r}:latest"),
            _ => String::new(),
        };
        self.emit(&c, "commit", &[("comment", request.comment.clone()), ("imageID", id.clone()), ("imageRef", image_ref)]);
        Ok(id)
    }

    /// `POST /containers/{id}/update` (`docker update`): the resource
    /// limits and restart policy set in `body` replace the container's. A
    /// running container gets the new limits at once (`runc update`); a
    /// stopped one at its next start. Nothing changes when a value is
    /// refused or the runtime cannot apply it. Returns the warnings.
    pub async fn update(&self, name: &str, body: &Value) -> Result<Vec<String>, EngineError> {
        let c = self.get(name)?;
        if !body.is_object() {
            return Err(EngineError::invalid("the request body must be a JSON object"));
        }
        let cpus = resources::cpu_count();
        let wanted = resources::Limits::from_json(body)?;
        wanted.check(cpus)?;
        let policy = match body.get("RestartPolicy") {
            Some(v @ Value::Object(m)) if m.get("Name").and_then(Value::as_str).is_some_and(|n| !n.is_empty()) => {
                Some(restart::Policy::parse(Some(v))?)
            }
            _ => None,
        };
        let _op = c.op.lock().await;
        let cannot = |e: EngineError| match e {
            EngineError::Conflict(m) => EngineError::conflict(format!("Cannot update container {}: {m}", c.id)),
            EngineError::InvalidArgument(m) => EngineError::invalid(format!("Cannot update container {}: {m}", c.id)),
            EngineError::Internal(m) => EngineError::internal(format!("Cannot update container {}: {m}", c.id)),
            other => other,
        };
        let mut host_config = c.record().host_config.clone();
        let current = resources::Limits::from_json(&host_config)?;
        let limits = current.updated(&wanted, cpus).map_err(cannot)?;
        if let Some(policy) = policy {
            if c.auto_remove() && !policy.is_none() {
                return Err(cannot(EngineError::conflict(
                    "Restart policy cannot be updated because AutoRemove is enabled for the container",
                )));
            }
            if let Some(obj) = host_config.as_object_mut() {
                obj.insert("RestartPolicy".into(), policy.to_json());
            }
        }
        if limits != current {
            limits.store(&mut host_config);
            if matches!(c.status(), Status::Running | Status::Paused) {
                let oci = serde_json::to_vec(&limits.to_oci()).map_err(|e| EngineError::internal(format!("encode the limits: {e}")))?;
                self.runc()?.update(&c.id, &oci).await.map_err(cannot)?;
            }
        }
        let record = {
            let mut r = c.record();
            let old = std::mem::replace(&mut r.host_config, host_config);
            (r.clone(), old)
        };
        if let Err(e) = store::write_json(&c.dir.config(), &record.0) {
            c.record().host_config = record.1;
            return Err(e);
        }
        self.emit(&c, "update", &[]);
        Ok(Vec::new())
    }

    /// `POST /containers/{id}/rename`.
    pub async fn rename(&self, name: &str, new_name: &str) -> Result<(), EngineError> {
        let new_name = new_name.strip_prefix('/').unwrap_or(new_name);
        if new_name.is_empty() {
            return Err(EngineError::invalid("Neither old nor new names may be empty"));
        }
        if !store::valid_name(new_name) {
            return Err(EngineError::invalid(format!(
                "Invalid container name ({new_name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        let _guard = self.create_lock.lock().await;
        let c = self.get(name)?;
        let old = c.name();
        if old == new_name {
            return Err(EngineError::conflict("Renaming a container with the same name as its current name"));
        }
        if self.reserved.lock().unwrap_or_else(|p| p.into_inner()).contains(new_name) {
            return Err(EngineError::conflict(format!("Conflict. The container name \"/{new_name}\" is already in use")));
        }
        if let Some(other) = self.lock().values().find(|o| o.record().name == new_name) {
            return Err(EngineError::conflict(format!(
                "Conflict. The container name \"/{new_name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                other.id
            )));
        }
        let record = {
            let mut r = c.record();
            r.name = new_name.to_string();
            r.clone()
        };
        if let Err(e) = store::write_json(&c.dir.config(), &record) {
            c.record().name = old;
            return Err(e);
        }
        self.emit(&c, "rename", &[("oldName", format!("/{old}"))]);
        Ok(())
    }

    /// `POST /containers/{id}/wait`: the receiver is taken now (so no exit
    /// is missed), the returned future resolves with the exit code.
    pub fn wait(
        &self,
        name: &str,
        condition: WaitCondition,
    ) -> Result<impl std::future::Future<Output = i64> + Send + 'static, EngineError> {
        let c = self.get(name)?;
        let mut progress = c.watch_progress();
        let at = *progress.borrow();
        Ok(async move {
            loop {
                let now = *progress.borrow_and_update();
                let done = match condition {
                    WaitCondition::NotRunning => !now.running,
                    WaitCondition::NextExit => now.exits > at.exits || now.removed,
                    WaitCondition::Removed => now.removed,
                };
                if done {
                    return now.exit_code;
                }
                if progress.changed().await.is_err() {
                    return progress.borrow().exit_code;
                }
            }
        })
    }

    /// `GET /containers/{id}/top`: titles and rows of `ps` for the
    /// container's processes.
    pub async fn top(&self, name: &str, ps_args: &str) -> Result<(Vec<String>, Vec<Vec<String>>), EngineError> {
        let c = self.get(name)?;
        if !c.status().is_alive() {
            return Err(EngineError::conflict(format!("container {} is not running", c.id)));
        }
        let pids = self.runc()?.ps(&c.id).await?;
        let args: Vec<&str> = if ps_args.trim().is_empty() { vec!["-ef"] } else { ps_args.split_whitespace().collect() };
        let out = tokio::process::Command::new("ps")
            .args(&args)
            .output()
            .await
            .map_err(|e| EngineError::internal(format!("run ps: {e}")))?;
        if !out.status.success() {
            return Err(EngineError::internal(format!(
                "ps: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let result = parse_ps(&text, &pids)?;
        self.emit(&c, "top", &[]);
        Ok(result)
    }

    /// Stops every running container (as `docker stop` with each one's
    /// timeout, at most ten seconds) when the daemon shuts down, so no
    /// container outlives it with its root still mounted.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        // Pending restarts are dropped; the policy applies again at the
        // next daemon start.
        for c in self.all() {
            if c.status() == Status::Restarting {
                let _op = c.op.lock().await;
                c.cancel_restart();
            }
        }
        let running: Vec<String> = self.all().iter().filter(|c| c.status().is_alive()).map(|c| c.id.clone()).collect();
        if running.is_empty() {
            return;
        }
        tracing::info!(containers = running.len(), "stopping running containers");
        let stops = running.iter().map(|id| async move {
            let c = self.get(id)?;
            let _op = c.op.lock().await;
            let timeout = c
                .record()
                .config
                .get("StopTimeout")
                .and_then(Value::as_i64)
                .unwrap_or(DEFAULT_STOP_TIMEOUT)
                .clamp(0, DEFAULT_STOP_TIMEOUT);
            match self.stop_locked(&c, Some(timeout), None, false).await {
                Ok(()) => {
                    self.emit(&c, "stop", &[]);
                    Ok(())
                }
                Err(EngineError::NotModified(_)) => Ok(()),
                Err(e) => Err(e),
            }
        });
        for (id, result) in running.iter().zip(futures::future::join_all(stops).await) {
            if let Err(e) = result {
                tracing::warn!(id, error = %e, "cannot stop a container at shutdown");
            }
        }
        // Let the supervisors record the exits and unmount.
        for c in self.all() {
            let mut progress = c.watch_progress();
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while progress.borrow_and_update().running {
                    if progress.changed().await.is_err() {
                        break;
                    }
                }
            })
            .await;
        }
    }

    /// The IDs of the container's execs.
    pub fn exec_ids(&self, container_id: &str) -> Vec<String> {
        self.execs_lock().values().filter(|e| e.container_id == container_id).map(|e| e.id.clone()).collect()
    }

    /// Emits a volume event (`mount`, `unmount`) for each volume of a
    /// container, with dockerd's attributes.
    fn emit_volume_events(&self, record: &ContainerRecord, action: &str) {
        for p in record.mounts.iter().filter(|p| p.typ == "volume") {
            let mut extra = vec![("container", record.id.clone())];
            if action == "mount" {
                extra.push(("destination", p.destination.clone()));
                extra.push(("propagation", p.propagation.clone()));
                extra.push(("read/write", p.rw.to_string()));
            }
            self.volumes.emit(action, &p.name, &extra);
        }
    }

    /// Emits `attach` for `c`.
    pub fn emit_attach(&self, c: &Container) {
        self.emit(c, "attach", &[]);
    }

    fn execs_lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<exec::Exec>>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl VolumeUsers for ContainerService {
    fn containers_using_volume(&self, name: &str) -> Vec<String> {
        self.lock()
            .values()
            .filter(|c| c.record().mounts.iter().any(|p| p.typ == "volume" && p.name == name))
            .map(|c| c.id.clone())
            .collect()
    }
}

impl ContainerUsage for ContainerService {
    fn containers_using(&self, image_id: &str) -> Vec<ContainerRef> {
        self.lock()
            .values()
            .filter(|c| c.record().image_id == image_id)
            .map(|c| ContainerRef { id: c.id.clone(), running: c.status().is_alive() })
            .collect()
    }
}

/// A name held for a container being created; released on drop (by then
/// the container is registered under it, or the create failed).
struct NameReservation<'a> {
    set: &'a Mutex<std::collections::BTreeSet<String>>,
    name: String,
}

impl Drop for NameReservation<'_> {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.name);
    }
}

/// `busybox` → `busybox:latest`, as dockerd names a missing image.
/// `HostConfig.GroupAdd`: the extra groups of every process of the container.
pub(crate) fn group_add(host_config: &Value) -> Vec<String> {
    strings(host_config.get("GroupAdd")).unwrap_or_default()
}

/// Readies a container's mounts before a start (its root is mounted at
/// `rootfs`): a missing bind source of `Binds` is created as a directory,
/// and on the container's first start an empty volume takes a copy of what
/// the image has at its destination (unless `nocopy`).
fn prepare_mounts(points: &[mounts::MountPoint], rootfs: &Path, first_start: bool) -> Result<(), EngineError> {
    for p in points {
        match p.typ.as_str() {
            "bind" if p.create_source && std::fs::symlink_metadata(&p.source).is_err() => {
                std::fs::create_dir_all(&p.source)
                    .map_err(|e| EngineError::invalid(format!("error while creating mount source path '{}': {e}", p.source)))?;
            }
            "volume" if first_start && !p.nocopy => {
                let data = Path::new(&p.source);
                if !mounts::is_empty_dir(data) {
                    continue;
                }
                if let Some(from) = mounts::image_dir(rootfs, &p.destination) {
                    strata_drivers::fsutil::copy_tree(&from, data).map_err(|e| {
                        EngineError::internal(format!("copy the image's {} into volume {}: {e}", p.destination, p.name))
                    })?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether a failed signal means the process exited between the status
/// check and the signal: runc then reports the container as stopped or gone.
fn exited_under_signal(err: &EngineError) -> bool {
    let text = err.to_string();
    text.contains("not running") || text.contains("does not exist")
}

fn image_display(image: &str) -> String {
    match Reference::parse(image) {
        Ok(r) if r.digest.is_none() => format!("{}:{}", r.familiar_name(), r.tag_or_latest()),
        _ => image.to_string(),
    }
}

fn start_error(message: String) -> EngineError {
    if message.contains("executable file not found") || message.contains("no such file or directory") {
        EngineError::invalid(message)
    } else {
        EngineError::internal(message)
    }
}

fn spec_input(record: &ContainerRecord, user: spec::User, tty: bool) -> Result<spec::SpecInput, EngineError> {
    let (host_pid, ipc) = spec::namespace_modes(&record.host_config)?;
    let mut args = vec![record.path.clone()];
    args.extend(record.args.iter().cloned());
    Ok(spec::SpecInput {
        id: record.id.clone(),
        args,
        env: spec::merge_env(&strings(record.config.get("Env")).unwrap_or_default(), &[], &text(record.config.get("Hostname")), tty),
        cwd: text(record.config.get("WorkingDir")),
        user,
        terminal: tty,
        hostname: text(record.config.get("Hostname")),
        host_network: record.network_mode == "host",
        host_uts: record.host_config.get("UTSMode").and_then(Value::as_str) == Some("host"),
        readonly_rootfs: record.host_config.get("ReadonlyRootfs").and_then(Value::as_bool).unwrap_or(false),
        host_pid,
        ipc,
        joins: Vec::new(),
        security: spec::Security::from_host_config(&record.host_config)?,
        etc: None,
        mounts: mounts::spec_mounts(&record.mounts),
    })
}

/// Unmounts `path` if something is mounted there; errors are logged.
/// Whether runc keeps state for container `id` (its directory under
/// runc's root). Without it `runc delete` has nothing to do, and skipping
/// it saves starting a runc process on every start and removal.
fn runc_has_state(runc: &Runc, id: &str) -> bool {
    runc.root.join(id).exists()
}

pub(crate) fn unmount_if_mounted(path: &Path) {
    loop {
        match strata_snapshotter::mount::is_mounted(path) {
            Ok(true) => {
                if let Err(e) = strata_snapshotter::mount::unmount(path) {
                    tracing::warn!(path = %path.display(), error = %e, "unmount failed");
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Copies one output stream into the log and to attached clients.
fn spawn_copier<R>(
    mut reader: R,
    kind: StreamKind,
    log: Option<Arc<LogWriter>>,
    output: broadcast::Sender<Output>,
) -> tokio::task::JoinHandle<()>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(log) = &log {
                        log.write(kind, &buf[..n]);
                    }
                    let _ = output.send(Output::Data(kind, Bytes::copy_from_slice(&buf[..n])));
                }
                // EIO is how a pty reports that its other side closed.
                Err(_) => break,
            }
        }
    })
}

/// Waits for process `pid` (a child of the daemon as subreaper) and returns
/// its exit code as Docker reports it (128 + signal when killed). A pidfd
/// makes the wait asynchronous, so no thread is parked per container.
async fn wait_for_exit(pid: i32) -> i64 {
    use rustix::process::{pidfd_open, waitid, PidfdFlags, WaitId, WaitIdOptions};
    use std::os::fd::AsFd;
    let Some(rpid) = rustix::process::Pid::from_raw(pid) else { return 255 };
    if let Ok(fd) = pidfd_open(rpid, PidfdFlags::empty()) {
        // The deprecation is about registering borrowed descriptors that may
        // be closed under tokio; the AsyncFd owns this one.
        #[allow(deprecated)]
        let registered = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE);
        if let Ok(afd) = registered {
            loop {
                match waitid(WaitId::PidFd(afd.get_ref().as_fd()), WaitIdOptions::EXITED | WaitIdOptions::NOHANG) {
                    Ok(Some(status)) => {
                        if let Some(code) = status.exit_status() {
                            return i64::from(code);
                        }
                        if let Some(sig) = status.terminating_signal() {
                            return 128 + i64::from(sig);
                        }
                        return 255;
                    }
                    Ok(None) => match afd.readable().await {
                        Ok(mut guard) => guard.clear_ready(),
                        Err(_) => break,
                    },
                    Err(rustix::io::Errno::INTR) => continue,
                    // Not our child (the daemon could not become a subreaper).
                    Err(_) => break,
                }
            }
        }
    }
    while Path::new(&format!("/proc/{pid}")).exists() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    255
}

/// Waits until the exit counter passes `exits`; false on timeout.
async fn wait_exits(progress: &mut watch::Receiver<Progress>, exits: u64, timeout: Option<Duration>) -> bool {
    let wait = async {
        loop {
            let p = *progress.borrow_and_update();
            if p.exits > exits || p.removed || !p.running {
                return true;
            }
            if progress.changed().await.is_err() {
                return true;
            }
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, wait).await.unwrap_or(false),
        None => wait.await,
    }
}

/// Keeps the rows of `ps` output whose PID column is one of `pids`.
pub fn parse_ps(text: &str, pids: &[i32]) -> Result<(Vec<String>, Vec<Vec<String>>), EngineError> {
    let mut lines = text.lines();
    let header = lines.next().ok_or_else(|| EngineError::internal("ps printed nothing"))?;
    let titles: Vec<String> = header.split_whitespace().map(str::to_string).collect();
    let pid_col = titles
        .iter()
        .position(|t| t == "PID")
        .ok_or_else(|| EngineError::invalid("Couldn't find PID field in ps output"))?;
    let mut rows = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < titles.len() {
            continue;
        }
        let Ok(pid) = fields[pid_col].parse::<i32>() else { continue };
        if !pids.contains(&pid) {
            continue;
        }
        // The last column keeps its spaces (the command line).
        let mut row: Vec<String> = fields[..titles.len() - 1].iter().map(|s| s.to_string()).collect();
        row.push(fields[titles.len() - 1..].join(" "));
        rows.push(row);
    }
    Ok((titles, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_rows_are_filtered_by_pid() {
        let text = "UID PID PPID C STIME TTY TIME CMD\nroot 1 0 0 10:00 ? 00:00:01 /sbin/init\nroot 42 1 0 10:01 ? 00:00:00 sleep 100\n";
        let (titles, rows) = parse_ps(text, &[42]).unwrap();
        assert_eq!(titles.len(), 8);
        assert_eq!(rows, vec![vec!["root", "42", "1", "0", "10:01", "?", "00:00:00", "sleep 100"]]);
        assert!(parse_ps("A B\n", &[]).is_err());
    }

    #[test]
    fn wait_conditions() {
        assert_eq!(WaitCondition::parse(None).unwrap(), WaitCondition::NotRunning);
        assert_eq!(WaitCondition::parse(Some("removed")).unwrap(), WaitCondition::Removed);
        assert!(WaitCondition::parse(Some("later")).is_err());
    }

    #[test]
    fn missing_images_are_named_with_their_tag() {
        assert_eq!(image_display("busybox"), "busybox:latest");
        assert_eq!(image_display("docker.io/library/busybox:1"), "busybox:1");
    }
}
