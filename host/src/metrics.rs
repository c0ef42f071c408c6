//! Prometheus metrics (`GET /metrics`, OpenMetrics text): rollouts by
//! outcome and cause, admission, latencies, guest CPU and memory, calls to
//! the trainer and plugin swaps. Every name starts with `rollout_host_`;
//! what a deployment does is labelled with its name. A deployment takes
//! its handles once ([`Metrics::deployment`]), so counting costs a rollout
//! a few atomic adds.

use crate::live::Status;
#[cfg(doc)]
use crate::rollout::Outcome;
use crate::trainer::TrainerError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabel {
    deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    deployment: String,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    deployment: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SwapLabels {
    deployment: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    call: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, 1 ms to ~9 min.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// Bytes, 64 KiB to 4 GiB.
fn bytes() -> Histogram {
    Histogram::new(exponential_buckets(65536.0, 2.0, 17))
}

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    accepted: Family<DeploymentLabel, Counter>,
    completed: Family<DeploymentLabel, Counter>,
    errored: Family<CauseLabels, Counter>,
    inits: Family<CodeLabels, Counter>,
    running: Family<DeploymentLabel, Gauge>,
    queued: Family<DeploymentLabel, Gauge>,
    init_seconds: Histograms<DeploymentLabel>,
    rollout_seconds: Histograms<DeploymentLabel>,
    guest_cpu_seconds: Histograms<DeploymentLabel>,
    guest_peak_memory: Histograms<DeploymentLabel>,
    swaps: Family<SwapLabels, Counter>,
    callbacks_pending: Gauge,
    pub trainer: TrainerMetrics,
}

/// Calls to the trainer (shared by every deployment: one trainer).
#[derive(Clone, Debug)]
pub struct TrainerMetrics {
    chat_seconds: Histogram,
    attempts: Family<AttemptLabels, Counter>,
    callbacks: Family<OutcomeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rollout_host");
        let accepted = Family::default();
        registry.register(
            "rollouts_accepted",
            "Rollouts accepted (init answered 202, duplicates not counted)",
            accepted.clone(),
        );
        let completed = Family::default();
        registry.register(
            "rollouts_completed",
            "Rollouts whose callback was COMPLETED",
            completed.clone(),
        );
        let errored = Family::default();
        registry.register(
            "rollouts_errored",
            "Rollouts whose callback was ERROR, by cause: a limit (cpu, memory, wall_clock, \
             stack, chat_calls, log_event_size, history_size, final_messages_size), trap, \
             plugin_error, no_complete, shutdown, cancelled, no_room, internal",
            errored.clone(),
        );
        let inits = Family::default();
        registry.register(
            "inits",
            "Init requests answered, by HTTP status code (429: deployment full; a duplicate's \
             202 counts here, not in rollouts_accepted)",
            inits.clone(),
        );
        let running = Family::default();
        registry.register(
            "rollouts_running",
            "Rollouts whose agent is running now",
            running.clone(),
        );
        let queued = Family::default();
        registry.register(
            "rollouts_queued",
            "Accepted rollouts waiting for a slot now",
            queued.clone(),
        );
        let init_seconds: Histograms<DeploymentLabel> = Family::new_with_constructor(seconds);
        registry.register_with_unit(
            "init_duration",
            "Time to answer an accepted init (admission, instance, get-tools)",
            Unit::Seconds,
            init_seconds.clone(),
        );
        let rollout_seconds: Histograms<DeploymentLabel> = Family::new_with_constructor(seconds);
        registry.register_with_unit(
            "rollout_duration",
            "Time from an accepted init to its callback's last attempt",
            Unit::Seconds,
            rollout_seconds.clone(),
        );
        let guest_cpu_seconds: Histograms<DeploymentLabel> = Family::new_with_constructor(seconds);
        registry.register_with_unit(
            "guest_cpu",
            "CPU time the plugin used per rollout",
            Unit::Seconds,
            guest_cpu_seconds.clone(),
        );
        let guest_peak_memory: Histograms<DeploymentLabel> = Family::new_with_constructor(bytes);
        registry.register_with_unit(
            "guest_peak_memory",
            "Peak linear memory of the plugin per rollout",
            Unit::Bytes,
            guest_peak_memory.clone(),
        );
        let swaps = Family::default();
        registry.register(
            "plugin_swaps",
            "Plugin loads after start (SIGHUP, --reload, admin upload), by outcome",
            swaps.clone(),
        );
        let callbacks_pending = Gauge::default();
        registry.register(
            "callbacks_pending",
            "Callbacks the trainer could not take, waiting for redelivery now",
            callbacks_pending.clone(),
        );
        let chat_seconds = seconds();
        registry.register_with_unit(
            "chat_duration",
            "Time of a chat call to the trainer's LLM, retries included",
            Unit::Seconds,
            chat_seconds.clone(),
        );
        let attempts = Family::default();
        registry.register(
            "trainer_attempts",
            "HTTP attempts to the trainer, by call (chat, callback) and outcome (ok, http_4xx, \
             http_429, http_5xx, timeout, transport, bad_response)",
            attempts.clone(),
        );
        let callbacks = Family::default();
        registry.register(
            "callbacks",
            "Completion callbacks, by final outcome (delivered, rejected: a 4xx, failed: \
             retries exhausted)",
            callbacks.clone(),
        );
        Self {
            registry,
            accepted,
            completed,
            errored,
            inits,
            running,
            queued,
            init_seconds,
            rollout_seconds,
            guest_cpu_seconds,
            guest_peak_memory,
            swaps,
            callbacks_pending,
            trainer: TrainerMetrics {
                chat_seconds,
                attempts,
                callbacks,
            },
        }
    }

    /// Deployment `name`'s handles (the same series again for a deployment
    /// re-made under its old name).
    pub fn deployment(&self, name: &str) -> DeploymentMetrics {
        let label = DeploymentLabel {
            deployment: name.to_owned(),
        };
        // Swaps are rare: show them as 0 until one happens.
        for outcome in ["swapped", "refused"] {
            self.swaps.get_or_create_owned(&SwapLabels {
                deployment: name.to_owned(),
                outcome,
            });
        }
        DeploymentMetrics {
            accepted: self.accepted.get_or_create_owned(&label),
            completed: self.completed.get_or_create_owned(&label),
            init_seconds: self.init_seconds.get_or_create_owned(&label),
            rollout_seconds: self.rollout_seconds.get_or_create_owned(&label),
            guest_cpu_seconds: self.guest_cpu_seconds.get_or_create_owned(&label),
            guest_peak_memory: self.guest_peak_memory.get_or_create_owned(&label),
            errored: self.errored.clone(),
            inits: self.inits.clone(),
            swaps: self.swaps.clone(),
            name: name.to_owned(),
        }
    }

    /// The exposition, with the gauges set to `now`: (deployment, running,
    /// queued) of each deployment served (a deleted one's are dropped), and
    /// the callbacks waiting for redelivery.
    pub fn encode(&self, now: &[(String, usize, usize)], callbacks_pending: usize) -> String {
        self.callbacks_pending.set(gauge(callbacks_pending));
        self.running.clear();
        self.queued.clear();
        for (deployment, running, queued) in now {
            let label = DeploymentLabel {
                deployment: deployment.clone(),
            };
            self.running.get_or_create(&label).set(gauge(*running));
            self.queued.get_or_create(&label).set(gauge(*queued));
        }
        let mut text = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug
        // in a metric, and an empty answer says so without a panic.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        text
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One deployment's metrics.
#[derive(Clone)]
pub struct DeploymentMetrics {
    name: String,
    accepted: Counter,
    completed: Counter,
    init_seconds: Histogram,
    rollout_seconds: Histogram,
    guest_cpu_seconds: Histogram,
    guest_peak_memory: Histogram,
    errored: Family<CauseLabels, Counter>,
    inits: Family<CodeLabels, Counter>,
    swaps: Family<SwapLabels, Counter>,
}

impl DeploymentMetrics {
    /// An init was answered with `code` (a duplicate's 202 too).
    pub fn init(&self, code: u16) {
        self.inits
            .get_or_create(&CodeLabels {
                deployment: self.name.clone(),
                code,
            })
            .inc();
    }

    /// A new rollout was accepted, `took` after its init began.
    pub fn accepted(&self, took: Duration) {
        self.accepted.inc();
        self.init_seconds.observe(took.as_secs_f64());
    }

    /// A rollout ended with `status` (its callback's); `cause` names why
    /// one that is not completed failed ([`Outcome::cause`]).
    pub fn ended(
        &self,
        status: Status,
        cause: &'static str,
        guest_cpu: Duration,
        guest_peak_memory: u64,
    ) {
        if status == Status::Completed {
            self.completed.inc();
        } else {
            self.errored
                .get_or_create(&CauseLabels {
                    deployment: self.name.clone(),
                    cause,
                })
                .inc();
        }
        self.guest_cpu_seconds.observe(guest_cpu.as_secs_f64());
        self.guest_peak_memory.observe(guest_peak_memory as f64);
    }

    /// Its callback's last attempt is over, `took` after the init.
    pub fn called_back(&self, took: Duration) {
        self.rollout_seconds.observe(took.as_secs_f64());
    }

    /// A plugin swap was tried after start.
    pub fn swap(&self, swapped: bool) {
        self.swaps
            .get_or_create(&SwapLabels {
                deployment: self.name.clone(),
                outcome: if swapped { "swapped" } else { "refused" },
            })
            .inc();
    }
}

/// Which call to the trainer.
#[derive(Debug, Clone, Copy)]
pub enum TrainerCall {
    Chat,
    Callback,
}

impl TrainerMetrics {
    /// One HTTP attempt ended (`Ok`: a 2xx).
    pub fn attempt<T>(&self, call: TrainerCall, result: &Result<T, TrainerError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(TrainerError::Rejected { .. }) => "http_4xx",
            Err(TrainerError::RateLimited { .. }) => "http_429",
            Err(TrainerError::Failed { .. }) => "http_5xx",
            Err(TrainerError::Timeout(_)) => "timeout",
            Err(TrainerError::Transport(_)) => "transport",
            Err(TrainerError::BadResponse(_)) => "bad_response",
        };
        let call = match call {
            TrainerCall::Chat => "chat",
            TrainerCall::Callback => "callback",
        };
        self.attempts
            .get_or_create(&AttemptLabels { call, outcome })
            .inc();
    }

    /// A chat call ended (its retries included) after `took`.
    pub fn chat(&self, took: Duration) {
        self.chat_seconds.observe(took.as_secs_f64());
    }

    /// A callback's final outcome.
    pub fn callback<T>(&self, result: &Result<T, TrainerError>) {
        let outcome = match result {
            Ok(_) => "delivered",
            Err(TrainerError::Rejected { .. } | TrainerError::RateLimited { .. }) => "rejected",
            Err(_) => "failed",
        };
        self.callbacks
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}
