//! `POST /v1/rollout/init` (and `/deployments/NAME/v1/rollout/init`):
//! auth, body cap, validation, idempotency, admission, `get-tools`, then
//! the run in the background and 202.

use super::{App, Deployment, auth, json_error};
use crate::cluster::{Claimed, ClusterError, Lease, Stored};
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
    mut lease: Option<Lease>,
) -> Result<Bytes, Refusal> {
    let started = Instant::now();
    let (answer, accepted) = match prepare(app, deployment, request).await {
        Ok(prepared) => prepared,
        Err(refused) => return Err(refuse(ticket, refused)),
    };
    if app.deliveries.journal().is_some() || lease.is_some() {
        let entry = journal_entry(&answer, &accepted);
        // Shared while the rollout may run and deliver its callback, then
        // for the record TTL (its end shortens it to that).
        let ttl = accepted.deployment.limits.wall_clock
            + app.config.delivery_deadline
            + app.config.record_ttl;
        match keep(app, &answer, &entry, lease.as_mut(), ttl).await {
            Kept::Yes => {}
            Kept::No(refused) => return Err(refuse(ticket, refused)),
            Kept::Unknown(refused) => {
                let refused = refuse(ticket, refused);
                if let Some(lease) = lease {
                    tokio::spawn(decide_later(app.clone(), lease, answer, accepted, ttl));
                }
                return Err(refused);
            }
        }
    }
    Ok(start(app, ticket, &answer, accepted, started))
}

/// Refuses the init: `ticket`'s waiters get the same answer.
fn refuse(ticket: Ticket, (status, body): Refusal) -> Refusal {
    ticket.fail(status, body.clone());
    (status, body)
}

/// Accepts the prepared rollout and starts its run: the 202 body.
fn start(
    app: &Arc<App>,
    ticket: Ticket,
    answer: &InitAnswer,
    accepted: rollout::Starting,
    started: Instant,
) -> Bytes {
    let (body, finished) = ticket.accept(answer);
    tracing::debug!(rollout_id = %answer.rollout_id, "rollout accepted");
    accepted.deployment.metrics.accepted(started.elapsed());
    app.tasks
        .spawn_on(rollout::run(app.clone(), accepted, finished), &app.guests);
    body
}

/// Whether the accepted rollout was kept.
enum Kept {
    Yes,
    No(Refusal),
    /// Redis did not confirm the answer was stored: refused, unless Redis
    /// says later that it was.
    Unknown(Refusal),
}

/// How long a replica asks Redis about an answer it could not confirm
/// before the init's refusal goes out.
const CONFIRM_IN_REQUEST: Duration = Duration::from_secs(5);
/// How long it asks afterwards, in the background.
const CONFIRM_LATER: Duration = Duration::from_secs(3600);

/// Keeps the accepted rollout where a restart and the other replicas find
/// it, before the trainer hears of it: in the journal (a crash from here on
/// still ends in a callback), then in Redis (a duplicate on another replica
/// gets this answer, for `ttl`).
async fn keep(
    app: &App,
    answer: &InitAnswer,
    entry: &Entry,
    lease: Option<&mut Lease>,
    ttl: Duration,
) -> Kept {
    let journal = app.deliveries.journal();
    if let Some(journal) = journal
        && let Err(e) = journal.put(entry).await
    {
        tracing::error!(error = %e, "init refused: the journal cannot be written");
        return Kept::No(refusal(
            503,
            &format!("rollout-host cannot journal the rollout ({e}); retry later"),
        ));
    }
    let Some(lease) = lease else {
        return Kept::Yes;
    };
    let (deployment, id) = (&entry.deployment, &*answer.rollout_id);
    let error = match lease.accept(deployment, id, &answer.body(), ttl).await {
        Ok(()) => return Kept::Yes,
        Err(e @ ClusterError::ClaimLost) => e,
        Err(e) => match lease.confirm(deployment, id, ttl, CONFIRM_IN_REQUEST).await {
            Stored::Yes => return Kept::Yes,
            Stored::No => e,
            Stored::Unknown => {
                tracing::warn!(error = %e, "init refused: Redis did not confirm the answer; asking again in the background");
                return Kept::Unknown(unshared(&e));
            }
        },
    };
    tracing::warn!(error = %error, "init refused: the answer cannot be shared with the other replicas");
    if let Some(journal) = journal {
        journal.remove(&entry.deployment, &entry.key);
    }
    Kept::No(unshared(&error))
}

fn unshared(e: &ClusterError) -> Refusal {
    refusal(
        503,
        &format!(
            "rollout-host cannot share the rollout with the other replicas ({e}); retry later"
        ),
    )
}

/// A rollout refused because Redis did not confirm its answer was stored:
/// once Redis answers, runs it if the answer is there (a duplicate there
/// got it), else lets it go.
async fn decide_later(
    app: Arc<App>,
    mut lease: Lease,
    answer: InitAnswer,
    accepted: rollout::Starting,
    ttl: Duration,
) {
    let deployment = accepted.deployment.clone();
    let key = accepted.request.idempotency_key().to_owned();
    let asked = tokio::select! {
        stored = lease.confirm(&deployment.name, &answer.rollout_id, ttl, CONFIRM_LATER) => stored,
        () = app.shutdown.cancelled() => Stored::Unknown,
    };
    if asked != Stored::Yes {
        if asked == Stored::Unknown {
            tracing::error!(rollout_id = %answer.rollout_id, "Redis never confirmed whether the rollout was accepted; it does not run");
        }
        if let Some(journal) = app.deliveries.journal() {
            journal.remove(&deployment.name, &key);
        }
        return;
    }
    // A duplicate on this replica may be asking Redis now: it finds the
    // answer and lets the key go.
    let ticket = loop {
        match deployment.idempotency.claim(&key) {
            Claim::New(ticket) => break ticket,
            Claim::Wait(rx) => {
                idempotency::wait(rx).await;
            }
            Claim::Done(_) => {
                tracing::error!(rollout_id = %answer.rollout_id, "rollout accepted twice on this replica; the later one does not run");
                return;
            }
        }
    };
    tracing::info!(rollout_id = %answer.rollout_id, "Redis confirmed the answer after all: the rollout runs");
    start(&app, ticket, &answer, accepted, Instant::now());
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
