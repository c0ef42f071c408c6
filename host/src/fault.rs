//! Panics, contained: the text of a caught panic, and (debug builds only)
//! a hook that makes the server panic at a named point so the tests can
//! show that a panic frees the rollout's slot and still answers.

use std::any::Any;

/// What a caught panic said.
pub fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

/// The environment variable of the test hook: `POINT:PREFIX` panics at
/// `POINT` (`handler`, `admission`, `rollout`) for rollout ids starting
/// with `PREFIX`. Read only by debug builds.
pub const TEST_PANIC_VAR: &str = "ROLLOUT_HOST_TEST_PANIC";

/// Panics if the test hook names this point and rollout (debug builds).
#[cfg(debug_assertions)]
pub fn inject(point: &str, rollout_id: &str) {
    static SPEC: std::sync::OnceLock<Option<(String, String)>> = std::sync::OnceLock::new();
    let spec = SPEC.get_or_init(|| {
        let text = std::env::var(TEST_PANIC_VAR).ok()?;
        let (point, prefix) = text.split_once(':')?;
        Some((point.to_owned(), prefix.to_owned()))
    });
    if let Some((at, prefix)) = spec
        && at == point
        && rollout_id.starts_with(prefix.as_str())
    {
        panic!("test panic injected at {point} for rollout {rollout_id}");
    }
}

/// Release builds have no test hook.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn inject(_point: &str, _rollout_id: &str) {}
