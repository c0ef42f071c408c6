//! A deployment: a named slot serving one plugin over the whole v1
//! protocol (under `/deployments/NAME/`; the default one at the root too),
//! swapped in place on its own. Each has its own runtime (so its instance
//! pool, limits and overload never touch another's rollouts), admission,
//! idempotency records and counters.

use super::swap::{PluginSlot, Source, SwapError, load_upload};
use super::{ServerConfig, Stats};
use crate::config_file::DeploymentSettings;
use crate::idempotency::IdempotencyStore;
use crate::live::LiveRollouts;
use crate::metrics::{DeploymentMetrics, Metrics};
use crate::places::Places;
use crate::runtime::capacity::{MachineCapacity, MachineFacts};
use crate::runtime::{CompileCache, Limits, Runtime, RuntimeConfig};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Semaphore;

pub struct Deployment {
    pub name: Arc<str>,
    /// The plugin new rollouts start with (swapped in place).
    pub plugin: PluginSlot,
    pub limits: Limits,
    /// The bearer key of this deployment's init and /platform/health.
    pub api_key: Option<String>,
    pub idempotency: IdempotencyStore,
    /// Slots for running agents (`--max-concurrent`).
    pub slots: Semaphore,
    /// Their number.
    pub max_concurrent: usize,
    /// Places of accepted rollouts not yet finished (running or queued).
    pub places: Places,
    /// Most rollouts accepted at once (running + queued).
    pub capacity: usize,
    /// What this machine could hold when the deployment was made, and what
    /// bounds it (for /health).
    pub machine: MachineCapacity,
    pub stats: Stats,
    pub metrics: DeploymentMetrics,
    /// Its rollouts in flight, by id (status and cancel).
    pub live: LiveRollouts,
    /// Set when the deployment is deleted: new inits are refused while
    /// running rollouts finish.
    removed: AtomicBool,
}

/// Instances beyond the rollouts in flight: inits in progress past
/// admission never exceed it, so this covers a hot swap's start-up check.
const INSTANCE_HEADROOM: usize = 64;

/// What a deployment's plugin is loaded from.
pub enum PluginBytes {
    File(std::path::PathBuf),
    Upload(Vec<u8>),
}

impl Deployment {
    /// Makes a deployment serving `plugin`, with its settings in `config`;
    /// an upload must also answer `get-tools` on a sample request.
    pub async fn create(
        name: &str,
        plugin: PluginBytes,
        config: &ServerConfig,
        compile_cache: Option<CompileCache>,
        metrics: &Metrics,
    ) -> Result<Self, SwapError> {
        let settings = config.settings_for(name);
        let mut runtime_config = RuntimeConfig {
            limits: settings.limits.clone(),
            instance_slots: 0,
            allocator: config.allocator,
            warm_slots: config.warm_slots,
            compile_cache,
        };
        let machine = MachineFacts::read().capacity(runtime_config.reservation());
        let capacity = admissible(name, settings, config.warm_slots, machine);
        let max_concurrent = settings.max_concurrent.min(capacity);
        // Accepted rollouts hold an instance; inits in progress hold one
        // too (admission comes first, so at most `capacity`), plus hot
        // swap's check.
        runtime_config.instance_slots =
            u32::try_from(capacity.saturating_add(INSTANCE_HEADROOM)).unwrap_or(u32::MAX);
        let runtime = Arc::new(Runtime::new(runtime_config)?);
        let (loaded, source) = match plugin {
            PluginBytes::File(path) => (runtime.load(&path).await?, Source::File(path)),
            PluginBytes::Upload(bytes) => {
                (load_upload(&runtime, name, bytes).await?, Source::Upload)
            }
        };
        tracing::info!(
            deployment = name,
            build = %loaded.label(),
            allocator = ?runtime.allocator(),
            capacity,
            "plugin loaded"
        );
        let metrics = metrics.deployment(name);
        let name: Arc<str> = name.into();
        Ok(Self {
            plugin: PluginSlot::new(runtime, name.clone(), loaded, source, metrics.clone()),
            metrics,
            live: LiveRollouts::default(),
            name,
            limits: settings.limits.clone(),
            api_key: settings.api_key.clone(),
            idempotency: IdempotencyStore::new(config.max_records),
            slots: Semaphore::new(max_concurrent.max(1)),
            max_concurrent,
            places: Places::default(),
            capacity,
            machine,
            stats: Stats::default(),
            removed: AtomicBool::new(false),
        })
    }

    /// Rollouts whose agent runs now, and accepted ones waiting for a slot.
    pub fn running_and_queued(&self) -> (usize, usize) {
        let running = self
            .max_concurrent
            .max(1)
            .saturating_sub(self.slots.available_permits());
        (running, self.places.taken().saturating_sub(running))
    }

    /// Refuses new inits from now on; running rollouts finish.
    pub fn remove(&self) {
        self.removed.store(true, Ordering::Relaxed);
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }
}

/// Rollouts in flight (running + queued) a deployment accepts: what its
/// settings ask for, lowered to what the machine holds, with one line
/// saying so.
fn admissible(
    name: &str,
    settings: &DeploymentSettings,
    warm_slots: u32,
    machine: MachineCapacity,
) -> usize {
    let asked = settings.max_concurrent.saturating_add(settings.max_queued);
    // The warm pool's slots take mappings and address space too.
    let holds = machine
        .instances
        .saturating_sub(INSTANCE_HEADROOM + warm_slots as usize)
        .max(1);
    if asked <= holds {
        return asked;
    }
    tracing::warn!(
        deployment = name,
        "max_concurrent {} + max_queued {} is more than this machine holds: at most {holds} \
         rollouts in flight ({} is {}); serving {holds}, more inits get 429; {}",
        settings.max_concurrent,
        settings.max_queued,
        machine.bound.name(),
        machine.limit,
        machine.bound.hint()
    );
    holds
}

/// Whether `name` may name a deployment: 1-64 of `A-Z a-z 0-9 . _ -`,
/// starting with a letter or digit (it is a URL path segment).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_names_are_url_segments() {
        for ok in ["default", "calc", "calc-v2", "A.b_c", "9"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-calc", ".", "..", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
