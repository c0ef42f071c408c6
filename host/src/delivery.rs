//! A rollout's completion callback, delivered: first with the trainer
//! client's retries; when the trainer stays unreachable or failing (it is
//! restarting, say), again in the background, with backoff, until the
//! delivery deadline. With a journal (`--state-dir`) the rollout's entry
//! is removed once its callback is delivered, and a callback waiting for
//! redelivery is kept on disk, so a restart delivers it.

use crate::journal::{Journal, Pending};
use crate::trainer::{TrainerClient, TrainerError};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Where a callback goes, and the rollout it is for.
#[derive(Debug, Clone)]
pub struct Callback {
    pub deployment: Arc<str>,
    /// The rollout's idempotency key (its journal key).
    pub key: Arc<str>,
    pub rollout_id: Arc<str>,
    pub url: reqwest::Url,
    pub api_key: Option<String>,
    /// The callback body (JSON).
    pub body: Bytes,
}

/// The server's deliveries.
pub struct Deliveries {
    trainer: TrainerClient,
    journal: Option<Journal>,
    /// How long after its first attempt a callback is still redelivered.
    deadline: Duration,
    /// Callbacks waiting for redelivery now.
    pending: AtomicUsize,
    /// Stops redelivery when the server exits (the journal keeps them).
    stop: CancellationToken,
}

impl Deliveries {
    pub fn new(trainer: TrainerClient, journal: Option<Journal>, deadline: Duration) -> Self {
        Self {
            trainer,
            journal,
            deadline,
            pending: AtomicUsize::new(0),
            stop: CancellationToken::new(),
        }
    }

    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// The unix time (seconds) until which a callback failing now is
    /// redelivered.
    pub fn deadline_from_now(&self) -> u64 {
        unix_now().saturating_add(self.deadline.as_secs())
    }

    /// Callbacks waiting for redelivery.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Stops redelivering (at exit); undelivered callbacks stay in the
    /// journal, if there is one.
    pub fn stop(&self) {
        self.stop.cancel();
        if self.journal.is_none() && self.pending() > 0 {
            tracing::error!(
                callbacks = self.pending(),
                "callbacks not delivered at exit are lost (run with --state-dir to keep them)"
            );
        }
    }

    /// Delivers `callback` now; if the trainer cannot take it now but may
    /// later, hands it to a background task that tries again until the
    /// deadline. Returns whether it was delivered now.
    pub async fn deliver(self: &Arc<Self>, callback: Callback) -> bool {
        let result = self.attempt(&callback).await;
        match result {
            Ok(()) => true,
            Err(e) if e.is_final() || self.deadline.is_zero() => {
                tracing::error!(error = %e, "completion callback not delivered");
                self.forget(&callback);
                false
            }
            Err(e) => {
                let until = self.deadline_from_now();
                tracing::warn!(
                    error = %e,
                    deadline = ?self.deadline,
                    "completion callback not delivered; trying again in the background"
                );
                self.later(callback, until, false);
                false
            }
        }
    }

    /// Redelivers `callback` in the background until unix time `until`;
    /// `now` tries at once (a callback left by a previous run).
    pub fn later(self: &Arc<Self>, callback: Callback, until: u64, now: bool) {
        if let Some(journal) = &self.journal {
            journal.put_callback(
                &callback.deployment,
                &callback.key,
                &Pending {
                    body: String::from_utf8_lossy(&callback.body).into_owned(),
                    until,
                },
            );
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!(
            "redelivery",
            rollout_id = %callback.rollout_id,
            deployment = %callback.deployment
        );
        let deliveries = self.clone();
        tokio::spawn(
            async move {
                tokio::select! {
                    _ = deliveries.stop.cancelled() => {}
                    () = deliveries.redeliver(&callback, until, now) => {}
                }
                deliveries.pending.fetch_sub(1, Ordering::Relaxed);
            }
            .instrument(span),
        );
    }

    async fn redeliver(&self, callback: &Callback, until: u64, now: bool) {
        let policy = self.trainer.policy();
        for round in 0u32.. {
            if round > 0 || !now {
                tokio::time::sleep(policy.delay(round)).await;
            }
            if unix_now() > until {
                tracing::error!(
                    "completion callback not delivered before its delivery deadline; given up"
                );
                self.forget(callback);
                return;
            }
            match self.attempt(callback).await {
                Ok(()) => {
                    tracing::info!(round, "completion callback delivered after all");
                    return;
                }
                Err(e) if e.is_final() => {
                    tracing::error!(error = %e, "completion callback refused by the trainer");
                    self.forget(callback);
                    return;
                }
                Err(e) => tracing::debug!(error = %e, round, "redelivery failed"),
            }
        }
    }

    /// One delivery (with the client's retries); delivered, the rollout
    /// leaves the journal.
    async fn attempt(&self, callback: &Callback) -> Result<(), TrainerError> {
        let status = self
            .trainer
            .complete(
                &callback.url,
                callback.api_key.as_deref(),
                callback.body.clone(),
            )
            .await?;
        tracing::debug!(%status, "completion delivered");
        self.forget(callback);
        Ok(())
    }

    /// The rollout is done with, delivered or not.
    fn forget(&self, callback: &Callback) {
        if let Some(journal) = &self.journal {
            journal.remove(&callback.deployment, &callback.key);
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
