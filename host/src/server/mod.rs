//! The HTTP side: routes, shared state, start-up and graceful shutdown.

mod admin;
mod auth;
mod deployment;
mod health;
mod init;
mod recovery;
mod rollouts;
mod swap;

pub use deployment::{Deployment, valid_name};
pub use swap::{BUILD_KEY, Running};

use crate::allocator;
use crate::cluster::{self, Cluster, Counts};
use crate::config_file::{DeploymentSettings, DeploymentSpec};
use crate::debug_log::DebugLog;
use crate::delivery::Deliveries;
use crate::fault;
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::runtime::{AllocatorChoice, CompileCache};
use crate::trainer::{ChatDialect, RetryPolicy, TrainerClient, TrainerDialect};
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::serve::ListenerExt;
use futures_util::FutureExt;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Everything the server is configured with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The deployments served from files, in order.
    pub plugins: Vec<DeploymentSpec>,
    /// What a deployment made through the admin API is served with, unless
    /// `plugins` names it (the command-line flags).
    pub defaults: DeploymentSettings,
    /// Reload a plugin when its file changes (`SIGHUP` always reloads).
    pub reload: bool,
    /// Bearer token of the admin API; `None`: the API is off.
    pub admin_token: Option<String>,
    /// Largest plugin upload the admin API reads.
    pub max_upload_bytes: usize,
    pub bind: SocketAddr,
    pub debug_dir: Option<PathBuf>,
    /// Where the delivery journal is kept; `None`: no journal.
    pub state_dir: Option<PathBuf>,
    /// The Redis replicas share state through; `None`: one replica.
    pub redis: Option<RedisSettings>,
    /// How long an undelivered callback is tried again.
    pub delivery_deadline: Duration,
    /// How long a finished rollout's init answer is kept for duplicates.
    pub record_ttl: Duration,
    /// Most finished rollouts' records kept (oldest dropped first).
    pub max_records: usize,
    pub retry: RetryPolicy,
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

/// `--redis`, `--redis-prefix` and `--replica-id`.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub prefix: String,
    pub replica: String,
}

impl ServerConfig {
    /// The settings of deployment `name`: its own when the command line or
    /// the config file lists it (also when it is re-made by an upload after
    /// a delete), else the flags'.
    pub fn settings_for(&self, name: &str) -> &DeploymentSettings {
        self.plugins
            .iter()
            .find(|spec| spec.name == name)
            .map_or(&self.defaults, |spec| &spec.settings)
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("deployment '{name}': {source}")]
    Load {
        name: String,
        source: swap::SwapError,
    },
    #[error("deployment '{0}' is named twice (--plugin flags and --config)")]
    DuplicateDeployment(String),
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
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
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
    /// The deployments, in the order they were made.
    deployments: RwLock<Vec<Arc<Deployment>>>,
    /// One deployment made or removed at a time (admin API).
    changing: tokio::sync::Mutex<()>,
    /// What new deployments are made with.
    pub config: ServerConfig,
    pub compile_cache: Option<CompileCache>,
    pub metrics: Arc<Metrics>,
    pub trainer: TrainerClient,
    /// The state shared with other replicas (`--redis`).
    pub cluster: Option<Arc<Cluster>>,
    /// Completion callbacks, redelivered when the trainer is away.
    pub deliveries: Arc<Deliveries>,
    /// How chat requests to the trainer are written (shared by every rollout).
    pub dialect: Arc<dyn ChatDialect>,
    pub debug_log: Option<DebugLog>,
    pub max_body_bytes: usize,
    pub metadata_limit: usize,
    /// Rollout tasks, awaited at shutdown.
    pub tasks: TaskTracker,
    /// Cancelled when shutdown's grace period is over.
    pub shutdown: CancellationToken,
    /// The runtime that executes plugins (instantiation, get-tools, runs).
    pub guests: tokio::runtime::Handle,
}

impl App {
    /// Every deployment, in the order they were made.
    pub fn deployments(&self) -> Vec<Arc<Deployment>> {
        self.deployments
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn deployment(&self, name: &str) -> Option<Arc<Deployment>> {
        self.deployments
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .find(|d| &*d.name == name)
            .cloned()
    }

    /// The deployment the root routes serve: the one named `default`, else
    /// the first.
    pub fn default_deployment(&self) -> Option<Arc<Deployment>> {
        let deployments = self
            .deployments
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        deployments
            .iter()
            .find(|d| &*d.name == DEFAULT_DEPLOYMENT)
            .or_else(|| deployments.first())
            .cloned()
    }

    fn add(&self, deployment: Arc<Deployment>) {
        self.deployments
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(deployment);
    }

    /// Takes `name` out: new inits for it are refused from now on.
    fn take_out(&self, name: &str) -> Option<Arc<Deployment>> {
        let mut deployments = self
            .deployments
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let at = deployments.iter().position(|d| &*d.name == name)?;
        let deployment = deployments.remove(at);
        deployment.remove();
        Some(deployment)
    }

    /// Rollouts accepted and not finished, over all deployments.
    fn active(&self) -> usize {
        self.deployments().iter().map(|d| d.places.taken()).sum()
    }
}

/// The name of a bare `--plugin PATH`'s deployment.
pub const DEFAULT_DEPLOYMENT: &str = "default";

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
    let (journal, left) = match &config.state_dir {
        Some(dir) => {
            let (journal, left) = Journal::open(dir)?;
            (Some(journal), left)
        }
        None => (None, Vec::new()),
    };
    let compile_cache = config
        .compile_cache
        .as_deref()
        .and_then(CompileCache::open_or_warn);
    let metrics = Arc::new(Metrics::new());
    let mut deployments: Vec<Arc<Deployment>> = Vec::with_capacity(config.plugins.len());
    for spec in &config.plugins {
        if deployments.iter().any(|d| *d.name == spec.name) {
            return Err(ServerError::DuplicateDeployment(spec.name.clone()));
        }
        let made = Deployment::create(
            &spec.name,
            deployment::PluginBytes::File(spec.plugin.clone()),
            &config,
            compile_cache.clone(),
            &metrics,
        )
        .await
        .map_err(|source| ServerError::Load {
            name: spec.name.clone(),
            source,
        })?;
        deployments.push(Arc::new(made));
    }
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
        .map_err(|e| ServerError::Client(e.to_string()))?
        .with_metrics(metrics.trainer.clone());
    let deliveries = Arc::new(Deliveries::new(
        trainer.clone(),
        journal,
        config.delivery_deadline,
    ));
    let cluster = match &config.redis {
        Some(redis) => {
            let cluster = Cluster::connect(&redis.url, &redis.prefix, &redis.replica)?;
            tracing::info!(replica = %redis.replica, prefix = %redis.prefix, "sharing state with other replicas through Redis");
            Some(Arc::new(cluster))
        }
        None => None,
    };
    let app = Arc::new(App {
        deployments: RwLock::new(deployments),
        cluster,
        changing: tokio::sync::Mutex::new(()),
        compile_cache,
        metrics,
        trainer,
        deliveries,
        dialect: Arc::new(TrainerDialect),
        debug_log,
        max_body_bytes: config.max_body_bytes,
        metadata_limit: config.metadata_limit,
        tasks: TaskTracker::new(),
        shutdown: CancellationToken::new(),
        guests,
        config: config.clone(),
    });

    recovery::recover(&app, left);

    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.bind,
            source,
        })?;
    let local = listener.local_addr().map_err(ServerError::Serve)?;
    tracing::info!("listening on http://{local}");

    let expiry = tokio::spawn(expire_records(app.clone(), config.record_ttl));
    // Wake each runtime's threads now and then, so a thread that went idle
    // right after freeing memory parks again and gives it back.
    let heartbeats = [
        tokio::spawn(allocator::heartbeat()),
        app.guests.spawn(allocator::heartbeat()),
    ];
    // With --redis: the beat of this replica's counts, the writer of its
    // rollouts' ends, the listener for the other replicas' cancels.
    let sharing = app.cluster.clone().map(|cluster| {
        let heard = app.clone();
        let writer = cluster.clone();
        [
            tokio::spawn(beat(app.clone())),
            tokio::spawn(async move { writer.write_ends().await }),
            tokio::spawn(async move {
                cluster
                    .hear_cancels(|deployment, selection| {
                        rollouts::cancel_told(&heard, deployment, selection)
                    })
                    .await
            }),
        ]
    });
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
    if let Some([beat, writer, hearing]) = &sharing {
        // No beat after leaving; the writer writes the last ends first.
        beat.abort();
        hearing.abort();
        if let Some(cluster) = &app.cluster
            && let Err(e) = cluster.leave().await
        {
            tracing::warn!(error = %e, "cannot take this replica's counts out of Redis; they expire");
        }
        writer.abort();
    }
    app.deliveries.stop();
    if let Some(journal) = app.deliveries.journal()
        && let Err(e) = journal.sync().await
    {
        tracing::error!(error = %e, "the journal's last writes may be lost");
    }
    Ok(())
}

pub fn router(app: Arc<App>) -> Router {
    let replica = app
        .cluster
        .as_ref()
        .and_then(|c| HeaderValue::from_str(c.replica()).ok());
    let router = Router::new()
        .route("/v1/rollout/init", post(init::init_default))
        .route("/health", get(health::health_default))
        .route("/platform/health", get(health::platform_health_default))
        .route("/v1/rollout/{id}", get(rollouts::status_default))
        .route("/v1/rollout/cancel", post(rollouts::cancel_default))
        .route("/metrics", get(health::metrics))
        .route("/deployments/{name}/v1/rollout/init", post(init::init))
        .route(
            "/deployments/{name}/v1/rollout/{id}",
            get(rollouts::status_named),
        )
        .route(
            "/deployments/{name}/v1/rollout/cancel",
            post(rollouts::cancel_named),
        )
        .route("/deployments/{name}/health", get(health::health))
        .route(
            "/deployments/{name}/platform/health",
            get(health::platform_health),
        )
        .route("/admin/deployments", get(admin::list))
        .route(
            "/admin/deployments/{name}",
            put(admin::put).delete(admin::delete).get(admin::show),
        )
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "Not Found") })
        .method_not_allowed_fallback(|| async {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
        })
        .layer(axum::middleware::from_fn(answer_panics))
        .layer(axum::middleware::from_fn(close_if_body_unread));
    let router = match replica {
        // Which replica answered, for whoever debugs a balancer.
        Some(replica) => router.layer(axum::middleware::map_response(
            move |mut response: Response| {
                let replica = replica.clone();
                async move {
                    response.headers_mut().insert(REPLICA_HEADER, replica);
                    response
                }
            },
        )),
        None => router,
    };
    router.with_state(app)
}

/// The response header naming the replica that answered (with `--redis`).
pub const REPLICA_HEADER: &str = "x-rollout-host-replica";

/// Publishes this replica's counts to the other replicas (`/health`
/// totals) every [`cluster::BEAT_EVERY`].
async fn beat(app: Arc<App>) {
    let Some(cluster) = app.cluster.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(cluster::BEAT_EVERY);
    let mut failing = false;
    loop {
        tick.tick().await;
        let counts = app
            .deployments()
            .iter()
            .map(|d| {
                let counts = Counts {
                    active: d.places.taken() as u64,
                    completed: d.stats.completed.load(Ordering::Relaxed),
                };
                (d.name.to_string(), counts)
            })
            .collect();
        match cluster.beat(&counts).await {
            Ok(()) if failing => {
                tracing::info!("Redis is reachable again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "Redis is unreachable: inits are refused with 503 until it is back");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// An answer sent before its request's body was read to the end (a 401,
/// 404 or 413 to an upload, say) closes the connection and says so: the
/// unread rest of the body would otherwise be taken for the next request,
/// or the client would send its next request on a connection the server
/// drops.
async fn close_if_body_unread(request: Request, next: Next) -> Response {
    use axum::body::HttpBody;
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let read = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let body = axum::body::Body::new(ReadToEnd {
        body,
        read: read.clone(),
    });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if !read.load(Ordering::Relaxed) {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    response
}

/// A request body that notes when it has been read to the end.
struct ReadToEnd {
    body: axum::body::Body,
    read: Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for ReadToEnd {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(None) = polled {
            self.read.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
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

async fn expire_records(app: Arc<App>, ttl: Duration) {
    let period = ttl.clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        for deployment in app.deployments() {
            let dropped = deployment.idempotency.expire(ttl);
            if dropped > 0 {
                tracing::debug!(deployment = %deployment.name, dropped, "expired idempotency records");
            }
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
    let active = app.active();
    if active > 0 {
        tracing::info!(active, ?grace, "waiting for running rollouts");
    }
    if tokio::time::timeout(grace, app.tasks.wait()).await.is_err() {
        tracing::warn!(
            active = app.active(),
            "grace period over: ending remaining rollouts with an ERROR callback"
        );
        app.shutdown.cancel();
        app.tasks.wait().await;
    }
}
