//! Idempotent init: the first request for a key computes the answer and
//! starts the run; duplicates (concurrent, or while the record is kept after
//! the run ended) get the same answer byte for byte and start nothing. A
//! failed init forgets its key so the trainer's retry can succeed.
//!
//! Records cost little and are bounded: an accepted rollout's record holds
//! its key, its rollout id when the key differs, and the tool list shared
//! with every rollout that got the same one (`Arc`); its answer is written
//! again for a duplicate. Finished rollouts' records sit in a queue in the
//! order they finished and leave it from the front: after the record TTL,
//! or when more than `max_records` are kept (oldest first). A duplicate
//! whose record has gone is a new rollout. A finished rollout's record
//! also keeps its status (and reward) for `GET /v1/rollout/{id}`.

use crate::live::{Progress, Status};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// An init's answer: the 202 body, or an error status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub enum InitOutcome {
    Accepted(Bytes),
    Failed { status: u16, body: Bytes },
}

/// The 202 answer of an accepted init, kept in parts.
#[derive(Debug, Clone, PartialEq)]
pub struct InitAnswer {
    pub rollout_id: Arc<str>,
    /// The answer's fields after `rollout_id`, as JSON text (`"tools":[...]`
    /// and the build that runs the rollout), shared between rollouts (an
    /// `Arc<String>`: a thin pointer keeps a record small).
    pub fields: Arc<String>,
}

impl InitAnswer {
    /// `{"rollout_id":...,"tools":[...],...}`: the same bytes every time.
    pub fn body(&self) -> Bytes {
        let id = serde_json::Value::from(&*self.rollout_id).to_string();
        let mut body = String::with_capacity(id.len() + self.fields.len() + 17);
        body.push_str("{\"rollout_id\":");
        body.push_str(&id);
        body.push(',');
        body.push_str(&self.fields);
        body.push('}');
        Bytes::from(body)
    }
}

/// A key's record: 32 bytes beside its key. Whether an accepted rollout
/// has finished is told by the finished queue alone: its [`Finished`] token
/// puts the key there exactly once, and only the queue takes the record out.
enum Entry {
    /// The first request is computing the answer (boxed: it is short-lived
    /// and twice the size of a kept record).
    Pending(Box<watch::Receiver<Option<InitOutcome>>>),
    /// Accepted: the rollout is running, or has finished (then the key is
    /// in the finished queue).
    Accepted {
        fields: Arc<String>,
        /// The rollout id, when it is not the key itself (rare).
        rollout_id: Option<Box<Arc<str>>>,
        /// How it ended, once it has.
        ended: Ended,
    },
}

/// A [`Progress`] in 16 bytes: no status while running, no reward as NaN.
#[derive(Clone, Copy)]
struct Ended {
    status: Option<Status>,
    reward: f64,
}

impl Ended {
    const RUNNING: Ended = Ended {
        status: None,
        reward: f64::NAN,
    };

    fn new(progress: Progress) -> Self {
        Ended {
            status: Some(progress.status),
            reward: progress.reward.unwrap_or(f64::NAN),
        }
    }

    fn progress(self) -> Option<Progress> {
        Some(Progress {
            status: self.status?,
            reward: (!self.reward.is_nan()).then_some(self.reward),
        })
    }
}

#[derive(Default)]
struct Records {
    entries: HashMap<Arc<str>, Entry>,
    /// Rollout id -> key, for the rare accepted rollouts whose key is not
    /// their id: there as long as their record is.
    aliases: HashMap<Arc<str>, Arc<str>>,
    /// Keys of finished rollouts, in the order they finished, with when
    /// (tenths of a second since the store was made).
    finished: VecDeque<(u32, Arc<str>)>,
    /// `max_records` finished records were kept once.
    at_cap: bool,
}

impl Records {
    /// Drops the oldest finished record.
    fn drop_oldest(&mut self) -> bool {
        let Some((_, key)) = self.finished.pop_front() else {
            return false;
        };
        if let Some(Entry::Accepted {
            rollout_id: Some(id),
            ..
        }) = self.entries.remove(&key)
            && self.aliases.get(&**id).is_some_and(|k| *k == key)
        {
            self.aliases.remove(&**id);
        }
        true
    }

    /// Records `key`'s accepted rollout.
    fn accepted(&mut self, key: Arc<str>, answer: &InitAnswer, ended: Ended) {
        let rollout_id = (answer.rollout_id != key).then(|| {
            self.aliases.insert(answer.rollout_id.clone(), key.clone());
            Box::new(answer.rollout_id.clone())
        });
        self.entries.insert(
            key,
            Entry::Accepted {
                fields: answer.fields.clone(),
                rollout_id,
                ended,
            },
        );
    }
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

#[derive(Clone)]
pub struct IdempotencyStore {
    records: Arc<Mutex<Records>>,
    max_records: usize,
    /// The origin of the finished queue's times.
    started: Instant,
}

impl IdempotencyStore {
    /// A store keeping at most `max_records` finished rollouts' records.
    pub fn new(max_records: usize) -> Self {
        Self {
            records: Arc::default(),
            max_records,
            started: Instant::now(),
        }
    }

    /// Tenths of a second since the store was made (13 years fit).
    fn now(&self) -> u32 {
        u32::try_from(self.started.elapsed().as_millis() / 100).unwrap_or(u32::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn claim(&self, key: &str) -> Claim {
        let mut records = self.lock();
        match records.entries.get(key) {
            Some(Entry::Pending(rx)) => Claim::Wait((**rx).clone()),
            Some(Entry::Accepted {
                rollout_id, fields, ..
            }) => {
                let answer = InitAnswer {
                    rollout_id: rollout_id.as_deref().cloned().unwrap_or_else(|| key.into()),
                    fields: fields.clone(),
                };
                Claim::Done(answer.body())
            }
            None => {
                let (tx, rx) = watch::channel(None);
                let key: Arc<str> = key.into();
                records
                    .entries
                    .insert(key.clone(), Entry::Pending(Box::new(rx)));
                Claim::New(Ticket {
                    store: self.clone(),
                    key,
                    tx: Some(tx),
                })
            }
        }
    }

    /// The rollout of `key` has ended (called once, by its [`Finished`]),
    /// as `ended` says when known: its record is kept for the TTL, or until
    /// `max_records` newer ones are.
    fn finish(&self, key: Arc<str>, ended: Option<Progress>) {
        let now = self.now();
        let mut records = self.lock();
        if let Some(progress) = ended
            && let Some(Entry::Accepted { ended, .. }) = records.entries.get_mut(&key)
        {
            *ended = Ended::new(progress);
        }
        records.finished.push_back((now, key));
        if records.finished.len() == self.max_records && !records.at_cap {
            // From here on every record in comes with one out. A hash table
            // churning like that keeps its size only below half full (its
            // tombstones are then cleared in place); size it so now rather
            // than by a doubling some time later.
            records.at_cap = true;
            let len = records.entries.len();
            records.entries.reserve(len);
        }
        while records.finished.len() > self.max_records && records.drop_oldest() {}
    }

    /// Drops records whose rollout ended `ttl` ago or more; returns how many.
    pub fn expire(&self, ttl: Duration) -> usize {
        let ttl = u32::try_from(ttl.as_millis() / 100).unwrap_or(u32::MAX);
        let now = self.now();
        let mut records = self.lock();
        let mut dropped = 0;
        while let Some((at, _)) = records.finished.front() {
            if now.saturating_sub(*at) < ttl {
                break;
            }
            records.drop_oldest();
            dropped += 1;
        }
        if dropped > 0 && records.entries.capacity() > 4 * records.entries.len().max(1024) {
            // Give back the table of a burst long gone.
            records.entries.shrink_to_fit();
            records.aliases.shrink_to_fit();
            records.finished.shrink_to_fit();
        }
        dropped
    }

    /// Keeps a rollout a previous run accepted (from the journal) as
    /// finished: duplicates get `answer`, its status is `ended`, for the
    /// TTL from now.
    pub fn restore(&self, key: &str, answer: &InitAnswer, ended: Progress) {
        let key: Arc<str> = key.into();
        self.lock().accepted(key.clone(), answer, Ended::new(ended));
        self.finish(key, Some(ended));
    }

    /// How the finished rollout `rollout_id` ended, while its record is kept.
    pub fn ended(&self, rollout_id: &str) -> Option<Progress> {
        let records = self.lock();
        let entry = match records.aliases.get(rollout_id) {
            Some(key) => records.entries.get(key),
            // Keyed by its id, unless that key's rollout is another one.
            None => records.entries.get(rollout_id).filter(|e| {
                matches!(
                    e,
                    Entry::Accepted {
                        rollout_id: None,
                        ..
                    }
                )
            }),
        };
        match entry? {
            Entry::Accepted { ended, .. } => ended.progress(),
            Entry::Pending(_) => None,
        }
    }

    /// Records held (running and finished rollouts, inits in progress).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The first request's duty to resolve its key. Dropped unresolved (the
/// init task died), the key is forgotten and waiters get an error.
pub struct Ticket {
    store: IdempotencyStore,
    key: Arc<str>,
    tx: Option<watch::Sender<Option<InitOutcome>>>,
}

impl Ticket {
    /// Accepted: duplicates get `answer` from now on. The rollout ends its
    /// record's life with the returned token, so start it only after this.
    pub fn accept(mut self, answer: &InitAnswer) -> (Bytes, Finished) {
        let body = answer.body();
        self.settle(InitOutcome::Accepted(body.clone()), Some(answer));
        let finished = Finished {
            store: self.store.clone(),
            key: self.key.clone(),
            ended: None,
        };
        (body, finished)
    }

    /// Refused: the key is forgotten, waiters get the same refusal.
    pub fn fail(self, status: u16, body: Bytes) {
        self.pass_on(InitOutcome::Failed { status, body });
    }

    /// Answered elsewhere (another replica runs the rollout): waiters get
    /// `outcome`, and the key is forgotten here.
    pub fn pass_on(mut self, outcome: InitOutcome) {
        self.settle(outcome, None);
    }

    /// Ends the pending claim: the key is `accepted` with that answer, or
    /// forgotten.
    fn settle(&mut self, outcome: InitOutcome, accepted: Option<&InitAnswer>) {
        let Some(tx) = self.tx.take() else { return };
        {
            let mut records = self.store.lock();
            match accepted {
                Some(answer) => records.accepted(self.key.clone(), answer, Ended::RUNNING),
                None => {
                    records.entries.remove(&self.key);
                }
            }
        }
        let _ = tx.send(Some(outcome));
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.settle(interrupted(), None);
    }
}

/// An accepted rollout's duty to say it has ended, once: by
/// [`Finished::done`] with how, or when dropped (a task that never got
/// there: its status is then unknown).
pub struct Finished {
    store: IdempotencyStore,
    key: Arc<str>,
    ended: Option<Progress>,
}

impl Finished {
    pub fn done(mut self, ended: Progress) {
        self.ended = Some(ended);
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        self.store.finish(self.key.clone(), self.ended.take());
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

    fn answer(id: &str) -> InitAnswer {
        InitAnswer {
            rollout_id: id.into(),
            fields: Arc::new(r#""tools":[]"#.to_owned()),
        }
    }

    fn completed(reward: f64) -> Progress {
        Progress {
            status: crate::live::Status::Completed,
            reward: Some(reward),
        }
    }

    fn accept(store: &IdempotencyStore, key: &str) -> Finished {
        let Claim::New(ticket) = store.claim(key) else {
            panic!("{key}: first claim must be new")
        };
        ticket.accept(&answer(key)).1
    }

    #[test]
    fn a_record_is_thirty_two_bytes_beside_its_key() {
        assert_eq!(std::mem::size_of::<Entry>(), 32);
    }

    #[tokio::test]
    async fn duplicates_share_the_first_answer() {
        let store = IdempotencyStore::new(10);
        let Claim::New(ticket) = store.claim("k") else {
            panic!("first claim must be new")
        };
        let Claim::Wait(rx) = store.claim("k") else {
            panic!("second claim must wait")
        };
        let (first, finished) = ticket.accept(&answer("r-1"));
        assert_eq!(&first[..], br#"{"rollout_id":"r-1","tools":[]}"#);
        assert_eq!(wait(rx).await, InitOutcome::Accepted(first.clone()));
        assert!(matches!(store.claim("k"), Claim::Done(b) if b == first));
        assert_eq!(store.ended("r-1"), None, "running");
        finished.done(completed(0.5));
        assert!(matches!(store.claim("k"), Claim::Done(b) if b == first));
        assert_eq!(store.ended("r-1"), Some(completed(0.5)), "by rollout id");
        assert_eq!(store.expire(Duration::ZERO), 1);
        assert_eq!(store.ended("r-1"), None, "gone with its record");
    }

    #[tokio::test]
    async fn failure_forgets_the_key() {
        let store = IdempotencyStore::new(10);
        let Claim::New(ticket) = store.claim("k") else {
            panic!()
        };
        drop(ticket);
        assert!(matches!(store.claim("k"), Claim::New(_)));
    }

    #[test]
    fn records_expire_only_after_the_run_ended_in_finish_order() {
        let store = IdempotencyStore::new(10);
        let a = accept(&store, "a");
        let b = accept(&store, "b");
        assert_eq!(store.expire(Duration::ZERO), 0, "running rollouts are kept");
        b.done(completed(1.0));
        drop(a); // a rollout task that ended without saying so
        assert_eq!(store.ended("a"), None);
        assert_eq!(store.ended("b"), Some(completed(1.0)));
        assert_eq!(store.expire(Duration::from_secs(3600)), 0);
        assert_eq!(store.expire(Duration::ZERO), 2);
        assert!(store.is_empty());
        assert_eq!(store.ended("b"), None);
        assert!(matches!(store.claim("a"), Claim::New(_)));
    }

    #[test]
    fn the_oldest_finished_records_go_past_the_cap() {
        let store = IdempotencyStore::new(2);
        let finished: Vec<Finished> = ["a", "b", "c"].iter().map(|k| accept(&store, k)).collect();
        let _running = accept(&store, "running");
        finished.into_iter().for_each(|f| f.done(completed(1.0)));
        assert_eq!(store.ended("a"), None, "dropped with its record");
        assert_eq!(store.len(), 3, "a was dropped; running rollouts never are");
        assert!(matches!(store.claim("a"), Claim::New(_)));
        assert!(matches!(store.claim("b"), Claim::Done(_)));
        assert!(matches!(store.claim("running"), Claim::Done(_)));
    }
}
