//! The admin API, off unless `--admin-token` is set (then every call needs
//! `Authorization: Bearer TOKEN`):
//! - `GET /admin/deployments`: every deployment, its build and rollouts;
//! - `GET /admin/deployments/NAME`: one of them;
//! - `PUT /admin/deployments/NAME` with the plugin's bytes as the body:
//!   creates the deployment or swaps its plugin (compiled, its world
//!   checked, `get-tools` run on a sample request first; when any of that
//!   fails the answer is a 4xx naming why and the running build stays);
//! - `DELETE /admin/deployments/NAME`: refuses new inits at once, lets the
//!   running rollouts finish, then the deployment is unloaded.

use super::deployment::PluginBytes;
use super::init::no_such_deployment;
use super::swap::{Source, SwapError, Version};
use super::{App, Deployment, auth, json_error, valid_name};
use crate::runtime::LoadError;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

pub async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse(&app, &headers) {
        return refused;
    }
    let deployments: Vec<Value> = app
        .deployments()
        .iter()
        .map(|d| describe(&app, d))
        .collect();
    Json(json!({ "deployments": deployments })).into_response()
}

pub async fn show(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refuse(&app, &headers) {
        return refused;
    }
    match app.deployment(&name) {
        Some(d) => Json(describe(&app, &d)).into_response(),
        None => no_such_deployment(&name),
    }
}

pub async fn put(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(refused) = refuse(&app, &headers) {
        return refused;
    }
    if !valid_name(&name) {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "'{name}' cannot name a deployment: use 1-64 letters, digits, '.', '_' or '-', \
                 starting with a letter or digit"
            ),
        );
    }
    let limit = app.config.max_upload_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes.to_vec(),
        Err(_) => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the plugin is larger than {limit} bytes (--max-upload-mib {})",
                    limit >> 20
                ),
            );
        }
    };
    if bytes.is_empty() {
        return json_error(
            StatusCode::BAD_REQUEST,
            "the body is empty: PUT the plugin's .wasm bytes",
        );
    }
    let _one_at_a_time = app.changing.lock().await;
    let result = match app.deployment(&name) {
        Some(deployment) => deployment
            .plugin
            .upload(bytes)
            .await
            .map(|version| (deployment, version, StatusCode::OK)),
        None => {
            let made = Deployment::create(
                &name,
                PluginBytes::Upload(bytes),
                &app.config,
                app.compile_cache.clone(),
                &app.metrics,
            )
            .await;
            made.map(|d| {
                let d = Arc::new(d);
                app.add(d.clone());
                let version = d.plugin.current();
                (d, version, StatusCode::CREATED)
            })
        }
    };
    match result {
        Ok((deployment, version, status)) => {
            tracing::info!(deployment = %name, build = %version.label(), "plugin uploaded");
            (status, Json(describe(&app, &deployment))).into_response()
        }
        Err(e) => {
            tracing::warn!(deployment = %name, error = %e, "upload refused: the running build stays");
            json_error(upload_status(&e), &e.to_string())
        }
    }
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refuse(&app, &headers) {
        return refused;
    }
    let _one_at_a_time = app.changing.lock().await;
    match app.take_out(&name) {
        Some(deployment) => {
            let running = deployment.places.taken();
            tracing::info!(deployment = %name, running, "deployment deleted: new inits refused, running rollouts finish");
            Json(json!({
                "deleted": name,
                "active_rollouts": running,
            }))
            .into_response()
        }
        None => no_such_deployment(&name),
    }
}

/// 404 while the admin API is off, 401 without its token.
fn refuse(app: &App, headers: &HeaderMap) -> Option<Response> {
    auth::gate(app.config.admin_token.as_deref(), headers, "admin token")
}

/// A refused upload: the plugin's fault is 422 (it is not one we can
/// serve), the server's own state 503.
fn upload_status(e: &SwapError) -> StatusCode {
    match e {
        SwapError::Load(LoadError::Engine(_) | LoadError::Read { .. }) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        SwapError::Load(_) | SwapError::Tools(..) => StatusCode::UNPROCESSABLE_ENTITY,
        SwapError::NothingToReload(_) => StatusCode::CONFLICT,
    }
}

fn describe(app: &App, d: &Deployment) -> Value {
    let default = app
        .default_deployment()
        .is_some_and(|default| default.name == d.name);
    let versions: Vec<Value> = d.plugin.versions().iter().map(|v| version(v)).collect();
    let current = d.plugin.current();
    json!({
        "name": &*d.name,
        "default": default,
        "agent": current.name(),
        "plugin_sha256": current.sha256(),
        "loaded_at": unix_seconds(&current),
        "source": match &current.source {
            Source::File(path) => path.display().to_string(),
            Source::Upload => "upload".to_owned(),
        },
        "active_rollouts": d.places.taken(),
        "completed_rollouts": d.stats.completed.load(Ordering::Relaxed),
        "capacity": d.capacity,
        "versions": versions,
    })
}

/// A version and the rollouts running on it.
fn version(v: &Version) -> Value {
    json!({
        "agent": v.name(),
        "plugin_sha256": v.sha256(),
        "loaded_at": unix_seconds(v),
        "rollouts_in_flight": v.in_flight(),
    })
}

fn unix_seconds(v: &Version) -> f64 {
    v.loaded_at
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
