#!/usr/bin/env bash
# Sets everything up on a fresh machine (the wasm32-wasip2 target, the
# calculator plugin, a release build of the host) and serves the calculator
# agent on port 9000. Extra arguments go to rollout-host (e.g. -p 8080).
set -euo pipefail
cd "$(dirname "$0")"
rustup target add wasm32-wasip2
cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml -p calc
cargo build --release -p rollout-host
exec target/release/rollout-host --plugin plugins/target/wasm32-wasip2/release/calc.wasm "$@"
