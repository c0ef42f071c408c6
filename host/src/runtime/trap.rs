//! Turning a guest failure (trap, limit, panic) into one readable line.

use super::state::StoreState;
use wasmtime::{Store, Trap, WasmBacktrace};

/// "trapped: wasm `unreachable` instruction executed in calc::run (panicked at src/lib.rs:3:5: boom)".
pub fn describe_guest_failure(err: &wasmtime::Error, store: &Store<StoreState>) -> String {
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
    text
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
