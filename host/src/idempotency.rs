//! Idempotent init: the first request for a key computes the answer and
//! starts the run; duplicates (concurrent, or within the TTL after the run
//! ended) get the same answer byte for byte and start nothing. A failed init
//! forgets its key so the trainer's retry can succeed.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// An init's answer: the 202 body, or an error status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub enum InitOutcome {
    Accepted(Bytes),
    Failed { status: u16, body: Bytes },
}

enum Entry {
    /// The first request is computing the answer.
    Pending(watch::Receiver<Option<InitOutcome>>),
    /// Accepted; `finished` is set when the run ended (starts the TTL).
    Accepted {
        body: Bytes,
        finished: Option<Instant>,
    },
}

/// What a request got for its key.
pub enum Claim {
    /// First for this key: compute the answer and resolve the ticket.
    New(Ticket),
    /// Another request is computing it: wait for its outcome.
    Wait(watch::Receiver<Option<InitOutcome>>),
    /// Already answered.
    Done(Bytes),
}

#[derive(Clone, Default)]
pub struct IdempotencyStore {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

impl IdempotencyStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn claim(&self, key: &str) -> Claim {
        let mut entries = self.lock();
        match entries.get(key) {
            Some(Entry::Pending(rx)) => Claim::Wait(rx.clone()),
            Some(Entry::Accepted { body, .. }) => Claim::Done(body.clone()),
            None => {
                let (tx, rx) = watch::channel(None);
                entries.insert(key.to_owned(), Entry::Pending(rx));
                Claim::New(Ticket {
                    store: self.clone(),
                    key: key.to_owned(),
                    tx: Some(tx),
                })
            }
        }
    }

    /// The rollout of `key` has ended: its record expires after the TTL.
    pub fn finish(&self, key: &str) {
        if let Some(Entry::Accepted { finished, .. }) = self.lock().get_mut(key) {
            *finished = Some(Instant::now());
        }
    }

    /// Drops records whose rollout ended more than `ttl` ago.
    pub fn expire(&self, ttl: Duration) -> usize {
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(
            |_, e| !matches!(e, Entry::Accepted { finished: Some(t), .. } if t.elapsed() >= ttl),
        );
        before - entries.len()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The first request's duty to resolve its key. Dropped unresolved (the
/// init task died), the key is forgotten and waiters get an error.
pub struct Ticket {
    store: IdempotencyStore,
    key: String,
    tx: Option<watch::Sender<Option<InitOutcome>>>,
}

impl Ticket {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn resolve(mut self, outcome: InitOutcome) {
        self.settle(outcome);
    }

    fn settle(&mut self, outcome: InitOutcome) {
        let Some(tx) = self.tx.take() else { return };
        {
            let mut entries = self.store.lock();
            match &outcome {
                InitOutcome::Accepted(body) => {
                    entries.insert(
                        self.key.clone(),
                        Entry::Accepted {
                            body: body.clone(),
                            finished: None,
                        },
                    );
                }
                InitOutcome::Failed { .. } => {
                    entries.remove(&self.key);
                }
            }
        }
        let _ = tx.send(Some(outcome));
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.settle(InitOutcome::Failed {
            status: 500,
            body: Bytes::from_static(br#"{"detail":"init was interrupted; retry"}"#),
        });
    }
}

/// Waits for the first request's outcome.
pub async fn wait(mut rx: watch::Receiver<Option<InitOutcome>>) -> InitOutcome {
    match rx.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or_else(interrupted),
        Err(_) => interrupted(),
    }
}

fn interrupted() -> InitOutcome {
    InitOutcome::Failed {
        status: 500,
        body: Bytes::from_static(br#"{"detail":"init was interrupted; retry"}"#),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn duplicates_share_the_first_answer() {
        let store = IdempotencyStore::default();
        let Claim::New(ticket) = store.claim("k") else {
            panic!("first claim must be new")
        };
        let Claim::Wait(rx) = store.claim("k") else {
            panic!("second claim must wait")
        };
        ticket.resolve(InitOutcome::Accepted(Bytes::from_static(b"A")));
        assert_eq!(
            wait(rx).await,
            InitOutcome::Accepted(Bytes::from_static(b"A"))
        );
        assert!(matches!(store.claim("k"), Claim::Done(b) if b == "A"));
    }

    #[tokio::test]
    async fn failure_forgets_the_key() {
        let store = IdempotencyStore::default();
        let Claim::New(ticket) = store.claim("k") else {
            panic!()
        };
        drop(ticket);
        assert!(matches!(store.claim("k"), Claim::New(_)));
    }

    #[test]
    fn records_expire_only_after_the_run_ended() {
        let store = IdempotencyStore::default();
        let Claim::New(ticket) = store.claim("k") else {
            panic!()
        };
        ticket.resolve(InitOutcome::Accepted(Bytes::from_static(b"A")));
        assert_eq!(store.expire(Duration::ZERO), 0, "running rollouts are kept");
        store.finish("k");
        assert_eq!(store.expire(Duration::from_secs(3600)), 0);
        assert_eq!(store.expire(Duration::ZERO), 1);
        assert!(store.is_empty());
    }
}
