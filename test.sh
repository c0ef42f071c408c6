#!/usr/bin/env bash
# Runs every test: the guest SDKs' unit tests (Python, JS), the host's unit
# tests and the end-to-end tests, which start the real rollout-host binary
# with real .wasm plugins in Rust, Python and JavaScript, built here from
# source, and drive it with a scripted trainer over HTTP.
#
# Installs what the tests need, pinned, when missing: the wasm32-wasip2
# target, cargo-component (into ~/.cargo/bin, once per machine),
# componentize-py and the JS toolchain (into .tools/, by the plugins'
# build.sh scripts).
set -euo pipefail
cd "$(dirname "$0")"

CARGO_COMPONENT_VERSION=0.21.1

rustup target add wasm32-wasip2
# It prints `cargo-component-component 0.21.1`.
if ! cargo component --version 2>/dev/null | grep -qw "$CARGO_COMPONENT_VERSION"; then
  cargo install cargo-component --version "$CARGO_COMPONENT_VERSION" --locked
fi

cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
for script in plugins/calc-py/build.sh plugins/calc-js/build.sh \
  plugins/testing/misbehave-py/build.sh plugins/testing/misbehave-js/build.sh; do
  bash "$script" >/dev/null
done

(cd guest-sdk/python && python3 -m unittest --quiet)
(cd plugins/calc-py && python3 -m unittest --quiet)
(cd guest-sdk/js && node --test)
(cd plugins/calc-js && npm test --silent)

cargo test --workspace "$@"
