//! The process allocator is mimalloc (set in `main.rs`). It keeps memory a
//! thread freed in that thread's heap until the thread allocates or frees
//! again, so after a burst the parked runtime threads would keep it for
//! good. Each runtime thread, when it parks, hands its freed memory back to
//! the OS, at most once a second; a heartbeat task on each runtime makes
//! idle threads park again after that second.

use std::cell::Cell;
use std::time::{Duration, Instant};

const AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// For tokio's `on_thread_park`.
pub fn release_freed_memory() {
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    LAST.with(|last| {
        let now = Instant::now();
        if last
            .get()
            .is_some_and(|t| now.duration_since(t) < AT_MOST_EVERY)
        {
            return;
        }
        last.set(Some(now));
        // SAFETY: mi_collect only walks and trims the calling thread's heap
        // and the shared arenas, under mimalloc's own locks.
        unsafe { libmimalloc_sys::mi_collect(false) };
    });
}

/// Wakes the runtime it runs on every [`AT_MOST_EVERY`] (and a bit).
pub async fn heartbeat() {
    let mut tick = tokio::time::interval(AT_MOST_EVERY + Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Hop once, so the other threads get woken in turn too.
        tokio::task::yield_now().await;
    }
}
