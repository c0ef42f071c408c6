//! rollout-host: a Remote Rollout server that runs agent loops as sandboxed
//! WebAssembly components.
//!
//! One module per job:
//! - [`protocol`]: the v1 wire format (init validation, response bodies);
//! - [`server`]: the HTTP endpoints, auth and admission;
//! - [`idempotency`]: duplicate inits share one answer and one run;
//! - [`cluster`]: `--redis`, replicas sharing idempotency, status and counts;
//! - [`journal`]: `--state-dir`, rollouts not yet called back, on disk;
//! - [`delivery`]: a callback delivered, again later if the trainer is away;
//! - [`live`]: rollouts in flight by id: their status and cancel switch;
//! - [`metrics`]: the Prometheus metrics of `/metrics`;
//! - [`places`]: bounded counts whose places are guards (admission, warm pool);
//! - [`rollout`]: one accepted rollout, from `run` to its one callback;
//! - [`trainer`]: calls to the trainer (chat, completion callback, retries);
//! - [`runtime`]: wasmtime engine, plugin loading, host functions;
//! - [`debug_log`]: the per-rollout `.jsonl` debug log;
//! - [`fault`]: contained panics (and a debug-build hook that injects them);
//! - [`validate`]: `--validate`, checking a plugin without serving;
//! - [`test_mode`]: `rollout-host test`, a plugin over a dataset against an LLM;
//! - [`cli`]: command-line flags;
//! - [`config_file`]: `--config`, deployments and their settings in TOML;
//! - [`allocator`]: giving freed heap memory back to the OS.

pub mod allocator;
pub mod cli;
pub mod cluster;
pub mod config_file;
pub mod debug_log;
pub mod delivery;
pub mod fault;
pub mod idempotency;
pub mod journal;
pub mod live;
pub mod metrics;
pub mod places;
pub mod protocol;
pub mod rollout;
pub mod runtime;
pub mod server;
pub mod test_mode;
pub mod trainer;
pub mod validate;
