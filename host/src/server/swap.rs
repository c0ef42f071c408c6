//! Hot swap: the plugin file is loaded again and replaces the running
//! plugin in place, without a restart. The new plugin is compiled, checked
//! and pre-instantiated first; then one pointer is swapped. A rollout keeps
//! the plugin it started with until it ends (its init holds an `Arc`), so
//! nothing in flight is dropped; a plugin that fails to load is reported
//! and the running one stays.
//!
//! Triggers, per deployment: `SIGHUP` and, with `--reload`, any change to
//! its plugin file; an upload through the admin API (`server/admin.rs`).

use super::App;
use crate::metrics::DeploymentMetrics;
use crate::runtime::{LoadError, Plugin, Runtime};
use serde_json::{Value, json};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

/// Where a deployment's plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file, loaded again on SIGHUP (and on change with `--reload`).
    File(PathBuf),
    /// Bytes uploaded through the admin API: nothing to reload from.
    Upload,
}

/// One loaded build of a deployment's plugin: what its rollouts run and
/// what their init answers and callbacks name.
pub struct Version {
    plugin: Plugin,
    pub loaded_at: SystemTime,
    pub source: Source,
    /// `{"deployment", "agent", "plugin_sha256"}`: the reserved
    /// [`BUILD_KEY`] of every callback's `extra_fields` and init answer.
    pub build: Value,
    /// Rollouts accepted on this version and not yet finished.
    in_flight: AtomicUsize,
    /// The init answer's fields after `rollout_id`, shared with the last
    /// rollout that got the same tools (a kept record then costs a
    /// pointer, not a copy).
    answer_fields: Mutex<Option<(Arc<String>, Arc<String>)>>,
}

/// The key of `extra_fields` (and of the init answer) naming the build
/// that ran a rollout; a plugin's own value under it is replaced.
pub const BUILD_KEY: &str = "rollout_host";

impl Version {
    fn new(deployment: &str, plugin: Plugin, source: Source) -> Self {
        let build = json!({
            "deployment": deployment,
            "agent": plugin.name(),
            "plugin_sha256": plugin.sha256(),
        });
        Self {
            plugin,
            loaded_at: SystemTime::now(),
            source,
            build,
            in_flight: AtomicUsize::new(0),
            answer_fields: Mutex::default(),
        }
    }

    /// `"tools":[...],"rollout_host":{...}`: the init answer after its
    /// `rollout_id`, for a rollout offered `tools`.
    pub fn answer_fields(
        &self,
        tools: &[crate::protocol::Tool],
    ) -> Result<Arc<String>, serde_json::Error> {
        let tools = serde_json::to_string(tools)?;
        let mut shared = self
            .answer_fields
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((same_tools, fields)) = &*shared
            && **same_tools == tools
        {
            return Ok(fields.clone());
        }
        let fields = Arc::new(format!("\"tools\":{tools},\"{BUILD_KEY}\":{}", self.build));
        *shared = Some((Arc::new(tools), fields.clone()));
        Ok(fields)
    }

    /// Counts a rollout on this version until the guard drops.
    pub fn running(self: &Arc<Self>) -> Running {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Running(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

impl Deref for Version {
    type Target = Plugin;

    fn deref(&self) -> &Plugin {
        &self.plugin
    }
}

/// A rollout running on a version: keeps it loaded and counted.
pub struct Running(Arc<Version>);

impl Deref for Running {
    type Target = Arc<Version>;

    fn deref(&self) -> &Arc<Version> {
        &self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a deployment's plugin was not swapped (the running one stays).
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{0} failed its get-tools check: {1}")]
    Tools(String, String),
    #[error("deployment '{0}' serves an uploaded plugin: there is no file to reload")]
    NothingToReload(String),
}

/// The plugin new rollouts of a deployment start with, and how to load it
/// again.
pub struct PluginSlot {
    deployment: Arc<str>,
    current: RwLock<Arc<Version>>,
    /// Versions swapped out, while rollouts still run on them.
    retired: Mutex<Vec<Weak<Version>>>,
    runtime: Arc<Runtime>,
    /// One load at a time: a second trigger waits and then loads the file
    /// as it is by then.
    loading: tokio::sync::Mutex<()>,
    /// Counts swaps and refused loads.
    metrics: DeploymentMetrics,
}

impl PluginSlot {
    pub fn new(
        runtime: Arc<Runtime>,
        deployment: Arc<str>,
        plugin: Plugin,
        source: Source,
        metrics: DeploymentMetrics,
    ) -> Self {
        Self {
            current: RwLock::new(Arc::new(Version::new(&deployment, plugin, source))),
            deployment,
            retired: Mutex::default(),
            runtime,
            loading: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    /// The version a rollout starting now runs on.
    pub fn current(&self) -> Arc<Version> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The current version, then those swapped out that rollouts still
    /// run on.
    pub fn versions(&self) -> Vec<Arc<Version>> {
        let mut retired = self
            .retired
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        retired.retain(|v| v.strong_count() > 0);
        let mut versions = vec![self.current()];
        versions.extend(retired.iter().filter_map(Weak::upgrade));
        versions
    }

    /// The file the current version was loaded from, if any.
    pub fn path(&self) -> Option<PathBuf> {
        match &self.current().source {
            Source::File(path) => Some(path.clone()),
            Source::Upload => None,
        }
    }

    /// Loads the plugin file again and, if it loads, makes it current.
    pub async fn reload(&self) -> Result<Arc<Version>, SwapError> {
        let _one_at_a_time = self.loading.lock().await;
        let Some(path) = self.path() else {
            return Err(SwapError::NothingToReload(self.deployment.to_string()));
        };
        let loaded = match self.runtime.load(&path).await {
            Ok(plugin) => check_tools(&plugin, &path).await.map(|()| plugin),
            Err(e) => Err(e.into()),
        };
        self.swap_in(loaded, Source::File(path))
    }

    /// Loads uploaded plugin bytes, asks them for their tools on a sample
    /// request, and if all that works makes them current.
    pub async fn upload(&self, bytes: Vec<u8>) -> Result<Arc<Version>, SwapError> {
        let _one_at_a_time = self.loading.lock().await;
        let loaded = load_upload(&self.runtime, &self.deployment, bytes).await;
        self.swap_in(loaded, Source::Upload)
    }

    /// Makes a plugin that loaded current; counts the swap either way.
    fn swap_in(
        &self,
        loaded: Result<Plugin, SwapError>,
        source: Source,
    ) -> Result<Arc<Version>, SwapError> {
        self.metrics.swap(loaded.is_ok());
        Ok(self.swap(loaded?, source))
    }

    fn swap(&self, plugin: Plugin, source: Source) -> Arc<Version> {
        let version = Arc::new(Version::new(&self.deployment, plugin, source));
        let old = std::mem::replace(
            &mut *self
                .current
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            version.clone(),
        );
        tracing::info!(
            deployment = %self.deployment,
            build = %version.label(),
            previous = %old.label(),
            "plugin swapped: new rollouts run the new plugin, running ones finish on theirs"
        );
        self.retired
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Arc::downgrade(&old));
        version
    }

    /// Reloads, logging the outcome (a failed load keeps the running plugin).
    async fn reload_logged(&self, trigger: &str) {
        if let Err(e) = self.reload().await {
            tracing::error!(
                deployment = %self.deployment,
                trigger,
                error = %e,
                "plugin not swapped: the running plugin stays"
            );
        }
    }
}

/// Loads plugin bytes uploaded to `deployment` and asks them for their
/// tools on a sample request: what an upload must pass before it serves.
pub async fn load_upload(
    runtime: &Arc<Runtime>,
    deployment: &str,
    bytes: Vec<u8>,
) -> Result<Plugin, SwapError> {
    let origin = PathBuf::from(format!(
        "the upload to deployment '{deployment}' ({} bytes)",
        bytes.len()
    ));
    let plugin = runtime.load_bytes(bytes, &origin).await?;
    check_tools(&plugin, &origin).await?;
    Ok(plugin)
}

/// A plugin's `get-tools` on the sample request `--validate` uses.
async fn check_tools(plugin: &Plugin, origin: &Path) -> Result<(), SwapError> {
    crate::validate::sample_tools(plugin)
        .await
        .map(drop)
        .map_err(|e| SwapError::Tools(origin.display().to_string(), e.to_string()))
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

/// Reloads every deployment served from a file on each `SIGHUP`, each on
/// its own (one that fails to load keeps its running plugin).
pub async fn reload_on_hangup(app: Arc<App>, hangups: Hangups) {
    #[cfg(unix)]
    if let Some(mut hangups) = hangups {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the plugins");
            let reloads = app
                .deployments()
                .into_iter()
                .filter(|d| d.plugin.path().is_some())
                .map(|d| async move { d.plugin.reload_logged("SIGHUP").await });
            futures_util::future::join_all(reloads).await;
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

/// `--reload`: checks each deployment's plugin file every `every` and
/// reloads it once a change has stayed the same for one more check (so a
/// file being copied in is not read half-written). Replacing the file by a
/// rename is the safest way to deploy.
pub async fn reload_on_change(app: Arc<App>, every: Duration) {
    /// Per deployment: its file's fingerprint when loaded, and last seen.
    /// (A deployment's file never changes: a swap by upload leaves it
    /// without one.)
    struct Watched {
        loaded: Option<Fingerprint>,
        seen: Option<Fingerprint>,
    }
    let mut watched: std::collections::HashMap<Arc<str>, Watched> = Default::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let deployments = app.deployments();
        watched.retain(|name, _| deployments.iter().any(|d| d.name == *name));
        for deployment in deployments {
            let Some(path) = deployment.plugin.path() else {
                watched.remove(&deployment.name);
                continue;
            };
            let now = fingerprint(&path);
            let w = watched
                .entry(deployment.name.clone())
                .or_insert_with(|| Watched {
                    loaded: now.clone(),
                    seen: now.clone(),
                });
            if now.is_some() && now != w.loaded && now == w.seen {
                tracing::info!(deployment = %deployment.name, plugin = %path.display(), "plugin file changed: reloading");
                deployment.plugin.reload_logged("file change").await;
                // A failed load is not retried until the file changes again.
                w.loaded = now.clone();
            }
            w.seen = now;
        }
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
