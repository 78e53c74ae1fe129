//! System routes: `/_ping`, `/version`, `/info`, `/events`, `/system/df`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::api::{ApiVersion, QueryParams, API_VERSION, ENGINE_VERSION, MIN_API_VERSION};
use crate::error::{EngineError, JSON_CONTENT_TYPE};
use crate::events::{parse_timestamp, Event};
use crate::filters::Filters;
use crate::containers::store::Status;
use crate::state::Engine;
use crate::system::{self, HostFacts};

pub fn routes() -> Router<Arc<Engine>> {
    Router::new()
        .route("/_ping", get(ping).head(ping))
        .route("/version", get(version))
        .route("/info", get(info))
        .route("/events", get(events))
        .route("/system/df", get(disk_usage))
}

async fn ping(method: Method) -> Response {
    let body = if method == Method::HEAD { "" } else { "OK" };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store, must-revalidate"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn kernel_version() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}

async fn version() -> Json<Value> {
    let kernel = kernel_version();
    let arch = crate::images::config::go_arch();
    let details = json!({
        "ApiVersion": API_VERSION,
        "Arch": arch,
        "BuildTime": "",
        "Experimental": "false",
        "GitCommit": "",
        "GoVersion": "",
        "KernelVersion": kernel,
        "MinAPIVersion": MIN_API_VERSION,
        "Os": "linux",
    });
    Json(json!({
        "Platform": { "Name": "Strata Engine" },
        "Components": [{ "Name": "Engine", "Version": ENGINE_VERSION, "Details": details }],
        "Version": ENGINE_VERSION,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": arch,
        "KernelVersion": kernel,
        "BuildTime": "",
    }))
}

async fn info(State(engine): State<Arc<Engine>>) -> Result<Json<Value>, EngineError> {
    let facts_engine = engine.clone();
    let (facts, (status, warnings)) = tokio::task::spawn_blocking(move || {
        let e = facts_engine;
        let facts = HostFacts::read();
        let status = system::driver_status(&e.driver, &e.driver_dir(), e.config.snapshotter_address.as_deref());
        (facts, status)
    })
    .await
    .map_err(|e| EngineError::internal(format!("collecting system facts failed: {e}")))?;

    let images = engine.image_stats.image_count();
    let statuses: Vec<Status> = engine.containers.all().iter().map(|c| c.status()).collect();
    let running = statuses.iter().filter(|s| matches!(s, Status::Running | Status::Restarting)).count();
    let paused = statuses.iter().filter(|s| matches!(s, Status::Paused)).count();
    
    let driver_status = if status.is_empty() { Value::Null } else { json!(status) };
    let arch = nix::sys::utsname::uname()
        .map(|u| u.machine().to_string_lossy().into_owned())
        .unwrap_or_else(|_| std::env::consts::ARCH.to_string());
    let nfd = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    let threads = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
        })
        .unwrap_or(0);
    let log_plugins: Vec<&str> = {
        let mut v = vec!["json-file", "local", "none"];
        if !v.contains(&engine.config.log_driver.as_str()) {
            v.push(engine.config.log_driver.as_str());
        }
        v
    };
    Ok(Json(json!({
        "ID": engine.id,
        "Containers": statuses.len(),
        "ContainersRunning": running,
        "ContainersPaused": paused,
        "ContainersStopped": statuses.len() - running - paused,
        "Images": images,
        "Driver": engine.driver,
        "DriverStatus": driver_status,
        "Plugins": {
            "Volume": ["local"],
            "Network": ["bridge", "host", "null"],
            "Authorization": null,
            "Log": log_plugins,
        },
        "MemoryLimit": true,
        "SwapLimit": true,
        "CpuCfsPeriod": true,
        "CpuCfsQuota": true,
        "CPUShares": true,
        "CPUSet": true,
        "PidsLimit": true,
        "IPv4Forwarding": true,
        "Debug": engine.config.debug,
        "NFd": nfd,
        "OomKillDisable": false,
        "NGoroutines": threads,
        "SystemTime": system::rfc3339_nano(std::time::SystemTime::now()),
        "LoggingDriver": engine.config.log_driver,
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": facts.cgroup_version,
        "NEventsListener": engine.events.subscriber_count(),
        "KernelVersion": facts.kernel_version,
        "OperatingSystem": facts.operating_system,
        "OSVersion": facts.os_version,
        "OSType": "linux",
        "Architecture": arch,
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": system::registry_config(&engine.config.insecure_registries),
        "NCPU": facts.ncpu,
        "MemTotal": facts.mem_total,
        "GenericResources": null,
        "DockerRootDir": engine.config.data_root.display().to_string(),
        "HttpProxy": std::env::var("HTTP_PROXY").or_else(|_| std::env::var("http_proxy")).unwrap_or_default(),
        "HttpsProxy": std::env::var("HTTPS_PROXY").or_else(|_| std::env::var("https_proxy")).unwrap_or_default(),
        "NoProxy": std::env::var("NO_PROXY").or_else(|_| std::env::var("no_proxy")).unwrap_or_default(),
        "Name": facts.hostname,
        "Labels": [],
        "ExperimentalBuild": false,
        "ServerVersion": ENGINE_VERSION,
        "Runtimes": { "runc": { "path": "runc" } },
        "DefaultRuntime": "runc",
        "Swarm": {
            "NodeID": "",
            "NodeAddr": "",
            "LocalNodeState": "inactive",
            "ControlAvailable": false,
            "Error": "",
            "RemoteManagers": null,
        },
        "LiveRestoreEnabled": false,
        "Isolation": "",
        "InitBinary": "",
        "ContainerdCommit": { "ID": "" },
        "RuncCommit": { "ID": "" },
        "InitCommit": { "ID": "" },
        "SecurityOptions": [crate::containers::seccomp::SECURITY_OPTION],
        "CDISpecDirs": [],
        "Warnings": warnings,
    })))
}

/// `GET /events`: replays the history between `since` and `until`, then
/// follows live events until `until` passes, the client leaves or the
/// daemon stops. One JSON object per line.
async fn events(
    State(engine): State<Arc<Engine>>,
    version: Option<axum::Extension<ApiVersion>>,
    params: QueryParams,
) -> Result<Response, EngineError> {
    let filters = Filters::parse(params.get("filters"))?;
    // Image `create` events (commit, build) are new in API 1.46; older
    // clients do not get them, as with dockerd.
    let version = version.map_or_else(ApiVersion::current, |v| v.0);
    let hide_image_create = version < ApiVersion { major: 1, minor: 46 };
    let visible = move |e: &Event| e.matches(&filters) && !(hide_image_create && e.typ == "image" && e.action == "create");
    let since = params.get("since").filter(|s| !s.is_empty()).map(parse_timestamp).transpose()?;
    let until = params.get("until").filter(|s| !s.is_empty()).map(parse_timestamp).transpose()?;
    if let (Some(s), Some(u)) = (since, until) {
        if s > u {
            return Err(EngineError::invalid(format!(
                "`since` time ({}) cannot be after `until` time ({})",
                params.get("since").unwrap_or_default(),
                params.get("until").unwrap_or_default()
            )));
        }
    }
    // Past events are replayed only with `since` or `until`.
    let replayed = since.is_some() || until.is_some();
    let subscription = engine.events.subscribe_with(|e| {
        replayed && since.is_none_or(|s| e.time_nano >= s) && until.is_none_or(|u| e.time_nano <= u) && visible(e)
    });
    let now = now_nanos();
    let deadline = match until {
        Some(u) if u <= now => Some(tokio::time::Instant::now()),
        Some(u) => Some(tokio::time::Instant::now() + Duration::from_nanos(u64::try_from(u - now).unwrap_or(0))),
        None => None,
    };
    let feed = Feed {
        history: Some(subscription.history),
        receiver: subscription.receiver,
        deadline,
        until,
        visible: Box::new(visible),
        shutdown: engine.shutdown.clone(),
        done: false,
    };
    // The body reads the bus itself: one task (the connection's) per
    // subscriber, and whatever has piled up since its last write goes out
    // in one chunk.
    let stream = futures::stream::unfold(feed, |mut feed| async move {
        let chunk = feed.next_chunk().await?;
        Some((Ok::<Bytes, Infallible>(chunk), feed))
    });
    let body = Body::from_stream(stream);
    let mut response = Response::new(body);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE));
    Ok(response)
}

/// The containers part of `/system/df`: every container with its writable
/// layer size (`SizeRw`) and that plus its image (`SizeRootFs`).
async fn containers_df(engine: &Engine) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut views: Vec<_> = engine.containers.all().iter().map(|c| c.view()).collect();
    views.reverse(); // newest first, as dockerd lists them
    for view in views {
        let size_rw = engine.snapshotter.usage(&view.record.snapshot_key).await.map(|u| u.size).unwrap_or(0);
        let image_size = engine.images.inspect(&view.record.image_id).map(|d| d.summary.size).unwrap_or(0);
        let mut command = vec![view.record.path.clone()];
        command.extend(view.record.args.iter().cloned());
        let created = crate::images::config::parse_rfc3339(&view.record.created).map(|(secs, _)| secs).unwrap_or(0);
        rows.push(json!({
            "Id": view.record.id,
            "Names": [format!("/{}", view.record.name)],
            "Image": view.record.image,
            "ImageID": view.record.image_id,
            "Command": command.join(" "),
            "Created": created,
            "Ports": [],
            "SizeRw": size_rw,
            "SizeRootFs": size_rw + image_size,
            "Labels": view.record.labels,
            "State": view.state.status.as_str(),
            "Status": crate::api::containers::status_text(&view),
            "HostConfig": { "NetworkMode": view.record.network_mode },
            "NetworkSettings": { "Networks": {} },
            "Mounts": crate::api::containers::mounts_json(&view),
        }));
    }
    rows
}

/// The volumes part of `/system/df`: every volume with its size and the
/// number of containers that use it.
async fn volumes_df(engine: &Engine) -> Result<Value, EngineError> {
    let volumes = engine.volumes.clone();
    let rows = tokio::task::spawn_blocking(move || {
        volumes
            .list()
            .iter()
            .map(|v| {
                let mut row = crate::api::volumes::volume_json(v);
                row["UsageData"] = json!({
                    "Size": volumes.size(&v.record.name),
                    "RefCount": volumes.users_of(&v.record.name).len(),
                });
                row
            })
            .collect::<Vec<Value>>()
    })
    .await
    .map_err(|e| EngineError::internal(format!("computing volume usage failed: {e}")))?;
    Ok(Value::Array(rows))
}

/// What an events stream still has to send: the replayed history, then
/// live events until `until` passes, the daemon shuts down or the client
/// leaves (the body is dropped).
struct Feed {
    history: Option<Vec<Arc<Event>>>,
    receiver: broadcast::Receiver<Arc<Event>>,
    deadline: Option<tokio::time::Instant>,
    until: Option<i64>,
    visible: Box<dyn Fn(&Event) -> bool + Send + Sync>,
    shutdown: crate::server::Shutdown,
    /// `until` was passed by the last chunk's events.
    done: bool,
}

impl Feed {
    /// The next chunk of newline-terminated events; `None` at the end.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(history) = self.history.take() {
            if !history.is_empty() {
                let mut out = bytes::BytesMut::new();
                for event in &history {
                    out.extend_from_slice(&encode(event));
                }
                return Some(out.freeze());
            }
        }
        if self.done {
            return None;
        }
        loop {
            let first = tokio::select! {
                _ = sleep_until_or_never(self.deadline) => return None,
                _ = self.shutdown.wait() => return None,
                received = self.receiver.recv() => received,
            };
            let mut out = bytes::BytesMut::new();
            let mut next = Some(first);
            while let Some(received) = next.take() {
                match received {
                    Ok(event) => {
                        if self.until.is_some_and(|u| event.time_nano > u) {
                            self.done = true;
                            break;
                        }
                        if (self.visible)(&event) {
                            out.extend_from_slice(&encode(&event));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "events subscriber fell behind; events were dropped");
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        self.done = true;
                        break;
                    }
                }
                // Events that arrived meanwhile go out in the same chunk.
                next = match self.receiver.try_recv() {
                    Ok(event) => Some(Ok(event)),
                    Err(broadcast::error::TryRecvError::Lagged(missed)) => Some(Err(broadcast::error::RecvError::Lagged(missed))),
                    Err(_) => None,
                };
            }
            if !out.is_empty() {
                return Some(out.freeze());
            }
            if self.done {
                return None;
            }
        }
    }
}

async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending::<()>().await,
    }
}

fn encode(event: &Event) -> Bytes {
    event.json_line()
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `GET /system/df`: images, containers, volumes and build cache usage.
/// `type` (repeatable) limits the answer to those sections.
async fn disk_usage(State(engine): State<Arc<Engine>>, params: QueryParams) -> Result<Json<Value>, EngineError> {
    const TYPES: &[&str] = &["container", "image", "volume", "build-cache"];
    let wanted: Vec<&str> = params.get_all("type");
    if let Some(bad) = wanted.iter().find(|t| !TYPES.contains(t)) {
        return Err(EngineError::invalid(format!("unknown object type: {bad}")));
    }
    let want = |t: &str| wanted.is_empty() || wanted.contains(&t);
    let mut reply = serde_json::Map::new();
    if want("image") {
        let stats = engine.image_stats.clone();
        let df = tokio::task::spawn_blocking(move || system::images_df(stats.as_ref()))
            .await
            .map_err(|e| EngineError::internal(format!("computing image usage failed: {e}")))??;
        let images: Vec<Value> = df
            .images
            .iter()
            .map(|i| {
                json!({
                    "Id": i.id,
                    "ParentId": i.parent_id,
                    "RepoTags": i.repo_tags,
                    "RepoDigests": i.repo_digests,
                    "Created": i.created,
                    "Size": i.size,
                    "SharedSize": i.shared_size,
                    "Labels": if i.labels.is_empty() { Value::Null } else { json!(i.labels) },
                    "Containers": i.containers,
                })
            })
            .collect();
        reply.insert("LayersSize".to_string(), json!(df.layers_size));
        reply.insert("Images".to_string(), json!(images));
    }
    if want("container") {
        reply.insert("Containers".to_string(), Value::Array(containers_df(&engine).await));
    }
    if want("volume") {
        reply.insert("Volumes".to_string(), volumes_df(&engine).await?);
    }
    if want("build-cache") {
        reply.insert("BuildCache".to_string(), json!([]));
    }
    Ok(Json(Value::Object(reply)))
}
