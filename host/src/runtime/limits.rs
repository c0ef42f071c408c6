//! Per-rollout limits: what they are, how a tripped one is reported, and
//! the two mechanisms a guest cannot dodge: the memory limiter and the CPU
//! meter driven by epoch interruption.

use super::fair_share::Turn;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
    /// Guest stdout + stderr logged per rollout (log bytes, overhead included).
    pub max_guest_output_bytes: usize,
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
            max_guest_output_bytes: 64 << 10,
        }
    }
}

impl Limits {
    /// The hard cap on `chat` calls of a rollout with `max_turns`.
    pub fn max_chat_calls(&self, max_turns: u32) -> u32 {
        self.chat_calls_per_turn.saturating_mul(max_turns.max(1))
    }
}

/// A limit a guest ran into. The message names the limit and its value;
/// after the plugin's name it becomes the ERROR callback's `error_message`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("exceeded its memory limit of {}", bytes(*.0))]
    Memory(usize),
    #[error("exceeded its CPU budget of {}", seconds(*.0))]
    Cpu(Duration),
    #[error("exceeded its wall-clock deadline of {}", seconds(*.0))]
    WallClock(Duration),
    #[error("exceeded its stack limit of {}", bytes(*.0))]
    Stack(usize),
    #[error("exceeded its limit of {0} chat calls")]
    ChatCalls(u32),
    #[error("sent a log-event of {}, over the limit of {}", bytes(*size), bytes(*max))]
    LogEvent { size: usize, max: usize },
    #[error("sent a chat history of {}, over the limit of {}", bytes(*size), bytes(*max))]
    History { size: usize, max: usize },
    #[error("sent final messages of {}, over the limit of {}", bytes(*size), bytes(*max))]
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

/// CPU time a guest has spent executing: the CPU time of the thread that
/// polls its calls, summed over the polls (a guest runs on a fiber of the
/// polling thread, so a poll's thread CPU time is the guest's plus the
/// host calls it makes). Time the thread was descheduled (other processes,
/// other rollouts) is not counted, nor is waiting in an async host call
/// (`chat`), which returns `Pending`. The end of each poll also ends the
/// guest's turn in the heavy lane, if it had one.
#[derive(Debug, Default)]
pub struct CpuMeter {
    state: Mutex<MeterState>,
    pub turn: Arc<Turn>,
}

#[derive(Debug, Default)]
struct MeterState {
    /// CPU time of the polls that have ended.
    used: Duration,
    /// The polling thread's CPU clock when the poll in progress began.
    poll_started: Option<Duration>,
}

impl CpuMeter {
    fn lock(&self) -> std::sync::MutexGuard<'_, MeterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// CPU time so far. Called on the polling thread (the epoch callback
    /// runs there), it includes the poll in progress.
    pub fn used(&self) -> Duration {
        let state = self.lock();
        state.used
            + state
                .poll_started
                .map_or(Duration::ZERO, |t| thread_cpu_time().saturating_sub(t))
    }

    fn start(&self) {
        self.lock().poll_started = Some(thread_cpu_time());
    }

    fn stop(&self) {
        let mut state = self.lock();
        if let Some(t) = state.poll_started.take() {
            state.used += thread_cpu_time().saturating_sub(t);
        }
    }

    /// Runs `fut`, counting the CPU time spent polling it.
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

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass; this clock
    // exists on every Linux and macOS.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
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
            "exceeded its CPU budget of 30s"
        );
        assert_eq!(
            LimitExceeded::Cpu(Duration::from_millis(1500)).to_string(),
            "exceeded its CPU budget of 1.5s"
        );
        assert_eq!(
            LimitExceeded::Memory(256 << 20).to_string(),
            "exceeded its memory limit of 256 MiB"
        );
        assert_eq!(
            LimitExceeded::Stack(512 << 10).to_string(),
            "exceeded its stack limit of 512 KiB"
        );
        assert_eq!(
            LimitExceeded::LogEvent {
                size: 100 << 20,
                max: 1 << 20
            }
            .to_string(),
            "sent a log-event of 100 MiB, over the limit of 1 MiB"
        );
        assert_eq!(bytes((100 << 20) + 15), "100.0 MiB");
        assert_eq!(bytes(1000), "1000 bytes");
        assert_eq!(Limits::default().max_chat_calls(0), 4);
        assert_eq!(Limits::default().max_chat_calls(10), 40);
    }

    /// Burns about `ms` of CPU on this thread.
    fn burn(ms: u64) {
        let until = thread_cpu_time() + Duration::from_millis(ms);
        while thread_cpu_time() < until {
            std::hint::black_box(0u64);
        }
    }

    #[tokio::test]
    async fn meter_counts_cpu_not_waiting_or_sleeping() {
        let meter = CpuMeter::default();
        meter
            .measure(async {
                burn(30); // executing
                std::thread::sleep(Duration::from_millis(100)); // descheduled
                tokio::time::sleep(Duration::from_millis(100)).await; // waiting in chat
            })
            .await;
        let used = meter.used();
        assert!(
            used >= Duration::from_millis(30) && used < Duration::from_millis(90),
            "{used:?}"
        );
    }
}
