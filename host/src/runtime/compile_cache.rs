//! The compile cache: a plugin's compiled code, kept on disk by the sha256
//! of its `.wasm` and the engine's compatibility hash, so a restart (or a
//! swap back to a known build) loads in milliseconds instead of compiling
//! again (seconds for a Rust plugin, tens of seconds for an interpreter
//! such as componentize-py's).
//!
//! The directory is created private to the user (0700) and refused when
//! others can write to it; entries are written whole (a temporary file,
//! then a rename) beside the sha256 of their bytes, which is checked before
//! an entry is used: a truncated or altered entry is not loaded (the plugin
//! is compiled again, with a warning). What is loaded is thus this binary's
//! own serialization for an engine with the same settings, which is what
//! `Component::deserialize` requires to be safe.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use wasmtime::Engine;

/// Entries kept; older ones (by last use) are removed when one is added.
const MAX_ENTRIES: usize = 16;

/// A directory of compiled plugins.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    /// Opens (creating) `dir`, private to this user.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let meta = std::fs::metadata(dir)?;
        // Another user's writable directory could hand us code to run.
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} is writable by other users; use a private directory",
                    dir.display()
                ),
            ));
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The cache in `dir`, or none (with a warning) when it cannot be used:
    /// compiling at every start is slower, not wrong.
    pub fn open_or_warn(dir: &Path) -> Option<Self> {
        match Self::open(dir) {
            Ok(cache) => Some(cache),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "compile cache unavailable; plugins are compiled at every start");
                None
            }
        }
    }

    /// The default directory: `$XDG_CACHE_HOME/rollout-host`, else
    /// `~/.cache/rollout-host`.
    pub fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("rollout-host"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry of the plugin whose file hashes to `sha256`, for `engine`.
    fn path(&self, engine: &Engine, sha256: &str) -> PathBuf {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        self.dir
            .join(format!("{sha256}-{:016x}.cwasm", hasher.finish()))
    }

    /// The entry's file, when this build was compiled before for an engine
    /// like `engine` and the file still has the bytes written; marks the
    /// entry as used. `Err`: an entry exists but does not check out.
    pub fn get(&self, engine: &Engine, sha256: &str) -> Result<Option<PathBuf>, String> {
        let path = self.path(engine, sha256);
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(None);
        };
        let written = std::fs::read_to_string(path.with_extension("sha256")).unwrap_or_default();
        if written.trim() != super::sha256_hex(&bytes) {
            return Err(format!(
                "{} does not match the sha256 written with it",
                path.display()
            ));
        }
        // Touch it: eviction goes by last use.
        if let Ok(file) = std::fs::File::options().append(true).open(&path) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
        Ok(Some(path))
    }

    /// Stores `compiled` for the build `sha256` and returns its file, then
    /// keeps the [`MAX_ENTRIES`] most recently used entries.
    pub fn put(&self, engine: &Engine, sha256: &str, compiled: &[u8]) -> std::io::Result<PathBuf> {
        let path = self.path(engine, sha256);
        // The digest first: an entry is never there without the sha256 it
        // is checked against (a digest without its entry is harmless).
        write_whole(
            &path.with_extension("sha256"),
            super::sha256_hex(compiled).as_bytes(),
        )?;
        write_whole(&path, compiled)?;
        self.evict();
        Ok(path)
    }

    /// Removes all but the [`MAX_ENTRIES`] most recently used entries (and
    /// their digests).
    fn evict(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if entries.len() <= MAX_ENTRIES {
            return;
        }
        entries.sort();
        for (_, path) in &entries[..entries.len() - MAX_ENTRIES] {
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_file(path.with_extension("sha256"));
        }
    }
}

/// Writes `bytes` to `path` whole: a private temporary file, synced, then
/// renamed over it.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_per_engine_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::open(&dir.path().join("c")).unwrap();
        let mode = std::fs::metadata(cache.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let engine = Engine::default();
        assert_eq!(cache.get(&engine, "abc"), Ok(None));
        let path = cache.put(&engine, "abc", b"compiled").unwrap();
        assert_eq!(cache.get(&engine, "abc"), Ok(Some(path.clone())));
        assert_eq!(std::fs::read(&path).unwrap(), b"compiled");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // An engine with other settings does not see it.
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let other = Engine::new(&config).unwrap();
        assert_eq!(cache.get(&other, "abc"), Ok(None));
        // A truncated (or altered) entry does not check out.
        std::fs::write(&path, b"compil").unwrap();
        assert!(
            cache
                .get(&engine, "abc")
                .unwrap_err()
                .contains("does not match")
        );
        cache.put(&engine, "abc", b"compiled").unwrap();
        assert!(cache.get(&engine, "abc").unwrap().is_some());
        for i in 0..MAX_ENTRIES + 3 {
            cache.put(&engine, &format!("k{i}"), b"x").unwrap();
        }
        let count = std::fs::read_dir(cache.dir()).unwrap().count();
        assert_eq!(count, 2 * MAX_ENTRIES, "entries and their digests");
        // A directory others can write to is refused.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(CompileCache::open(&open).is_err());
    }
}
