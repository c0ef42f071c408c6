//! The wasm side: one `Engine`, the plugin compiled and pre-instantiated
//! once, and a fresh `Store` + instance per rollout.

mod bindings;
pub mod capacity;
mod compile_cache;
mod failure;
mod fair_share;
mod guest_io;
mod host_calls;
mod limits;
mod state;

pub use compile_cache::CompileCache;
pub use failure::{Failure, GuestError, Stage};
pub use limits::{LimitExceeded, Limits};

pub use state::{ChatWatch, Completion, HostCallLimits, RolloutHost, TrainerLink};

use crate::places::{Place, Places};
use crate::protocol::Tool;
use bindings::RolloutAgentPre;
use bindings::exports::osmosis::rollout::agent::Guest as AgentExports;
pub use bindings::osmosis::rollout::types::RolloutRequest as WitRolloutRequest;
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
    /// Instances that keep their pages resident between rollouts (a pool
    /// of their own; the fast path). Instances beyond them come from the
    /// main pool, whose slots give their pages back when they end.
    pub warm_slots: u32,
    /// Where compiled plugins are kept across restarts; `None`: compile
    /// at every start.
    pub compile_cache: Option<CompileCache>,
}

/// Address space of each instance's linear memory (wasmtime's default for
/// 64-bit hosts, set explicitly so capacity is computed from what is used):
/// with the guards, bounds checks are free for 32-bit memories.
const MEMORY_RESERVATION: u64 = 4 << 30;
const MEMORY_GUARD: u64 = 32 << 20;

impl RuntimeConfig {
    /// Address space one instance reserves.
    pub fn reservation(&self) -> capacity::Reservation {
        capacity::Reservation {
            memory: MEMORY_RESERVATION,
            guard: MEMORY_GUARD,
            stack: stack_size(&self.limits) as u64,
        }
    }
}

/// Host functions run on the same fiber stack as the guest: leave them room.
fn stack_size(limits: &Limits) -> usize {
    limits.max_wasm_stack_bytes + (1 << 20)
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

/// An engine (with its instance allocator) and the host functions linked
/// for it.
struct Pool {
    engine: Engine,
    linker: Linker<StoreState>,
}

impl Pool {
    fn new(engine: Engine) -> Result<Self, LoadError> {
        limits::spawn_epoch_ticker(engine.weak());
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        bindings::RolloutAgent::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(|e| LoadError::Engine(e.to_string()))?;
        Ok(Self { engine, linker })
    }
}

/// The wasm runtime: the main pool, whose slots give their pages back when
/// an instance ends (so a burst's memory returns once it is over), and per
/// plugin a small warm pool whose slots keep their pages resident between
/// rollouts (reusing them costs no page faults: the steady state), sized to
/// the plugin. wasmtime never trims an idle slot, so this split is what
/// bounds the memory kept: the warm slots x what one rollout keeps.
pub struct Runtime {
    main: Pool,
    /// Whether plugins get a warm pool (pooling works and `warm_slots` > 0).
    warm: bool,
    allocator: Allocator,
    config: RuntimeConfig,
    heavy_lane: fair_share::HeavyLane,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, LoadError> {
        let (engine, allocator) = new_engine(&config, config.instance_slots, Keep::NOTHING)?;
        let main = Pool::new(engine)?;
        let warm = allocator == Allocator::Pooling && config.warm_slots > 0;
        Ok(Self {
            main,
            warm,
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
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.load_bytes(bytes, path).await
    }

    /// [`Runtime::load`] of a plugin's bytes; `path` names it in messages
    /// (the file it was read from, or where it came from).
    pub async fn load_bytes(
        self: &Arc<Self>,
        bytes: Vec<u8>,
        path: &Path,
    ) -> Result<Plugin, LoadError> {
        let path = path.to_owned();
        if !is_component(&bytes) {
            return Err(LoadError::NotAComponent { path });
        }
        let sha256 = sha256_hex(&bytes);
        let engine = self.main.engine.clone();
        let cache = self.config.compile_cache.clone();
        let key = sha256.clone();
        let started = std::time::Instant::now();
        let compiled = tokio::task::spawn_blocking(move || compile(&engine, bytes, &key, cache))
            .await
            .map_err(|e| LoadError::Engine(e.to_string()))?
            .map_err(|e| LoadError::Invalid {
                path: path.clone(),
                reason: one_line(&e),
            })?;
        tracing::info!(
            plugin = %path.display(),
            from_cache = compiled.from_cache,
            ms = started.elapsed().as_millis() as u64,
            "plugin {}",
            if compiled.from_cache { "loaded from the compile cache" } else { "compiled" }
        );
        check_exports(&self.main.engine, &compiled.component, &path)?;
        let main = prepare(&self.main, &compiled.component, &path)?;
        let mut plugin = Plugin {
            runtime: self.clone(),
            main,
            warm: None,
            name: String::new(),
            label: format!("@{}", &sha256[..7]).into(),
            sha256,
            path,
        };
        let startup = |e: GuestError| LoadError::Startup {
            path: plugin.path.clone(),
            reason: e.to_string(),
        };
        let mut instance = plugin
            .instantiate(RolloutHost::detached("startup"))
            .await
            .map_err(startup)?;
        let name = instance.name().await.map_err(startup)?;
        let memory = instance.memory_size();
        drop(instance);
        plugin.label = format!("{name}@{}", &plugin.sha256[..7]).into();
        plugin.name = name;
        if self.warm {
            plugin.warm = self.warm_pool(&compiled.artifact, memory, &plugin.path);
        }
        Ok(plugin)
    }

    /// A warm pool for a plugin whose instances start with `memory` bytes
    /// of linear memory, or none (logged) when the machine cannot give it
    /// one: rollouts then all come from the main pool.
    fn warm_pool(&self, artifact: &Artifact, memory: usize, path: &Path) -> Option<WarmPool> {
        let keep = Keep::warm_for(memory, capacity::pagemap_scan_available());
        let slots = keep.slots(self.config.warm_slots, capacity::warm_memory_budget());
        let made = new_engine(&self.config, slots, keep).and_then(|(engine, _)| {
            let pool = Pool::new(engine)?;
            let component = artifact
                .load(&pool.engine)
                .map_err(|e| LoadError::Engine(one_line(&e)))?;
            prepare(&pool, &component, path)
        });
        match made {
            Ok(placement) => {
                tracing::debug!(slots, keep_memory = keep.memory, "warm pool ready");
                Some(WarmPool {
                    placement,
                    places: Places::default(),
                    slots: slots as usize,
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "no warm pool for this plugin; every rollout uses the main pool");
                None
            }
        }
    }
}

/// A plugin's warm pool: its instances keep their pages between rollouts.
struct WarmPool {
    placement: Placement,
    /// Its instances in use, at most `slots`.
    places: Places,
    slots: usize,
}

/// A compiled plugin, and where another engine with the same settings
/// can load it from.
struct Compiled {
    component: Component,
    artifact: Artifact,
    from_cache: bool,
}

/// Compiled code in wasmtime's serialized form.
enum Artifact {
    /// A compile-cache entry (mapped, not copied, and shared between the
    /// engines through the page cache).
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl Artifact {
    fn load(&self, engine: &Engine) -> wasmtime::Result<Component> {
        // SAFETY: both are this binary's own serialization of the
        // component for an engine with the same compatibility settings
        // (a cache entry is written whole, privately, and keyed by them).
        unsafe {
            match self {
                Artifact::File(path) => Component::deserialize_file(engine, path),
                Artifact::Bytes(bytes) => Component::deserialize(engine, bytes),
            }
        }
    }
}

/// The plugin `bytes` (whose sha256 is `sha256`) compiled for `engine`:
/// from the compile cache when it holds this build, else compiled now
/// (and stored there).
fn compile(
    engine: &Engine,
    bytes: Vec<u8>,
    sha256: &str,
    cache: Option<CompileCache>,
) -> wasmtime::Result<Compiled> {
    let cached = match cache.as_ref().map(|c| c.get(engine, sha256)) {
        Some(Ok(found)) => found,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "compile-cache entry not used; compiling again");
            None
        }
        None => None,
    };
    if let Some(path) = cached {
        let artifact = Artifact::File(path);
        match artifact.load(engine) {
            Ok(component) => {
                return Ok(Compiled {
                    component,
                    artifact,
                    from_cache: true,
                });
            }
            Err(e) => {
                tracing::warn!(error = %one_line(&e), "unusable compile-cache entry; compiling again")
            }
        }
    }
    let component = Component::new(engine, bytes)?;
    let serialized = component.serialize()?;
    let artifact = match cache.map(|c| c.put(engine, sha256, &serialized)) {
        Some(Ok(path)) => Artifact::File(path),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot write the compile cache");
            Artifact::Bytes(serialized)
        }
        None => Artifact::Bytes(serialized),
    };
    Ok(Compiled {
        component,
        artifact,
        from_cache: false,
    })
}

/// A component pre-instantiated for one pool.
struct Placement {
    pre: RolloutAgentPre<StoreState>,
    engine: Engine,
}

fn prepare(pool: &Pool, component: &Component, path: &Path) -> Result<Placement, LoadError> {
    let pre = pool
        .linker
        .instantiate_pre(component)
        .map_err(|e| LoadError::UnsatisfiedImport {
            path: path.to_owned(),
            reason: one_line(&e),
        })?;
    let pre = RolloutAgentPre::new(pre).map_err(|e| LoadError::MissingExport {
        path: path.to_owned(),
        found: one_line(&e),
    })?;
    Ok(Placement {
        pre,
        engine: pool.engine.clone(),
    })
}

/// What a pooled slot keeps resident when its instance ends.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Keep {
    stack: usize,
    memory: usize,
    table: usize,
    /// Find the pages a rollout dirtied with the PAGEMAP_SCAN ioctl and
    /// reset only those (else: reset all `memory` bytes kept).
    pagemap: bool,
}

/// Linear memory at start-up above which a plugin is an interpreter-sized
/// one (componentize-py, componentize-js: a heap image of megabytes).
const BIG_MEMORY: usize = 4 << 20;

impl Keep {
    /// Everything given back: memory follows the instances alive.
    const NOTHING: Keep = Keep {
        stack: 0,
        memory: 0,
        table: 0,
        pagemap: true,
    };
    /// What a small agent's rollout touches, kept for the next one (with
    /// the PAGEMAP_SCAN ioctl, Linux >= 6.7, only the dirtied pages are
    /// reset in place): no madvise and no page faults per rollout, which on
    /// this project's VM is about half the host's CPU per rollout (a small
    /// agent touches ~32 KiB of linear memory and ~29 KiB of stack). At
    /// most `warm_slots` x 352 KiB stays resident.
    const WARM: Keep = Keep {
        stack: 32 << 10,
        memory: 256 << 10,
        table: 64 << 10,
        pagemap: true,
    };
    /// An interpreter's rollout: up to 4 MiB of its heap image written, in
    /// scattered pages (measured: Python's calculator ~1.4 MiB in ~210
    /// regions, JS ~0.7 MiB in ~50). PAGEMAP_SCAN finds them and only those
    /// are copied back from the image; wasmtime 48 asks the kernel for 32
    /// regions and gives back everything past them, so we build it with
    /// `vendor/wasmtime-pagemap-scan-all-regions.patch`, which scans on.
    const INTERPRETER: Keep = Keep {
        stack: 32 << 10,
        memory: 4 << 20,
        table: 1 << 20,
        pagemap: true,
    };

    /// What a warm slot keeps for a plugin starting with `memory` bytes of
    /// linear memory, on a kernel with (`pagemap_scan`) or without the
    /// PAGEMAP_SCAN ioctl. Without it an interpreter's whole memory is kept
    /// and reset by copying all of it (13 MiB for Python: a third of its
    /// rollout's CPU), which is still well under what giving it back costs:
    /// each later write is a copy-on-write fault with a TLB shootdown across
    /// the host's threads (6 ms of system time per Python rollout here).
    fn warm_for(memory: usize, pagemap_scan: bool) -> Keep {
        match (memory <= BIG_MEMORY, pagemap_scan) {
            (true, _) => Keep::WARM,
            (false, true) => Keep::INTERPRETER,
            (false, false) => Keep {
                memory: memory.next_multiple_of(1 << 20),
                pagemap: false,
                ..Keep::INTERPRETER
            },
        }
    }

    /// Warm slots for this keep: `wanted`, fewer when they would keep more
    /// than `budget` bytes.
    fn slots(&self, wanted: u32, budget: u64) -> u32 {
        let fit = budget / self.memory.max(1) as u64;
        wanted.min(u32::try_from(fit).unwrap_or(u32::MAX)).max(1)
    }
}

fn new_engine(
    config: &RuntimeConfig,
    slots: u32,
    keep: Keep,
) -> Result<(Engine, Allocator), LoadError> {
    let limits = &config.limits;
    let mut wasm = Config::new();
    wasm.wasm_component_model(true);
    wasm.epoch_interruption(true);
    wasm.max_wasm_stack(limits.max_wasm_stack_bytes);
    wasm.async_stack_size(stack_size(limits));
    wasm.memory_reservation(MEMORY_RESERVATION);
    wasm.memory_guard_size(MEMORY_GUARD);
    // Zero fiber stacks between rollouts: nothing of one rollout's host
    // frames is visible to the next, and pooled stacks give their pages back
    // (beyond what is kept resident) instead of keeping every stack's
    // deepest use resident (a trap's unwinding touches ~80 KiB).
    wasm.async_stack_zeroing(true);
    // Memory images in shared memory (a memfd), even for a compile-cache
    // entry mapped from disk: there, the image's mappings can be kept from
    // faulting around (`vendor/wasmtime`'s fault_around.rs), so each
    // instance maps only the pages its guest reads.
    wasm.force_memory_init_memfd(true);
    let slots = slots.max(1);
    // The main pool reuses the least recently used slot rather than a cold
    // one, so the slots ever touched (and their mappings) stay bounded by
    // the peak number of instances, not the pool's size. The warm pool
    // reuses the most recently used one, so the slots keeping pages are
    // as few as the rollouts in flight.
    let warm_slots_kept = if keep.memory > 0 { slots } else { 0 };
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        // A counter, not a reservation: componentize-py's components hold
        // 14 core instances each (8 per slot made Python rollouts past
        // 44 warm ones fail for want of core instances).
        .total_core_instances(slots.saturating_mul(32))
        // One linear memory per instance (what Rust, Python and JS guests
        // have): each reserves ~4 GiB of address space, so this is what
        // bounds the pool's size.
        .total_memories(slots)
        .total_tables(slots.saturating_mul(8))
        .total_stacks(slots)
        .async_stack_keep_resident(keep.stack)
        .linear_memory_keep_resident(keep.memory)
        .table_keep_resident(keep.table)
        .max_unused_warm_slots(warm_slots_kept)
        .pagemap_scan(if keep.pagemap {
            Enabled::Auto
        } else {
            Enabled::No
        })
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

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
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
    main: Placement,
    /// The same component in its warm pool.
    warm: Option<WarmPool>,
    name: String,
    /// sha256 of the component file, hex.
    sha256: String,
    /// `name@` and the first 7 hex digits of `sha256`: names the build in
    /// messages and logs.
    label: Arc<str>,
    path: PathBuf,
}

impl Plugin {
    /// The agent's name (from its `name` export).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The build, as messages name it: `calculator@3f9a1c2`.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// The sha256 of the plugin's bytes, in hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    fn error(&self, stage: Stage, failure: Failure) -> GuestError {
        GuestError {
            plugin: self.label.clone(),
            stage,
            failure,
        }
    }

    /// Where a new instance goes: the warm pool while it has room.
    fn place(&self) -> (&Placement, Option<Place>) {
        if let Some(warm) = &self.warm
            && let Some(slot) = warm.places.try_take(warm.slots)
        {
            return (&warm.placement, Some(slot));
        }
        (&self.main, None)
    }

    fn new_store(&self, host: RolloutHost, engine: &Engine) -> Store<StoreState> {
        let limits = &self.runtime.config.limits;
        let mut store = Store::new(engine, StoreState::new(host, limits));
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
    pub async fn instantiate(&self, host: RolloutHost) -> Result<Instance, GuestError> {
        let (place, warm) = self.place();
        let mut store = self.new_store(host, &place.engine);
        let meter = store.data().meter.clone();
        match meter.measure(place.pre.instantiate_async(&mut store)).await {
            Ok(agent) => Ok(Instance {
                store,
                agent,
                plugin: self.label.clone(),
                _warm: warm,
            }),
            Err(e) => Err(self.error(Stage::Start, failure::classify(&e, &mut store))),
        }
    }

    /// Creates the rollout's instance and asks it for its tools, within the
    /// rollout's CPU budget and wall-clock deadline.
    pub async fn start(
        &self,
        host: RolloutHost,
        request: &WitRolloutRequest,
    ) -> Result<(Instance, Vec<Tool>), GuestError> {
        let (place, warm) = self.place();
        let mut store = self.new_store(host, &place.engine);
        let meter = store.data().meter.clone();
        let deadline = self.runtime.config.limits.wall_clock;
        let mut stage = Stage::Start;
        let started = tokio::time::timeout(
            deadline,
            meter.measure(async {
                let agent = place.pre.instantiate_async(&mut store).await?;
                stage = Stage::GetTools;
                let tools = agent
                    .osmosis_rollout_agent()
                    .call_get_tools(&mut store, request)
                    .await?;
                Ok::<_, wasmtime::Error>((agent, tools))
            }),
        )
        .await;
        let (agent, wit_tools) = match started {
            Ok(Ok((agent, Ok(tools)))) => (agent, tools),
            Ok(Ok((_, Err(msg)))) => {
                return Err(self.error(stage, failure::plugin_error(msg, &mut store)));
            }
            Ok(Err(e)) => return Err(self.error(stage, failure::classify(&e, &mut store))),
            Err(_) => {
                let limit = LimitExceeded::WallClock(deadline);
                return Err(self.error(stage, failure::note_limit(&mut store, limit)));
            }
        };
        // Each schema checked to be a JSON object.
        let tools = wit_tools
            .into_iter()
            .map(|t| Tool::from_plugin(t.name, t.description, t.parameters))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|name| self.error(Stage::GetTools, Failure::BadTool(name)))?;
        let instance = Instance {
            store,
            agent,
            plugin: self.label.clone(),
            _warm: warm,
        };
        Ok((instance, tools))
    }
}

/// One rollout's instance, between `get-tools` and `run`.
pub struct Instance {
    store: Store<StoreState>,
    agent: bindings::RolloutAgent,
    plugin: Arc<str>,
    /// Dropped after `store` (field order), so the warm pool's slot is free
    /// before its place is given back.
    _warm: Option<Place>,
}

impl Instance {
    /// The agent's `name` export.
    pub async fn name(&mut self) -> Result<String, GuestError> {
        let exports: &AgentExports = self.agent.osmosis_rollout_agent();
        let meter = self.store.data().meter.clone();
        match meter.measure(exports.call_name(&mut self.store)).await {
            Ok(name) => Ok(name),
            Err(e) => {
                let failure = failure::classify(&e, &mut self.store);
                Err(self.error(Stage::Name, failure))
            }
        }
    }

    /// Its linear memory's size so far.
    pub fn memory_size(&self) -> usize {
        self.store.data().limiter.peak_memory
    }

    /// The plugin build this instance runs (`name@sha256-prefix`).
    pub fn plugin(&self) -> &Arc<str> {
        &self.plugin
    }

    fn error(&self, stage: Stage, failure: Failure) -> GuestError {
        GuestError {
            plugin: self.plugin.clone(),
            stage,
            failure,
        }
    }

    /// Runs the agent loop to its end: `Err` says how the guest failed.
    /// Dropping the future stops the guest.
    pub async fn run(&mut self, request: &WitRolloutRequest) -> Result<(), GuestError> {
        let exports: &AgentExports = self.agent.osmosis_rollout_agent();
        let meter = self.store.data().meter.clone();
        let failure = match meter
            .measure(exports.call_run(&mut self.store, request))
            .await
        {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(msg)) => failure::plugin_error(msg, &mut self.store),
            Err(e) => failure::classify(&e, &mut self.store),
        };
        Err(self.error(Stage::Run, failure))
    }

    /// Records that the rollout ran past its wall-clock deadline (the run
    /// was stopped) and returns the error.
    pub fn wall_clock_exceeded(&mut self, deadline: Duration) -> GuestError {
        let failure = failure::note_limit(&mut self.store, LimitExceeded::WallClock(deadline));
        self.error(Stage::Run, failure)
    }

    /// The host-side state: completion, metrics, history.
    pub fn into_host(self) -> RolloutHost {
        self.store.into_data().into_host()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_slots_keep_what_the_plugin_needs_within_the_budget() {
        const GIB: u64 = 1 << 30;
        // The Rust calculator starts with 2 MiB: the small keep, found by
        // PAGEMAP_SCAN, for every warm slot.
        assert_eq!(Keep::warm_for(2 << 20, true), Keep::WARM);
        assert_eq!(Keep::warm_for(2 << 20, false), Keep::WARM);
        assert_eq!(Keep::WARM.slots(256, GIB), 256);
        // componentize-py's calculator starts with ~13.3 MB: with
        // PAGEMAP_SCAN the pages it wrote, up to 4 MiB.
        let python = Keep::warm_for(13_300_000, true);
        assert_eq!(python, Keep::INTERPRETER);
        assert_eq!(python.slots(1024, 4 * GIB), 1024);
        assert_eq!(python.slots(1024, GIB), 256);
        // Without it: all of it kept, reset by copying, in as many slots as
        // the budget holds.
        let python = Keep::warm_for(13_300_000, false);
        assert_eq!(python.memory, 13 << 20);
        assert!(!python.pagemap);
        assert_eq!(python.slots(256, GIB), 78);
        assert_eq!(python.slots(16, GIB), 16);
        assert_eq!(Keep::warm_for(2 << 30, false).slots(256, GIB), 1);
    }
}
