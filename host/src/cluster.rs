//! Scale-out (`--redis URL`): replicas behind one address share, through
//! Redis, what one process keeps in memory alone: which replica runs an
//! idempotency key (so a retried init that reaches another replica starts
//! nothing and gets the first answer byte for byte), each rollout's status,
//! and each replica's counts (for `/health` totals).
//!
//! Keys, under the prefix (`--redis-prefix`, default `rollout-host`):
//! - `P:D:init:KEY`: `P<token>` while the replica holding the claim computes
//!   the answer (expires after [`CLAIM_TTL`] unless renewed, so a replica
//!   that dies releases it), then `A<token>\n<answer>` while the rollout runs
//!   and for the record TTL after it ended.
//! - `P:D:status:ID`: `R<replica>` while it runs, then its final status.
//! - `P:replica:R`: a replica's counts, renewed every [`BEAT_EVERY`]; gone
//!   after [`BEAT_TTL`] when the replica is. `P:replicas` lists them.
//! - `P:cancel`: a channel; a cancel received by one replica is published
//!   there for the others to apply to their own rollouts.
//!
//! Redis unreachable: inits are refused with 503 (the trainer retries), so
//! no key is run twice; running rollouts go on and call back; their final
//! status is not recorded in Redis. An answer whose storing Redis did not
//! confirm (the connection dropped) is asked for again until Redis answers:
//! if it was stored, the rollout runs (a retry gets the stored answer);
//! if not, the init is refused.

use crate::live::{Progress, Status};
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Value};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a claim whose answer is being computed lives without renewal.
pub const CLAIM_TTL: Duration = Duration::from_secs(10);
/// How often a claim being computed is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(3);
/// How long a duplicate waits for another replica's answer before 503.
const WAIT_AT_MOST: Duration = Duration::from_secs(30);
/// How often a replica publishes its counts.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);
/// How long a replica's counts outlive its last beat.
const BEAT_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("--redis {url}: {source}")]
    Url { url: String, source: RedisError },
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    #[error("Redis holds a value rollout-host did not write at {0}")]
    Foreign(String),
    #[error("the init of this key on replica {0} has not answered in {WAIT_AT_MOST:?}; retry")]
    Waited(String),
    #[error("this replica's claim on the key expired before its answer was stored; retry")]
    ClaimLost,
    #[error("the cancel request is not JSON: {0}")]
    CancelBody(serde_json::Error),
}

/// The replicas' shared state in Redis.
pub struct Cluster {
    /// For the cancel channel's subscription (a connection of its own).
    client: redis::Client,
    redis: ConnectionManager,
    prefix: String,
    replica: Arc<str>,
    /// When this process connected (ns), and the claims it made: its claim
    /// tokens are `P<replica>/<incarnation>-<claims>`, unique across
    /// restarts under the same name.
    incarnation: u128,
    claims: AtomicU64,
    /// Rollouts' ends for [`Cluster::write_ends`], and how many are not
    /// written yet.
    ends: mpsc::UnboundedSender<End>,
    ends_rx: Mutex<Option<mpsc::UnboundedReceiver<End>>>,
    ends_waiting: AtomicUsize,
}

/// A rollout's end, to be written.
struct End {
    init_key: String,
    status_key: String,
    status: String,
    ttl: u64,
}

/// What a claim on a key found.
pub enum Claimed {
    /// This replica runs it: compute the answer, then [`Lease::accept`].
    Ours(Lease),
    /// Another replica accepted it: its answer.
    Answered(Bytes),
}

/// A rollout's status as Redis has it.
#[derive(Debug, Clone, PartialEq)]
pub enum SharedStatus {
    /// Accepted by `replica` and not finished; `alive` says whether that
    /// replica still beats.
    Running {
        replica: String,
        alive: bool,
    },
    Ended(Progress),
}

/// One replica's counts for one deployment, as its beat publishes them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Counts {
    pub active: u64,
    pub completed: u64,
}

/// A deployment's counts summed over replicas.
#[derive(Debug, Default, PartialEq)]
pub struct Totals {
    pub replicas: usize,
    pub counts: Counts,
}

/// Compare-and-set on a claim: if KEYS[1] still holds ARGV[1] (the lease's
/// token), store the answer ARGV[2] there and the status ARGV[4] at KEYS[2],
/// both for ARGV[3] ms.
const ACCEPT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
return 1";

/// Deletes (ARGV[2] empty) or renews for ARGV[2] ms KEYS[1] if it still
/// holds ARGV[1].
const IF_OURS: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])";

impl Cluster {
    /// Connects lazily: a Redis that is down at start is tried again at
    /// each use, so the server starts and refuses inits until it is up.
    pub fn connect(url: &str, prefix: &str, replica: &str) -> Result<Self, ClusterError> {
        let url_error = |source| ClusterError::Url {
            url: url.to_owned(),
            source,
        };
        let client = redis::Client::open(url).map_err(url_error)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let redis =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(url_error)?;
        let (ends, ends_rx) = mpsc::unbounded_channel();
        Ok(Self {
            client,
            redis,
            prefix: prefix.to_owned(),
            replica: replica.into(),
            incarnation: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            claims: AtomicU64::new(0),
            ends,
            ends_rx: Mutex::new(Some(ends_rx)),
            ends_waiting: AtomicUsize::new(0),
        })
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    fn init_key(&self, deployment: &str, key: &str) -> String {
        format!("{}:{deployment}:init:{key}", self.prefix)
    }

    fn status_key(&self, deployment: &str, rollout_id: &str) -> String {
        format!("{}:{deployment}:status:{rollout_id}", self.prefix)
    }

    fn replica_key(&self, replica: &str) -> String {
        format!("{}:replica:{replica}", self.prefix)
    }

    fn replicas_key(&self) -> String {
        format!("{}:replicas", self.prefix)
    }

    fn cancel_channel(&self) -> String {
        format!("{}:cancel", self.prefix)
    }

    /// Asks the other replicas to cancel `selection` (a cancel request's
    /// JSON body) in `deployment`; answers how many replicas heard it.
    pub async fn tell_cancel(
        &self,
        deployment: &str,
        selection: &[u8],
    ) -> Result<usize, ClusterError> {
        let selection: &serde_json::value::RawValue =
            serde_json::from_slice(selection).map_err(ClusterError::CancelBody)?;
        let message = serde_json::json!({
            "from": &*self.replica,
            "deployment": deployment,
            "selection": selection,
        });
        let heard: usize = redis::cmd("PUBLISH")
            .arg(self.cancel_channel())
            .arg(message.to_string())
            .query_async(&mut self.redis.clone())
            .await?;
        // Counting this replica, which hears its own.
        Ok(heard.saturating_sub(1))
    }

    /// Applies the other replicas' cancels here: `apply(deployment,
    /// selection)` for each. Subscribes again when the connection drops (a
    /// cancel sent meanwhile is not heard here). Runs until dropped.
    pub async fn hear_cancels(&self, apply: impl Fn(&str, &[u8])) {
        let mut failing = false;
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(self.cancel_channel()).await?;
                Ok::<_, RedisError>(pubsub)
            };
            if let Ok(Ok(mut pubsub)) =
                tokio::time::timeout(Duration::from_secs(2), subscribed).await
            {
                if failing {
                    tracing::info!("listening for the other replicas' cancels again");
                    failing = false;
                }
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let Ok(payload) = message.get_payload::<Vec<u8>>() else {
                        continue;
                    };
                    match serde_json::from_slice::<CancelMessage>(&payload) {
                        Ok(m) if *m.from != *self.replica => {
                            apply(&m.deployment, m.selection.get().as_bytes());
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "a cancel message rollout-host did not write")
                        }
                    }
                }
            }
            if !failing {
                tracing::warn!(
                    "not listening for the other replicas' cancels: Redis is unreachable"
                );
                failing = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Claims `key` of `deployment` for this replica, or waits for the
    /// replica that holds it to answer (taking the claim over if that one
    /// gives it up or dies).
    pub async fn claim(
        self: &Arc<Self>,
        deployment: &str,
        key: &str,
    ) -> Result<Claimed, ClusterError> {
        let name = self.init_key(deployment, key);
        let n = self.claims.fetch_add(1, Ordering::Relaxed);
        let token = format!("P{}/{}-{n}", self.replica, self.incarnation);
        let waited_from = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            // SET NX GET: sets and answers nil, or answers what is there.
            let before: Option<Vec<u8>> = redis::cmd("SET")
                .arg(&name)
                .arg(&token)
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(millis(CLAIM_TTL))
                .query_async(&mut self.redis.clone())
                .await?;
            let Some(before) = before else {
                return Ok(Claimed::Ours(Lease::new(self.clone(), name, token)));
            };
            match before.split_first() {
                Some((b'A', stored)) => {
                    let answer = stored.splitn(2, |&b| b == b'\n').nth(1);
                    let answer = answer.ok_or_else(|| ClusterError::Foreign(name.clone()))?;
                    return Ok(Claimed::Answered(Bytes::copy_from_slice(answer)));
                }
                Some((b'P', holder)) => {
                    if waited_from.elapsed() >= WAIT_AT_MOST {
                        let holder = String::from_utf8_lossy(holder);
                        let replica = holder.rsplit_once('/').map_or(&*holder, |(r, _)| r);
                        return Err(ClusterError::Waited(replica.to_owned()));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                _ => return Err(ClusterError::Foreign(name)),
            }
        }
    }

    /// `rollout_id` of `deployment` (idempotency `key`) has ended: its
    /// answer and status are kept `ttl` from now. Written in the background
    /// by [`Cluster::write_ends`], many rollouts' ends in one round trip.
    pub fn ended(
        &self,
        deployment: &str,
        key: &str,
        rollout_id: &str,
        progress: Progress,
        ttl: Duration,
    ) {
        let status = serde_json::json!({
            "status": progress.status.as_str(),
            "reward": progress.reward,
        });
        let end = End {
            init_key: self.init_key(deployment, key),
            status_key: self.status_key(deployment, rollout_id),
            status: format!("E{status}"),
            ttl: millis(ttl),
        };
        self.ends_waiting.fetch_add(1, Ordering::Relaxed);
        if self.ends.send(end).is_err() {
            self.ends_waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Writes the rollouts' ends as they come, each batch in one pipeline;
    /// a batch Redis does not take is dropped (those rollouts' status stays
    /// `running` in Redis until their records expire). Runs until dropped.
    pub async fn write_ends(&self) {
        let Some(mut ends) = self
            .ends_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let mut batch = Vec::with_capacity(256);
        while ends.recv_many(&mut batch, 256).await > 0 {
            let mut pipe = redis::pipe();
            for end in &batch {
                pipe.cmd("PEXPIRE").arg(&end.init_key).arg(end.ttl).ignore();
                pipe.cmd("SET")
                    .arg(&end.status_key)
                    .arg(&end.status)
                    .arg("PX")
                    .arg(end.ttl)
                    .ignore();
            }
            if let Err(e) = pipe.query_async::<()>(&mut self.redis.clone()).await {
                tracing::warn!(error = %e, rollouts = batch.len(), "the rollouts' ends cannot be recorded in Redis");
            }
            self.ends_waiting.fetch_sub(batch.len(), Ordering::Relaxed);
            batch.clear();
        }
    }

    /// The status of `rollout_id` of `deployment`, when Redis knows it.
    pub async fn status(
        &self,
        deployment: &str,
        rollout_id: &str,
    ) -> Result<Option<SharedStatus>, ClusterError> {
        let name = self.status_key(deployment, rollout_id);
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&name)
            .query_async(&mut self.redis.clone())
            .await?;
        let Some(value) = value else { return Ok(None) };
        match value.split_first() {
            Some((b'R', replica)) => {
                let replica = String::from_utf8_lossy(replica).into_owned();
                let alive: bool = redis::cmd("EXISTS")
                    .arg(self.replica_key(&replica))
                    .query_async(&mut self.redis.clone())
                    .await?;
                Ok(Some(SharedStatus::Running { replica, alive }))
            }
            Some((b'E', json)) => {
                let ended: EndedJson = serde_json::from_slice(json)
                    .map_err(|_| ClusterError::Foreign(name.clone()))?;
                let status = match ended.status.as_str() {
                    "completed" => Status::Completed,
                    "cancelled" => Status::Cancelled,
                    "error" => Status::Error,
                    _ => return Err(ClusterError::Foreign(name)),
                };
                Ok(Some(SharedStatus::Ended(Progress {
                    status,
                    reward: ended.reward,
                })))
            }
            _ => Err(ClusterError::Foreign(name)),
        }
    }

    /// Publishes this replica's counts per deployment, for [`BEAT_TTL`].
    pub async fn beat(&self, counts: &HashMap<String, Counts>) -> Result<(), ClusterError> {
        let body = serde_json::to_string(counts).unwrap_or_default();
        redis::pipe()
            .cmd("SET")
            .arg(self.replica_key(&self.replica))
            .arg(body)
            .arg("PX")
            .arg(millis(BEAT_TTL))
            .ignore()
            .cmd("SADD")
            .arg(self.replicas_key())
            .arg(&*self.replica)
            .ignore()
            .query_async::<()>(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// This replica stops: the last ends are written (for at most 2 s) and
    /// its counts go at once.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.ends_waiting.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        redis::pipe()
            .cmd("DEL")
            .arg(self.replica_key(&self.replica))
            .ignore()
            .cmd("SREM")
            .arg(self.replicas_key())
            .arg(&*self.replica)
            .ignore()
            .query_async::<()>(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// `deployment`'s counts summed over the other replicas that beat
    /// (replicas gone are dropped from the list on the way).
    pub async fn others(&self, deployment: &str) -> Result<Totals, ClusterError> {
        let mut redis = self.redis.clone();
        let replicas: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.replicas_key())
            .query_async(&mut redis)
            .await?;
        if replicas.is_empty() {
            return Ok(Totals::default());
        }
        let keys: Vec<String> = replicas.iter().map(|r| self.replica_key(r)).collect();
        let beats: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut redis)
            .await?;
        let mut totals = Totals::default();
        let mut gone = Vec::new();
        for (replica, beat) in replicas.iter().zip(beats) {
            if *replica == *self.replica {
                continue;
            }
            let Some(beat) = beat else {
                gone.push(replica);
                continue;
            };
            totals.replicas += 1;
            let counts: HashMap<String, Counts> = serde_json::from_str(&beat).unwrap_or_default();
            if let Some(c) = counts.get(deployment) {
                totals.counts.active += c.active;
                totals.counts.completed += c.completed;
            }
        }
        if !gone.is_empty() {
            redis::cmd("SREM")
                .arg(self.replicas_key())
                .arg(gone)
                .query_async::<()>(&mut redis)
                .await?;
        }
        Ok(totals)
    }
}

#[derive(Deserialize)]
struct CancelMessage {
    from: String,
    deployment: String,
    selection: Box<serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct EndedJson {
    status: String,
    reward: Option<f64>,
}

/// This replica's claim on a key while it computes the answer: renewed in
/// the background, released (for the trainer's retry) unless accepted.
pub struct Lease {
    cluster: Arc<Cluster>,
    name: String,
    token: String,
    renew: tokio::task::JoinHandle<()>,
    /// The value stored (or being stored) for the key once accepted.
    stored: Vec<u8>,
    settled: bool,
}

/// Whether an answer was stored, as far as Redis could say.
#[derive(Debug, PartialEq)]
pub enum Stored {
    Yes,
    No,
    /// Redis did not answer in time.
    Unknown,
}

impl Lease {
    fn new(cluster: Arc<Cluster>, name: String, token: String) -> Self {
        let renew = tokio::spawn({
            let cluster = cluster.clone();
            let (name, token) = (name.clone(), token.clone());
            async move {
                loop {
                    tokio::time::sleep(RENEW_EVERY).await;
                    if let Err(e) = cluster.if_ours(&name, &token, Some(CLAIM_TTL)).await {
                        tracing::warn!(error = %e, key = %name, "cannot renew the claim");
                    }
                }
            }
        });
        Self {
            cluster,
            name,
            token,
            renew,
            stored: Vec::new(),
            settled: false,
        }
    }

    /// Stores the accepted `answer` for duplicates and the rollout's status
    /// as running here, for `ttl` (until its end says otherwise). An error
    /// other than [`ClusterError::ClaimLost`] leaves it unknown whether
    /// Redis stored it: ask [`Lease::confirm`].
    pub async fn accept(
        &mut self,
        deployment: &str,
        rollout_id: &str,
        answer: &[u8],
        ttl: Duration,
    ) -> Result<(), ClusterError> {
        self.stored.clear();
        self.stored.push(b'A');
        self.stored.extend_from_slice(&self.token.as_bytes()[1..]);
        self.stored.push(b'\n');
        self.stored.extend_from_slice(answer);
        let stored: i64 = redis::cmd("EVAL")
            .arg(ACCEPT)
            .arg(2)
            .arg(&self.name)
            .arg(self.cluster.status_key(deployment, rollout_id))
            .arg(&self.token)
            .arg(&self.stored)
            .arg(millis(ttl))
            .arg(format!("R{}", self.cluster.replica))
            .query_async(&mut self.cluster.redis.clone())
            .await?;
        if stored == 0 {
            return Err(ClusterError::ClaimLost);
        }
        self.settle();
        Ok(())
    }

    /// After an [`Lease::accept`] Redis did not confirm: asks Redis whether
    /// the answer is there, for at most `for_at_most`. A claim still held
    /// is accepted again.
    pub async fn confirm(
        &mut self,
        deployment: &str,
        rollout_id: &str,
        ttl: Duration,
        for_at_most: Duration,
    ) -> Stored {
        let deadline = Instant::now() + for_at_most;
        let stored = self.stored.clone();
        let answer = stored.splitn(2, |&b| b == b'\n').nth(1).unwrap_or_default();
        loop {
            let now: Result<Option<Vec<u8>>, _> = redis::cmd("GET")
                .arg(&self.name)
                .query_async(&mut self.cluster.redis.clone())
                .await;
            match now {
                Ok(Some(value)) if value == stored => {
                    self.settle();
                    return Stored::Yes;
                }
                Ok(Some(value)) if value == self.token.as_bytes() => {
                    match self.accept(deployment, rollout_id, answer, ttl).await {
                        Ok(()) => return Stored::Yes,
                        Err(ClusterError::ClaimLost) => return Stored::No,
                        Err(_) => {}
                    }
                }
                Ok(_) => return Stored::No,
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return Stored::Unknown;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stored: the key is the rollout's now, not to be released.
    fn settle(&mut self) {
        self.renew.abort();
        self.settled = true;
    }
}

impl Drop for Lease {
    /// Not accepted: give the key back so a retry (here or elsewhere) can
    /// run it; if Redis cannot be told, the claim expires.
    fn drop(&mut self) {
        self.renew.abort();
        if self.settled {
            return;
        }
        // Outside a runtime (the process is ending) the claim expires.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cluster = self.cluster.clone();
        let (name, token) = (
            std::mem::take(&mut self.name),
            std::mem::take(&mut self.token),
        );
        runtime.spawn(async move {
            if let Err(e) = cluster.if_ours(&name, &token, None).await {
                tracing::warn!(error = %e, key = %name, "cannot release the claim; it expires");
            }
        });
    }
}

impl Cluster {
    /// Renews (`Some(ttl)`) or deletes `name` if it still holds `token`.
    async fn if_ours(
        &self,
        name: &str,
        token: &str,
        ttl: Option<Duration>,
    ) -> Result<(), ClusterError> {
        redis::cmd("EVAL")
            .arg(IF_OURS)
            .arg(1)
            .arg(name)
            .arg(token)
            .arg(ttl.map(|t| millis(t).to_string()).unwrap_or_default())
            .query_async::<Value>(&mut self.redis.clone())
            .await?;
        Ok(())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The replica's default name: `HOST-PID` (a pod's host name is its name).
pub fn default_replica_id() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "rollout-host".to_owned()
    };
    format!("{host}-{}", std::process::id())
}
