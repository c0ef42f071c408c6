//! The wasm side: one `Engine`, the plugin compiled and pre-instantiated
//! once, and a fresh `Store` + instance per rollout.

mod bindings;
mod guest_io;
mod host_calls;
mod state;
mod trap;

pub use state::{Completion, RolloutHost, TrainerLink};
pub use trap::describe_guest_failure;

use bindings::RolloutAgentPre;
use bindings::exports::osmosis::rollout::agent::Guest as AgentExports;
pub use bindings::osmosis::rollout::types::{
    RolloutRequest as WitRolloutRequest, ToolDefinition as WitToolDefinition,
};
use state::StoreState;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

/// The WIT interface a plugin must export.
pub const AGENT_INTERFACE: &str = "osmosis:rollout/agent@0.1.0";
/// The WIT interface the host provides.
pub const HOST_INTERFACE: &str = "osmosis:rollout/host@0.1.0";

/// Settings of the wasm runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Most linear memory one rollout's instance may use, in bytes.
    pub max_memory_bytes: usize,
    /// Instances that may exist at once (rollouts running or queued, plus
    /// inits in progress): sizes the pooling allocator.
    pub instance_slots: u32,
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
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, LoadError> {
        let (engine, allocator) = new_engine(&config)?;
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
        self.load_bytes(path, &bytes).await
    }

    pub async fn load_bytes(
        self: &Arc<Self>,
        path: &Path,
        bytes: &[u8],
    ) -> Result<Plugin, LoadError> {
        let path = path.to_owned();
        if !wasmparser_is_component(bytes) {
            return Err(LoadError::NotAComponent { path });
        }
        let engine = self.engine.clone();
        let owned = bytes.to_vec();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, owned))
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
        let mut store = plugin.new_store(RolloutHost::detached("startup"));
        let agent = plugin
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| LoadError::Startup {
                path: plugin.path.clone(),
                reason: one_line(&e),
            })?;
        plugin.name = agent
            .osmosis_rollout_agent()
            .call_name(&mut store)
            .await
            .map_err(|e| LoadError::Startup {
                path: plugin.path.clone(),
                reason: describe_guest_failure(&e, &store),
            })?;
        Ok(plugin)
    }
}

fn new_engine(config: &RuntimeConfig) -> Result<(Engine, Allocator), LoadError> {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true);
    let slots = config.instance_slots.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(8))
        .total_memories(slots.saturating_mul(2))
        .total_tables(slots.saturating_mul(8))
        .total_stacks(slots)
        .max_memory_size(config.max_memory_bytes);
    wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    match Engine::new(&wasm) {
        Ok(engine) => return Ok((engine, Allocator::Pooling)),
        Err(e) => {
            tracing::warn!(error = %one_line(&e), "pooling allocator unavailable, using on-demand allocation")
        }
    }
    wasm.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    Engine::new(&wasm)
        .map(|e| (e, Allocator::OnDemand))
        .map_err(|e| LoadError::Engine(one_line(&e)))
}

/// The component-model layer byte of the wasm header (core modules have
/// version 1, layer 0; components layer 1).
fn wasmparser_is_component(bytes: &[u8]) -> bool {
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn new_store(&self, host: RolloutHost) -> Store<StoreState> {
        let mut store = Store::new(
            &self.runtime.engine,
            StoreState::new(host, self.runtime.config.max_memory_bytes),
        );
        store.limiter(|s| &mut s.limits);
        store
    }

    /// Creates the rollout's instance and asks it for its tools.
    pub async fn start(
        &self,
        host: RolloutHost,
        request: &WitRolloutRequest,
    ) -> Result<(Instance, Vec<WitToolDefinition>), String> {
        let mut store = self.new_store(host);
        let agent = self.pre.instantiate_async(&mut store).await.map_err(|e| {
            format!(
                "plugin failed to start: {}",
                describe_guest_failure(&e, &store)
            )
        })?;
        let tools = match agent
            .osmosis_rollout_agent()
            .call_get_tools(&mut store, request)
            .await
        {
            Ok(Ok(tools)) => tools,
            Ok(Err(msg)) => return Err(format!("plugin get-tools failed: {msg}")),
            Err(e) => {
                return Err(format!(
                    "plugin get-tools {}",
                    describe_guest_failure(&e, &store)
                ));
            }
        };
        Ok((Instance { store, agent }, tools))
    }
}

/// One rollout's instance, between `get-tools` and `run`.
pub struct Instance {
    store: Store<StoreState>,
    agent: bindings::RolloutAgent,
}

impl Instance {
    /// Runs the agent loop to its end: `Err` says how the guest failed.
    /// Dropping the future stops the guest.
    pub async fn run(&mut self, request: &WitRolloutRequest) -> Result<(), String> {
        let exports: &AgentExports = self.agent.osmosis_rollout_agent();
        match exports.call_run(&mut self.store, request).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(format!("plugin run failed: {msg}")),
            Err(e) => Err(format!(
                "plugin {}",
                describe_guest_failure(&e, &self.store)
            )),
        }
    }

    /// The host-side state: completion, metrics, history.
    pub fn into_host(self) -> RolloutHost {
        self.store.into_data().into_host()
    }
}
