//! Turning a guest failure (trap, tripped limit, panic) into one readable
//! line, naming the limit when one was the cause.

use super::limits::LimitExceeded;
use super::state::StoreState;
use wasmtime::{Store, Trap, WasmBacktrace};

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

/// The message for a failed guest call, and the limit it tripped.
pub fn classify(
    err: &wasmtime::Error,
    store: &Store<StoreState>,
) -> (String, Option<LimitExceeded>) {
    if let Some(limit) = limit_of(err, store.data()) {
        return (format!("stopped: {limit}"), Some(limit));
    }
    let mut text = match err.downcast_ref::<Trap>() {
        Some(trap) => format!("trapped: {trap}"),
        None => format!("failed: {}", super::one_line(err)),
    };
    if let Some(frame) = err.downcast_ref::<WasmBacktrace>().and_then(|bt| {
        bt.frames()
            .iter()
            .filter_map(|f| f.func_name())
            .find(|name| !is_runtime_frame(name))
    }) {
        text.push_str(&format!(" in {frame}"));
    }
    if let Some(panic) = store.data().host.panic_message() {
        text.push_str(&format!(" ({panic})"));
    }
    (text, None)
}

/// [`classify`], also recording a tripped limit in the debug log.
pub fn describe(err: &wasmtime::Error, store: &mut Store<StoreState>) -> String {
    let (text, limit) = classify(err, store);
    if let Some(limit) = limit {
        store.data_mut().host.record_limit(&limit);
    }
    text
}

/// Records a limit the host enforced from outside (the wall clock).
pub fn note_limit(store: &mut Store<StoreState>, limit: LimitExceeded) -> String {
    store.data_mut().host.record_limit(&limit);
    format!("stopped: {limit}")
}

/// Frames of the guest's panic and allocation machinery, skipped so the
/// message names the plugin's own function.
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
    ]
    .iter()
    .any(|p| name.starts_with(p))
        || name.contains("panic")
}
