//! The wasm side: one `Engine`, the plugin compiled and pre-instantiated
//! once, and a fresh `Store` + instance per rollout.

mod bindings;
mod fair_share;
mod guest_io;
mod host_calls;
mod limits;
mod state;
mod trap;

pub use limits::{LimitExceeded, Limits};

pub use state::{Completion, HostCallLimits, RolloutHost, TrainerLink};

use bindings::RolloutAgentPre;
use bindings::exports::osmosis::rollout::agent::Guest as AgentExports;
pub use bindings::osmosis::rollout::types::{
    RolloutRequest as WitRolloutRequest, ToolDefinition as WitToolDefinition,
};
use state::StoreState;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    UpdateDeadline,
};

/// The WIT interface a plugin must export.
pub const AGENT_INTERFACE: &str = "osmosis:rollout/agent@0.1.0";

/// Settings of the wasm runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub limits: Limits,
    /// Instances that may exist at once (rollouts running or queued, plus
    /// inits in progress): sizes the pooling allocator.
    pub instance_slots: u32,
    /// Which instance allocator to use.
    pub allocator: AllocatorChoice,
}

/// `--instance-allocator`: probe for pooling (default), or force one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AllocatorChoice {
    /// Pooling when the machine allows it, else on-demand.
    #[default]
    Auto,
    Pooling,
    OnDemand,
}

/// Which instance allocator the engine ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    Pooling,
    OnDemand,
}

/// Why a plugin could not be loaded (one line each).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read plugin {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a WebAssembly component (a core wasm module? build with `--target wasm32-wasip2` or `cargo component build`)"
    )]
    NotAComponent { path: PathBuf },
    #[error("{path} is not a valid WebAssembly component: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path} does not export `{AGENT_INTERFACE}` (it exports: {found}); build it against rollout-host's wit/"
    )]
    MissingExport { path: PathBuf, found: String },
    #[error("{path} imports something rollout-host does not provide: {reason}")]
    UnsatisfiedImport { path: PathBuf, reason: String },
    #[error("{path} failed its start-up check: {reason}")]
    Startup { path: PathBuf, reason: String },
    #[error("cannot create the wasm engine: {0}")]
    Engine(String),
}

/// The wasm engine and the host functions linked into every instance.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StoreState>,
    allocator: Allocator,
    config: RuntimeConfig,
    heavy_lane: fair_share::HeavyLane,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, LoadError> {
        let (engine, allocator) = new_engine(&config)?;
        limits::spawn_epoch_ticker(engine.weak());
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        bindings::RolloutAgent::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        Ok(Self {
            engine,
            linker,
            allocator,
            config,
            heavy_lane: fair_share::HeavyLane::for_this_machine(),
        })
    }

    pub fn allocator(&self) -> Allocator {
        self.allocator
    }

    /// Compiles, checks and pre-instantiates a plugin, then instantiates it
    /// once to ask its name (which also proves it starts).
    pub async fn load(self: &Arc<Self>, path: &Path) -> Result<Plugin, LoadError> {
        let path = path.to_owned();
        let bytes = std::fs::read(&path).map_err(|source| LoadError::Read {
            path: path.clone(),
            source,
        })?;
        if !is_component(&bytes) {
            return Err(LoadError::NotAComponent { path });
        }
        let engine = self.engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, bytes))
            .await
            .map_err(|e| LoadError::Engine(e.to_string()))?
            .map_err(|e| LoadError::Invalid {
                path: path.clone(),
                reason: one_line(&e),
            })?;
        check_exports(&self.engine, &component, &path)?;
        let pre =
            self.linker
                .instantiate_pre(&component)
                .map_err(|e| LoadError::UnsatisfiedImport {
                    path: path.clone(),
                    reason: one_line(&e),
                })?;
        let pre = RolloutAgentPre::new(pre).map_err(|e| LoadError::MissingExport {
            path: path.clone(),
            found: one_line(&e),
        })?;
        let mut plugin = Plugin {
            runtime: self.clone(),
            pre,
            name: String::new(),
            path,
        };
        let startup = |reason| LoadError::Startup {
            path: plugin.path.clone(),
            reason,
        };
        let mut instance = plugin
            .instantiate(RolloutHost::detached("startup"))
            .await
            .map_err(startup)?;
        let name = instance.name().await.map_err(startup)?;
        plugin.name = name;
        Ok(plugin)
    }
}

fn new_engine(config: &RuntimeConfig) -> Result<(Engine, Allocator), LoadError> {
    let limits = &config.limits;
    let mut wasm = Config::new();
    wasm.wasm_component_model(true);
    wasm.epoch_interruption(true);
    wasm.max_wasm_stack(limits.max_wasm_stack_bytes);
    // Host functions run on the same fiber stack as the guest: leave them room.
    wasm.async_stack_size(limits.max_wasm_stack_bytes + (1 << 20));
    // Zero fiber stacks between rollouts: nothing of one rollout's host
    // frames is visible to the next, and pooled stacks give their pages back
    // (beyond the top 32 KiB) instead of keeping every stack's deepest use
    // resident (a trap's unwinding touches ~80 KiB).
    wasm.async_stack_zeroing(true);
    let slots = config.instance_slots.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(8))
        // One linear memory per instance (what Rust, Python and JS guests
        // have): each reserves ~4 GiB of address space, so this is what
        // bounds the pool's size.
        .total_memories(slots)
        .total_tables(slots.saturating_mul(8))
        .total_stacks(slots)
        .async_stack_keep_resident(32 << 10)
        // Reset the pages a rollout dirtied in place (found with the
        // PAGEMAP_SCAN ioctl where the kernel has it, Linux >= 6.7) instead
        // of madvise + fresh page faults for the next rollout: fewer
        // syscalls and TLB shootdowns per instantiation.
        .linear_memory_keep_resident(2 << 20)
        // Reuse the least recently used slot rather than a cold one, so the
        // slots ever touched (and the pages they keep) stay bounded by the
        // peak number of instances, not the pool's size.
        .max_unused_warm_slots(0)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto)
        .max_memory_size(limits.max_memory_bytes);
    if config.allocator != AllocatorChoice::OnDemand {
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&wasm) {
            Ok(engine) => return Ok((engine, Allocator::Pooling)),
            Err(e) if config.allocator == AllocatorChoice::Pooling => {
                return Err(LoadError::Engine(format!(
                    "pooling allocator unavailable: {}",
                    one_line(&e)
                )));
            }
            Err(e) => {
                tracing::warn!(error = %one_line(&e), "pooling allocator unavailable, using on-demand allocation")
            }
        }
    }
    wasm.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    Engine::new(&wasm)
        .map(|e| (e, Allocator::OnDemand))
        .map_err(|e| LoadError::Engine(one_line(&e)))
}

/// The component-model layer byte of the wasm header (core modules have
/// version 1, layer 0; components layer 1).
fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[0..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

fn check_exports(engine: &Engine, component: &Component, path: &Path) -> Result<(), LoadError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    if exports.iter().any(|e| e == AGENT_INTERFACE) {
        return Ok(());
    }
    let found = if exports.is_empty() {
        "nothing".to_owned()
    } else {
        exports.join(", ")
    };
    Err(LoadError::MissingExport {
        path: path.to_owned(),
        found,
    })
}

/// A wasmtime error and its causes on one line.
pub(crate) fn one_line(e: &wasmtime::Error) -> String {
    let mut text = String::new();
    for (i, cause) in e.chain().enumerate() {
        if i > 0 {
            text.push_str(": ");
        }
        text.push_str(&cause.to_string().replace('\n', " "));
    }
    text
}

/// A loaded plugin: compiled and pre-instantiated once, instantiated per
/// rollout.
pub struct Plugin {
    runtime: Arc<Runtime>,
    pre: RolloutAgentPre<StoreState>,
    name: String,
    path: PathBuf,
}

impl Plugin {
    /// The agent's name (from its `name` export).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn new_store(&self, host: RolloutHost) -> Store<StoreState> {
        let limits = &self.runtime.config.limits;
        let mut store = Store::new(&self.runtime.engine, StoreState::new(host, limits));
        store.limiter(|s| &mut s.limiter);
        // Called every epoch tick while the guest executes: stop it once its
        // CPU time is over budget, else yield to the async runtime so one
        // busy guest cannot starve the others; a heavy guest also waits for
        // its next turn in the heavy lane.
        let budget = limits.cpu_budget;
        let lane = self.runtime.heavy_lane.clone();
        store.epoch_deadline_callback(move |ctx| {
            let meter = &ctx.data().meter;
            let used = meter.used();
            if used > budget {
                return Err(LimitExceeded::Cpu(budget).into());
            }
            if used < fair_share::HEAVY_AFTER {
                return Ok(UpdateDeadline::Yield(1));
            }
            Ok(UpdateDeadline::YieldCustom(
                1,
                lane.next_turn(meter.turn.clone()),
            ))
        });
        store.set_epoch_deadline(1);
        store
    }

    /// Creates an instance and calls nothing in it (what `start` does
    /// before `get-tools`; benchmarks measure it alone).
    pub async fn instantiate(&self, host: RolloutHost) -> Result<Instance, String> {
        let mut store = self.new_store(host);
        let meter = store.data().meter.clone();
        match meter.measure(self.pre.instantiate_async(&mut store)).await {
            Ok(agent) => Ok(Instance { store, agent }),
            Err(e) => Err(format!(
                "plugin failed to start: {}",
                trap::describe(&e, &mut store)
            )),
        }
    }

    /// Creates the rollout's instance and asks it for its tools, within the
    /// rollout's CPU budget and wall-clock deadline.
    pub async fn start(
        &self,
        host: RolloutHost,
        request: &WitRolloutRequest,
    ) -> Result<(Instance, Vec<WitToolDefinition>), String> {
        let mut store = self.new_store(host);
        let meter = store.data().meter.clone();
        let deadline = self.runtime.config.limits.wall_clock;
        let started = tokio::time::timeout(
            deadline,
            meter.measure(async {
                let agent = self.pre.instantiate_async(&mut store).await?;
                let tools = agent
                    .osmosis_rollout_agent()
                    .call_get_tools(&mut store, request)
                    .await?;
                Ok::<_, wasmtime::Error>((agent, tools))
            }),
        )
        .await;
        match started {
            Ok(Ok((agent, Ok(tools)))) => Ok((Instance { store, agent }, tools)),
            Ok(Ok((_, Err(msg)))) => Err(format!("plugin get-tools failed: {msg}")),
            Ok(Err(e)) => Err(format!(
                "plugin get-tools {}",
                trap::describe(&e, &mut store)
            )),
            Err(_) => Err(format!(
                "plugin get-tools {}",
                trap::note_limit(&mut store, LimitExceeded::WallClock(deadline))
            )),
        }
    }
}

/// One rollout's instance, between `get-tools` and `run`.
pub struct Instance {
    store: Store<StoreState>,
    agent: bindings::RolloutAgent,
}

impl Instance {
    /// The agent's `name` export.
    pub async fn name(&mut self) -> Result<String, String> {
        let exports: &AgentExports = self.agent.osmosis_rollout_agent();
        let meter = self.store.data().meter.clone();
        meter
            .measure(exports.call_name(&mut self.store))
            .await
            .map_err(|e| format!("plugin name {}", trap::describe(&e, &mut self.store)))
    }

    /// Runs the agent loop to its end: `Err` says how the guest failed.
    /// Dropping the future stops the guest.
    pub async fn run(&mut self, request: &WitRolloutRequest) -> Result<(), String> {
        let exports: &AgentExports = self.agent.osmosis_rollout_agent();
        let meter = self.store.data().meter.clone();
        match meter
            .measure(exports.call_run(&mut self.store, request))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(format!("plugin run failed: {msg}")),
            Err(e) => Err(format!("plugin {}", trap::describe(&e, &mut self.store))),
        }
    }

    /// Records that the rollout ran past its wall-clock deadline (the run
    /// was stopped) and returns the error message.
    pub fn wall_clock_exceeded(&mut self, deadline: Duration) -> String {
        format!(
            "plugin {}",
            trap::note_limit(&mut self.store, LimitExceeded::WallClock(deadline))
        )
    }

    /// The host-side state: completion, metrics, history.
    pub fn into_host(self) -> RolloutHost {
        self.store.into_data().into_host()
    }
}
