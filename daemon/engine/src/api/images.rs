//! Image routes (`/images/...`): request parsing and Docker's JSON shapes
//! around [`crate::images::ImageService`].
//!
//! Image names in paths keep `/`, `:` and `@` (`/images/localhost:5000/a/b:c/json`),
//! so every per-image route is one wildcard whose action suffix
//! (`/json`, `/history`, `/get`, `/tag`) is split off here.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use serde_json::{json, Value};

use super::{bool_value, ApiVersion};
use crate::error::EngineError;
use crate::images::{config, DeleteItem, Filters, ImageSummary, ImportOptions, LoadMessage};
use crate::state::Engine;

/// The image routes, merged into the main router.
pub fn routes() -> Router<Arc<Engine>> {
    Router::new()
        .route("/images/json", get(list))
        .route("/images/create", post(create))
        .route("/images/load", post(load))
        .route("/images/get", get(save_many))
        .route("/images/prune", post(prune))
        .route("/images/{*rest}", get(get_image).post(post_image).delete(delete_image))
}

/// The query string as ordered (key, value) pairs, percent-decoded; keys
/// may repeat (`names=a&names=b`, `changes=…`).
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Query {
    fn parse(raw: Option<String>) -> Query {
        let mut pairs = Vec::new();
        for part in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((percent_decode(k), percent_decode(v)));
        }
        Query(pairs)
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
    fn all(&self, key: &str) -> Vec<String> {
        self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect()
    }
    fn flag(&self, key: &str, default: bool) -> bool {
        self.get(key).map(bool_value).unwrap_or(default)
    }
    /// `filters`, in either JSON shape: `{"k":{"v":true}}` or `{"k":["v"]}`.
    fn filters(&self) -> Result<Filters, EngineError> {
        let mut out = Filters::new();
        let Some(raw) = self.get("filters").map(str::trim).filter(|r| !r.is_empty()) else {
            return Ok(out);
        };
        let bad = |d: String| EngineError::invalid(format!("invalid filter: {d}"));
        let Value::Object(map) = serde_json::from_str::<Value>(raw).map_err(|e| bad(e.to_string()))? else {
            return Err(bad("expected a JSON object".into()));
        };
        for (key, value) in map {
            let values: Vec<String> = match value {
                Value::Array(items) => items
                    .into_iter()
                    .map(|i| i.as_str().map(str::to_owned).ok_or_else(|| bad(format!("{key}: expected strings"))))
                    .collect::<Result<_, _>>()?,
                Value::Object(set) => set.into_iter().filter(|(_, f)| f == &Value::Bool(true)).map(|(k, _)| k).collect(),
                Value::Null => Vec::new(),
                _ => return Err(bad(format!("{key}: expected a list or a set"))),
            };
            out.entry(key).or_default().extend(values);
        }
        Ok(out)
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut r = (status, value.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A progress-stream reply: one JSON object per message, each ending in
/// `\r\n`, as dockerd's stream formatter writes them.
fn stream_response(messages: &[Value]) -> Response {
    let mut body = String::new();
    for m in messages {
        body.push_str(&m.to_string());
        body.push_str("\r\n");
    }
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn labels_json(labels: &BTreeMap<String, String>) -> Value {
    if labels.is_empty() {
        Value::Null
    } else {
        json!(labels)
    }
}

fn summary_json(s: &ImageSummary) -> Value {
    json!({
        "Containers": s.containers,
        "Created": s.created,
        "Id": s.id,
        "Labels": labels_json(&s.labels),
        "ParentId": "",
        "RepoDigests": s.repo_digests,
        "RepoTags": s.repo_tags,
        "SharedSize": s.shared_size,
        "Size": s.size,
    })
}

fn delete_items_json(items: &[DeleteItem]) -> Vec<Value> {
    items
        .iter()
        .map(|i| match i {
            DeleteItem::Untagged(r) => json!({"Untagged": r}),
            DeleteItem::Deleted(id) => json!({"Deleted": id}),
        })
        .collect()
}

async fn list(State(engine): State<Arc<Engine>>, RawQuery(q): RawQuery) -> Result<Response, EngineError> {
    let q = Query::parse(q);
    let filters = q.filters()?;
    let images = engine.images.list(&filters)?;
    Ok(json_response(StatusCode::OK, &Value::Array(images.iter().map(summary_json).collect())))
}

/// `POST /images/create`: `fromSrc=-` imports the body; `fromImage` pulls
/// through the registry service ([`super::registry::pull`]).
async fn create(
    State(engine): State<Arc<Engine>>,
    RawQuery(q): RawQuery,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, EngineError> {
    let q = Query::parse(q);
    match (q.get("fromSrc"), q.get("fromImage")) {
        (Some("-"), _) => {}
        (Some(src), _) => {
            return Err(EngineError::NotImplemented(format!(
                "importing from {src:?} is not supported: send the tarball as the request body (fromSrc=-)"
            )))
        }
        (None, Some(image)) => return super::registry::pull(engine.clone(), image, q.get("tag"), q.get("platform"), &headers).await,
        (None, None) => return Err(EngineError::invalid("fromSrc or fromImage is required")),
    }
    let opts = ImportOptions {
        repo: q.get("repo").map(str::to_owned),
        tag: q.get("tag").map(str::to_owned),
        changes: q.all("changes"),
        message: q.get("message").map(str::to_owned),
    };
    let upload = engine.images.spool(body.into_data_stream()).await?;
    let id = engine.images.import(&upload, opts).await?;
    Ok(stream_response(&[json!({"status": id})]))
}

async fn load(State(engine): State<Arc<Engine>>, RawQuery(q): RawQuery, body: Body) -> Result<Response, EngineError> {
    let q = Query::parse(q);
    let quiet = q.flag("quiet", true);
    let upload = engine.images.spool(body.into_data_stream()).await?;
    // As dockerd: once the upload is read, the reply is a 200 progress
    // stream and a refused archive ends it with an error message (the CLI
    // prints it and exits 1; docker-py raises ImageLoadError). Without
    // `quiet`, each unpacked layer is reported as a finished progress bar.
    let messages: Vec<Value> = match engine.images.load(&upload).await {
        Ok(messages) => messages.iter().filter_map(|m| load_message_json(m, quiet)).collect(),
        Err(e) => vec![stream_error(&e.to_string())],
    };
    Ok(stream_response(&messages))
}

/// The progress-stream form of a load message (`None`: not shown when quiet).
fn load_message_json(message: &LoadMessage, quiet: bool) -> Option<Value> {
    match message {
        LoadMessage::Line(line) => Some(json!({"stream": format!("{line}\n")})),
        LoadMessage::Layer { .. } if quiet => None,
        LoadMessage::Layer { chain_id, tar_size } => {
            let hex = chain_id.strip_prefix("sha256:").unwrap_or(chain_id);
            Some(json!({
                "status": "Loading layer",
                "progressDetail": {"current": tar_size, "total": tar_size},
                "progress": format!("[{}>]  {}/{}", "=".repeat(49), human_size(*tar_size), human_size(*tar_size)),
                "id": &hex[..hex.len().min(12)],
            }))
        }
    }
}

/// Sizes as dockerd's progress bars print them (decimal units, 3 digits).
fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    // Four significant digits, trailing zeros dropped (Go's "%.4g").
    let decimals = if value < 10.0 { 3 } else if value < 100.0 { 2 } else if value < 1000.0 { 1 } else { 0 };
    let text = format!("{value:.decimals$}");
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    format!("{text}{}", units[unit])
}

/// The last message of a progress stream that failed.
fn stream_error(message: &str) -> Value {
    json!({"errorDetail": {"message": message}, "error": message})
}

/// Copies written bytes into a channel feeding a response body, in chunks.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

async fn save(engine: Arc<Engine>, names: Vec<String>) -> Result<Response, EngineError> {
    if names.is_empty() {
        return Err(EngineError::invalid("no image names given"));
    }
    // Every name is resolved before the first byte, so a bad one is a 404.
    let plan = engine.images.save_plan(&names)?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let images = engine.images.clone();
    tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
        let result = images.write_save(&plan, writer).and_then(|mut w| w.flush());
        if let Err(e) = result {
            tracing::warn!(error = %e, "image save failed");
            let _ = tx.blocking_send(Err(e));
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    Ok(r)
}

async fn save_many(State(engine): State<Arc<Engine>>, RawQuery(q): RawQuery) -> Result<Response, EngineError> {
    let q = Query::parse(q);
    save(engine, q.all("names")).await
}

async fn prune(State(engine): State<Arc<Engine>>, RawQuery(q): RawQuery) -> Result<Response, EngineError> {
    let q = Query::parse(q);
    let filters = q.filters()?;
    let all = q.flag("all", false);
    let report = engine.images.prune(all, &filters).await?;
    let deleted = delete_items_json(&report.deleted);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "ImagesDeleted": if deleted.is_empty() { Value::Null } else { Value::Array(deleted) },
            "SpaceReclaimed": report.space_reclaimed,
        }),
    ))
}

/// Splits `name/action` at the last `/`, when the action is one of `actions`.
fn split_action<'a>(rest: &'a str, actions: &[&str]) -> Option<(&'a str, &'a str)> {
    let (name, action) = rest.rsplit_once('/')?;
    (actions.contains(&action) && !name.is_empty()).then_some((name, action))
}

fn page_not_found() -> EngineError {
    EngineError::not_found("page not found")
}

async fn get_image(
    State(engine): State<Arc<Engine>>,
    Path(rest): Path<String>,
    version: Option<Extension<ApiVersion>>,
) -> Result<Response, EngineError> {
    let (name, action) = split_action(&rest, &["json", "history", "get"]).ok_or_else(page_not_found)?;
    let version = version.map_or_else(ApiVersion::current, |Extension(v)| v);
    match action {
        "json" => inspect(&engine, name, version),
        "history" => history(&engine, name),
        _ => save(engine.clone(), vec![name.to_string()]).await,
    }
}

async fn post_image(
    State(engine): State<Arc<Engine>>,
    Path(rest): Path<String>,
    RawQuery(q): RawQuery,
    headers: axum::http::HeaderMap,
) -> Result<Response, EngineError> {
    let (name, action) = split_action(&rest, &["tag", "push"]).ok_or_else(page_not_found)?;
    let q = Query::parse(q);
    if action == "push" {
        return super::registry::push(engine.clone(), name, q.get("tag"), &headers).await;
    }
    let repo = q.get("repo").unwrap_or_default();
    if repo.is_empty() {
        return Err(EngineError::invalid("repository name must have at least one component"));
    }
    engine.images.tag(name, repo, q.get("tag")).await?;
    Ok(StatusCode::CREATED.into_response())
}

async fn delete_image(
    State(engine): State<Arc<Engine>>,
    Path(rest): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, EngineError> {
    let q = Query::parse(q);
    let items = engine.images.remove(&rest, q.flag("force", false)).await?;
    Ok(json_response(StatusCode::OK, &Value::Array(delete_items_json(&items))))
}

/// `docker image inspect` output; the CLI prints it with the key order
/// kept, so the fields are in dockerd's order.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct InspectJson {
    id: String,
    repo_tags: Vec<String>,
    repo_digests: Vec<String>,
    parent: String,
    comment: String,
    created: String,
    /// Left out from API 1.45 on, as dockerd does.
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_config: Option<Value>,
    docker_version: String,
    author: String,
    config: Value,
    architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
    os: String,
    size: i64,
    graph_driver: Value,
    #[serde(rename = "RootFS")]
    root_fs: Value,
    metadata: Value,
}

/// The first API version whose image inspect has no `Container` and
/// `ContainerConfig`.
const NO_CONTAINER_FIELDS: ApiVersion = ApiVersion { major: 1, minor: 45 };

fn inspect(engine: &Engine, name: &str, version: ApiVersion) -> Result<Response, EngineError> {
    let d = engine.images.inspect(name)?;
    let last_tag = match d.last_tag_time {
        Some(t) => config::format_rfc3339(t, 0),
        None => "0001-01-01T00:00:00Z".to_string(),
    };
    let out = InspectJson {
        id: d.summary.id.clone(),
        repo_tags: d.summary.repo_tags.clone(),
        repo_digests: d.summary.repo_digests.clone(),
        parent: d.parent.clone().unwrap_or_default(),
        comment: d.view.comment.clone().unwrap_or_default(),
        created: d.view.created.clone().unwrap_or_else(|| config::format_rfc3339(0, 0)),
        container: (version < NO_CONTAINER_FIELDS).then(|| d.view.container.clone().unwrap_or_default()),
        container_config: (version < NO_CONTAINER_FIELDS).then(|| d.view.container_config.clone().unwrap_or(Value::Null)),
        docker_version: d.view.docker_version.clone().unwrap_or_default(),
        author: d.view.author.clone().unwrap_or_default(),
        config: d.view.config.clone().unwrap_or(Value::Null),
        architecture: d.view.architecture.clone().unwrap_or_default(),
        variant: d.view.variant.clone().filter(|v| !v.is_empty()),
        os: d.view.os.clone().unwrap_or_else(|| "linux".into()),
        size: d.summary.size,
        graph_driver: json!({"Data": {}, "Name": engine.driver}),
        root_fs: json!({"Type": "layers", "Layers": d.view.rootfs.diff_ids}),
        metadata: json!({"LastTagTime": last_tag}),
    };
    // Serialised from the struct, not a `Value`, to keep the field order.
    let text = serde_json::to_string(&out).map_err(|e| EngineError::internal(e.to_string()))?;
    let mut r = (StatusCode::OK, text).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

fn history(engine: &Engine, name: &str) -> Result<Response, EngineError> {
    let rows = engine.images.history(name)?;
    let out: Vec<Value> = rows
        .iter()
        .map(|h| {
            json!({
                "Id": h.id,
                "Created": h.created,
                "CreatedBy": h.created_by,
                "Tags": if h.tags.is_empty() { Value::Null } else { json!(h.tags) },
                "Size": h.size,
                "Comment": h.comment,
            })
        })
        .collect();
    Ok(json_response(StatusCode::OK, &Value::Array(out)))
}

#[cfg(test)]
mod tests {

    #[test]
    fn load_progress_as_dockerd_prints_it() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1_234_567), "1.235MB");
        assert_eq!(human_size(2_000_000), "2MB");
        assert_eq!(human_size(123_456_789), "123.5MB");
        let layer = LoadMessage::Layer { chain_id: format!("sha256:{}", "ab".repeat(32)), tar_size: 2_000_000 };
        assert_eq!(load_message_json(&layer, true), None);
        let shown = load_message_json(&layer, false).unwrap();
        assert_eq!(shown["id"], "abababababab");
        assert_eq!(shown["progressDetail"]["total"], 2_000_000);
        assert_eq!(load_message_json(&LoadMessage::Line("Loaded image: a:b".into()), true).unwrap()["stream"], "Loaded image: a:b\n");
    }

    use super::*;

    #[test]
    fn query_keeps_repeated_keys_and_decodes() {
        let q = Query::parse(Some("fromSrc=-&repo=myimp%3Av1&changes=CMD+%5B%22sh%22%5D&changes=ENV%20A%3D1".into()));
        assert_eq!(q.get("repo"), Some("myimp:v1"));
        assert_eq!(q.all("changes"), vec!["CMD [\"sh\"]".to_string(), "ENV A=1".to_string()]);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn filters_accept_both_shapes() {
        let cli = Query::parse(Some(format!("filters={}", "%7B%22dangling%22%3A%7B%22true%22%3Atrue%7D%7D")));
        assert_eq!(cli.filters().expect("cli")["dangling"], vec!["true".to_string()]);
        let py = Query::parse(Some("filters=%7B%22reference%22%3A%5B%22busybox%22%5D%7D".into()));
        assert_eq!(py.filters().expect("py")["reference"], vec!["busybox".to_string()]);
        assert!(Query::parse(Some("filters=%5B1%5D".into())).filters().is_err());
    }

    #[test]
    fn actions_split_off_names_with_slashes_and_colons() {
        assert_eq!(split_action("localhost:5000/a/b:c/json", &["json"]), Some(("localhost:5000/a/b:c", "json")));
        assert_eq!(split_action("busybox/history", &["json", "history"]), Some(("busybox", "history")));
        assert_eq!(split_action("busybox", &["json"]), None);
        assert_eq!(split_action("/json", &["json"]), None);
    }
}
