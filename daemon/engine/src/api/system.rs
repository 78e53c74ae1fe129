//! System routes: `/_ping`, `/version`.

use std::sync::Arc;

use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::api::{API_VERSION, ENGINE_VERSION, MIN_API_VERSION};
use crate::state::Engine;

pub fn routes() -> Router<Arc<Engine>> {
    Router::new()
        .route("/_ping", get(ping).head(ping))
        .route("/version", get(version))
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

async fn version() -> Json<serde_json::Value> {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let arch = go_arch();
    let details = serde_json::json!({
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
    Json(serde_json::json!({
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

/// The architecture in Go's naming, which Docker clients expect.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}
