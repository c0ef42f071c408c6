//! Per-instance store data: WASI context, resource table, limits, and the
//! host's own per-rollout state that the host functions work on.

use super::guest_io::{GuestOutput, OutputBudget, Stream};
use super::limits::{CpuMeter, GuestLimiter, LimitExceeded, Limits};
use crate::debug_log::RolloutLog;
use crate::protocol::{History, Message, Metrics, RolloutStatus};
use crate::trainer::{ChatCompletion, ChatDialect, TrainerClient, TrainerError};
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

/// Where this rollout's chat calls go and how they are written.
#[derive(Clone)]
pub struct TrainerLink {
    pub client: TrainerClient,
    /// The chat-completions URL.
    pub chat_url: Arc<reqwest::Url>,
    pub api_key: Option<String>,
    pub dialect: Arc<dyn ChatDialect>,
    /// Sees each chat call (test mode: progress, stepping); `None` when
    /// serving.
    pub watch: Option<Arc<dyn ChatWatch>>,
}

impl std::fmt::Debug for TrainerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainerLink")
            .field("chat_url", &self.chat_url.as_str())
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

/// Sees a rollout's chat calls as the host makes them.
#[async_trait::async_trait]
pub trait ChatWatch: Send + Sync {
    /// Before a call, with the messages it sends (a JSON array's text):
    /// the call waits until this returns.
    async fn before(&self, messages: &str);
    /// After a call (its retries included), with how it ended.
    fn after(&self, result: Result<&ChatCompletion, &TrainerError>);
}

/// The agent's accepted `complete` call.
#[derive(Debug, Clone)]
pub struct Completion {
    pub status: RolloutStatus,
    pub final_messages: Vec<Message>,
    pub finish_reason: String,
    pub error_message: Option<String>,
    pub reward: Option<f64>,
    pub extra_fields: Map<String, Value>,
    pub num_tool_calls: u64,
    pub tool_latency_ms: f64,
    /// When `complete` was called (for total_latency_ms).
    pub at: Instant,
}

/// The host's view of one rollout, owned by its store.
#[derive(Debug)]
pub struct RolloutHost {
    pub rollout_id: Arc<str>,
    pub trainer: Option<TrainerLink>,
    /// The init request's messages (COMPLETED final_messages must start with them).
    pub request_messages: Vec<Message>,
    /// The init's `completion_params`, until the first chat call encodes
    /// them into `chat_fields`.
    pub completion_params: Map<String, Value>,
    /// The chat request's fields for `completion_params`, encoded once by
    /// the link's dialect at the first call that uses them.
    pub chat_fields: Option<String>,
    /// The last chat call's messages plus its reply, as the JSON text that
    /// crossed the boundary: the next call must start with them.
    pub history: History,
    /// LLM-side metrics measured by the host.
    pub metrics: Metrics,
    pub completion: Option<Completion>,
    pub debug_log: Option<RolloutLog>,
    /// The end of the guest's stderr, to explain a trap.
    pub stderr_tail: Arc<Mutex<Vec<u8>>>,
    pub limits: HostCallLimits,
    /// `chat` calls made so far (refused ones included).
    pub chat_calls: u32,
}

/// The limits the host functions enforce.
#[derive(Debug, Clone, PartialEq)]
pub struct HostCallLimits {
    pub max_chat_calls: u32,
    pub max_log_event_bytes: usize,
    pub max_history_bytes: usize,
    pub max_final_messages_bytes: usize,
}

impl HostCallLimits {
    pub fn new(limits: &Limits, max_turns: u32) -> Self {
        Self {
            max_chat_calls: limits.max_chat_calls(max_turns),
            max_log_event_bytes: limits.max_log_event_bytes,
            max_history_bytes: limits.max_history_bytes,
            max_final_messages_bytes: limits.max_final_messages_bytes,
        }
    }
}

impl RolloutHost {
    pub fn new(
        rollout_id: &str,
        trainer: TrainerLink,
        request_messages: Vec<Message>,
        completion_params: Map<String, Value>,
        debug_log: Option<RolloutLog>,
        limits: HostCallLimits,
    ) -> Self {
        Self {
            rollout_id: rollout_id.into(),
            trainer: Some(trainer),
            history: History::default(),
            completion_params,
            chat_fields: None,
            request_messages,
            metrics: Metrics::default(),
            completion: None,
            debug_log,
            stderr_tail: Arc::default(),
            limits,
            chat_calls: 0,
        }
    }

    /// A rollout-less context (start-up checks): `chat` is refused.
    pub fn detached(label: &str) -> Self {
        Self {
            rollout_id: label.into(),
            trainer: None,
            request_messages: Vec::new(),
            completion_params: Map::new(),
            chat_fields: None,
            history: History::default(),
            metrics: Metrics::default(),
            completion: None,
            debug_log: None,
            stderr_tail: Arc::default(),
            limits: HostCallLimits::new(&Limits::default(), 0),
            chat_calls: 0,
        }
    }

    /// The history so far: the last chat call's messages and its reply,
    /// or the request's messages before any chat (for an ERROR callback).
    pub fn history_so_far(&mut self) -> Vec<Message> {
        match self.history.messages() {
            none_yet if none_yet.is_empty() => std::mem::take(&mut self.request_messages),
            messages => messages,
        }
    }

    /// Notes a tripped limit in the debug log (`limit_exceeded` event).
    pub fn record_limit(&mut self, limit: &LimitExceeded) {
        tracing::warn!(limit = limit.name(), "{limit}");
        if let Some(log) = &mut self.debug_log {
            let event = serde_json::json!({"limit": limit.name(), "message": limit.to_string()});
            if let Err(e) = log.write("limit_exceeded", event) {
                tracing::warn!(error = %e, "cannot write debug log");
            }
        }
    }

    /// The guest's last stderr line that looks like a panic message.
    pub fn panic_message(&self) -> Option<String> {
        let tail = self.stderr_tail.lock().unwrap_or_else(|p| p.into_inner());
        let text = String::from_utf8_lossy(&tail);
        let start = text.rfind("panicked at")?;
        let message: Vec<&str> = text[start..]
            .lines()
            .take(2)
            .map(|line| line.trim_end_matches(':'))
            .collect();
        Some(message.join(": "))
    }
}

/// The `T` of `Store<T>`.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: GuestLimiter,
    pub(super) meter: Arc<CpuMeter>,
    pub(super) max_wasm_stack: usize,
    pub(super) host: RolloutHost,
}

impl StoreState {
    pub fn new(host: RolloutHost, limits: &Limits) -> Self {
        let tail = host.stderr_tail.clone();
        let budget = OutputBudget::new(host.rollout_id.clone(), limits.max_guest_output_bytes);
        // No preopened directories, no environment, no arguments, no
        // sockets, empty stdin: clocks and randomness only.
        let wasi = WasiCtx::builder()
            .stdout(GuestOutput::new(
                Stream::Stdout,
                tail.clone(),
                budget.clone(),
            ))
            .stderr(GuestOutput::new(Stream::Stderr, tail, budget))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: GuestLimiter::new(limits.max_memory_bytes),
            meter: Arc::default(),
            max_wasm_stack: limits.max_wasm_stack_bytes,
            host,
        }
    }

    /// The host-side state, with the guest's CPU time and peak memory
    /// added to its metrics.
    pub fn into_host(self) -> RolloutHost {
        let mut host = self.host;
        host.metrics.guest_cpu_ms = self.meter.used().as_secs_f64() * 1000.0;
        host.metrics.guest_peak_memory_bytes = self.limiter.peak_memory as u64;
        host
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
