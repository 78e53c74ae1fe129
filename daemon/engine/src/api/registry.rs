//! Pull and push routes: `POST /images/create?fromImage=` and
//! `POST /images/{name}/push`, and the JSON progress stream the docker CLI
//! draws its bars from (one object per message, each ending in `\r\n`).
//!
//! Failures found before the first message (no such manifest, access
//! denied, registry unreachable) are plain HTTP errors, as dockerd answers
//! them; later ones end the stream with an `errorDetail` message.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::error::EngineError;
use crate::images::reference::{valid_tag, Reference};
use crate::registry::{Credentials, Detail, Progress, RegistryService};
use crate::state::Engine;

/// The JSON object of one progress message.
pub fn progress_json(p: &Progress) -> Value {
    match p {
        Progress::Status { id, status, detail } => {
            let mut m = serde_json::Map::new();
            m.insert("status".into(), Value::from(status.clone()));
            match detail {
                Detail::None => {}
                Detail::Empty => {
                    m.insert("progressDetail".into(), json!({}));
                }
                Detail::Counts { current, total } => {
                    m.insert("progressDetail".into(), json!({"current": current, "total": total}));
                }
            }
            if let Some(id) = id {
                m.insert("id".into(), Value::from(id.clone()));
            }
            Value::Object(m)
        }
        Progress::Aux(v) => json!({"progressDetail": {}, "aux": v}),
        Progress::Error(message) => json!({"errorDetail": {"message": message}, "error": message}),
    }
}

fn service(engine: &Engine) -> Result<Arc<RegistryService>, EngineError> {
    Ok(Arc::new(RegistryService::new(
        engine.images.clone(),
        engine.events.clone(),
        engine.config.insecure_registries.clone(),
        &engine.driver_dir().join("registry"),
    )?))
}

fn credentials(headers: &HeaderMap) -> Result<Credentials, EngineError> {
    let value = headers.get("X-Registry-Auth").map(|v| v.to_str().map_err(|_| EngineError::invalid("X-Registry-Auth is not ASCII")));
    let value = value.transpose()?;
    Ok(Credentials::from_header(value)?)
}

/// A streaming progress reply fed by `rx`.
fn stream_reply(rx: tokio::sync::mpsc::UnboundedReceiver<Progress>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let p = rx.recv().await?;
        let mut line = progress_json(&p).to_string();
        line.push_str("\r\n");
        Some((Ok::<Bytes, std::io::Error>(Bytes::from(line)), rx))
    });
    let mut r = (StatusCode::OK, Body::from_stream(stream)).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The reference a pull names: `fromImage` (which may carry a tag or
/// digest) and `tag` (a tag, or a digest as the CLI sends it).
pub fn pull_reference(from_image: &str, tag: Option<&str>) -> Result<Reference, EngineError> {
    let mut r = Reference::parse(from_image)?;
    match tag.map(str::trim).filter(|t| !t.is_empty()) {
        Some(d) if d.starts_with("sha256:") => {
            if !crate::images::config::is_sha256_digest(d) {
                return Err(EngineError::invalid(format!("invalid digest: {d:?}")));
            }
            r.tag = None;
            r.digest = Some(d.to_string());
        }
        Some(t) => {
            if !valid_tag(t) {
                return Err(EngineError::invalid(format!("invalid tag format: {t:?}")));
            }
            r.tag = Some(t.to_string());
        }
        None => {}
    }
    if r.tag.is_none() && r.digest.is_none() {
        r.tag = Some("latest".to_string());
    }
    Ok(r)
}

/// The architecture a pull picks from a manifest list: the `platform`
/// query parameter (`linux/arm64`, `linux/arm64/v8`) or the host's.
pub fn pull_architecture(platform: Option<&str>) -> Result<String, EngineError> {
    let Some(p) = platform.map(str::trim).filter(|p| !p.is_empty()) else {
        return Ok(crate::images::config::go_arch().to_string());
    };
    let mut parts = p.split('/');
    match (parts.next(), parts.next()) {
        (Some("linux"), Some(arch)) if !arch.is_empty() => Ok(arch.to_string()),
        _ => Err(EngineError::invalid(format!("unsupported platform {p:?}: this engine runs linux/<architecture> images"))),
    }
}

/// `POST /images/create?fromImage=NAME&tag=TAG[&platform=linux/ARCH]`.
pub async fn pull(
    engine: Arc<Engine>,
    from_image: &str,
    tag: Option<&str>,
    platform: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, EngineError> {
    let reference = pull_reference(from_image, tag)?;
    let arch = pull_architecture(platform)?;
    let creds = credentials(headers)?;
    let svc = service(&engine)?;
    let prepared = svc.prepare_pull(reference, creds, &arch).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let shown = prepared.familiar();
        if let Err(e) = svc.run_pull(prepared, &tx).await {
            tracing::warn!(reference = %shown, error = %e, "pull failed");
            let _ = tx.send(Progress::Error(e.to_string()));
        }
    });
    Ok(stream_reply(rx))
}

/// `POST /images/{name}/push?tag=TAG`.
pub async fn push(engine: Arc<Engine>, name: &str, tag: Option<&str>, headers: &HeaderMap) -> Result<Response, EngineError> {
    let creds = credentials(headers)?;
    let svc = service(&engine)?;
    let (repo, items) = svc.plan_push(name, tag)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        if let Err(e) = svc.run_push(&repo, items, creds, &tx).await {
            tracing::warn!(repository = %repo.name, error = %e, "push failed");
            let _ = tx.send(Progress::Error(e.to_string()));
        }
    });
    Ok(stream_reply(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_messages_have_the_cli_shape() {
        let p = Progress::Status { id: Some("latest".into()), status: "Pulling from library/busybox".into(), detail: Detail::None };
        assert_eq!(progress_json(&p), json!({"status": "Pulling from library/busybox", "id": "latest"}));
        let p = Progress::Status { id: Some("97e70d161e81".into()), status: "Downloading".into(), detail: Detail::Counts { current: 1, total: 2 } };
        assert_eq!(progress_json(&p), json!({"status": "Downloading", "progressDetail": {"current": 1, "total": 2}, "id": "97e70d161e81"}));
        let p = Progress::Status { id: Some("a".into()), status: "Pull complete".into(), detail: Detail::Empty };
        assert_eq!(progress_json(&p), json!({"status": "Pull complete", "progressDetail": {}, "id": "a"}));
        assert_eq!(progress_json(&Progress::Error("boom".into())), json!({"errorDetail": {"message": "boom"}, "error": "boom"}));
    }

    #[test]
    fn pull_references_take_tags_and_digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(pull_reference("docker.io/library/busybox", Some("1.36")).expect("tag").to_string(), "docker.io/library/busybox:1.36");
        let r = pull_reference("127.0.0.1:5000/bb", Some(&d)).expect("digest");
        assert_eq!((r.tag.as_deref(), r.digest.as_deref()), (None, Some(d.as_str())));
        assert_eq!(pull_reference("busybox", None).expect("default").tag.as_deref(), Some("latest"));
        assert!(pull_reference("busybox", Some("sha256:short")).is_err());
        assert!(pull_reference("busybox", Some("bad tag")).is_err());
        assert!(pull_reference("BusyBox", None).is_err());
        assert_eq!(pull_architecture(Some("linux/arm64/v8")).expect("platform"), "arm64");
        assert_eq!(pull_architecture(None).expect("host"), crate::images::config::go_arch());
        assert!(pull_architecture(Some("windows/amd64")).is_err());
    }
}
