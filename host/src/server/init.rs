//! `POST /v1/rollout/init` (and `/deployments/NAME/v1/rollout/init`):
//! auth, body cap, validation, idempotency, admission, `get-tools`, then
//! the run in the background and 202.

use super::{App, Deployment, auth, json_error};
use crate::cluster::{Claimed, Lease};
use crate::fault;
use crate::idempotency::{self, Claim, InitAnswer, InitOutcome, Ticket};
use crate::journal::Entry;
use crate::protocol::{Message, RolloutRequest, json_text, message_texts, parse_init_request};
use crate::rollout;
use crate::runtime::{Failure, HostCallLimits, RolloutHost, TrainerLink, WitRolloutRequest};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The default deployment's init (the root route).
pub async fn init_default(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    match app.default_deployment() {
        Some(deployment) => init_on(app, deployment, headers, body).await,
        None => json_error(
            StatusCode::NOT_FOUND,
            "no default deployment: init at /deployments/NAME/v1/rollout/init",
        ),
    }
}

/// `/deployments/{name}/v1/rollout/init`.
pub async fn init(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match app.deployment(&name) {
        Some(deployment) => init_on(app, deployment, headers, body).await,
        None => no_such_deployment(&name),
    }
}

pub fn no_such_deployment(name: &str) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        &format!("no deployment named '{name}'"),
    )
}

/// Answers an init for `deployment`, counting the answer's status.
async fn init_on(
    app: Arc<App>,
    deployment: Arc<Deployment>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = answer(app, deployment.clone(), headers, body).await;
    deployment.metrics.init(response.status().as_u16());
    response
}

async fn answer(
    app: Arc<App>,
    deployment: Arc<Deployment>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(refusal) = auth::require(deployment.api_key.as_deref(), &headers) {
        return refusal;
    }
    let bytes = match axum::body::to_bytes(body, app.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body is larger than {} bytes", app.max_body_bytes),
            );
        }
    };
    let request = match parse_init_request(&bytes, app.metadata_limit) {
        Ok(r) => r,
        Err(errors) => {
            tracing::info!(errors = %errors, "init rejected");
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(errors.to_body()),
            )
                .into_response();
        }
    };
    fault::inject("handler", &request.rollout_id);
    let outcome = match deployment.idempotency.claim(request.idempotency_key()) {
        Claim::Done(body) => InitOutcome::Accepted(body),
        Claim::Wait(rx) => idempotency::wait(rx).await,
        Claim::New(ticket) => {
            // In a task of its own, so a trainer that hangs up cannot leave
            // the key half-claimed. `get-tools` runs here on the HTTP
            // runtime, so init latency does not queue behind running agents;
            // a spinning `get-tools` still yields every epoch tick and is
            // stopped by the CPU budget.
            let task = tokio::spawn(accept(app, deployment, request, ticket));
            task.await.unwrap_or_else(|e| InitOutcome::Failed {
                status: 500,
                body: error_body(&format!("init failed: {e}")),
            })
        }
    };
    respond(outcome)
}

fn respond(outcome: InitOutcome) -> Response {
    let (status, body) = match outcome {
        InitOutcome::Accepted(body) => (StatusCode::ACCEPTED, body),
        InitOutcome::Failed { status, body } => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
        ),
    };
    let mut response = (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn error_body(message: &str) -> Bytes {
    Bytes::from(json!({ "detail": message }).to_string())
}

/// First request for its key here: claim it across replicas (with
/// `--redis`), admit, instantiate, get tools, start the run.
async fn accept(
    app: Arc<App>,
    deployment: Arc<Deployment>,
    request: RolloutRequest,
    ticket: Ticket,
) -> InitOutcome {
    let lease = match &app.cluster {
        None => None,
        Some(cluster) => match cluster
            .claim(&deployment.name, request.idempotency_key())
            .await
        {
            Ok(Claimed::Ours(lease)) => Some(lease),
            Ok(Claimed::Answered(body)) => {
                tracing::debug!(rollout_id = %request.rollout_id, "duplicate init: another replica runs it");
                let outcome = InitOutcome::Accepted(body);
                ticket.pass_on(outcome.clone());
                return outcome;
            }
            Err(e) => {
                tracing::warn!(rollout_id = %request.rollout_id, error = %e, "init refused: no claim across replicas");
                let (status, body) = refusal(
                    503,
                    &format!("rollout-host cannot claim the rollout across replicas: {e}"),
                );
                ticket.fail(status, body.clone());
                return InitOutcome::Failed { status, body };
            }
        },
    };
    match admit_and_start(&app, deployment, request, ticket, lease).await {
        Ok(body) => InitOutcome::Accepted(body),
        Err((status, body)) => InitOutcome::Failed { status, body },
    }
}

/// Why an init was refused: its status and JSON body.
type Refusal = (u16, Bytes);

fn refusal(status: u16, message: &str) -> Refusal {
    (status, error_body(message))
}

/// Resolves `ticket` either way: refused, or accepted before the run starts
/// (so the run can only end a record that exists).
async fn admit_and_start(
    app: &Arc<App>,
    deployment: Arc<Deployment>,
    request: RolloutRequest,
    ticket: Ticket,
    lease: Option<Lease>,
) -> Result<Bytes, Refusal> {
    let started = Instant::now();
    let prepared = async {
        let (answer, accepted) = prepare(app, deployment, request).await?;
        if app.deliveries.journal().is_some() || lease.is_some() {
            let entry = journal_entry(&answer, &accepted);
            let run_for = accepted.deployment.limits.wall_clock;
            keep(app, &answer, entry, run_for, lease).await?;
        }
        Ok((answer, accepted))
    };
    match prepared.await {
        Ok((answer, accepted)) => {
            let (body, finished) = ticket.accept(&answer);
            tracing::debug!(rollout_id = %answer.rollout_id, "rollout accepted");
            accepted.deployment.metrics.accepted(started.elapsed());
            app.tasks
                .spawn_on(rollout::run(app.clone(), accepted, finished), &app.guests);
            Ok(body)
        }
        Err((status, body)) => {
            ticket.fail(status, body.clone());
            Err((status, body))
        }
    }
}

/// Keeps the accepted rollout where a restart and the other replicas find
/// it, before the trainer hears of it: in the journal (a crash from here on
/// still ends in a callback), then in Redis (a duplicate on another replica
/// gets this answer).
/// `run_for` is the rollout's wall-clock limit.
async fn keep(
    app: &App,
    answer: &InitAnswer,
    entry: Entry,
    run_for: Duration,
    lease: Option<Lease>,
) -> Result<(), Refusal> {
    let journal = app.deliveries.journal();
    if let Some(journal) = journal
        && let Err(e) = journal.put(&entry).await
    {
        tracing::error!(error = %e, "init refused: the journal cannot be written");
        return Err(refusal(
            503,
            &format!("rollout-host cannot journal the rollout ({e}); retry later"),
        ));
    }
    if let Some(lease) = lease {
        // Kept while the rollout may run and be delivered, then the record
        // TTL; its end shortens it to the TTL.
        let ttl = run_for + app.config.delivery_deadline + app.config.record_ttl;
        if let Err(e) = lease
            .accept(&entry.deployment, &answer.rollout_id, &answer.body(), ttl)
            .await
        {
            tracing::warn!(error = %e, "init refused: the answer cannot be shared with the other replicas");
            if let Some(journal) = journal {
                journal.remove(&entry.deployment, &entry.key);
            }
            return Err(refusal(
                503,
                &format!(
                    "rollout-host cannot share the rollout with the other replicas ({e}); retry later"
                ),
            ));
        }
    }
    Ok(())
}

/// What the journal keeps of an accepted rollout.
fn journal_entry(answer: &InitAnswer, accepted: &rollout::Starting) -> Entry {
    Entry {
        deployment: accepted.deployment.name.to_string(),
        key: accepted.request.idempotency_key().to_owned(),
        rollout_id: answer.rollout_id.to_string(),
        callback_url: accepted.endpoints.completed.to_string(),
        api_key: accepted.request.api_key.clone(),
        answer_fields: answer.fields.clone(),
        pending: None,
    }
}

/// Admits the rollout and asks its instance for the tools: its answer and
/// everything its run needs but the record's token.
async fn prepare(
    app: &Arc<App>,
    deployment: Arc<Deployment>,
    mut request: RolloutRequest,
) -> Result<(InitAnswer, rollout::Starting), Refusal> {
    if app.shutdown.is_cancelled() || app.tasks.is_closed() {
        return Err(refusal(503, "rollout-host is shutting down"));
    }
    if deployment.is_removed() {
        return Err(refusal(
            404,
            &format!("deployment '{}' has been deleted", deployment.name),
        ));
    }
    // Reserve a place (running or queued) before doing any work; it is
    // given back when `admission` drops, on any way out.
    let Some(admission) = deployment.places.try_take(deployment.capacity) else {
        tracing::warn!(rollout_id = %request.rollout_id, deployment = %deployment.name, capacity = deployment.capacity, "init refused: deployment full");
        return Err(refusal(
            429,
            &format!(
                "deployment '{}' is at capacity ({} rollouts running or queued); retry later",
                deployment.name, deployment.capacity
            ),
        ));
    };
    fault::inject("admission", &request.rollout_id);

    // Encoded once: the guest receives their array, and its final messages
    // are checked against these texts.
    let request_messages = message_texts(&std::mem::take(&mut request.messages));
    let wit_request = wit_request(&request, &request_messages);
    let endpoints = app
        .trainer
        .endpoints(&request.server_url)
        .map_err(|e| refusal(422, &e.to_string()))?;
    let host = RolloutHost::new(
        &request.rollout_id,
        TrainerLink {
            client: app.trainer.clone(),
            chat_url: endpoints.chat.clone(),
            api_key: request.api_key.clone(),
            dialect: app.dialect.clone(),
            watch: None,
        },
        request_messages,
        std::mem::take(&mut request.completion_params),
        app.debug_log
            .as_ref()
            .map(|log| log.rollout(&request.rollout_id)),
        HostCallLimits::new(&deployment.limits, request.max_turns),
    );
    let version = deployment.plugin.current();
    let (instance, tools) = version.start(host, &wit_request).await.map_err(|e| {
        tracing::error!(rollout_id = %request.rollout_id, plugin = %version.label(), error = %e, "init failed");
        // No room for the instance is the server's state, not the
        // plugin's fault: retryable, like a full server.
        let status = match e.failure {
            Failure::NoRoom(_) => 429,
            _ => 500,
        };
        refusal(status, &e.to_string())
    })?;
    let answer = InitAnswer {
        rollout_id: request.rollout_id.as_str().into(),
        fields: version
            .answer_fields(&tools)
            .map_err(|e| refusal(500, &format!("cannot encode the init response: {e}")))?,
    };
    let starting = rollout::Starting {
        tracked: deployment.live.add(answer.rollout_id.clone()),
        accepted: Instant::now(),
        request,
        endpoints,
        wit_request,
        instance,
        version: version.running(),
        deployment,
        admission,
    };
    Ok((answer, starting))
}

fn wit_request(r: &RolloutRequest, messages: &[Message]) -> WitRolloutRequest {
    WitRolloutRequest {
        rollout_id: r.rollout_id.clone(),
        messages: json_text(messages),
        completion_params: json_text(&r.completion_params),
        tool_server_url: r.tool_server_url.clone(),
        max_turns: r.max_turns,
        max_tokens_total: r.max_tokens_total,
        metadata: json_text(&r.metadata),
    }
}
