//! Volume routes: `docker volume create/ls/inspect/rm/prune`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};

use super::{ApiVersion, QueryParams};
use crate::error::{EngineError, JSON_CONTENT_TYPE};
use crate::filters::Filters;
use crate::state::Engine;
use crate::volumes::{Volume, LOCAL_DRIVER};

/// The volume routes.
pub fn routes() -> Router<Arc<Engine>> {
    Router::new()
        .route("/volumes", get(list))
        .route("/volumes/create", post(create))
        .route("/volumes/prune", post(prune))
        .route("/volumes/{name}", get(inspect).delete(remove))
}

/// A volume in Docker's JSON shape.
pub fn volume_json(v: &Volume) -> Value {
    let labels = if v.record.anonymous && v.record.labels.is_empty() { Value::Null } else { json!(v.record.labels) };
    json!({
        "CreatedAt": v.record.created_at,
        "Driver": LOCAL_DRIVER,
        "Labels": labels,
        "Mountpoint": v.mountpoint.display().to_string(),
        "Name": v.record.name,
        "Options": null,
        "Scope": "local",
    })
}

fn string_map(v: Option<&Value>, what: &str) -> Result<BTreeMap<String, String>, EngineError> {
    match v {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(EngineError::invalid(format!("{what} values must be strings"))),
            })
            .collect(),
        Some(_) => Err(EngineError::invalid(format!("{what} must be a JSON object"))),
    }
}

async fn create(State(engine): State<Arc<Engine>>, body: Bytes) -> Result<Response, EngineError> {
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(|e| EngineError::invalid(format!("invalid JSON body: {e}")))?
    };
    if !body.is_object() {
        return Err(EngineError::invalid("the request body must be a JSON object"));
    }
    let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let (name, driver) = (text("Name"), text("Driver"));
    let opts = string_map(body.get("DriverOpts"), "DriverOpts")?;
    let labels = string_map(body.get("Labels"), "Labels")?;
    let volumes = engine.volumes.clone();
    let v = tokio::task::spawn_blocking(move || volumes.create(&name, &driver, &opts, labels))
        .await
        .map_err(|e| EngineError::internal(format!("volume create failed: {e}")))??;
    let mut response = (StatusCode::CREATED, volume_json(&v).to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_CONTENT_TYPE));
    Ok(response)
}

fn dangling_filter(filters: &Filters) -> Result<Option<bool>, EngineError> {
    let mut out = None;
    for d in filters.get("dangling") {
        out = Some(match d.to_ascii_lowercase().as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(EngineError::invalid(format!("invalid filter 'dangling={d}'"))),
        });
    }
    Ok(out)
}

async fn list(State(engine): State<Arc<Engine>>, params: QueryParams) -> Result<Json<Value>, EngineError> {
    let filters = Filters::parse(params.get("filters"))?;
    filters.validate(&["dangling", "name", "label", "driver"])?;
    let dangling = dangling_filter(&filters)?;
    let names = filters.get("name");
    let mut rows = Vec::new();
    for v in engine.volumes.list() {
        if !names.is_empty() && !names.iter().any(|n| v.record.name.contains(n)) {
            continue;
        }
        if !filters.exact_match("driver", LOCAL_DRIVER) || !filters.match_labels("label", &v.record.labels) {
            continue;
        }
        if let Some(want) = dangling {
            if engine.volumes.users_of(&v.record.name).is_empty() != want {
                continue;
            }
        }
        rows.push(volume_json(&v));
    }
    Ok(Json(json!({"Volumes": rows, "Warnings": null})))
}

async fn inspect(State(engine): State<Arc<Engine>>, Path(name): Path<String>) -> Result<Json<Value>, EngineError> {
    Ok(Json(volume_json(&engine.volumes.get(&name)?)))
}

async fn remove(State(engine): State<Arc<Engine>>, Path(name): Path<String>, params: QueryParams) -> Result<Response, EngineError> {
    let force = params.bool_or("force", false);
    let volumes = engine.volumes.clone();
    tokio::task::spawn_blocking(move || volumes.remove(&name, force))
        .await
        .map_err(|e| EngineError::internal(format!("volume remove failed: {e}")))??;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /volumes/prune`: unused volumes go; from API 1.42 on only
/// anonymous ones unless the `all` filter is true (as dockerd).
async fn prune(
    State(engine): State<Arc<Engine>>,
    Extension(version): Extension<ApiVersion>,
    params: QueryParams,
) -> Result<Json<Value>, EngineError> {
    let filters = Filters::parse(params.get("filters"))?;
    filters.validate(&["label", "label!", "all"])?;
    let mut all = version < ApiVersion { major: 1, minor: 42 };
    for a in filters.get("all") {
        all = match a.to_ascii_lowercase().as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(EngineError::invalid(format!("invalid filter 'all={a}'"))),
        };
    }
    let mut deleted = Vec::new();
    let mut reclaimed: i64 = 0;
    for v in engine.volumes.list() {
        let r = &v.record;
        if !all && !r.anonymous {
            continue;
        }
        if !filters.match_labels("label", &r.labels) {
            continue;
        }
        if filters.get("label!").iter().any(|l| {
            let (k, want) = l.split_once('=').map_or((*l, None), |(k, v)| (k, Some(v)));
            r.labels.get(k).is_some_and(|have| want.is_none_or(|w| w == have))
        }) {
            continue;
        }
        if !engine.volumes.users_of(&r.name).is_empty() {
            continue;
        }
        let volumes = engine.volumes.clone();
        let name = r.name.clone();
        let result = tokio::task::spawn_blocking(move || {
            let size = volumes.size(&name).max(0);
            volumes.remove(&name, false).map(|()| size)
        })
        .await
        .map_err(|e| EngineError::internal(format!("volume prune failed: {e}")))?;
        match result {
            Ok(size) => {
                deleted.push(r.name.clone());
                reclaimed += size;
            }
            Err(e) => tracing::warn!(volume = %r.name, error = %e, "prune could not remove a volume"),
        }
    }
    Ok(Json(json!({"VolumesDeleted": if deleted.is_empty() { Value::Null } else { json!(deleted) }, "SpaceReclaimed": reclaimed})))
}
