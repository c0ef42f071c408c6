//! `GET /health` (open) and `GET /platform/health` (404 without an API key,
//! 401 on a wrong one): the default deployment's at the root, each
//! deployment's under `/deployments/NAME/`; and `GET /metrics`, the whole
//! server's.

use super::init::no_such_deployment;
use super::{App, Deployment, auth, json_error};
use crate::cluster::Counts;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub async fn health_default(State(app): State<Arc<App>>) -> Response {
    default_body(&app).await
}

pub async fn platform_health_default(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match app.default_deployment() {
        Some(deployment) => platform(&app, &deployment, &headers).await,
        None => default_body(&app).await,
    }
}

pub async fn health(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    named_body(&app, &name).await
}

pub async fn platform_health(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    match app.deployment(&name) {
        Some(deployment) => platform(&app, &deployment, &headers).await,
        None => no_such_deployment(&name),
    }
}

/// `/platform/health`: the deployment's health behind its API key (404
/// without one).
async fn platform(app: &App, deployment: &Deployment, headers: &HeaderMap) -> Response {
    match auth::gate(deployment.api_key.as_deref(), headers, "API key") {
        Some(refusal) => refusal,
        None => body(app, deployment).await,
    }
}

async fn default_body(app: &App) -> Response {
    match app.default_deployment() {
        Some(deployment) => body(app, &deployment).await,
        None => json_error(
            StatusCode::NOT_FOUND,
            "no default deployment: see /deployments/NAME/health",
        ),
    }
}

async fn named_body(app: &App, name: &str) -> Response {
    match app.deployment(name) {
        Some(deployment) => body(app, &deployment).await,
        None => no_such_deployment(name),
    }
}

/// How long `/health` waits for the other replicas' counts.
const ASK_REDIS_AT_MOST: std::time::Duration = std::time::Duration::from_millis(250);

/// The deployment's health. With `--redis`, `active_rollouts` and
/// `completed_rollouts` are totals over the replicas (the others' as of
/// their last beat) and `replica` has this one's own.
async fn body(app: &App, d: &Deployment) -> Response {
    let version = d.plugin.current();
    let own = Counts {
        active: d.places.taken() as u64,
        completed: d.stats.completed.load(Ordering::Relaxed),
    };
    let mut totals = own;
    let mut cluster = None;
    if let Some(c) = &app.cluster {
        let mut about = json!({
            "replica": c.replica(),
            "active_rollouts": own.active,
            "completed_rollouts": own.completed,
        });
        // A slow Redis must not fail readiness probes (every replica
        // would leave the Service at once): the replica's own counts then.
        match tokio::time::timeout(ASK_REDIS_AT_MOST, c.others(&d.name)).await {
            Ok(Ok(others)) => {
                totals.active += others.counts.active;
                totals.completed += others.counts.completed;
                about["replicas"] = json!(others.replicas + 1);
            }
            Ok(Err(e)) => about["redis"] = json!(format!("unreachable: {e}")),
            Err(_) => {
                about["redis"] = json!(format!(
                    "unreachable: no answer in {} ms",
                    ASK_REDIS_AT_MOST.as_millis()
                ))
            }
        }
        cluster = Some(about);
    }
    let mut body = json!({
        "status": "healthy",
        "agent_loop": version.name(),
        "active_rollouts": totals.active,
        "completed_rollouts": totals.completed,
        "records": d.idempotency.len(),
        "deployment": &*d.name,
        "build": version.build,
        "capacity": {
            "rollouts": d.capacity,
            "running": d.max_concurrent,
            "machine_holds": d.machine.instances,
            "bound": d.machine.bound.name(),
        },
    });
    if let Some(cluster) = cluster {
        body["cluster"] = cluster;
    }
    Json(body).into_response()
}

/// `GET /metrics`: the same rule as `/platform/health`, with the server's
/// `--api-key` (404 without one, 401 without it).
pub async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = auth::gate(app.config.defaults.api_key.as_deref(), &headers, "API key") {
        return refusal;
    }
    let now: Vec<(String, usize, usize)> = app
        .deployments()
        .iter()
        .map(|d| {
            let (running, queued) = d.running_and_queued();
            (d.name.to_string(), running, queued)
        })
        .collect();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(&now, app.deliveries.pending()),
    )
        .into_response()
}
