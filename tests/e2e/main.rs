//! End-to-end tests: the real `rollout-host` binary, real `.wasm` plugins,
//! and a scripted trainer over HTTP.

mod datasets;
mod delivery;
mod deployments;
mod hardening;
mod harness;
mod operations;
mod plugins;
mod protocol;
mod replicas;
mod rollouts;
mod sandbox;
mod swap;
mod test_mode;
