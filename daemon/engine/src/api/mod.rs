//! The Docker Engine API: routing and Docker's JSON shapes. This is the only
//! module that knows the wire format; handlers parse the request, call a
//! service and render its answer.
//!
//! Every route is served both unversioned (`/version`) and with an API
//! version prefix (`/v1.50/version`): [`strip_version`] removes the prefix
//! before routing, after checking it lies in
//! [`MIN_API_VERSION`]..=[`API_VERSION`].

pub mod containers;
pub mod detach;
pub mod images;
pub mod registry;
pub mod system;
pub mod volumes;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::error::{error_response, EngineError};
use crate::state::Engine;

/// The API version this engine speaks (the newest it accepts).
pub const API_VERSION: &str = "1.50";
/// The oldest API version accepted, as dockerd 28.
pub const MIN_API_VERSION: &str = "1.24";
/// The engine version reported by `/version` and `/info`.
pub const ENGINE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The API version of the request being served, from its path prefix (or
/// [`API_VERSION`] when the path has none). Stored in request extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion {
    pub major: u32,
    pub minor: u32,
}

impl ApiVersion {
    pub fn parse(text: &str) -> Option<Self> {
        let (major, minor) = text.split_once('.')?;
        if major.is_empty() || minor.is_empty() {
            return None;
        }
        if !major.bytes().chain(minor.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Self { major: major.parse().ok()?, minor: minor.parse().ok()? })
    }

    pub fn current() -> Self {
        Self::parse(API_VERSION).unwrap_or(Self { major: 1, minor: 50 })
    }

    pub fn minimum() -> Self {
        Self::parse(MIN_API_VERSION).unwrap_or(Self { major: 1, minor: 24 })
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Builds the whole API: routes, version prefix handling, Docker's common
/// headers and the JSON 404 for unknown paths.
pub fn router(engine: Arc<Engine>) -> Router {
    let debug = engine.config.debug;
    let routes = Router::new()
        .merge(system::routes())
        .merge(images::routes())
        .merge(containers::routes())
        .merge(volumes::routes())
        .fallback(page_not_found)
        // dockerd answers a known path with an unknown method like an
        // unknown path.
        .method_not_allowed_fallback(page_not_found)
        .with_state(engine)
        .layer(axum::middleware::from_fn(common_headers));
    // The prefix must be removed before the router matches, so this layer
    // wraps the finished router from outside.
    let outer = Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::from_fn(strip_version));
    let logged = if debug { outer.layer(axum::middleware::from_fn(log_request)) } else { outer };
    logged.layer(axum::middleware::from_fn(request_span))
}

/// One span per request, so everything a handler logs carries its method
/// and path.
async fn request_span(request: Request, next: Next) -> Response {
    use tracing::Instrument;
    let span = tracing::info_span!("request", method = %request.method(), path = %request.uri().path());
    next.run(request).instrument(span).await
}

async fn page_not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "page not found")
}

/// Removes a `/vX.Y` prefix, refusing versions out of range as dockerd does.
async fn strip_version(mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let mut version = ApiVersion::current();
    if let Some(rest) = path.strip_prefix("/v") {
        let (text, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if let Some(requested) = ApiVersion::parse(text) {
            if requested > ApiVersion::current() {
                return EngineError::invalid(format!(
                    "client version {requested} is too new. Maximum supported API version is {API_VERSION}"
                ))
                .into_response();
            }
            if requested < ApiVersion::minimum() {
                return EngineError::invalid(format!(
                    "client version {requested} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
                ))
                .into_response();
            }
            version = requested;
            let new_path = if tail.is_empty() { "/".to_string() } else { tail.to_string() };
            let new_uri = match request.uri().query() {
                Some(q) => format!("{new_path}?{q}"),
                None => new_path,
            };
            match new_uri.parse::<Uri>() {
                Ok(uri) => *request.uri_mut() = uri,
                Err(_) => return EngineError::invalid("malformed request path").into_response(),
            }
        }
    }
    request.extensions_mut().insert(version);
    next.run(request).await
}

/// Adds the headers dockerd puts on every response.
async fn common_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert("Api-Version", HeaderValue::from_static(API_VERSION));
    headers.insert("Ostype", HeaderValue::from_static("linux"));
    headers.insert("Docker-Experimental", HeaderValue::from_static("false"));
    headers.insert("Swarm", HeaderValue::from_static("inactive"));
    if let Ok(server) = HeaderValue::from_str(&format!("Stratad/{ENGINE_VERSION} (linux)")) {
        headers.insert(header::SERVER, server);
    }
    response
}

/// `-D`: one log line per request with method, path, status and time.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let start = Instant::now();
    let response = next.run(request).await;
    tracing::info!(
        %method,
        path = %uri,
        status = response.status().as_u16(),
        elapsed_ms = format_args!("{:.3}", start.elapsed().as_secs_f64() * 1000.0),
        "request"
    );
    response
}

/// The query string as ordered key/value pairs (keys may repeat), with a
/// Docker JSON error for a malformed query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryParams(pub Vec<(String, String)>);

impl QueryParams {
    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn get_all(&self, key: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }

    /// Docker's boolean rule for `key`, with `default` when it is absent.
    pub fn bool_or(&self, key: &str, default: bool) -> bool {
        self.get(key).map_or(default, bool_value)
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for QueryParams {
    type Rejection = EngineError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(pairs) =
            axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
                .await
                .map_err(|e| EngineError::invalid(format!("malformed query string: {}", e.body_text())))?;
        Ok(Self(pairs))
    }
}

/// Docker's rule for booleans in the query: "", "0", "no", "false" and
/// "none" (any case, trimmed) are false; anything else is true.
pub fn bool_value(text: &str) -> bool {
    !matches!(text.trim().to_ascii_lowercase().as_str(), "" | "0" | "no" | "false" | "none")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::body::Body;
    use axum::http::{Method, Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::events::EventBus;
    use crate::images::ImageService;
    use crate::server::Shutdown;
    use crate::state::{EngineConfig, EngineParts};

    /// A real engine on the vfs driver in a temp dir.
    fn engine(dir: &std::path::Path) -> Arc<Engine> {
        let snapshotter = strata_drivers::registry::open("vfs", &dir.join("vfs/snapshots-root"), &BTreeMap::new())
            .expect("open vfs");
        let events = EventBus::new();
        let images = Arc::new(ImageService::open(&dir.join("vfs/images"), snapshotter.clone(), events.clone()).unwrap());
        Arc::new(
            Engine::new(EngineParts {
                config: EngineConfig { data_root: dir.to_path_buf(), ..EngineConfig::default() },
                driver: "vfs".to_string(),
                snapshotter,
                events,
                image_stats: images.clone(),
                images,
                shutdown: Shutdown::new(),
            })
            .unwrap(),
        )
    }

    async fn call(engine: &Arc<Engine>, method: Method, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let request = Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
        let response = router(engine.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn ping_versions_and_unknown_routes() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let (status, headers, body) = call(&e, Method::HEAD, "/_ping").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_empty());
        assert_eq!(headers["api-version"], "1.50");
        assert_eq!(headers["ostype"], "linux");
        assert_eq!(headers["docker-experimental"], "false");
        let (_, _, body) = call(&e, Method::GET, "/v1.24/_ping").await;
        assert_eq!(body, "OK");

        for uri in ["/version", "/v1.50/version", "/v1.24/version"] {
            let (status, _, body) = call(&e, Method::GET, uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["ApiVersion"], "1.50");
            assert_eq!(v["MinAPIVersion"], "1.24");
            assert_eq!(v["Components"][0]["Name"], "Engine");
        }
        let (status, headers, body) = call(&e, Method::GET, "/v1.51/info").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers["content-type"], "application/json");
        assert!(body.contains("client version 1.51 is too new"), "{body}");
        let (status, _, body) = call(&e, Method::GET, "/v1.23/info").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("is too old. Minimum supported API version is 1.24"), "{body}");
        let (status, headers, body) = call(&e, Method::GET, "/v1.50/nothing/here").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body, r#"{"message":"page not found"}"#);
        // A wrong method on a known path is also Docker's JSON 404.
        let (status, _, body) = call(&e, Method::DELETE, "/version").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body, r#"{"message":"page not found"}"#);
    }

    #[tokio::test]
    async fn info_reports_driver_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let (status, _, body) = call(&e, Method::GET, "/v1.50/info").await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["Driver"], "vfs");
        assert_eq!(v["DriverStatus"], serde_json::Value::Null);
        assert_eq!(v["Images"], 0);
        assert_eq!(v["ID"], e.id.as_str());
        assert_eq!(v["DockerRootDir"], dir.path().display().to_string());
        assert_eq!(v["LoggingDriver"], "json-file");
        assert_eq!(v["CgroupDriver"], "cgroupfs");
        assert!(v["CgroupVersion"] == "1" || v["CgroupVersion"] == "2");
        assert_eq!(v["OSType"], "linux");
    }

    #[tokio::test]
    async fn events_replay_with_since_until_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let mut attrs = BTreeMap::new();
        attrs.insert("name".to_string(), "busybox:latest".to_string());
        e.events.publish(crate::events::Event::at("image", "tag", "sha256:1", attrs.clone(), 1_000_000_000_000));
        e.events.publish(crate::events::Event::at("image", "untag", "sha256:1", attrs, 2_000_000_000_000));
        e.events.publish(crate::events::Event::at("container", "start", "c1", BTreeMap::new(), 3_000_000_000_000));

        let (status, headers, body) = call(&e, Method::GET, "/v1.50/events?since=0&until=5000").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body.lines().count(), 3, "{body}");
        let uri = r#"/events?since=1500&until=5000&filters={"type":{"image":true}}"#.replace('{', "%7B").replace('}', "%7D").replace('"', "%22");
        let (_, _, body) = call(&e, Method::GET, &uri).await;
        let lines: Vec<serde_json::Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 1, "{body}");
        assert_eq!(lines[0]["Action"], "untag");
        let uri = r#"/events?until=5000&filters={"event":["tag","start"]}"#.replace('{', "%7B").replace('}', "%7D").replace('"', "%22");
        let (_, _, body) = call(&e, Method::GET, &uri).await;
        assert_eq!(body.lines().count(), 2, "{body}");

        // Image create events exist from API 1.46 on.
        e.events.publish(crate::events::Event::at("image", "create", "sha256:3", BTreeMap::new(), 4_000_000_000_000));
        let (_, _, body) = call(&e, Method::GET, "/v1.45/events?since=3500&until=5000").await;
        assert!(body.is_empty(), "{body}");
        let (_, _, body) = call(&e, Method::GET, "/v1.46/events?since=3500&until=5000").await;
        assert!(body.contains(r#""Action":"create""#), "{body}");

        let (status, _, body) = call(&e, Method::GET, "/events?since=10&until=5").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("cannot be after"), "{body}");
        let (status, _, _) = call(&e, Method::GET, "/events?since=yesterday").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, _) = call(&e, Method::GET, "/events?until=5&filters=notjson").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn events_follow_until_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let until = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            + 1.0;
        let uri = format!("/events?until={until:.9}");
        let bus = e.events.clone();
        let emitter = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            bus.emit("image", "delete", "sha256:2", BTreeMap::new());
        });
        let started = std::time::Instant::now();
        let (status, _, body) = call(&e, Method::GET, &uri).await;
        emitter.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains(r#""Action":"delete""#), "{body}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(e.events.subscriber_count(), 0);
    }

    #[tokio::test]
    async fn system_df_sections() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let (status, _, body) = call(&e, Method::GET, "/v1.50/system/df").await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for key in ["LayersSize", "Images", "Containers", "Volumes", "BuildCache"] {
            assert!(v.get(key).is_some(), "{key} missing: {body}");
        }
        let (_, _, body) = call(&e, Method::GET, "/system/df?type=image&type=volume").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v.get("Images").is_some() && v.get("Volumes").is_some());
        assert!(v.get("Containers").is_none() && v.get("BuildCache").is_none());
        let (status, _, body) = call(&e, Method::GET, "/system/df?type=nope").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("unknown object type: nope"));
    }

    #[test]
    fn docker_booleans() {
        for t in ["1", "true", "True", "yes", "anything"] {
            assert!(bool_value(t), "{t}");
        }
        for f in ["", "0", "no", "false", "FALSE", " none "] {
            assert!(!bool_value(f), "{f}");
        }
    }
}
