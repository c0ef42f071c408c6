//! One accepted rollout, from its slot to its single terminal callback.
//!
//! Whatever the agent does (completes, errors, traps, trips a limit,
//! returns without completing), the server does (shuts down) or the host
//! itself does (panics), the trainer receives exactly one
//! `POST /v1/rollout/completed`.

use crate::delivery::Callback;
use crate::fault;
use crate::idempotency::Finished;
use crate::live::{Control, Progress, Status, Tracked};
use crate::places::Place;
use crate::protocol::{RolloutRequest, RolloutResponse, RolloutStatus, split_messages};
use crate::runtime::{Completion, Failure, GuestError, Instance, RolloutHost, WitRolloutRequest};
use crate::server::{App, BUILD_KEY, Deployment, Running};
use crate::trainer::Endpoints;
use futures_util::FutureExt;
use serde_json::value::RawValue;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How a rollout ended.
#[derive(Debug)]
pub enum Outcome {
    /// The agent called `complete` (with COMPLETED or its own ERROR); a
    /// failure after that does not change it.
    Completed(Completion),
    /// The plugin failed: its own error, a trap, or a tripped limit.
    Failed(GuestError),
    /// `run` returned without calling `complete`.
    NoComplete,
    /// The server shut down and its grace period ran out.
    Shutdown,
    /// `POST /v1/rollout/cancel` stopped it.
    Cancelled,
    /// The host panicked while running the rollout.
    Internal(String),
}

impl Outcome {
    /// Why a rollout that did not complete failed: the `cause` label of
    /// the `rollouts_errored` metric (a limit is named as in the debug
    /// log: `cpu`, `memory`, `wall_clock`, ...).
    pub fn cause(&self) -> &'static str {
        match self {
            // The agent completed with ERROR itself.
            Outcome::Completed(_) => "plugin_error",
            Outcome::Failed(e) => match &e.failure {
                Failure::Limit(limit) | Failure::LimitThenError { limit, .. } => limit.name(),
                Failure::Trap { .. } => "trap",
                Failure::PluginError(_) | Failure::BadTool(_) => "plugin_error",
                Failure::NoRoom(_) => "no_room",
            },
            Outcome::NoComplete => "no_complete",
            Outcome::Shutdown => "shutdown",
            Outcome::Cancelled => "cancelled",
            Outcome::Internal(_) => "internal",
        }
    }

    /// The ERROR callback's `error_message`, naming the plugin build.
    fn error_message(&self, plugin: &str) -> Option<String> {
        match self {
            Outcome::Completed(_) => None,
            Outcome::Failed(e) => Some(e.to_string()),
            Outcome::NoComplete => {
                Some(format!("plugin {plugin} returned without calling complete"))
            }
            Outcome::Shutdown => Some(format!(
                "plugin {plugin} was stopped: rollout-host shut down before the rollout finished"
            )),
            Outcome::Cancelled => Some(format!(
                "plugin {plugin} was stopped: the rollout was cancelled (POST /v1/rollout/cancel)"
            )),
            Outcome::Internal(panic) => Some(format!(
                "plugin {plugin}: rollout-host failed internally while running the rollout ({panic})"
            )),
        }
    }
}

/// What a rollout task needs, made before its init is answered.
pub struct Starting {
    pub request: RolloutRequest,
    pub endpoints: Arc<Endpoints>,
    pub wit_request: WitRolloutRequest,
    pub instance: Instance,
    /// Keeps the plugin version the rollout started with alive (and
    /// counted) until it ends.
    pub version: Running,
    pub deployment: Arc<Deployment>,
    /// The rollout's place in its deployment, given back when this task
    /// ends (a panic included).
    pub admission: Place,
    /// Its entry among the deployment's live rollouts (status, cancel).
    pub tracked: Tracked,
    /// When its init was accepted.
    pub accepted: Instant,
}

/// Runs the agent and sends the callback; then `finished` starts the
/// rollout's idempotency record's TTL.
pub async fn run(app: Arc<App>, starting: Starting, finished: Finished) {
    let Starting {
        request,
        endpoints,
        wit_request,
        instance,
        version,
        deployment,
        admission,
        tracked,
        accepted,
    } = starting;
    let control = tracked.control.clone();
    let span = tracing::info_span!(
        "rollout",
        rollout_id = %request.rollout_id,
        deployment = %deployment.name,
        plugin = %version.label()
    );
    async move {
        let mut started = Instant::now();
        let ran = AssertUnwindSafe(execute(
            &app,
            &deployment,
            &control,
            &request,
            &wit_request,
            instance,
            &mut started,
        ))
        .catch_unwind()
        .await;
        let (outcome, host) = match ran {
            Ok((outcome, host)) => (outcome, Some(host)),
            Err(panic) => {
                let text = fault::panic_text(&*panic);
                tracing::error!(panic = %text, "rollout-host panicked while running the rollout");
                (Outcome::Internal(text), None)
            }
        };
        let status = match &outcome {
            Outcome::Completed(c) if c.status == RolloutStatus::Completed => Status::Completed,
            Outcome::Cancelled => Status::Cancelled,
            _ => Status::Error,
        };
        let cause = outcome.cause();
        let mut response = build_response(
            &request.rollout_id,
            &wit_request.messages,
            version.label(),
            host,
            outcome,
            started,
        );
        response
            .extra_fields
            .insert(BUILD_KEY.to_owned(), version.build.clone());
        let ended = Progress {
            status,
            reward: response.reward,
        };
        control.ended(ended);
        deployment.metrics.ended(
            status,
            cause,
            Duration::from_secs_f64(response.metrics.guest_cpu_ms.max(0.0) / 1000.0),
            response.metrics.guest_peak_memory_bytes,
        );
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
        // Serializing strings, numbers and JSON values cannot fail.
        let body = serde_json::to_vec(&response).unwrap_or_default();
        app.deliveries
            .deliver(Callback {
                deployment: deployment.name.clone(),
                key: request.idempotency_key().into(),
                rollout_id: request.rollout_id.as_str().into(),
                url: endpoints.completed.clone(),
                api_key: request.api_key.clone(),
                body: body.into(),
            })
            .await;
        deployment.metrics.called_back(accepted.elapsed());
        finished.done(ended);
        drop(tracked);
        deployment.stats.completed.fetch_add(1, Ordering::Relaxed);
        drop(admission);
        drop(version);
        if let Some(cluster) = &app.cluster {
            cluster.ended(
                &deployment.name,
                request.idempotency_key(),
                &request.rollout_id,
                ended,
                app.config.record_ttl,
            );
        }
    }
    .instrument(span)
    .await
}

/// Waits for a slot and runs the agent within the rollout's wall-clock
/// deadline; `started` is set when the slot was acquired.
async fn execute(
    app: &App,
    deployment: &Deployment,
    control: &Control,
    request: &RolloutRequest,
    wit_request: &WitRolloutRequest,
    mut instance: Instance,
    started: &mut Instant,
) -> (Outcome, RolloutHost) {
    let deadline = deployment.limits.wall_clock;
    let ran = tokio::select! {
        biased;
        _ = app.shutdown.cancelled() => Err(Outcome::Shutdown),
        _ = control.cancelled() => Err(Outcome::Cancelled),
        ran = async {
            let _slot = deployment.slots.acquire().await;
            *started = Instant::now();
            control.running();
            fault::inject("rollout", &request.rollout_id);
            tokio::time::timeout(deadline, instance.run(wit_request)).await
        } => Ok(ran),
    };
    match ran {
        Ok(ran) => settle(instance, ran, deadline),
        Err(stopped) => settle_with(instance, Some(stopped)),
    }
}

/// Runs the agent to its end within its wall-clock `deadline` (test mode;
/// the server's rollouts also wait for a slot and shutdown).
pub async fn run_to_end(
    mut instance: Instance,
    request: &WitRolloutRequest,
    deadline: Duration,
) -> (Outcome, RolloutHost) {
    let ran = tokio::time::timeout(deadline, instance.run(request)).await;
    settle(instance, ran, deadline)
}

/// The outcome of a run that ended (`Err`: its wall-clock `deadline` was
/// reached) and the host-side state it leaves.
fn settle(
    mut instance: Instance,
    ran: Result<Result<(), GuestError>, tokio::time::error::Elapsed>,
    deadline: Duration,
) -> (Outcome, RolloutHost) {
    let failure = match ran {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(Outcome::Failed(e)),
        Err(_elapsed) => Some(Outcome::Failed(instance.wall_clock_exceeded(deadline))),
    };
    settle_with(instance, failure)
}

/// An accepted completion stands whatever happened after it.
fn settle_with(instance: Instance, failure: Option<Outcome>) -> (Outcome, RolloutHost) {
    let mut host = instance.into_host();
    let outcome = match (host.completion.take(), failure) {
        (Some(completion), failure) => {
            if let Some(Outcome::Failed(e)) = failure {
                tracing::warn!(error = %e, "plugin failed after complete; its completion stands");
            }
            Outcome::Completed(completion)
        }
        (None, Some(failure)) => failure,
        (None, None) => Outcome::NoComplete,
    };
    (outcome, host)
}

/// The callback body: the agent's completion if it made one, else an
/// ERROR saying what happened, with the history so far (`host`'s, or the
/// request's `messages` when the host state was lost).
pub fn build_response(
    rollout_id: &str,
    messages: &str,
    plugin: &str,
    host: Option<RolloutHost>,
    outcome: Outcome,
    started: Instant,
) -> RolloutResponse {
    let rollout_id = rollout_id.to_owned();
    let (mut metrics, final_messages) = match host {
        Some(mut host) => (std::mem::take(&mut host.metrics), host.history_so_far()),
        // Lost in a panic: the request's messages are the history we know.
        None => (
            Default::default(),
            split_messages(messages, "messages")
                .map(|m| m.into_iter().map(RawValue::to_owned).collect())
                .unwrap_or_default(),
        ),
    };
    let error_message = outcome.error_message(plugin);
    match outcome {
        Outcome::Completed(c) => {
            metrics.num_tool_calls = c.num_tool_calls;
            metrics.tool_latency_ms = c.tool_latency_ms;
            metrics.total_latency_ms =
                c.at.saturating_duration_since(started).as_secs_f64() * 1000.0;
            RolloutResponse {
                rollout_id,
                status: c.status,
                final_messages: c.final_messages,
                finish_reason: c.finish_reason,
                error_message: c.error_message,
                reward: c.reward,
                metrics,
                extra_fields: c.extra_fields,
            }
        }
        _ => {
            metrics.total_latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            RolloutResponse {
                rollout_id,
                status: RolloutStatus::Error,
                final_messages,
                finish_reason: "error".to_owned(),
                error_message,
                reward: None,
                metrics,
                extra_fields: Default::default(),
            }
        }
    }
}
