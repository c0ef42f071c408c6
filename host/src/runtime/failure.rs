//! How a call into a plugin failed, as a value: the plugin's own error, a
//! trap, or a tripped limit. Every message is built here and names the
//! plugin build (`plugin calculator@3f9a1c2 exceeded its CPU budget of 30s`).

use super::limits::LimitExceeded;
use super::state::StoreState;
use std::fmt;
use std::sync::Arc;
use wasmtime::{Store, Trap, WasmBacktrace};

/// The export that was running when the plugin failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Instantiation (the component's start functions).
    Start,
    Name,
    GetTools,
    Run,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Start => "start-up",
            Stage::Name => "name",
            Stage::GetTools => "get-tools",
            Stage::Run => "run",
        }
    }
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The plugin returned an error of its own (`Err(message)`).
    PluginError(String),
    /// A wasm trap or another runtime error, with the plugin's own frame
    /// (demangled) and the panic message it printed, when known.
    Trap {
        reason: String,
        function: Option<String>,
        panic: Option<String>,
    },
    /// A limit stopped it.
    Limit(LimitExceeded),
    /// A limit refused it something (memory), and it then returned an
    /// error of its own (a Python `MemoryError`, a JS "out of memory").
    LimitThenError {
        limit: LimitExceeded,
        message: String,
    },
    /// It returned a tool whose schema is not a JSON object.
    BadTool(String),
    /// The host had no room for the instance (the pool is full, or the
    /// kernel refused memory or a mapping): not the plugin's fault, and
    /// worth a retry.
    NoRoom(String),
}

/// A failed call into a plugin.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct GuestError {
    /// The plugin build: `name@sha256-prefix`.
    pub plugin: Arc<str>,
    pub stage: Stage,
    pub failure: Failure,
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (plugin, stage) = (&self.plugin, self.stage.label());
        match &self.failure {
            Failure::Limit(limit) if self.stage == Stage::Run => {
                write!(f, "plugin {plugin} {limit}")
            }
            Failure::Limit(limit) => write!(f, "plugin {plugin} {limit} in {stage}"),
            Failure::LimitThenError { limit, message } => {
                write!(
                    f,
                    "plugin {plugin} {limit} ({stage} then failed: {message})"
                )
            }
            Failure::PluginError(message) => write!(f, "plugin {plugin} {stage} failed: {message}"),
            Failure::NoRoom(reason) => write!(
                f,
                "rollout-host has no room for another instance of plugin {plugin} now ({reason}); retry later"
            ),
            Failure::BadTool(name) => write!(
                f,
                "plugin {plugin} returned tool '{name}' whose parameters are not a JSON object"
            ),
            Failure::Trap {
                reason,
                function,
                panic,
            } => {
                write!(f, "plugin {plugin} trapped in {stage}: {reason}")?;
                if let Some(function) = function {
                    write!(f, " in {function}")?;
                }
                if let Some(panic) = panic {
                    write!(f, " ({panic})")?;
                }
                Ok(())
            }
        }
    }
}

/// The plugin's own error; when the memory limit refused it memory first,
/// that limit is the cause, told with the plugin's message.
pub fn plugin_error(message: String, store: &mut Store<StoreState>) -> Failure {
    let limiter = &store.data().limiter;
    if !limiter.memory_exceeded {
        return Failure::PluginError(message);
    }
    let limit = LimitExceeded::Memory(limiter.max_memory());
    store.data_mut().host.record_limit(&limit);
    Failure::LimitThenError { limit, message }
}

/// The limit behind `err`, if any: a host function's or the epoch
/// callback's `LimitExceeded`, a refused memory growth (Rust turns it into
/// an `unreachable` trap), or a stack overflow.
fn limit_of(err: &wasmtime::Error, state: &StoreState) -> Option<LimitExceeded> {
    if let Some(limit) = err.chain().find_map(|c| c.downcast_ref::<LimitExceeded>()) {
        return Some(limit.clone());
    }
    if state.limiter.memory_exceeded {
        return Some(LimitExceeded::Memory(state.limiter.max_memory()));
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => Some(LimitExceeded::Stack(state.max_wasm_stack)),
        _ => None,
    }
}

/// What a failed guest call (a wasmtime error) was; a tripped limit is
/// recorded in the rollout's debug log.
pub fn classify(err: &wasmtime::Error, store: &mut Store<StoreState>) -> Failure {
    if is_out_of_room(err) {
        return Failure::NoRoom(super::one_line(err));
    }
    if let Some(limit) = limit_of(err, store.data()) {
        store.data_mut().host.record_limit(&limit);
        return Failure::Limit(limit);
    }
    let reason = match err.downcast_ref::<Trap>() {
        Some(trap) => trap
            .to_string()
            .trim_start_matches("wasm trap: ")
            .to_owned(),
        None => super::one_line(err),
    };
    let function = err.downcast_ref::<WasmBacktrace>().and_then(|bt| {
        bt.frames()
            .iter()
            .filter_map(|f| f.func_name())
            .map(demangle)
            .find(|name| !is_runtime_frame(name))
    });
    Failure::Trap {
        reason,
        function,
        panic: store.data().host.panic_message(),
    }
}

/// The instance pool was full or the kernel refused memory (`ENOMEM`: no
/// memory, or `vm.max_map_count` reached).
fn is_out_of_room(err: &wasmtime::Error) -> bool {
    // wasmtime reports mprotect failures as `io::Error` and mmap failures
    // as rustix's `Errno`, whose text is the same as io::Error's.
    let enomem = format!("(os error {})", libc::ENOMEM);
    err.chain().any(|cause| {
        cause.is::<wasmtime::PoolConcurrencyLimitError>()
            || cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.raw_os_error() == Some(libc::ENOMEM))
            || cause.to_string().ends_with(&enomem)
    })
}

/// Records a limit the host enforced from outside (the wall clock).
pub fn note_limit(store: &mut Store<StoreState>, limit: LimitExceeded) -> Failure {
    store.data_mut().host.record_limit(&limit);
    Failure::Limit(limit)
}

/// A Rust symbol (legacy or v0 mangling) without its hash; other names as
/// they are.
fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(symbol) => format!("{symbol:#}"),
        Err(_) => name.to_owned(),
    }
}

/// Frames of the guest's panic, allocation and binding machinery, skipped
/// so the message names the plugin's own function.
fn is_runtime_frame(name: &str) -> bool {
    let name = name.trim_start_matches('<');
    [
        "core::",
        "std::",
        "alloc::",
        "__rust",
        "rust_panic",
        "abort",
        "dlmalloc",
        "wit_bindgen",
        "rollout_guest_sdk::",
    ]
    .iter()
    .any(|p| name.starts_with(p))
        || name.contains("panic")
        || name.starts_with("wasm-function[")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn symbols_are_demangled_and_runtime_frames_skipped() {
        let v0 = "_RNvNtNtNtNtCs1234abcd_3std3sys3pal4wasi7helpers14abort_internal";
        assert_eq!(demangle(v0), "std::sys::pal::wasi::helpers::abort_internal");
        assert!(is_runtime_frame(&demangle(v0)));
        let legacy = "_ZN4calc5agent4eval17h0123456789abcdefE";
        assert_eq!(demangle(legacy), "calc::agent::eval");
        assert!(!is_runtime_frame("calc::agent::eval"));
        assert_eq!(demangle("my_c_function"), "my_c_function");
    }

    #[test]
    fn messages_name_the_plugin_build_and_the_stage() {
        let plugin: Arc<str> = "calculator@3f9a1c2".into();
        let error = |stage, failure| GuestError {
            plugin: plugin.clone(),
            stage,
            failure,
        };
        assert_eq!(
            error(
                Stage::Run,
                Failure::Limit(LimitExceeded::Cpu(Duration::from_secs(30)))
            )
            .to_string(),
            "plugin calculator@3f9a1c2 exceeded its CPU budget of 30s"
        );
        assert_eq!(
            error(
                Stage::GetTools,
                Failure::Limit(LimitExceeded::Cpu(Duration::from_secs(1)))
            )
            .to_string(),
            "plugin calculator@3f9a1c2 exceeded its CPU budget of 1s in get-tools"
        );
        assert_eq!(
            error(Stage::Run, Failure::PluginError("boom".into())).to_string(),
            "plugin calculator@3f9a1c2 run failed: boom"
        );
        let trap = Failure::Trap {
            reason: "wasm `unreachable` instruction executed".into(),
            function: Some("calc::agent::eval".into()),
            panic: Some("panicked at src/agent.rs:3:5: oops".into()),
        };
        assert_eq!(
            error(Stage::GetTools, trap).to_string(),
            "plugin calculator@3f9a1c2 trapped in get-tools: wasm `unreachable` instruction \
             executed in calc::agent::eval (panicked at src/agent.rs:3:5: oops)"
        );
    }
}
