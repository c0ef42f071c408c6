//! `GET /v1/rollout/{id}` (a rollout's status) and `POST
//! /v1/rollout/cancel` (stop rollouts of an abandoned step), for the
//! default deployment at the root and each under `/deployments/NAME/`.
//! Auth as init: the deployment's API key, when it has one.

use super::init::no_such_deployment;
use super::{App, Deployment, auth, json_error};
use crate::cluster::SharedStatus;
use crate::live::{Disposition, Progress, Selection, Status};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::sync::Arc;

pub async fn status_default(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match app.default_deployment() {
        Some(deployment) => status(&app, &deployment, &id, &headers).await,
        None => no_default(),
    }
}

pub async fn status_named(
    State(app): State<Arc<App>>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    match app.deployment(&name) {
        Some(deployment) => status(&app, &deployment, &id, &headers).await,
        None => no_such_deployment(&name),
    }
}

pub async fn cancel_default(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match app.default_deployment() {
        Some(deployment) => cancel(&app, &deployment, &headers, body).await,
        None => no_default(),
    }
}

pub async fn cancel_named(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match app.deployment(&name) {
        Some(deployment) => cancel(&app, &deployment, &headers, body).await,
        None => no_such_deployment(&name),
    }
}

fn no_default() -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "no default deployment: use /deployments/NAME/v1/rollout/...",
    )
}

/// `{rollout_id, status, reward?, deployment}`: live rollouts from the
/// live list, finished ones from their idempotency record (for the record
/// TTL), else (with `--redis`) as the other replicas recorded it, else
/// `unknown`.
async fn status(app: &App, deployment: &Deployment, id: &str, headers: &HeaderMap) -> Response {
    if let Some(refusal) = auth::require(deployment.api_key.as_deref(), headers) {
        return refusal;
    }
    let mut progress = deployment
        .live
        .progress(id)
        .or_else(|| deployment.idempotency.ended(id));
    let mut replica = None;
    if progress.is_none()
        && let Some(cluster) = &app.cluster
    {
        match cluster.status(&deployment.name, id).await {
            Ok(None) => {}
            Ok(Some(SharedStatus::Ended(ended))) => progress = Some(ended),
            Ok(Some(SharedStatus::Running { replica: on, alive })) => {
                // Queued or running there; a replica that stopped beating
                // (killed) cannot say how it ended.
                progress = alive.then_some(Progress {
                    status: Status::Running,
                    reward: None,
                });
                replica = Some((on, alive));
            }
            Err(e) => {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("cannot ask the other replicas: {e}"),
                );
            }
        }
    }
    let mut body = json!({
        "rollout_id": id,
        "status": progress.map_or("unknown", |p| p.status.as_str()),
        "deployment": &*deployment.name,
    });
    if let Some((on, alive)) = replica {
        body["replica"] = json!(on);
        if !alive {
            body["detail"] = json!(format!("replica {on} accepted it and has stopped"));
        }
    }
    if let Some(Progress {
        reward: Some(reward),
        ..
    }) = progress
    {
        body["reward"] = json!(reward);
    }
    Json(body).into_response()
}

async fn cancel(app: &App, deployment: &Deployment, headers: &HeaderMap, body: Body) -> Response {
    if let Some(refusal) = auth::require(deployment.api_key.as_deref(), headers) {
        return refusal;
    }
    let Ok(bytes) = axum::body::to_bytes(body, app.max_body_bytes).await else {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body is larger than {} bytes", app.max_body_bytes),
        );
    };
    let selection = match selection(&bytes) {
        Ok(selection) => selection,
        Err(message) => return json_error(StatusCode::UNPROCESSABLE_ENTITY, &message),
    };
    let mut dispositions = cancel_here(deployment, &selection);
    let Some(cluster) = &app.cluster else {
        return Json(json!({ "dispositions": to_map(dispositions) })).into_response();
    };
    // The other replicas cancel theirs; an id not found here is answered
    // from its status in Redis.
    let told = match cluster.tell_cancel(&deployment.name, &bytes).await {
        Ok(heard) => json!(heard),
        Err(e) => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("cannot tell the other replicas to cancel: {e}"),
            );
        }
    };
    for (id, disposition) in &mut dispositions {
        if *disposition != Disposition::NotFound {
            continue;
        }
        *disposition = match cluster.status(&deployment.name, id).await {
            Ok(Some(SharedStatus::Running { alive: true, .. })) => Disposition::CancelledRunning,
            Ok(Some(SharedStatus::Ended(_))) => Disposition::AlreadyFinished,
            _ => Disposition::NotFound,
        };
    }
    Json(json!({ "dispositions": to_map(dispositions), "replicas_told": told })).into_response()
}

/// Cancels `selection` among this replica's rollouts of `deployment`.
fn cancel_here(deployment: &Deployment, selection: &Selection) -> Vec<(String, Disposition)> {
    let dispositions = deployment
        .live
        .cancel(selection, |id| deployment.idempotency.ended(id).is_some());
    tracing::info!(
        deployment = %deployment.name,
        ?selection,
        cancelled = dispositions.len(),
        "cancel requested"
    );
    dispositions
}

fn to_map(dispositions: Vec<(String, Disposition)>) -> Map<String, Value> {
    dispositions
        .into_iter()
        .map(|(id, d)| (id, Value::from(d.as_str())))
        .collect()
}

/// Applies another replica's cancel (`--redis`) to this one's rollouts.
pub fn cancel_told(app: &App, deployment: &str, body: &[u8]) {
    let Some(deployment) = app.deployment(deployment) else {
        return;
    };
    match selection(body) {
        Ok(selection) => {
            cancel_here(&deployment, &selection);
        }
        Err(e) => tracing::warn!(error = %e, "another replica's cancel cannot be read"),
    }
}

/// The body: exactly one of `{"ids": [...]}`, `{"prefix": "..."}`,
/// `{"all": true}`.
fn selection(bytes: &[u8]) -> Result<Selection, String> {
    const SHAPE: &str =
        r#"the body must be exactly one of {"ids": [...]}, {"prefix": "..."}, {"all": true}"#;
    let body: Map<String, Value> =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JSON object ({e}): {SHAPE}"))?;
    let mut fields = body.into_iter();
    let (Some((key, value)), None) = (fields.next(), fields.next()) else {
        return Err(SHAPE.to_owned());
    };
    match (key.as_str(), value) {
        ("ids", Value::Array(ids)) => ids
            .into_iter()
            .map(|id| match id {
                Value::String(id) => Ok(id),
                other => Err(format!("ids must be strings, got {other}")),
            })
            .collect::<Result<_, _>>()
            .map(Selection::Ids),
        ("prefix", Value::String(prefix)) if !prefix.is_empty() => Ok(Selection::Prefix(prefix)),
        ("prefix", _) => Err(
            r#"prefix must be a non-empty string (to cancel every rollout: {"all": true})"#
                .to_owned(),
        ),
        ("all", Value::Bool(true)) => Ok(Selection::All),
        _ => Err(SHAPE.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_body_names_exactly_one_selection() {
        assert_eq!(
            selection(br#"{"ids": ["a", "b"]}"#),
            Ok(Selection::Ids(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            selection(br#"{"prefix": "step-3-"}"#),
            Ok(Selection::Prefix("step-3-".into()))
        );
        assert_eq!(selection(br#"{"all": true}"#), Ok(Selection::All));
        for (bad, says) in [
            (&br#"{"ids": ["a"], "all": true}"#[..], "exactly one of"),
            (br#"{}"#, "exactly one of"),
            (br#"{"all": false}"#, "exactly one of"),
            (br#"{"ids": [1]}"#, "ids must be strings"),
            (br#"{"prefix": ""}"#, "non-empty"),
            (br#"[1]"#, "not a JSON object"),
            (b"nope", "not a JSON object"),
        ] {
            let error = selection(bad).unwrap_err();
            assert!(
                error.contains(says),
                "{}: {error}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
