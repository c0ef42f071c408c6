//! The delivery journal (`--state-dir DIR`): every accepted rollout is
//! written to `DIR/journal.redb` (a `redb` database: transactional,
//! crash-safe) before its init is answered, and removed once its callback
//! was delivered (or refused for good, or its delivery deadline passed).
//! After a crash, what is left is each rollout that never got its
//! callback, with what it needs to get one: the trainer's URL and bearer,
//! the init answer (for duplicate inits), and the callback body if it was
//! made but not delivered.
//!
//! Writes go to one writer thread, which commits everything queued since
//! its last commit in one transaction (group commit): under load, one
//! fsync serves many rollouts. Writes nobody waits for (a delivered
//! rollout's removal) wait up to [`LAZY_COMMIT`] for company. An entry is
//! small: the init answer (its tool list, the same for many rollouts) is
//! kept once, by its hash. The file holds the trainers' bearer tokens: it
//! is created 0600 in a 0700 directory.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// deployment NUL idempotency key -> [`Stored`] as JSON.
const ROLLOUTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rollouts");
/// sha256 of an init answer's fields (hex, 32 digits) -> the fields.
const ANSWERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("answers");
/// The same key -> [`Pending`] as JSON: a callback that waits for
/// redelivery.
const CALLBACKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("callbacks");

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 4096;

/// The shortest time between two commits' starts.
const COMMIT_EVERY: std::time::Duration = std::time::Duration::from_millis(2);

/// How long writes nobody waits for wait for others before they are
/// committed.
pub const LAZY_COMMIT: std::time::Duration = std::time::Duration::from_millis(20);

/// A rollout that has not been called back yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub deployment: String,
    /// Its idempotency key.
    pub key: String,
    pub rollout_id: String,
    /// `{server_url}/v1/rollout/completed`.
    pub callback_url: String,
    /// The init's bearer token for the trainer.
    pub api_key: Option<String>,
    /// The init answer's fields after `rollout_id` (JSON text).
    pub answer_fields: Arc<String>,
    /// Its callback, when one was made and waits for redelivery.
    pub pending: Option<Pending>,
}

/// An [`Entry`] on disk: its answer by hash, its callback in a table of
/// its own.
#[derive(Serialize, Deserialize)]
struct Stored {
    deployment: String,
    key: String,
    rollout_id: String,
    callback_url: String,
    api_key: Option<String>,
    answer: String,
}

/// A callback that was not delivered yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// The body (JSON).
    pub body: String,
    /// Unix seconds after which delivery is given up.
    pub until: u64,
}

impl Entry {
    fn key_bytes(&self) -> Vec<u8> {
        record_key(&self.deployment, &self.key)
    }
}

fn record_key(deployment: &str, key: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(deployment.len() + 1 + key.len());
    bytes.extend_from_slice(deployment.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot create the state directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("the state directory {0} is not private to this user (mode {1:o}): chmod 700 it")]
    NotPrivate(PathBuf, u32),
    #[error("cannot open the journal {file}: {message}")]
    Open { file: PathBuf, message: String },
    #[error("cannot write the journal: {0}")]
    Write(String),
    #[error("the journal's writer has stopped")]
    Stopped,
}

enum Op {
    /// An accepted rollout, and its answer's hash and text.
    Put(Vec<u8>, Vec<u8>, String, Arc<String>),
    PutCallback(Vec<u8>, Vec<u8>),
    /// Both the rollout and its callback.
    Remove(Vec<u8>),
    /// Nothing: waiting for it waits for every write before it.
    Sync,
}

struct Write {
    op: Op,
    /// Told when the write is committed (or failed).
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// The handle the server writes through (cheap to clone).
#[derive(Clone, Debug)]
pub struct Journal {
    writes: mpsc::UnboundedSender<Write>,
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Write")
    }
}

impl Journal {
    /// Opens (or creates) `dir/journal.redb`; returns the journal and the
    /// rollouts a previous run left without a callback.
    pub fn open(dir: &Path) -> Result<(Journal, Vec<Entry>), JournalError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| JournalError::Dir {
                dir: dir.to_owned(),
                source,
            })?;
        let mode = std::fs::metadata(dir)
            .map_err(|source| JournalError::Dir {
                dir: dir.to_owned(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(JournalError::NotPrivate(dir.to_owned(), mode & 0o777));
        }
        let file = dir.join("journal.redb");
        let open_error = |message: String| JournalError::Open {
            file: file.clone(),
            message,
        };
        // Made 0600 before redb writes a byte of it.
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&file)
            .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)))
            .map_err(|e| open_error(e.to_string()))?;
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .create(&file)
            .map_err(|e| open_error(e.to_string()))?;
        let (left, answers) = read_all(&db).map_err(open_error)?;
        let (writes, queue) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || write_loop(db, queue, answers))
            .map_err(|e| open_error(format!("cannot start its writer: {e}")))?;
        Ok((Journal { writes }, left))
    }

    /// Writes `entry` and waits until it is on disk.
    pub async fn put(&self, entry: &Entry) -> Result<(), JournalError> {
        let (done, committed) = oneshot::channel();
        let answer = answer_hash(&entry.answer_fields);
        let stored = Stored {
            deployment: entry.deployment.clone(),
            key: entry.key.clone(),
            rollout_id: entry.rollout_id.clone(),
            callback_url: entry.callback_url.clone(),
            api_key: entry.api_key.clone(),
            answer: answer.clone(),
        };
        // Strings always serialize.
        let value = serde_json::to_vec(&stored).unwrap_or_default();
        self.send(
            Op::Put(
                entry.key_bytes(),
                value,
                answer,
                entry.answer_fields.clone(),
            ),
            Some(done),
        )?;
        committed
            .await
            .map_err(|_| JournalError::Stopped)?
            .map_err(JournalError::Write)
    }

    /// Keeps the undelivered callback of rollout `key` of `deployment`,
    /// with the next commit (not waited for).
    pub fn put_callback(&self, deployment: &str, key: &str, pending: &Pending) {
        // A struct of a string and a number always serializes.
        let value = serde_json::to_vec(pending).unwrap_or_default();
        let _ = self.send(Op::PutCallback(record_key(deployment, key), value), None);
    }

    /// Removes rollout `key` of `deployment`, and its callback, with the
    /// next commit (not waited for).
    pub fn remove(&self, deployment: &str, key: &str) {
        let _ = self.send(Op::Remove(record_key(deployment, key)), None);
    }

    /// Waits until every write made so far is on disk (at exit).
    pub async fn sync(&self) -> Result<(), JournalError> {
        let (done, committed) = oneshot::channel();
        self.send(Op::Sync, Some(done))?;
        committed
            .await
            .map_err(|_| JournalError::Stopped)?
            .map_err(JournalError::Write)
    }

    fn send(
        &self,
        op: Op,
        done: Option<oneshot::Sender<Result<(), String>>>,
    ) -> Result<(), JournalError> {
        self.writes
            .send(Write { op, done })
            .map_err(|_| JournalError::Stopped)
    }
}

fn answer_hash(fields: &str) -> String {
    let digest = Sha256::digest(fields.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The entries left, and the hashes of the answers kept (the answers no
/// entry refers to are dropped).
fn read_all(db: &Database) -> Result<(Vec<Entry>, HashSet<String>), String> {
    let stored: Vec<Stored> = read_table(db, ROLLOUTS)?
        .into_iter()
        .map(|(_, stored)| stored)
        .collect();
    let mut pending: HashMap<Vec<u8>, Pending> = read_table(db, CALLBACKS)?.into_iter().collect();
    let answers = read_answers(db)?;
    let mut entries = Vec::with_capacity(stored.len());
    for s in stored {
        let Some(answer_fields) = answers.get(&s.answer) else {
            tracing::error!(rollout_id = %s.rollout_id, "journal entry without its init answer skipped");
            continue;
        };
        let key = record_key(&s.deployment, &s.key);
        entries.push(Entry {
            pending: pending.remove(&key),
            answer_fields: answer_fields.clone(),
            deployment: s.deployment,
            key: s.key,
            rollout_id: s.rollout_id,
            callback_url: s.callback_url,
            api_key: s.api_key,
        });
    }
    // Keep the answers still referred to.
    let kept: HashSet<String> = entries
        .iter()
        .map(|e| answer_hash(&e.answer_fields))
        .collect();
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(ANSWERS).map_err(|e| e.to_string())?;
        table
            .retain(|hash, _| std::str::from_utf8(hash).is_ok_and(|h| kept.contains(h)))
            .map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())?;
    Ok((entries, kept))
}

fn read_answers(db: &Database) -> Result<HashMap<String, Arc<String>>, String> {
    Ok(read_rows(db, ANSWERS)?
        .into_iter()
        .filter_map(|(hash, fields)| {
            Some((
                String::from_utf8(hash).ok()?,
                Arc::new(String::from_utf8(fields).ok()?),
            ))
        })
        .collect())
}

/// Every row of `table` whose value is readable JSON.
fn read_table<T: serde::de::DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&[u8], &[u8]>,
) -> Result<Vec<(Vec<u8>, T)>, String> {
    Ok(read_rows(db, table)?
        .into_iter()
        .filter_map(|(key, value)| match serde_json::from_slice::<T>(&value) {
            Ok(parsed) => Some((key, parsed)),
            Err(e) => {
                tracing::error!(
                    key = %String::from_utf8_lossy(&key),
                    error = %e,
                    "unreadable journal entry skipped"
                );
                None
            }
        })
        .collect())
}

/// A row: its key and value bytes.
type Row = (Vec<u8>, Vec<u8>);

/// Every row of `table` (none when it was never made).
fn read_rows(db: &Database, table: TableDefinition<&[u8], &[u8]>) -> Result<Vec<Row>, String> {
    let read = db.begin_read().map_err(|e| e.to_string())?;
    let table = match read.open_table(table) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut rows = Vec::new();
    for row in table.iter().map_err(|e| e.to_string())? {
        let (key, value) = row.map_err(|e| e.to_string())?;
        rows.push((key.value().to_vec(), value.value().to_vec()));
    }
    Ok(rows)
}

/// Commits what is queued, as it comes: everything waiting at the start
/// of a commit goes into it. A batch nobody waits for waits up to
/// [`LAZY_COMMIT`] for one somebody does. `answers`: the hashes of the
/// answers on disk.
fn write_loop(
    db: Database,
    mut queue: mpsc::UnboundedReceiver<Write>,
    mut answers: HashSet<String>,
) {
    let mut last_commit = std::time::Instant::now();
    while let Some(first) = queue.blocking_recv() {
        // At most one commit (one fsync) per COMMIT_EVERY: under load a
        // commit then carries many rollouts.
        if let Some(wait) = COMMIT_EVERY.checked_sub(last_commit.elapsed()) {
            std::thread::sleep(wait);
        }
        last_commit = std::time::Instant::now();
        let mut batch = vec![first];
        let lazy_until = std::time::Instant::now() + LAZY_COMMIT;
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(mpsc::error::TryRecvError::Empty)
                    if batch.iter().all(|w| w.done.is_none())
                        && std::time::Instant::now() < lazy_until =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(_) => break,
            }
        }
        let committed = commit(&db, &batch, &mut answers).map_err(|e| e.to_string());
        if let Err(e) = &committed {
            tracing::error!(error = %e, writes = batch.len(), "journal commit failed");
        }
        for write in batch {
            if let Some(done) = write.done {
                let _ = done.send(committed.clone());
            }
        }
    }
}

fn commit(
    db: &Database,
    batch: &[Write],
    answers: &mut HashSet<String>,
) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    let mut new_answers = Vec::new();
    {
        let mut rollouts = txn.open_table(ROLLOUTS)?;
        let mut callbacks = txn.open_table(CALLBACKS)?;
        let mut answer_table = txn.open_table(ANSWERS)?;
        for write in batch {
            match &write.op {
                Op::Put(key, value, hash, fields) => {
                    if !answers.contains(hash) && !new_answers.contains(hash) {
                        answer_table.insert(hash.as_bytes(), fields.as_bytes())?;
                        new_answers.push(hash.clone());
                    }
                    rollouts.insert(key.as_slice(), value.as_slice())?;
                }
                Op::PutCallback(key, value) => {
                    callbacks.insert(key.as_slice(), value.as_slice())?;
                }
                Op::Remove(key) => {
                    rollouts.remove(key.as_slice())?;
                    callbacks.remove(key.as_slice())?;
                }
                Op::Sync => {}
            }
        }
    }
    txn.commit()?;
    answers.extend(new_answers);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> Entry {
        Entry {
            deployment: "default".into(),
            key: key.into(),
            rollout_id: key.into(),
            callback_url: "http://trainer/v1/rollout/completed".into(),
            api_key: Some("secret".into()),
            answer_fields: Arc::new(r#""tools":[]"#.into()),
            pending: None,
        }
    }

    #[tokio::test]
    async fn what_is_not_removed_is_there_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        {
            let (journal, left) = Journal::open(&state).unwrap();
            assert!(left.is_empty());
            for key in ["a", "b", "c"] {
                journal.put(&entry(key)).await.unwrap();
            }
            journal.remove("default", "b");
            let pending = Pending {
                body: "{}".into(),
                until: 42,
            };
            journal.put_callback("default", "c", &pending);
            // Waiting for a later write waits for the ones before it.
            journal.put(&entry("d")).await.unwrap();
            journal.remove("default", "d");
            journal.put(&entry("e")).await.unwrap();
        }
        // The writer thread lets go of the file when its queue closes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let left = loop {
            match Journal::open(&state) {
                Ok((_, left)) => break left,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("{e}"),
            }
        };
        let keys: Vec<_> = left.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["a", "c", "e"]);
        assert_eq!(left[0].pending, None);
        assert_eq!(
            left[1].pending,
            Some(Pending {
                body: "{}".into(),
                until: 42
            })
        );
        let file = std::fs::metadata(state.join("journal.redb")).unwrap();
        assert_eq!(file.permissions().mode() & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn a_shared_state_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let error = Journal::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains("not private"), "{error}");
    }
}
