#!/usr/bin/env bash
# Runs every test: the host's unit tests and the end-to-end tests, which
# build the wasm plugins (calculator and test plugins), start the real
# rollout-host binary and drive it with a scripted trainer over HTTP.
set -euo pipefail
cd "$(dirname "$0")"
rustup target add wasm32-wasip2
cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
cargo test --workspace "$@"
