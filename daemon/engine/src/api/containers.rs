//! Container and exec routes: Docker's JSON shapes for the container
//! service, the attach and exec upgrades, and the streaming replies (wait,
//! logs, stats, export).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc};

use super::{detach, QueryParams};
use crate::containers::logs::{self, LogQuery, StreamKind};
use crate::containers::stats::Sample;
use crate::containers::store::Status;
use crate::containers::archive::{ExtractOptions, PathStat};
use crate::containers::{CommitRequest, ContainerView, CreateRequest, Output, WaitCondition};
use crate::error::{EngineError, JSON_CONTENT_TYPE};
use crate::filters::Filters;
use crate::images::config::parse_rfc3339;
use crate::state::Engine;

/// The container and exec routes.
pub fn routes() -> Router<Arc<Engine>> {
    Router::new()
        .route("/containers/create", post(create))
        .route("/containers/json", get(list))
        .route("/containers/prune", post(prune))
        .route("/containers/{name}/json", get(inspect))
        .route("/containers/{name}/start", post(start))
        .route("/containers/{name}/stop", post(stop))
        .route("/containers/{name}/restart", post(restart))
        .route("/containers/{name}/kill", post(kill))
        .route("/containers/{name}/pause", post(pause))
        .route("/containers/{name}/unpause", post(unpause))
        .route("/containers/{name}/wait", post(wait))
        .route("/containers/{name}/attach", post(attach))
        .route("/containers/{name}/resize", post(resize))
        .route("/containers/{name}/rename", post(rename))
        .route("/containers/{name}/update", post(update))
        .route("/containers/{name}/logs", get(container_logs))
        .route("/containers/{name}/top", get(top))
        .route("/containers/{name}/changes", get(changes))
        .route("/containers/{name}/export", get(export))
        .route("/containers/{name}/archive", get(archive_get).head(archive_head).put(archive_put))
        .route("/containers/{name}/stats", get(stats))
        .route("/containers/{name}/exec", post(exec_create))
        .route("/containers/{name}", delete(remove))
        .route("/commit", post(commit))
        .route("/exec/{id}/start", post(exec_start))
        .route("/exec/{id}/resize", post(exec_resize))
        .route("/exec/{id}/json", get(exec_inspect))
}

fn json_body(bytes: &Bytes) -> Result<Value, EngineError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(bytes).map_err(|e| EngineError::invalid(format!("invalid JSON body: {e}")))
}

fn json_status(status: StatusCode, value: Value) -> Response {
    let mut response = (status, value.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE));
    response
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

async fn create(State(engine): State<Arc<Engine>>, params: QueryParams, body: Bytes) -> Result<Response, EngineError> {
    let request = CreateRequest { name: params.get("name").map(str::to_string), body: json_body(&body)? };
    let (id, warnings) = engine.containers.create(request).await?;
    Ok(json_status(StatusCode::CREATED, json!({"Id": id, "Warnings": warnings})))
}

fn unix_of(rfc3339: &str) -> i64 {
    parse_rfc3339(rfc3339).map(|(s, _)| s).unwrap_or(0)
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Go's `units.HumanDuration`, as `docker ps` shows ages.
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let plural = |n: i64, unit: &str| if n == 1 { format!("1 {unit}") } else { format!("{n} {unit}s") };
    if s < 1 {
        "Less than a second".to_string()
    } else if s == 1 {
        "1 second".to_string()
    } else if s < 60 {
        format!("{s} seconds")
    } else if s / 60 == 1 {
        "About a minute".to_string()
    } else if s < 3600 {
        format!("{} minutes", s / 60)
    } else if s / 3600 == 1 {
        "About an hour".to_string()
    } else if s < 48 * 3600 {
        format!("{} hours", s / 3600)
    } else if s < 7 * 24 * 3600 * 2 {
        plural(s / 86400, "day")
    } else if s < 30 * 24 * 3600 * 2 {
        plural(s / (7 * 86400), "week")
    } else if s < 365 * 24 * 3600 * 2 {
        plural(s / (30 * 86400), "month")
    } else {
        plural(s / (365 * 86400), "year")
    }
}

/// The `Status` column of `docker ps`.
pub fn status_text(view: &ContainerView) -> String {
    let now = now_unix();
    match view.state.status {
        Status::Running => format!("Up {}", human_duration(now - unix_of(&view.state.started_at))),
        Status::Paused => format!("Up {} (Paused)", human_duration(now - unix_of(&view.state.started_at))),
        Status::Restarting => format!(
            "Restarting ({}) {} ago",
            view.state.exit_code,
            human_duration(now - unix_of(&view.state.finished_at))
        ),
        Status::Created => "Created".to_string(),
        Status::Removing => "Removal In Progress".to_string(),
        Status::Dead => "Dead".to_string(),
        Status::Exited => {
            if view.state.finished_at.is_empty() {
                "Created".to_string()
            } else {
                format!("Exited ({}) {} ago", view.state.exit_code, human_duration(now - unix_of(&view.state.finished_at)))
            }
        }
    }
}

fn command_of(view: &ContainerView) -> String {
    let mut words = vec![view.record.path.clone()];
    words.extend(view.record.args.iter().cloned());
    words.join(" ")
}

fn networks_json(view: &ContainerView) -> Value {
    // As dockerd: a container in another's network namespace has no
    // networks of its own.
    if view.record.network_mode.starts_with("container:") {
        return json!({});
    }
    json!({ view.record.network_mode.clone(): {
        "IPAMConfig": null, "Links": null, "Aliases": null, "MacAddress": "", "DriverOpts": null,
        "NetworkID": "", "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0,
        "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "DNSNames": null
    }})
}

fn list_matches(view: &ContainerView, filters: &Filters) -> bool {
    let r = &view.record;
    if filters.contains("status") && !filters.get("status").contains(&view.state.status.as_str()) {
        return false;
    }
    if filters.contains("name") && !filters.get("name").iter().any(|n| r.name.contains(n.trim_start_matches('/'))) {
        return false;
    }
    if filters.contains("id") && !filters.get("id").iter().any(|p| r.id.starts_with(p)) {
        return false;
    }
    if filters.contains("exited") {
        let code = view.state.exit_code.to_string();
        if view.state.status != Status::Exited || !filters.get("exited").contains(&code.as_str()) {
            return false;
        }
    }
    if filters.contains("ancestor") {
        let ok = filters.get("ancestor").iter().any(|a| {
            *a == r.image
                || *a == r.image_id
                || r.image_id.trim_start_matches("sha256:").starts_with(a)
                || r.image.split(':').next() == Some(*a)
        });
        if !ok {
            return false;
        }
    }
    // As dockerd: a volume's name or a mount's destination.
    if filters.contains("volume")
        && !filters.get("volume").iter().any(|v| r.mounts.iter().any(|m| (m.typ == "volume" && m.name == *v) || m.destination == *v))
    {
        return false;
    }
    filters.match_labels("label", &r.labels)
}

async fn list(State(engine): State<Arc<Engine>>, params: QueryParams) -> Result<Json<Value>, EngineError> {
    let filters = Filters::parse(params.get("filters"))?;
    filters.validate(&["status", "name", "id", "label", "ancestor", "exited", "before", "since", "network", "volume", "health", "isolation", "expose", "publish", "is-task"])?;
    for s in filters.get("status") {
        if !["created", "restarting", "running", "removing", "paused", "exited", "dead"].contains(&s) {
            return Err(EngineError::invalid(format!("invalid filter 'status={s}'")));
        }
    }
    let limit: i64 = params.get("limit").filter(|l| !l.is_empty()).map(|l| l.parse().unwrap_or(-1)).unwrap_or(-1);
    let all = params.bool_or("all", false) || limit > 0;
    let size = params.bool_or("size", false);
    let mut rows = Vec::new();
    let mut views: Vec<ContainerView> = engine.containers.all().iter().map(|c| c.view()).collect();
    views.reverse(); // newest first, as dockerd lists them
    for view in views {
        if !all && !view.state.status.is_alive() && !filters.contains("status") {
            continue;
        }
        if !list_matches(&view, &filters) {
            continue;
        }
        let mut row = json!({
            "Id": view.record.id,
            "Names": [format!("/{}", view.record.name)],
            "Image": view.record.image,
            "ImageID": view.record.image_id,
            "Command": command_of(&view),
            "Created": unix_of(&view.record.created),
            "Ports": [],
            "Labels": view.record.labels,
            "State": view.state.status.as_str(),
            "Status": status_text(&view),
            "HostConfig": {"NetworkMode": view.record.network_mode},
            "NetworkSettings": {"Networks": networks_json(&view)},
            "Mounts": mounts_json(&view),
        });
        if size {
            let used = engine.containers.snapshotter().usage(&view.record.snapshot_key).await.map(|u| u.size).unwrap_or(0);
            row["SizeRw"] = json!(used);
            row["SizeRootFs"] = json!(used + image_size(&engine, &view.record.image_id));
        }
        rows.push(row);
        if limit > 0 && rows.len() as i64 >= limit {
            break;
        }
    }
    Ok(Json(Value::Array(rows)))
}

/// `Mounts` of inspect and `docker ps`: binds, volumes and the tmpfs
/// mounts of `HostConfig.Mounts` (not those of `HostConfig.Tmpfs`).
pub fn mounts_json(view: &ContainerView) -> Value {
    Value::Array(view.record.mounts.iter().filter(|p| !p.hidden).map(|p| p.to_json()).collect())
}

fn image_size(engine: &Engine, image_id: &str) -> i64 {
    engine.images.inspect(image_id).map(|d| d.summary.size).unwrap_or(0)
}

fn zero_time(t: &str) -> &str {
    if t.is_empty() {
        "0001-01-01T00:00:00Z"
    } else {
        t
    }
}

async fn inspect(State(engine): State<Arc<Engine>>, Path(name): Path<String>, params: QueryParams) -> Result<Json<Value>, EngineError> {
    let c = engine.containers.get(&name)?;
    let view = c.view();
    let r = &view.record;
    let s = &view.state;
    let mounts = engine.containers.snapshotter().mounts(&r.snapshot_key).await.unwrap_or_default();
    let mut graph_data = serde_json::Map::new();
    if let [m] = mounts.as_slice() {
        for o in &m.options {
            for (prefix, key) in [("lowerdir=", "LowerDir"), ("upperdir=", "UpperDir"), ("workdir=", "WorkDir")] {
                if let Some(v) = o.strip_prefix(prefix) {
                    graph_data.insert(key.to_string(), json!(v));
                }
            }
        }
        if m.fstype != "overlay" {
            graph_data.insert("Source".to_string(), json!(m.source));
        }
        graph_data.insert("MergedDir".to_string(), json!(c.log_path().with_file_name("bundle").join("rootfs")));
    }
    let exec_ids: Vec<String> = engine.containers.exec_ids(&c.id);
    // The container's own /etc files exist from its first start on.
    let etc_path = |name: &str| {
        let path = c.log_path().with_file_name(name);
        if path.is_file() { path.display().to_string() } else { String::new() }
    };
    let mut out = json!({
        "Id": r.id,
        "Created": r.created,
        "Path": r.path,
        "Args": r.args,
        "State": {
            "Status": s.status.as_str(),
            "Running": s.status.is_alive(),
            "Paused": s.status == Status::Paused,
            "Restarting": s.status == Status::Restarting,
            "OOMKilled": false,
            "Dead": s.status == Status::Dead,
            "Pid": s.pid,
            "ExitCode": s.exit_code,
            "Error": s.error,
            "StartedAt": zero_time(&s.started_at),
            "FinishedAt": zero_time(&s.finished_at),
        },
        "Image": r.image_id,
        "ResolvConfPath": etc_path("resolv.conf"),
        "HostnamePath": etc_path("hostname"),
        "HostsPath": etc_path("hosts"),
        "LogPath": if engine.containers.log_driver() == "none" { String::new() } else { c.log_path().display().to_string() },
        "Name": format!("/{}", r.name),
        "RestartCount": s.restart_count,
        "Driver": r.driver,
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": if exec_ids.is_empty() { Value::Null } else { json!(exec_ids) },
        "HostConfig": r.host_config,
        "GraphDriver": {"Name": r.driver, "Data": graph_data},
        "Mounts": mounts_json(&view),
        "Config": r.config,
        "NetworkSettings": {
            "Bridge": "", "SandboxID": "", "SandboxKey": "", "HairpinMode": false,
            "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
            "Ports": {}, "SecondaryIPAddresses": null, "SecondaryIPv6Addresses": null,
            "EndpointID": "", "Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "MacAddress": "",
            "Networks": networks_json(&view),
        },
    });
    if params.bool_or("size", false) {
        let used = engine.containers.snapshotter().usage(&r.snapshot_key).await.map(|u| u.size).unwrap_or(0);
        out["SizeRw"] = json!(used);
        out["SizeRootFs"] = json!(used + image_size(&engine, &r.image_id));
    }
    Ok(Json(out))
}

async fn start(State(engine): State<Arc<Engine>>, Path(name): Path<String>) -> Result<Response, EngineError> {
    engine.containers.start(&name).await?;
    Ok(no_content())
}

fn timeout_param(params: &QueryParams) -> Result<Option<i64>, EngineError> {
    match params.get("t").or_else(|| params.get("timeout")).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => t.parse().map(Some).map_err(|_| EngineError::invalid(format!("invalid timeout {t:?}: expected seconds"))),
    }
}

async fn stop(State(engine): State<Arc<Engine>>, Path(name): Path<String>, params: QueryParams) -> Result<Response, EngineError> {
    engine.containers.stop(&name, timeout_param(&params)?, params.get("signal")).await?;
    Ok(no_content())
}

async fn restart(State(engine): State<Arc<Engine>>, Path(name): Path<String>, params: QueryParams) -> Result<Response, EngineError> {
    engine.containers.restart(&name, timeout_param(&params)?, params.get("signal")).await?;
    Ok(no_content())
}

async fn kill(State(engine): State<Arc<Engine>>, Path(name): Path<String>, params: QueryParams) -> Result<Response, EngineError> {
    engine.containers.kill(&name, params.get("signal")).await?;
    Ok(no_content())
}

async fn pause(State(engine): State<Arc<Engine>>, Path(name): Path<String>) -> Result<Response, EngineError> {
    engine.containers.set_paused(&name, true).await?;
    Ok(no_content())
}

async fn unpause(State(engine): State<Arc<Engine>>, Path(name): Path<String>) -> Result<Response, EngineError> {
    engine.containers.set_paused(&name, false).await?;
    Ok(no_content())
}

async fn remove(State(engine): State<Arc<Engine>>, Path(name): Path<String>, params: QueryParams) -> Result<Response, EngineError> {
    if params.bool_or("link", false) {
        return Err(EngineError::invalid("links are not supported"));
    }
    engine.containers.remove(&name, params.bool_or("force", false), params.bool_or("v", false)).await?;
    Ok(no_content())
}

/// `POST /containers/{id}/update`.
async fn update(State(engine): State<Arc<Engine>>, Path(name): Path<String>, body: Bytes) -> Result<Json<Value>, EngineError> {
    let body = match json_body(&body)? {
        Value::Null => json!({}),
        v => v,
    };
    let warnings = engine.containers.update(&name, &body).await?;
    Ok(Json(json!({"Warnings": warnings})))
}

async fn rename(State(engine): State<Arc<Engine>>, Path(name): Path<String>, params: QueryParams) -> Result<Response, EngineError> {
    engine.containers.rename(&name, params.get("name").unwrap_or("")).await?;
    Ok(no_content())
}

fn size_params(params: &QueryParams) -> Result<(u16, u16), EngineError> {
    let parse = |k: &str| -> Result<u16, EngineError> {
        params
            .get(k)
            .unwrap_or("0")
            .parse::<u16>()
            .map_err(|_| EngineError::invalid(format!("invalid {k}: expected a number from 0 to 65535")))
    };
    Ok((parse("h")?, parse("w")?))
}

async fn resize(State(engine): State<Arc<Engine>>, Path(name): Path<String>, params: QueryParams) -> Result<Response, EngineError> {
    let (h, w) = size_params(&params)?;
    engine.containers.resize(&name, h, w)?;
    Ok(StatusCode::OK.into_response())
}

/// `POST /containers/{id}/wait`: the status line and headers go out at
/// once; the body follows when the condition is met.
async fn wait(State(engine): State<Arc<Engine>>, Path(name): Path<String>, params: QueryParams) -> Result<Response, EngineError> {
    let condition = WaitCondition::parse(params.get("condition"))?;
    let done = engine.containers.wait(&name, condition)?;
    let shutdown = engine.shutdown.clone();
    let body = futures::stream::once(async move {
        let text = tokio::select! {
            code = done => json!({"StatusCode": code, "Error": null}).to_string() + "\n",
            _ = shutdown.wait() => json!({"StatusCode": -1, "Error": {"Message": "the daemon is shutting down"}}).to_string() + "\n",
        };
        Ok::<Bytes, Infallible>(Bytes::from(text))
    });
    let mut response = Response::new(Body::from_stream(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE));
    Ok(response)
}

fn upgrade_response(tty: bool) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let ctype = if tty { "application/vnd.docker.raw-stream" } else { "application/vnd.docker.multiplexed-stream" };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
    response
}

fn encode_output(tty: bool, kind: StreamKind, data: &[u8]) -> Vec<u8> {
    if tty {
        data.to_vec()
    } else {
        logs::frame(kind, data)
    }
}

/// `POST /containers/{id}/attach`: an HTTP upgrade; output of the
/// container's next run goes out on the raw connection, stdin comes in.
async fn attach(State(engine): State<Arc<Engine>>, Path(name): Path<String>, params: QueryParams, mut request: Request) -> Result<Response, EngineError> {
    let c = engine.containers.get(&name)?;
    let tty = c.tty();
    let want_stdin = params.bool_or("stdin", false);
    let want_stdout = params.bool_or("stdout", false);
    let want_stderr = params.bool_or("stderr", false);
    let stdin_once = c.view().record.config.get("StdinOnce").and_then(Value::as_bool).unwrap_or(false);
    // As dockerd, the detach keys apply to terminal containers only.
    let detach_keys = match params.get("detachKeys").filter(|k| !k.is_empty()) {
        Some(spec) => detach::parse(spec).map_err(EngineError::invalid)?,
        None => detach::parse(detach::DEFAULT).map_err(EngineError::internal)?,
    };
    let matcher = detach::Matcher::new(if tty { detach_keys } else { Vec::new() });
    let detached = Arc::new(tokio::sync::Notify::new());
    let replay = if params.bool_or("logs", false) {
        let entries = logs::read_all(&c.log_path()).map_err(|e| EngineError::io("read the container log", e))?;
        logs::select(entries, &LogQuery { stdout: want_stdout, stderr: want_stderr, ..Default::default() })
    } else {
        Vec::new()
    };
    let follow = params.bool_or("stream", false);
    let mut output = c.subscribe_output();
    let running = c.status().is_alive();
    engine.containers.emit_attach(&c);
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "attach upgrade failed");
                return;
            }
        };
        let (reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
        if want_stdin {
            let c2 = c.clone();
            let detached = detached.clone();
            tokio::spawn(async move {
                let mut input = detach::Input::new(reader, matcher);
                while let Some((data, detach)) = input.next().await {
                    if !data.is_empty() && c2.write_stdin(Some(&data)).await.is_err() {
                        break;
                    }
                    if detach {
                        // The connection closes; the container and its
                        // stdin stay as they are.
                        detached.notify_one();
                        return;
                    }
                }
                if stdin_once {
                    let _ = c2.write_stdin(None).await;
                }
            });
        }
        for entry in replay {
            let kind = if entry.stream == "stderr" { StreamKind::Stderr } else { StreamKind::Stdout };
            if writer.write_all(&encode_output(tty, kind, entry.log.as_bytes())).await.is_err() {
                return;
            }
        }
        if follow || running {
            loop {
                let next = tokio::select! {
                    next = output.recv() => next,
                    _ = detached.notified() => break,
                };
                match next {
                    Ok(Output::Data(kind, data)) => {
                        let wanted = match kind {
                            StreamKind::Stdout => want_stdout,
                            StreamKind::Stderr => want_stderr,
                            StreamKind::Stdin => false,
                        };
                        if wanted && writer.write_all(&encode_output(tty, kind, &data)).await.is_err() {
                            return;
                        }
                        let _ = writer.flush().await;
                    }
                    Ok(Output::End) | Err(broadcast::error::RecvError::Closed) => break,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "attached client fell behind; output was dropped");
                    }
                }
            }
        }
        let _ = writer.shutdown().await;
    });
    Ok(upgrade_response(tty))
}

fn parse_time_param(text: Option<&str>) -> Result<Option<i64>, EngineError> {
    match text.filter(|t| !t.is_empty() && *t != "0") {
        None => Ok(None),
        Some(t) => crate::events::parse_timestamp(t).map(Some),
    }
}

/// `GET /containers/{id}/logs`.
async fn container_logs(State(engine): State<Arc<Engine>>, Path(name): Path<String>, params: QueryParams) -> Result<Response, EngineError> {
    let c = engine.containers.get(&name)?;
    let view = c.view();
    if view.record.host_config.pointer("/LogConfig/Type").and_then(Value::as_str) == Some("none") {
        return Err(EngineError::NotImplemented("configured logging driver does not support reading".into()));
    }
    let query = LogQuery {
        stdout: params.bool_or("stdout", false),
        stderr: params.bool_or("stderr", false),
        since: parse_time_param(params.get("since"))?,
        until: parse_time_param(params.get("until"))?,
        tail: match params.get("tail").unwrap_or("all") {
            "all" | "" => None,
            n => Some(n.parse::<i64>().map(|n| usize::try_from(n).unwrap_or(usize::MAX)).map_err(|_| EngineError::invalid(format!("invalid tail {n:?}")))?),
        },
    };
    if !query.stdout && !query.stderr {
        return Err(EngineError::invalid("Bad parameters: you must choose at least one stream"));
    }
    let follow = params.bool_or("follow", false);
    let timestamps = params.bool_or("timestamps", false);
    let tty = view.record.config.get("Tty").and_then(Value::as_bool).unwrap_or(false);
    let path = c.log_path();
    // Opened now and kept: docker-py's run(remove=True) removes the
    // container before it reads the followed logs.
    let mut file = std::fs::File::open(&path).ok();
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let shutdown = engine.shutdown.clone();
    tokio::spawn(async move {
        let render = |e: &logs::LogEntry| -> Bytes {
            let kind = if e.stream == "stderr" { StreamKind::Stderr } else { StreamKind::Stdout };
            let text = if timestamps { format!("{} {}", e.time, e.log) } else { e.log.clone() };
            Bytes::from(encode_output(tty, kind, text.as_bytes()))
        };
        let read = |file: &Option<std::fs::File>, offset: u64| match file {
            Some(f) => logs::read_file(f, offset),
            None => logs::read_from(&path, offset),
        };
        // The rotated files first (oldest first), then the current one.
        let Ok(mut entries) = logs::read_rotated(&path) else { return };
        let Ok((current, mut offset)) = read(&file, 0) else { return };
        entries.extend(current);
        for e in logs::select(entries, &query) {
            if tx.send(Ok(render(&e))).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        let later = LogQuery { tail: None, ..query };
        loop {
            let alive = c.status().is_alive();
            if file.is_none() {
                file = std::fs::File::open(&path).ok();
            }
            // A rotation renames the file being read and starts a new one:
            // what is left in the old one is read, then the new one from 0.
            let rotated = file.as_ref().is_some_and(|f| logs::replaced(f, &path));
            let Ok((entries, next)) = read(&file, offset) else { return };
            offset = next;
            for e in entries.iter().filter(|e| later.wants(e)) {
                if tx.send(Ok(render(e))).await.is_err() {
                    return;
                }
            }
            if rotated {
                file = std::fs::File::open(&path).ok();
                offset = 0;
                continue;
            }
            if let Some(until) = later.until {
                if now_unix().saturating_mul(1_000_000_000) > until {
                    return;
                }
            }
            if !alive {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = tx.closed() => return,
                _ = shutdown.wait() => return,
            }
        }
    });
    let mut response = Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)));
    let ctype = if tty { "application/vnd.docker.raw-stream" } else { "application/vnd.docker.multiplexed-stream" };
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    Ok(response)
}

async fn top(State(engine): State<Arc<Engine>>, Path(name): Path<String>, params: QueryParams) -> Result<Json<Value>, EngineError> {
    let (titles, rows) = engine.containers.top(&name, params.get("ps_args").unwrap_or("")).await?;
    Ok(Json(json!({"Titles": titles, "Processes": rows})))
}

async fn changes(State(engine): State<Arc<Engine>>, Path(name): Path<String>) -> Result<Json<Value>, EngineError> {
    let list = engine.containers.changes(&name).await?;
    let rows: Vec<Value> = list.iter().map(|c| json!({"Path": c.path, "Kind": c.kind as u8})).collect();
    Ok(Json(Value::Array(rows)))
}

/// A `Write` that sends what is written into a body channel.
struct ChannelWriter(mpsc::Sender<Result<Bytes, std::io::Error>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn export(State(engine): State<Arc<Engine>>, Path(name): Path<String>) -> Result<Response, EngineError> {
    engine.containers.get(&name)?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let writer = std::io::BufWriter::with_capacity(64 * 1024, ChannelWriter(tx.clone()));
    tokio::spawn(async move {
        if let Err(e) = engine.containers.export(&name, writer).await {
            tracing::warn!(error = %e, "export failed");
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
        }
    });
    let mut response = Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    Ok(response)
}

/// Standard base64 with padding (the `X-Docker-Container-Path-Stat`
/// header).
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn path_stat_header(stat: &PathStat) -> Result<HeaderValue, EngineError> {
    let value = json!({
        "name": stat.name, "size": stat.size, "mode": stat.mode, "mtime": stat.mtime, "linkTarget": stat.link_target,
    });
    HeaderValue::from_str(&base64(value.to_string().as_bytes())).map_err(|e| EngineError::internal(format!("stat header: {e}")))
}

fn archive_path_param(params: &QueryParams) -> Result<String, EngineError> {
    match params.get("path") {
        Some(p) if !p.is_empty() => Ok(p.to_string()),
        _ => Err(EngineError::invalid("path parameter is required")),
    }
}

async fn archive_head(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
    params: QueryParams,
) -> Result<Response, EngineError> {
    let path = archive_path_param(&params)?;
    let stat = engine.containers.stat_path(&name, &path).await?;
    let mut response = StatusCode::OK.into_response();
    response.headers_mut().insert("X-Docker-Container-Path-Stat", path_stat_header(&stat)?);
    Ok(response)
}

async fn archive_get(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
    params: QueryParams,
) -> Result<Response, EngineError> {
    let path = archive_path_param(&params)?;
    let source = engine.containers.archive_path(&name, &path).await?;
    let stat_header = path_stat_header(&source.stat)?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let writer = std::io::BufWriter::with_capacity(64 * 1024, ChannelWriter(tx.clone()));
    tokio::task::spawn_blocking(move || {
        let result = source.write_to(writer).and_then(|mut w| std::io::Write::flush(&mut w).map_err(|e| EngineError::io("write the archive", e)));
        if let Err(e) = result {
            tracing::warn!(error = %e, "archive failed");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let mut response = Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    response.headers_mut().insert("X-Docker-Container-Path-Stat", stat_header);
    Ok(response)
}

/// A request body read from a blocking thread.
struct BodyReader {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    current: Bytes,
}

impl std::io::Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

async fn archive_put(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
    params: QueryParams,
    body: Body,
) -> Result<Response, EngineError> {
    use futures::StreamExt;
    let path = archive_path_param(&params)?;
    let options = ExtractOptions {
        no_overwrite_dir_non_dir: params.bool_or("noOverwriteDirNonDir", false),
        copy_uid_gid: params.bool_or("copyUIDGID", false),
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    // The whole body is read even when the extraction stops early (an
    // error, or padding after the tar's end): a reply sent while the client
    // still writes would reach it as a broken pipe instead of the error.
    let pump = tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut forwarding = true;
        while let Some(chunk) = stream.next().await {
            if forwarding {
                let item = chunk.map_err(std::io::Error::other);
                forwarding = tx.send(item).await.is_ok();
            } else if chunk.is_err() {
                break;
            }
        }
    });
    let result = engine.containers.extract_to_dir(&name, &path, options, BodyReader { rx, current: Bytes::new() }).await;
    let mut pump = pump;
    if tokio::time::timeout(Duration::from_secs(60), &mut pump).await.is_err() {
        pump.abort();
        tracing::warn!("the archive upload was not read to its end within a minute");
    }
    result?;
    Ok(StatusCode::OK.into_response())
}

fn stats_json(name: &str, id: &str, now: &Sample, pre: Option<&Sample>) -> Value {
    let cpu = |s: Option<&Sample>| match s {
        Some(s) => json!({
            "cpu_usage": {"total_usage": s.cpu_total, "percpu_usage": s.percpu, "usage_in_kernelmode": s.cpu_kernel, "usage_in_usermode": s.cpu_user},
            "system_cpu_usage": s.system_cpu, "online_cpus": s.online_cpus,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        }),
        None => json!({"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0}, "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}),
    };
    let networks: BTreeMap<&String, Value> = now
        .networks
        .iter()
        .map(|(k, n)| {
            (k, json!({"rx_bytes": n.rx_bytes, "rx_packets": n.rx_packets, "rx_errors": n.rx_errors, "rx_dropped": n.rx_dropped,
                       "tx_bytes": n.tx_bytes, "tx_packets": n.tx_packets, "tx_errors": n.tx_errors, "tx_dropped": n.tx_dropped}))
        })
        .collect();
    let blkio: Vec<Value> = now.blkio.iter().map(|b| json!({"major": b.major, "minor": b.minor, "op": b.op, "value": b.value})).collect();
    json!({
        "read": now.read,
        "preread": pre.map(|p| p.read.as_str()).unwrap_or("0001-01-01T00:00:00Z"),
        "name": format!("/{name}"),
        "id": id,
        "pids_stats": {"current": now.pids_current, "limit": now.pids_limit},
        "blkio_stats": {"io_service_bytes_recursive": blkio, "io_serviced_recursive": null, "io_queue_recursive": null,
            "io_service_time_recursive": null, "io_wait_time_recursive": null, "io_merged_recursive": null,
            "io_time_recursive": null, "sectors_recursive": null},
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu(Some(now)),
        "precpu_stats": cpu(pre),
        "memory_stats": {"usage": now.mem_usage, "max_usage": now.mem_max_usage, "stats": now.mem_stats, "limit": now.mem_limit},
        "networks": networks,
    })
}

/// `GET /containers/{id}/stats`: one frame per second with `stream`, else
/// one frame whose `precpu_stats` is a sample taken a second earlier
/// (none with `one-shot`).
async fn stats(State(engine): State<Arc<Engine>>, Path(name): Path<String>, params: QueryParams) -> Result<Response, EngineError> {
    let c = engine.containers.get(&name)?;
    let stream = params.bool_or("stream", true);
    let one_shot = params.bool_or("one-shot", false);
    let id = c.id.clone();
    let sample_now = {
        let c = c.clone();
        move || {
            let view = c.view();
            let id = view.record.id.clone();
            let pid = view.state.pid;
            let alive = view.state.status.is_alive();
            (view.record.name.clone(), alive, if alive { crate::containers::stats::sample(&id, pid) } else { Sample::default() })
        }
    };
    let mut response = if !stream {
        let (name, alive, first) = tokio::task::spawn_blocking(sample_now.clone())
            .await
            .map_err(|e| EngineError::internal(format!("stats task failed: {e}")))?;
        let value = if !alive {
            json!({"name": format!("/{name}"), "id": id, "read": "0001-01-01T00:00:00Z", "preread": "0001-01-01T00:00:00Z",
                   "pids_stats": {}, "blkio_stats": {}, "num_procs": 0, "storage_stats": {}, "cpu_stats": {"cpu_usage": {"total_usage": 0}, "throttling_data": {}},
                   "precpu_stats": {"cpu_usage": {"total_usage": 0}, "throttling_data": {}}, "memory_stats": {}, "networks": {}})
        } else if one_shot {
            stats_json(&name, &id, &first, None)
        } else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (name, _, second) = tokio::task::spawn_blocking(sample_now)
                .await
                .map_err(|e| EngineError::internal(format!("stats task failed: {e}")))?;
            stats_json(&name, &id, &second, Some(&first))
        };
        Response::new(Body::from(value.to_string() + "\n"))
    } else {
        let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(4);
        let shutdown = engine.shutdown.clone();
        tokio::spawn(async move {
            let mut previous: Option<Sample> = None;
            loop {
                let Ok((name, alive, sample)) = tokio::task::spawn_blocking(sample_now.clone()).await else { return };
                let value = stats_json(&name, &id, &sample, previous.as_ref());
                if tx.send(Ok(Bytes::from(value.to_string() + "\n"))).await.is_err() || !alive {
                    return;
                }
                previous = Some(sample);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = tx.closed() => return,
                    _ = shutdown.wait() => return,
                }
            }
        });
        Response::new(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
    };
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE));
    Ok(response)
}

async fn prune(State(engine): State<Arc<Engine>>, params: QueryParams) -> Result<Json<Value>, EngineError> {
    let filters = Filters::parse(params.get("filters"))?;
    filters.validate(&["label", "label!", "until"])?;
    let until = filters.get("until").first().map(|u| crate::events::parse_timestamp(u)).transpose()?;
    let mut deleted = Vec::new();
    let mut reclaimed: i64 = 0;
    for c in engine.containers.all() {
        let view = c.view();
        if view.state.status.is_alive() {
            continue;
        }
        if !filters.match_labels("label", &view.record.labels) {
            continue;
        }
        if filters.get("label!").iter().any(|l| {
            let (k, v) = l.split_once('=').map_or((*l, None), |(k, v)| (k, Some(v)));
            view.record.labels.get(k).is_some_and(|have| v.is_none_or(|v| v == have))
        }) {
            continue;
        }
        if let Some(u) = until {
            let created = parse_rfc3339(&view.record.created).map(|(s, n)| s * 1_000_000_000 + i64::from(n)).unwrap_or(0);
            if created > u {
                continue;
            }
        }
        let size = engine.containers.snapshotter().usage(&view.record.snapshot_key).await.map(|u| u.size).unwrap_or(0);
        match engine.containers.remove(&view.record.id, false, false).await {
            Ok(()) => {
                deleted.push(view.record.id.clone());
                reclaimed += size;
            }
            Err(e) => tracing::warn!(id = %view.record.id, error = %e, "prune could not remove a container"),
        }
    }
    Ok(Json(json!({"ContainersDeleted": if deleted.is_empty() { Value::Null } else { json!(deleted) }, "SpaceReclaimed": reclaimed})))
}

/// `POST /commit?container=&repo=&tag=&author=&comment=&changes=&pause=`.
async fn commit(State(engine): State<Arc<Engine>>, params: QueryParams, body: Bytes) -> Result<Response, EngineError> {
    let container = params.get("container").filter(|c| !c.is_empty()).ok_or_else(|| EngineError::invalid("no container given: use ?container="))?;
    let config = json_body(&body)?;
    let request = CommitRequest {
        repo: params.get("repo").map(str::to_string),
        tag: params.get("tag").map(str::to_string),
        comment: params.get("comment").unwrap_or("").to_string(),
        author: params.get("author").unwrap_or("").to_string(),
        changes: params.get_all("changes").into_iter().map(str::to_string).collect(),
        pause: params.bool_or("pause", true),
        config: if config.is_object() { Some(config) } else { None },
    };
    let id = engine.containers.commit(container, request).await?;
    Ok(json_status(StatusCode::CREATED, json!({"Id": id})))
}

async fn exec_create(State(engine): State<Arc<Engine>>, Path(name): Path<String>, body: Bytes) -> Result<Response, EngineError> {
    let body = json_body(&body)?;
    let keys = body.get("DetachKeys").or_else(|| body.get("detachKeys"));
    if let Some(keys) = keys.and_then(Value::as_str).filter(|k| !k.is_empty()) {
        detach::parse(keys).map_err(EngineError::invalid)?;
    }
    let id = engine.containers.create_exec(&name, &body)?;
    Ok(json_status(StatusCode::CREATED, json!({"Id": id})))
}

/// `POST /exec/{id}/start`: detached, or an upgraded connection carrying
/// the process's output (multiplexed without a terminal) and its stdin.
async fn exec_start(State(engine): State<Arc<Engine>>, Path(id): Path<String>, mut request: Request) -> Result<Response, EngineError> {
    let on_upgrade = hyper::upgrade::on(&mut request);
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .map_err(|e| EngineError::invalid(format!("reading the request body: {e}")))?;
    let body = json_body(&bytes)?;
    let detach = body.get("Detach").and_then(Value::as_bool).unwrap_or(false);
    if !detach {
        return exec_start_attached(engine, id, body.get("Tty").and_then(Value::as_bool), on_upgrade);
    }
    let run = engine.containers.start_exec(&id).await?;
    if let Some(message) = run.failure {
        return Err(EngineError::invalid(message));
    }
    drain(run);
    Ok(StatusCode::OK.into_response())
}

/// Runs a started exec with nobody attached: stdin closed, the output
/// channel drained so the process never blocks on it.
fn drain(run: crate::containers::exec::ExecRun) {
    drop(run.stdin);
    let mut output = run.output;
    tokio::spawn(async move { while output.recv().await.is_some() {} });
}

/// The attached half of `POST /exec/{id}/start`. As dockerd, the 101 goes
/// out first and the process starts only once the connection is upgraded:
/// output that reached the client together with the response headers would
/// be lost by clients that read the raw socket past their HTTP buffer
/// (docker-py does). What can be checked beforehand is, so those errors are
/// still plain HTTP errors. The output is framed unless the start request
/// says `Tty: true` (the exec's own setting when it says nothing), as
/// dockerd decides: docker-py reads a terminal exec's output as frames
/// when started without `tty=True`.
fn exec_start_attached(
    engine: Arc<Engine>,
    id: String,
    start_tty: Option<bool>,
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Result<Response, EngineError> {
    let exec = engine.containers.get_exec(&id)?;
    if engine.containers.get(&exec.container_id)?.status() != Status::Running {
        return Err(EngineError::conflict(format!("container {} is not running", exec.container_id)));
    }
    if exec.state().started {
        return Err(EngineError::conflict(format!("Error: Exec command {id} has already run")));
    }
    let tty = start_tty.unwrap_or(exec.config.tty);
    // As for attach, detach keys apply with a terminal only.
    let keys = match exec.config.detach_keys.as_str() {
        "" => detach::DEFAULT,
        k => k,
    };
    let matcher = detach::Matcher::new(if exec.config.tty { detach::parse(keys).map_err(EngineError::invalid)? } else { Vec::new() });
    let detached = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                // A client that did not ask for the upgrade still runs the
                // process, unattached.
                tracing::debug!(error = %e, "exec upgrade failed");
                match engine.containers.start_exec(&id).await {
                    Ok(run) => drain(run),
                    Err(e) => tracing::debug!(error = %e, "exec start failed"),
                }
                return;
            }
        };
        let (reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
        let run = match engine.containers.start_exec(&id).await {
            Ok(run) => run,
            Err(e) => {
                let _ = writer.write_all(&encode_output(tty, StreamKind::Stderr, format!("{e}\n").as_bytes())).await;
                let _ = writer.shutdown().await;
                return;
            }
        };
        let mut output = run.output;
        let stdin = run.stdin;
        if let Some(mut stdin) = stdin {
            let detached = detached.clone();
            tokio::spawn(async move {
                let mut input = detach::Input::new(reader, matcher);
                while let Some((data, detach)) = input.next().await {
                    if !data.is_empty() {
                        if stdin.write_all(&data).await.is_err() {
                            break;
                        }
                        let _ = stdin.flush().await;
                    }
                    if detach {
                        detached.notify_one();
                        break;
                    }
                }
                let _ = stdin.shutdown().await;
            });
        }
        let mut client_gone = false;
        loop {
            let item = tokio::select! {
                item = output.recv() => item,
                _ = detached.notified(), if !client_gone => {
                    // The client detached: the connection closes, the
                    // process runs on and its output is drained.
                    client_gone = true;
                    let _ = writer.shutdown().await;
                    continue;
                }
            };
            let Some(item) = item else { break };
            match item {
                Output::Data(kind, data) => {
                    if !client_gone && writer.write_all(&encode_output(tty, kind, &data)).await.is_err() {
                        client_gone = true;
                    }
                }
                Output::End => break,
            }
        }
        let _ = writer.shutdown().await;
    });
    Ok(upgrade_response(tty))
}

async fn exec_resize(State(engine): State<Arc<Engine>>, Path(id): Path<String>, params: QueryParams) -> Result<Response, EngineError> {
    let (h, w) = size_params(&params)?;
    engine.containers.get_exec(&id)?.resize(h, w)?;
    Ok(StatusCode::OK.into_response())
}

async fn exec_inspect(State(engine): State<Arc<Engine>>, Path(id): Path<String>) -> Result<Json<Value>, EngineError> {
    let exec = engine.containers.get_exec(&id)?;
    let st = exec.state();
    let cfg = &exec.config;
    Ok(Json(json!({
        "ID": exec.id,
        "Running": st.running,
        "ExitCode": st.exit_code,
        "ProcessConfig": {
            "tty": cfg.tty,
            "entrypoint": cfg.cmd.first().cloned().unwrap_or_default(),
            "arguments": cfg.cmd.iter().skip(1).collect::<Vec<_>>(),
            "privileged": cfg.privileged,
            "user": cfg.user,
        },
        "OpenStdin": cfg.attach_stdin,
        "OpenStderr": cfg.attach_stderr,
        "OpenStdout": cfg.attach_stdout,
        "CanRemove": false,
        "ContainerID": exec.container_id,
        "DetachKeys": "",
        "Pid": st.pid,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(1), "1 second");
        assert_eq!(human_duration(59), "59 seconds");
        assert_eq!(human_duration(60), "About a minute");
        assert_eq!(human_duration(600), "10 minutes");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(5 * 3600), "5 hours");
        assert_eq!(human_duration(3 * 86400), "3 days");
        assert_eq!(human_duration(21 * 86400), "3 weeks");
    }
}
