//! Per-rollout limits: what they are, how a tripped one is reported, and
//! the two mechanisms a guest cannot dodge: the memory limiter and the CPU
//! meter driven by epoch interruption.

use super::fair_share::Turn;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::{EngineWeak, ResourceLimiter};

/// How often the engine's epoch advances: the granularity of the CPU budget
/// and of yielding a running guest back to the async runtime.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The limits every rollout runs under.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Linear memory per instance.
    pub max_memory_bytes: usize,
    /// Time the guest spends executing (not waiting in `chat`).
    pub cpu_budget: Duration,
    /// Wall-clock time of the whole rollout (init's `get-tools`, or the run
    /// from its slot to its end), chat waits included.
    pub wall_clock: Duration,
    pub max_wasm_stack_bytes: usize,
    /// `chat` calls allowed per `max_turns` (at least one turn is assumed).
    pub chat_calls_per_turn: u32,
    pub max_log_event_bytes: usize,
    pub max_history_bytes: usize,
    pub max_final_messages_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_memory_bytes: 256 << 20,
            cpu_budget: Duration::from_secs(30),
            wall_clock: Duration::from_secs(30 * 60),
            max_wasm_stack_bytes: 512 << 10,
            chat_calls_per_turn: 4,
            max_log_event_bytes: 1 << 20,
            max_history_bytes: 32 << 20,
            max_final_messages_bytes: 32 << 20,
        }
    }
}

impl Limits {
    /// The hard cap on `chat` calls of a rollout with `max_turns`.
    pub fn max_chat_calls(&self, max_turns: u32) -> u32 {
        self.chat_calls_per_turn.saturating_mul(max_turns.max(1))
    }
}

/// A limit a guest ran into. The message names the limit and its value; it
/// becomes the ERROR callback's `error_message`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("plugin exceeded its memory limit of {}", bytes(*.0))]
    Memory(usize),
    #[error("plugin exceeded its CPU budget of {}", seconds(*.0))]
    Cpu(Duration),
    #[error("plugin exceeded its wall-clock deadline of {}", seconds(*.0))]
    WallClock(Duration),
    #[error("plugin exceeded its stack limit of {}", bytes(*.0))]
    Stack(usize),
    #[error("plugin exceeded its limit of {0} chat calls")]
    ChatCalls(u32),
    #[error("plugin sent a log-event of {}, over the limit of {}", bytes(*size), bytes(*max))]
    LogEvent { size: usize, max: usize },
    #[error("plugin sent a chat history of {}, over the limit of {}", bytes(*size), bytes(*max))]
    History { size: usize, max: usize },
    #[error("plugin sent final messages of {}, over the limit of {}", bytes(*size), bytes(*max))]
    FinalMessages { size: usize, max: usize },
}

impl LimitExceeded {
    /// Short name for logs and the debug log's `limit_exceeded` event.
    pub fn name(&self) -> &'static str {
        match self {
            LimitExceeded::Memory(_) => "memory",
            LimitExceeded::Cpu(_) => "cpu",
            LimitExceeded::WallClock(_) => "wall_clock",
            LimitExceeded::Stack(_) => "stack",
            LimitExceeded::ChatCalls(_) => "chat_calls",
            LimitExceeded::LogEvent { .. } => "log_event_size",
            LimitExceeded::History { .. } => "history_size",
            LimitExceeded::FinalMessages { .. } => "final_messages_size",
        }
    }
}

/// "256 MiB", "512 KiB", "100.0 MiB", "1000 bytes".
pub fn bytes(n: usize) -> String {
    let (mib, kib) = (1usize << 20, 1usize << 10);
    if n >= mib && n.is_multiple_of(mib) {
        format!("{} MiB", n / mib)
    } else if n >= mib {
        format!("{:.1} MiB", n as f64 / mib as f64)
    } else if n >= kib && n.is_multiple_of(kib) {
        format!("{} KiB", n / kib)
    } else if n >= kib {
        format!("{:.1} KiB", n as f64 / kib as f64)
    } else {
        format!("{n} bytes")
    }
}

/// "30s", "1.5s".
pub fn seconds(d: Duration) -> String {
    let s = format!("{:.3}", d.as_secs_f64());
    format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
}

/// Memory accounting and the memory cap of one store.
#[derive(Debug)]
pub struct GuestLimiter {
    max_memory: usize,
    /// Largest linear memory size reached.
    pub peak_memory: usize,
    /// Set when the guest asked for more than `max_memory`.
    pub memory_exceeded: bool,
}

impl GuestLimiter {
    pub fn new(max_memory: usize) -> Self {
        Self {
            max_memory,
            peak_memory: 0,
            memory_exceeded: false,
        }
    }

    pub fn max_memory(&self) -> usize {
        self.max_memory
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.memory_exceeded = true;
            return Ok(false);
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        8
    }
}

/// Time a guest has spent executing: the time spent inside `poll` of its
/// calls. Waiting in an async host call (`chat`) returns `Pending` and is
/// not counted. The end of each poll also ends the guest's turn in the
/// heavy lane, if it had one.
#[derive(Debug, Default)]
pub struct CpuMeter {
    state: Mutex<(Duration, Option<Instant>)>,
    pub turn: Arc<Turn>,
}

impl CpuMeter {
    /// Execution time so far, including the poll in progress.
    pub fn used(&self) -> Duration {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 + state.1.map_or(Duration::ZERO, |t| t.elapsed())
    }

    fn start(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = Some(Instant::now());
    }

    fn stop(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = state.1.take() {
            state.0 += t.elapsed();
        }
    }

    /// Runs `fut`, counting the time spent polling it.
    pub async fn measure<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = pin!(fut);
        std::future::poll_fn(|cx| {
            self.start();
            let result = fut.as_mut().poll(cx);
            self.stop();
            self.turn.end();
            result
        })
        .await
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is
/// dropped (the thread holds only a weak reference).
pub fn spawn_epoch_ticker(engine: EngineWeak) {
    let spawned = std::thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the epoch ticker: CPU budgets will not be enforced");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_limit_and_its_value() {
        assert_eq!(
            LimitExceeded::Cpu(Duration::from_secs(30)).to_string(),
            "plugin exceeded its CPU budget of 30s"
        );
        assert_eq!(
            LimitExceeded::Cpu(Duration::from_millis(1500)).to_string(),
            "plugin exceeded its CPU budget of 1.5s"
        );
        assert_eq!(
            LimitExceeded::Memory(256 << 20).to_string(),
            "plugin exceeded its memory limit of 256 MiB"
        );
        assert_eq!(
            LimitExceeded::Stack(512 << 10).to_string(),
            "plugin exceeded its stack limit of 512 KiB"
        );
        assert_eq!(
            LimitExceeded::LogEvent {
                size: 100 << 20,
                max: 1 << 20
            }
            .to_string(),
            "plugin sent a log-event of 100 MiB, over the limit of 1 MiB"
        );
        assert_eq!(bytes((100 << 20) + 15), "100.0 MiB");
        assert_eq!(bytes(1000), "1000 bytes");
        assert_eq!(Limits::default().max_chat_calls(0), 4);
        assert_eq!(Limits::default().max_chat_calls(10), 40);
    }

    #[tokio::test]
    async fn meter_excludes_time_spent_pending() {
        let meter = CpuMeter::default();
        meter
            .measure(async {
                std::thread::sleep(Duration::from_millis(30)); // "executing"
                tokio::time::sleep(Duration::from_millis(200)).await; // "waiting in chat"
            })
            .await;
        let used = meter.used();
        assert!(
            used >= Duration::from_millis(30) && used < Duration::from_millis(150),
            "{used:?}"
        );
    }
}
