//! `GET /health` (open) and `GET /platform/health` (404 without an API key,
//! 401 on a wrong one): the default deployment's at the root, each
//! deployment's under `/deployments/NAME/`; and `GET /metrics`, the whole
//! server's.

use super::init::no_such_deployment;
use super::{App, Deployment, auth, json_error};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub async fn health_default(State(app): State<Arc<App>>) -> Response {
    default_body(&app)
}

pub async fn platform_health_default(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match app.default_deployment() {
        Some(deployment) => platform(&deployment, &headers),
        None => default_body(&app),
    }
}

pub async fn health(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    named_body(&app, &name)
}

pub async fn platform_health(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    match app.deployment(&name) {
        Some(deployment) => platform(&deployment, &headers),
        None => no_such_deployment(&name),
    }
}

/// `/platform/health`: the deployment's health behind its API key (404
/// without one).
fn platform(deployment: &Deployment, headers: &HeaderMap) -> Response {
    auth::gate(deployment.api_key.as_deref(), headers, "API key")
        .unwrap_or_else(|| body(deployment))
}

fn default_body(app: &App) -> Response {
    match app.default_deployment() {
        Some(deployment) => body(&deployment),
        None => json_error(
            StatusCode::NOT_FOUND,
            "no default deployment: see /deployments/NAME/health",
        ),
    }
}

fn named_body(app: &App, name: &str) -> Response {
    match app.deployment(name) {
        Some(deployment) => body(&deployment),
        None => no_such_deployment(name),
    }
}

fn body(d: &Deployment) -> Response {
    let version = d.plugin.current();
    Json(json!({
        "status": "healthy",
        "agent_loop": version.name(),
        "active_rollouts": d.places.taken(),
        "completed_rollouts": d.stats.completed.load(Ordering::Relaxed),
        "records": d.idempotency.len(),
        "deployment": &*d.name,
        "build": version.build,
        "capacity": {
            "rollouts": d.capacity,
            "running": d.max_concurrent,
            "machine_holds": d.machine.instances,
            "bound": d.machine.bound.name(),
        },
    }))
    .into_response()
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
