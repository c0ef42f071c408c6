//! A deployment's rollouts that are accepted and not yet finished, by id:
//! what each is doing (queued, running, or ended and calling back) and the
//! switch that cancels it. A finished rollout's status moves to its
//! idempotency record ([`crate::idempotency`]) for the record TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Where a rollout is (`GET /v1/rollout/{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Accepted, waiting for a slot to run in.
    Queued,
    Running,
    Completed,
    Error,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Error => "error",
            Status::Cancelled => "cancelled",
        }
    }

    fn is_live(self) -> bool {
        matches!(self, Status::Queued | Status::Running)
    }
}

/// A rollout's status and, once it completed, its reward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub status: Status,
    pub reward: Option<f64>,
}

/// What a cancel did to one rollout (`POST /v1/rollout/cancel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    CancelledQueued,
    CancelledRunning,
    AlreadyFinished,
    NotFound,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::CancelledQueued => "cancelled_queued",
            Disposition::CancelledRunning => "cancelled_running",
            Disposition::AlreadyFinished => "already_finished",
            Disposition::NotFound => "not_found",
        }
    }
}

/// Which rollouts a cancel is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Ids(Vec<String>),
    /// Every live rollout whose id starts with it.
    Prefix(String),
    All,
}

/// One live rollout's status and cancel switch, shared by its task and the
/// registry.
#[derive(Debug)]
pub struct Control {
    progress: Mutex<Progress>,
    cancel: CancellationToken,
}

impl Control {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn progress(&self) -> Progress {
        *self.lock()
    }

    /// It got its slot. A rollout cancelled while queued stays cancelled.
    pub fn running(&self) {
        let mut progress = self.lock();
        if progress.status == Status::Queued {
            progress.status = Status::Running;
        }
    }

    /// Its outcome is known (the callback may still be on its way).
    pub fn ended(&self, ended: Progress) {
        *self.lock() = ended;
    }

    /// Resolves when the rollout is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Stops it if it is queued or running: its status is `cancelled`
    /// from now on (unless it completed in the same instant: a completion
    /// stands).
    fn cancel(&self) -> Disposition {
        let mut progress = self.lock();
        let disposition = match progress.status {
            Status::Queued => Disposition::CancelledQueued,
            Status::Running => Disposition::CancelledRunning,
            _ => return Disposition::AlreadyFinished,
        };
        progress.status = Status::Cancelled;
        self.cancel.cancel();
        disposition
    }
}

type Map = HashMap<Arc<str>, Vec<Arc<Control>>>;

/// The live rollouts of one deployment. Two rollouts may share an id (with
/// different idempotency keys): both are listed, and cancelled together.
#[derive(Debug, Default, Clone)]
pub struct LiveRollouts {
    map: Arc<Mutex<Map>>,
}

impl LiveRollouts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists a rollout that was just accepted (queued) until the returned
    /// guard drops.
    pub fn add(&self, id: Arc<str>) -> Tracked {
        let control = Arc::new(Control {
            progress: Mutex::new(Progress {
                status: Status::Queued,
                reward: None,
            }),
            cancel: CancellationToken::new(),
        });
        self.lock()
            .entry(id.clone())
            .or_default()
            .push(control.clone());
        Tracked {
            map: self.map.clone(),
            id,
            control,
        }
    }

    /// The first live rollout of `id`.
    pub fn progress(&self, id: &str) -> Option<Progress> {
        self.lock()
            .get(id)
            .and_then(|controls| controls.first())
            .map(|c| c.progress())
    }

    /// Cancels the selected live rollouts; for ids named that are not
    /// live, `finished(id)` tells `already_finished` from `not_found`.
    pub fn cancel(
        &self,
        selection: &Selection,
        finished: impl Fn(&str) -> bool,
    ) -> Vec<(String, Disposition)> {
        let map = self.lock();
        let cancel_all = |controls: &[Arc<Control>]| {
            controls
                .iter()
                .map(|c| c.cancel())
                .min_by_key(|d| *d as u8)
                .unwrap_or(Disposition::NotFound)
        };
        match selection {
            Selection::Ids(ids) => ids
                .iter()
                .map(|id| {
                    let disposition = match map.get(id.as_str()) {
                        Some(controls) => cancel_all(controls),
                        None if finished(id) => Disposition::AlreadyFinished,
                        None => Disposition::NotFound,
                    };
                    (id.clone(), disposition)
                })
                .collect(),
            Selection::Prefix(_) | Selection::All => map
                .iter()
                .filter(|(id, _)| match selection {
                    Selection::Prefix(prefix) => id.starts_with(prefix.as_str()),
                    _ => true,
                })
                .filter(|(_, controls)| controls.iter().any(|c| c.progress().status.is_live()))
                .map(|(id, controls)| (id.to_string(), cancel_all(controls)))
                .collect(),
        }
    }

    /// Live rollouts.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A listed rollout; taken off the list when dropped.
#[derive(Debug)]
pub struct Tracked {
    map: Arc<Mutex<Map>>,
    id: Arc<str>,
    pub control: Arc<Control>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(controls) = map.get_mut(&self.id) {
            controls.retain(|c| !Arc::ptr_eq(c, &self.control));
            if controls.is_empty() {
                map.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(status: Status) -> Progress {
        Progress {
            status,
            reward: None,
        }
    }

    #[test]
    fn cancel_answers_by_where_each_rollout_is() {
        let live = LiveRollouts::default();
        let queued = live.add("step3-a".into());
        let running = live.add("step3-b".into());
        running.control.running();
        let calling_back = live.add("step4-a".into());
        calling_back.control.ended(ended(Status::Completed));
        let finished = |id: &str| id == "gone";
        let got = live.cancel(
            &Selection::Ids(vec![
                "step3-a".into(),
                "step3-b".into(),
                "step4-a".into(),
                "gone".into(),
                "never".into(),
            ]),
            finished,
        );
        assert_eq!(
            got.iter().map(|(_, d)| d.as_str()).collect::<Vec<_>>(),
            [
                "cancelled_queued",
                "cancelled_running",
                "already_finished",
                "already_finished",
                "not_found"
            ]
        );
        assert!(queued.control.cancel.is_cancelled() && running.control.cancel.is_cancelled());
        assert!(!calling_back.control.cancel.is_cancelled());
        // Cancelled at once, and a queued one does not become running.
        queued.control.running();
        assert_eq!(queued.control.progress().status, Status::Cancelled);
        assert_eq!(running.control.progress().status, Status::Cancelled);
    }

    #[test]
    fn prefix_and_all_cancel_only_live_rollouts() {
        let live = LiveRollouts::default();
        let a = live.add("step3-a".into());
        let _b = live.add("step4-b".into());
        let done = live.add("step3-c".into());
        done.control.ended(ended(Status::Error));
        let got = live.cancel(&Selection::Prefix("step3-".into()), |_| false);
        assert_eq!(got, [("step3-a".to_owned(), Disposition::CancelledQueued)]);
        assert!(a.control.cancel.is_cancelled());
        // step3-a is being cancelled already.
        let all = live.cancel(&Selection::All, |_| false);
        assert_eq!(all, [("step4-b".to_owned(), Disposition::CancelledQueued)]);
    }

    #[test]
    fn a_rollout_leaves_the_list_when_its_guard_drops() {
        let live = LiveRollouts::default();
        let first = live.add("same".into());
        let second = live.add("same".into());
        second.control.running();
        assert_eq!(live.len(), 2);
        assert_eq!(live.progress("same").unwrap().status, Status::Queued);
        drop(first);
        assert_eq!(live.progress("same").unwrap().status, Status::Running);
        drop(second);
        assert!(live.is_empty() && live.progress("same").is_none());
    }
}
