//! Sharing the CPU between rollouts. A typical agent runs for well under a
//! millisecond between `chat` calls; a guest that has executed for longer
//! than [`HEAVY_AFTER`] in its rollout is *heavy* (a real computation, or a
//! plugin spinning until its CPU budget stops it). Heavy guests take turns
//! in a lane of `cores - 1` slots (at least one), a turn lasting one epoch
//! tick, so however many of them spin, the light rollouts and the HTTP
//! front end always keep a core.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Guest CPU time after which a rollout counts as heavy.
pub const HEAVY_AFTER: Duration = Duration::from_millis(20);

/// The slots heavy guests take turns in; one per engine.
#[derive(Debug, Clone)]
pub struct HeavyLane {
    slots: Arc<Semaphore>,
}

impl HeavyLane {
    /// A lane leaving one of the machine's cores to light work.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_slots(cores.saturating_sub(1).max(1))
    }

    pub fn with_slots(slots: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots)),
        }
    }

    /// Ends `turn`'s current turn, lets other tasks run, then waits (in
    /// FIFO order with the other heavy guests) for the next one. For
    /// `UpdateDeadline::YieldCustom`.
    pub fn next_turn(&self, turn: Arc<Turn>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        turn.end();
        let slots = self.slots.clone();
        Box::pin(async move {
            tokio::task::yield_now().await;
            // The semaphore is never closed; if it were, run unthrottled.
            if let Ok(permit) = slots.acquire_owned().await {
                *turn.lock() = Some(permit);
            }
        })
    }
}

/// One guest's hold on a lane slot. It lasts at most until the guest's
/// current poll returns ([`Turn::end`] is called then), so a heavy guest
/// waiting in `chat` or for its next turn holds no slot.
#[derive(Debug, Default)]
pub struct Turn(Mutex<Option<OwnedSemaphorePermit>>);

impl Turn {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<OwnedSemaphorePermit>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn end(&self) {
        drop(self.lock().take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    /// Guests that each hold a turn while "executing", as the epoch callback
    /// and the CPU meter drive them.
    async fn spin(lane: HeavyLane, running: Arc<AtomicUsize>, most: Arc<AtomicUsize>) {
        let turn = Arc::new(Turn::default());
        for _ in 0..20 {
            lane.next_turn(turn.clone()).await;
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            let until = Instant::now() + Duration::from_micros(200);
            while Instant::now() < until {}
            running.fetch_sub(1, Ordering::SeqCst);
            turn.end();
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn heavy_guests_never_exceed_the_lane() {
        let lane = HeavyLane::with_slots(1);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let guests: Vec<_> = (0..6)
            .map(|_| tokio::spawn(spin(lane.clone(), running.clone(), most.clone())))
            .collect();
        for guest in guests {
            guest.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_turn_ends_when_the_holder_stops() {
        let lane = HeavyLane::with_slots(1);
        let first = Arc::new(Turn::default());
        lane.next_turn(first.clone()).await;
        // A second guest waits while the first holds the slot...
        let second = Arc::new(Turn::default());
        let waiting = lane.next_turn(second.clone());
        let mut waiting = poll_a_few_times(waiting).await;
        assert!(
            waiting.is_some(),
            "second guest got a turn while the first held it"
        );
        // ...and gets it once the first's poll ends.
        first.end();
        tokio::time::timeout(Duration::from_secs(1), waiting.take().unwrap())
            .await
            .expect("second guest never got its turn");
        assert!(second.lock().is_some());
    }

    /// Polls `fut` a few times, letting other tasks run in between: `None`
    /// if it finished, else the still pending future.
    async fn poll_a_few_times(
        mut fut: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        for _ in 0..3 {
            let done =
                std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx).is_ready()))
                    .await;
            if done {
                return None;
            }
            tokio::task::yield_now().await;
        }
        Some(fut)
    }
}
