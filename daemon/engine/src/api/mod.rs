//! The Docker Engine API: routing and Docker's JSON shapes. This is the only
//! module that knows the wire format; handlers parse the request, call a
//! service and render its answer.
//!
//! Every route is served both unversioned (`/version`) and with an API
//! version prefix (`/v1.50/version`): [`strip_version`] removes the prefix
//! before routing, after checking it lies in
//! [`MIN_API_VERSION`]..=[`API_VERSION`].

pub mod images;
pub mod system;

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
        .fallback(page_not_found)
        .with_state(engine)
        .layer(axum::middleware::from_fn(common_headers));
    // The prefix must be removed before the router matches, so this layer
    // wraps the finished router from outside.
    let outer = Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::from_fn(strip_version));
    if debug {
        outer.layer(axum::middleware::from_fn(log_request))
    } else {
        outer
    }
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
