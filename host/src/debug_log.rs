//! The debug log: with `--log DIR`, each rollout's `log-event`s go to
//! `DIR/<server-start-unix-time>/<rollout_id>.jsonl`, one JSON object a line.
//! Rollout ids that are not a safe file name are encoded, so nothing is ever
//! written outside the directory.

use serde_json::{Map, Value};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The server's debug directory (`DIR/<server-start-unix-time>`).
#[derive(Debug, Clone)]
pub struct DebugLog {
    dir: PathBuf,
}

impl DebugLog {
    /// Creates `root/<unix-time>/`.
    pub fn create(root: &Path, start_unix_secs: u64) -> std::io::Result<Self> {
        let dir = root.join(start_unix_secs.to_string());
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log of one rollout; its file is created at the first event.
    pub fn rollout(&self, rollout_id: &str) -> RolloutLog {
        RolloutLog {
            path: self.dir.join(format!("{}.jsonl", file_stem(rollout_id))),
            rollout_id: rollout_id.to_owned(),
            file: None,
        }
    }
}

/// One rollout's `.jsonl` file.
#[derive(Debug)]
pub struct RolloutLog {
    path: PathBuf,
    rollout_id: String,
    file: Option<BufWriter<File>>,
}

impl RolloutLog {
    /// Appends `{"event": event, "rollout_id": id, ...data}`. `data` that is
    /// not a JSON object is stored under `"data"`.
    pub fn write(&mut self, event: &str, data: Value) -> std::io::Result<()> {
        let mut fields = match data {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => Map::from_iter([("data".to_owned(), other)]),
        };
        fields.remove("event");
        fields.remove("rollout_id");
        let mut line = Vec::with_capacity(128);
        line.extend_from_slice(b"{\"event\":");
        serde_json::to_writer(&mut line, event)?;
        line.extend_from_slice(b",\"rollout_id\":");
        serde_json::to_writer(&mut line, &self.rollout_id)?;
        for (k, v) in &fields {
            line.push(b',');
            serde_json::to_writer(&mut line, k)?;
            line.push(b':');
            serde_json::to_writer(&mut line, v)?;
        }
        line.extend_from_slice(b"}\n");
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(BufWriter::new(
                File::options().create(true).append(true).open(&self.path)?,
            )),
        };
        file.write_all(&line)
    }

    /// Flushes buffered events to disk.
    pub fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for RolloutLog {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write debug log");
        }
    }
}

/// Longest file stem used as is; longer (encoded) ids are shortened with a hash.
const MAX_STEM: usize = 200;

/// `rollout_id` itself when it is a safe single path segment
/// (`[A-Za-z0-9._-]`, not `.`/`..`, not hidden), else a percent-encoding of
/// it (shortened with a hash when long). Distinct ids map to distinct names.
pub fn file_stem(rollout_id: &str) -> String {
    let safe = !rollout_id.is_empty()
        && !rollout_id.starts_with('.')
        && rollout_id.len() <= MAX_STEM
        && rollout_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if safe {
        return rollout_id.to_owned();
    }
    let mut encoded = String::with_capacity(rollout_id.len() * 3);
    for b in rollout_id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    if encoded.len() > MAX_STEM {
        // FNV-1a over the id: stable across builds, and the prefix keeps it readable.
        let hash = rollout_id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        let cut = (0..=MAX_STEM - 17)
            .rev()
            .find(|&i| encoded.is_char_boundary(i))
            .unwrap_or(0);
        encoded = format!("{}~{hash:016x}", &encoded[..cut]);
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_ids_are_encoded() {
        assert_eq!(file_stem("rollout-1_a.b"), "rollout-1_a.b");
        assert_eq!(file_stem("../../x"), "%2E%2E%2F%2E%2E%2Fx");
        assert_eq!(file_stem(".."), "%2E%2E");
        assert_eq!(file_stem("a/b"), "a%2Fb");
        assert_eq!(file_stem("%2E"), "%252E");
        assert_ne!(file_stem("a b"), file_stem("a_b"));
        let long = file_stem(&"é".repeat(256));
        assert!(long.len() <= MAX_STEM && !long.contains('/'));
        assert_ne!(long, file_stem(&format!("{}x", "é".repeat(255))));
    }

    #[test]
    fn events_carry_event_and_rollout_id_first() {
        let dir = tempfile::tempdir().unwrap();
        let log = DebugLog::create(dir.path(), 1700000000).unwrap();
        let mut r = log.rollout("../evil");
        r.write("pre_llm", serde_json::json!({"turn": 0, "event": "spoof"}))
            .unwrap();
        r.flush().unwrap();
        let text = std::fs::read_to_string(log.dir().join("%2E%2E%2Fevil.jsonl")).unwrap();
        assert_eq!(
            text,
            "{\"event\":\"pre_llm\",\"rollout_id\":\"../evil\",\"turn\":0}\n"
        );
    }
}
