//! `GET /health` (open) and `GET /platform/health` (404 without an API key,
//! 401 on a wrong one).

use super::{App, auth, json_error};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub async fn health(State(app): State<Arc<App>>) -> Response {
    body(&app)
}

pub async fn platform_health(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match &app.api_key {
        None => json_error(StatusCode::NOT_FOUND, "Not Found"),
        Some(key) if !auth::authorized(key, &headers) => {
            json_error(StatusCode::UNAUTHORIZED, "Invalid or missing API key")
        }
        Some(_) => body(&app),
    }
}

fn body(app: &App) -> Response {
    Json(json!({
        "status": "healthy",
        "agent_loop": app.plugin.current().name(),
        "active_rollouts": app.places.taken(),
        "completed_rollouts": app.stats.completed.load(Ordering::Relaxed),
        "records": app.idempotency.len(),
        "capacity": {
            "rollouts": app.capacity,
            "running": app.max_concurrent,
            "machine_holds": app.machine.instances,
            "bound": app.machine.bound.name(),
        },
    }))
    .into_response()
}
