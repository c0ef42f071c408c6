//! Hot swap: the plugin file is loaded again and replaces the running
//! plugin in place, without a restart. The new plugin is compiled, checked
//! and pre-instantiated first; then one pointer is swapped. A rollout keeps
//! the plugin it started with until it ends (its init holds an `Arc`), so
//! nothing in flight is dropped; a plugin that fails to load is reported
//! and the running one stays.
//!
//! Triggers: `SIGHUP`, and with `--reload` any change to the plugin file.

use super::App;
use crate::runtime::{LoadError, Plugin, Runtime};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// The plugin new rollouts start with, and how to load it again.
pub struct PluginSlot {
    current: RwLock<Arc<Plugin>>,
    runtime: Arc<Runtime>,
    path: PathBuf,
    /// One load at a time: a second trigger waits and then loads the file
    /// as it is by then.
    loading: tokio::sync::Mutex<()>,
}

impl PluginSlot {
    pub fn new(runtime: Arc<Runtime>, path: PathBuf, plugin: Plugin) -> Self {
        Self {
            current: RwLock::new(Arc::new(plugin)),
            runtime,
            path,
            loading: tokio::sync::Mutex::new(()),
        }
    }

    /// The plugin a rollout starting now runs on.
    pub fn current(&self) -> Arc<Plugin> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Loads the plugin file and, if it loads, makes it the current plugin.
    pub async fn reload(&self) -> Result<Arc<Plugin>, LoadError> {
        let _one_at_a_time = self.loading.lock().await;
        let plugin = Arc::new(self.runtime.load(&self.path).await?);
        let old = std::mem::replace(
            &mut *self
                .current
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            plugin.clone(),
        );
        tracing::info!(
            plugin = %self.path.display(),
            build = %plugin.label(),
            previous = %old.label(),
            "plugin swapped: new rollouts run the new plugin, running ones finish on theirs"
        );
        Ok(plugin)
    }

    /// Reloads, logging the outcome (a failed load keeps the running plugin).
    async fn reload_logged(&self, trigger: &str) {
        if let Err(e) = self.reload().await {
            tracing::error!(
                trigger,
                error = %e,
                "plugin not swapped: the running plugin stays"
            );
        }
    }
}

/// `SIGHUP`s from now on (instead of their default action, which ends the
/// process): take them before saying the server is up.
#[cfg(unix)]
pub type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
pub type Hangups = Option<std::convert::Infallible>;

pub fn hangups() -> Hangups {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::hangup())
            .inspect_err(
                |e| tracing::warn!(error = %e, "cannot listen for SIGHUP: reload by signal is off"),
            )
            .ok()
    }
    #[cfg(not(unix))]
    None
}

/// Reloads the plugin on every `SIGHUP`.
pub async fn reload_on_hangup(app: Arc<App>, hangups: Hangups) {
    #[cfg(unix)]
    if let Some(mut hangups) = hangups {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the plugin");
            app.plugin.reload_logged("SIGHUP").await;
        }
    }
    #[cfg(not(unix))]
    let _ = (app, hangups);
}

/// What identifies a version of the plugin file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

fn fingerprint(path: &std::path::Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        modified: meta.modified().ok(),
        len: meta.len(),
        #[cfg(unix)]
        inode: std::os::unix::fs::MetadataExt::ino(&meta),
    })
}

/// `--reload`: checks the plugin file every `every` and reloads it once a
/// change has stayed the same for one more check (so a file being copied
/// in is not read half-written). Replacing the file by a rename is the
/// safest way to deploy.
pub async fn reload_on_change(app: Arc<App>, every: Duration) {
    let path = app.plugin.path.clone();
    let mut loaded = fingerprint(&path);
    let mut seen = loaded.clone();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = fingerprint(&path);
        if now.is_some() && now != loaded && now == seen {
            tracing::info!(plugin = %path.display(), "plugin file changed: reloading");
            app.plugin.reload_logged("file change").await;
            // A failed load is not retried until the file changes again.
            loaded = now.clone();
        }
        seen = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_file_has_a_new_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.wasm");
        assert_eq!(fingerprint(&path), None);
        std::fs::write(&path, b"one").unwrap();
        let first = fingerprint(&path).unwrap();
        assert_eq!(fingerprint(&path), Some(first.clone()));
        // Same length and possibly the same mtime tick: the inode of a
        // renamed-in replacement still tells them apart.
        let next = dir.path().join("agent.wasm.new");
        std::fs::write(&next, b"two").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_ne!(fingerprint(&path), Some(first));
    }
}
