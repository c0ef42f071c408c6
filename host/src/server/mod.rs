//! The HTTP side: routes, shared state, start-up and graceful shutdown.

mod auth;
mod health;
mod init;
mod swap;

use crate::allocator;
use crate::debug_log::DebugLog;
use crate::fault;
use crate::idempotency::IdempotencyStore;
use crate::places::Places;
use crate::runtime::capacity::{MachineCapacity, MachineFacts};
use crate::runtime::{AllocatorChoice, CompileCache, Limits, LoadError, Runtime, RuntimeConfig};
use crate::trainer::{ChatDialect, RetryPolicy, TrainerClient, TrainerDialect};
use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use futures_util::FutureExt;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Everything the server is configured with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub plugin: PathBuf,
    /// Reload the plugin when its file changes (`SIGHUP` always reloads).
    pub reload: bool,
    pub bind: SocketAddr,
    pub api_key: Option<String>,
    pub debug_dir: Option<PathBuf>,
    /// Rollouts whose agent runs at once.
    pub max_concurrent: usize,
    /// Accepted rollouts that may wait for a slot; beyond, init answers 429.
    pub max_queued: usize,
    /// How long a finished rollout's init answer is kept for duplicates.
    pub record_ttl: Duration,
    /// Most finished rollouts' records kept (oldest dropped first).
    pub max_records: usize,
    pub retry: RetryPolicy,
    /// Per-rollout limits of the plugin.
    pub limits: Limits,
    pub allocator: AllocatorChoice,
    /// Instances whose pages stay resident between rollouts.
    pub warm_slots: u32,
    /// The compile cache's directory; `None`: compile at every start.
    pub compile_cache: Option<PathBuf>,
    /// How long an idle connection to the trainer is kept.
    pub trainer_idle_timeout: Duration,
    /// Largest init body read.
    pub max_body_bytes: usize,
    pub metadata_limit: usize,
    /// How long shutdown waits for running rollouts before ending them with
    /// an ERROR callback.
    pub shutdown_grace: Duration,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the debug log directory {dir}: {source}")]
    DebugDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the HTTP client: {0}")]
    Client(String),
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Counts of rollouts, for /health.
#[derive(Default)]
pub struct Stats {
    pub completed: AtomicU64,
}

/// State shared by all requests and rollouts.
pub struct App {
    /// The plugin new rollouts start with (swapped in place on reload).
    pub plugin: swap::PluginSlot,
    pub limits: Limits,
    pub trainer: TrainerClient,
    /// How chat requests to the trainer are written (shared by every rollout).
    pub dialect: Arc<dyn ChatDialect>,
    pub api_key: Option<String>,
    pub debug_log: Option<DebugLog>,
    pub idempotency: IdempotencyStore,
    /// Slots for running agents (`--max-concurrent`).
    pub slots: Semaphore,
    /// Their number.
    pub max_concurrent: usize,
    /// Places of accepted rollouts not yet finished (running or queued).
    pub places: Places,
    /// Most rollouts accepted at once (running + queued).
    pub capacity: usize,
    /// What this machine can hold, and what bounds it (for /health).
    pub machine: MachineCapacity,
    pub stats: Stats,
    pub max_body_bytes: usize,
    pub metadata_limit: usize,
    /// Rollout tasks, awaited at shutdown.
    pub tasks: TaskTracker,
    /// Cancelled when shutdown's grace period is over.
    pub shutdown: CancellationToken,
    /// The runtime that executes plugins (instantiation, get-tools, runs).
    pub guests: tokio::runtime::Handle,
}

/// How often `--reload` looks at the plugin file.
const RELOAD_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Runs the server on two runtimes: a small one for HTTP (accept, parse,
/// health, init's `get-tools`) and one that runs the agents, whose threads
/// run at a lower OS priority. Busy agents are preempted by the OS in favour
/// of the front end, so they cannot hold up `/health` or new inits.
pub fn serve(config: ServerConfig) -> Result<(), ServerError> {
    let front = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("http")
        .on_thread_park(allocator::release_freed_memory)
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    let guests = tokio::runtime::Builder::new_multi_thread()
        .thread_name("plugin")
        .on_thread_start(lower_thread_priority)
        .on_thread_park(allocator::release_freed_memory)
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    let result = front.block_on(run(config, guests.handle().clone()));
    guests.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Nice +10 for the calling thread (Linux applies nice per thread): when
/// the CPU is saturated, the front end gets about 9x the CPU share of a
/// plugin thread.
fn lower_thread_priority() {
    // SAFETY: setpriority only reads its arguments; who = 0 is this thread.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// Loads the plugin, binds, serves until SIGINT/SIGTERM, then drains;
/// plugins execute on `guests`.
pub async fn run(config: ServerConfig, guests: tokio::runtime::Handle) -> Result<(), ServerError> {
    // From here on a SIGHUP reloads the plugin (once the server is up)
    // instead of ending the process.
    let hangups = swap::hangups();
    let mut runtime_config = RuntimeConfig {
        limits: config.limits.clone(),
        instance_slots: 0,
        allocator: config.allocator,
        warm_slots: config.warm_slots,
        compile_cache: config
            .compile_cache
            .as_deref()
            .and_then(CompileCache::open_or_warn),
    };
    let machine = MachineFacts::read().capacity(runtime_config.reservation());
    let capacity = admissible(&config, machine);
    let max_concurrent = config.max_concurrent.min(capacity);
    // Accepted rollouts hold an instance; inits in progress hold one too
    // (admission comes first, so at most `capacity`), plus hot swap's check.
    runtime_config.instance_slots =
        u32::try_from(capacity.saturating_add(INSTANCE_HEADROOM)).unwrap_or(u32::MAX);
    let runtime = Arc::new(Runtime::new(runtime_config)?);
    let plugin = runtime.load(&config.plugin).await?;
    tracing::info!(
        plugin = %config.plugin.display(),
        build = %plugin.label(),
        allocator = ?runtime.allocator(),
        "plugin loaded"
    );
    let debug_log = match &config.debug_dir {
        None => None,
        Some(dir) => {
            let start = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let log = DebugLog::create(dir, start).map_err(|source| ServerError::DebugDir {
                dir: dir.clone(),
                source,
            })?;
            tracing::info!(dir = %log.dir().display(), "debug log enabled");
            Some(log)
        }
    };
    let trainer = TrainerClient::new(config.retry.clone(), config.trainer_idle_timeout)
        .map_err(|e| ServerError::Client(e.to_string()))?;
    let app = Arc::new(App {
        plugin: swap::PluginSlot::new(runtime, config.plugin.clone(), plugin),
        limits: config.limits.clone(),
        trainer,
        dialect: Arc::new(TrainerDialect),
        api_key: config.api_key.clone(),
        debug_log,
        idempotency: IdempotencyStore::new(config.max_records),
        slots: Semaphore::new(max_concurrent.max(1)),
        max_concurrent,
        places: Places::default(),
        capacity,
        machine,
        stats: Stats::default(),
        max_body_bytes: config.max_body_bytes,
        metadata_limit: config.metadata_limit,
        tasks: TaskTracker::new(),
        shutdown: CancellationToken::new(),
        guests,
    });

    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.bind,
            source,
        })?;
    let local = listener.local_addr().map_err(ServerError::Serve)?;
    tracing::info!("listening on http://{local}");

    let expiry = tokio::spawn(expire_records(app.idempotency.clone(), config.record_ttl));
    // Wake each runtime's threads now and then, so a thread that went idle
    // right after freeing memory parks again and gives it back.
    let heartbeats = [
        tokio::spawn(allocator::heartbeat()),
        app.guests.spawn(allocator::heartbeat()),
    ];
    let mut reloads = vec![tokio::spawn(swap::reload_on_hangup(app.clone(), hangups))];
    if config.reload {
        reloads.push(tokio::spawn(swap::reload_on_change(
            app.clone(),
            RELOAD_CHECK_EVERY,
        )));
    }
    // Responses are one write each: send them at once (no Nagle delay).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(app.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(ServerError::Serve)?;
    expiry.abort();
    heartbeats.iter().for_each(|h| h.abort());
    reloads.iter().for_each(|r| r.abort());
    drain(&app, config.shutdown_grace).await;
    Ok(())
}

/// Instances beyond the rollouts in flight: inits in progress past
/// admission never exceed it, so this covers a hot swap's start-up check.
const INSTANCE_HEADROOM: usize = 64;

/// Rollouts in flight (running + queued) the server accepts: what the flags
/// ask for, lowered to what the machine holds, with one line saying so.
fn admissible(config: &ServerConfig, machine: MachineCapacity) -> usize {
    let asked = config.max_concurrent.saturating_add(config.max_queued);
    // The warm pool's slots take mappings and address space too.
    let holds = machine
        .instances
        .saturating_sub(INSTANCE_HEADROOM + config.warm_slots as usize)
        .max(1);
    if asked <= holds {
        return asked;
    }
    tracing::warn!(
        "--max-concurrent {} + --max-queued {} is more than this machine holds: at most {holds} \
         rollouts in flight ({} is {}); serving {holds}, more inits get 429; {}",
        config.max_concurrent,
        config.max_queued,
        machine.bound.name(),
        machine.limit,
        machine.bound.hint()
    );
    holds
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/rollout/init", post(init::init))
        .route("/health", get(health::health))
        .route("/platform/health", get(health::platform_health))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "Not Found") })
        .method_not_allowed_fallback(|| async {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
        })
        .layer(axum::middleware::from_fn(answer_panics))
        .with_state(app)
}

/// A handler that panics answers 500 with a JSON body (instead of a
/// dropped connection); the server goes on.
async fn answer_panics(request: Request, next: Next) -> Response {
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let text = fault::panic_text(&*panic);
            tracing::error!(panic = %text, "request handler panicked");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("rollout-host internal error: {text}"),
            )
        }
    }
}

/// `{"detail": message}` with `status`, FastAPI's error shape.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "detail": message }))).into_response()
}

async fn expire_records(store: IdempotencyStore, ttl: Duration) {
    let period = ttl.clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let dropped = store.expire(ttl);
        if dropped > 0 {
            tracing::debug!(dropped, "expired idempotency records");
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down: no new rollouts accepted");
}

/// Lets running rollouts finish for `grace`, then ends the rest; every one
/// still sends its single callback.
async fn drain(app: &App, grace: Duration) {
    app.tasks.close();
    let active = app.places.taken();
    if active > 0 {
        tracing::info!(active, ?grace, "waiting for running rollouts");
    }
    if tokio::time::timeout(grace, app.tasks.wait()).await.is_err() {
        tracing::warn!(
            active = app.places.taken(),
            "grace period over: ending remaining rollouts with an ERROR callback"
        );
        app.shutdown.cancel();
        app.tasks.wait().await;
    }
}
