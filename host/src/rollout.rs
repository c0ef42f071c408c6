//! One accepted rollout, from its slot to its single terminal callback.
//!
//! Whatever the agent does (completes, errors, traps, returns without
//! completing) or the server does (shuts down), the trainer receives exactly
//! one `POST /v1/rollout/completed`.

use crate::protocol::{RolloutRequest, RolloutResponse, RolloutStatus};
use crate::runtime::{Instance, Plugin, RolloutHost, WitRolloutRequest};
use crate::server::App;
use crate::trainer::Endpoints;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tracing::Instrument;

const SHUTDOWN_MESSAGE: &str = "rollout-host shut down before the rollout finished";

/// Runs the agent and sends the callback. `_plugin` keeps the plugin the
/// rollout started with alive until it ends.
pub async fn run(
    app: Arc<App>,
    key: String,
    request: RolloutRequest,
    endpoints: Arc<Endpoints>,
    wit_request: WitRolloutRequest,
    mut instance: Instance,
    _plugin: Arc<Plugin>,
) {
    let span = tracing::info_span!("rollout", rollout_id = %request.rollout_id);
    async move {
        let deadline = app.limits.wall_clock;
        let outcome = tokio::select! {
            biased;
            _ = app.shutdown.cancelled() => None,
            ran = async {
                let _slot = app.slots.acquire().await;
                let started = Instant::now();
                (tokio::time::timeout(deadline, instance.run(&wit_request)).await, started)
            } => Some(ran),
        };
        let (outcome, started) = match outcome {
            Some((Ok(outcome), started)) => (outcome, started),
            Some((Err(_elapsed), started)) => {
                (Err(instance.wall_clock_exceeded(deadline)), started)
            }
            None => (Err(SHUTDOWN_MESSAGE.to_owned()), Instant::now()),
        };
        let response = build_response(&request.rollout_id, instance.into_host(), outcome, started);
        match response.status {
            RolloutStatus::Completed => tracing::debug!(
                finish_reason = %response.finish_reason,
                reward = ?response.reward,
                "rollout completed"
            ),
            RolloutStatus::Error => {
                tracing::warn!(error = ?response.error_message, "rollout failed")
            }
        }
        match app
            .trainer
            .complete(&endpoints.completed, request.api_key.as_deref(), &response)
            .await
        {
            Ok(status) => tracing::debug!(%status, "completion delivered"),
            Err(e) => tracing::error!(error = %e, "completion callback not delivered"),
        }
        app.idempotency.finish(&key);
        app.stats.completed.fetch_add(1, Ordering::Relaxed);
        app.stats.active.fetch_sub(1, Ordering::AcqRel);
    }
    .instrument(span)
    .await
}

/// The callback body: the agent's completion if it made one, else an
/// ERROR saying what happened, with the history so far.
fn build_response(
    rollout_id: &str,
    mut host: RolloutHost,
    outcome: Result<(), String>,
    started: Instant,
) -> RolloutResponse {
    let mut metrics = std::mem::take(&mut host.metrics);
    match host.completion {
        Some(c) => {
            if let Err(e) = &outcome {
                tracing::warn!(error = %e, "plugin failed after complete; its completion stands");
            }
            metrics.num_tool_calls = c.num_tool_calls;
            metrics.tool_latency_ms = c.tool_latency_ms;
            metrics.total_latency_ms =
                c.at.saturating_duration_since(started).as_secs_f64() * 1000.0;
            RolloutResponse {
                rollout_id: rollout_id.to_owned(),
                status: c.status,
                final_messages: c.final_messages,
                finish_reason: c.finish_reason,
                error_message: c.error_message,
                reward: c.reward,
                metrics,
                extra_fields: c.extra_fields,
            }
        }
        None => {
            metrics.total_latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            let error = match outcome {
                Ok(()) => "plugin returned without calling complete".to_owned(),
                Err(e) => e,
            };
            let final_messages = host.history_so_far();
            RolloutResponse {
                rollout_id: rollout_id.to_owned(),
                status: RolloutStatus::Error,
                final_messages,
                finish_reason: "error".to_owned(),
                error_message: Some(error),
                reward: None,
                metrics,
                extra_fields: Default::default(),
            }
        }
    }
}
