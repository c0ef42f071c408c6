#!/usr/bin/env bash
# Runs every test: the guest SDKs' unit tests (Python, JS), the host's unit
# tests and the end-to-end tests, which start the real rollout-host binary
# with real .wasm plugins in Rust, Python and JavaScript, built here from
# source, and drive it with a scripted trainer over HTTP.
#
# Installs what the tests need, pinned, when missing: the wasm32-wasip2
# target, cargo-component (into ~/.cargo/bin, once per machine),
# componentize-py and the JS toolchain (into .tools/, by the plugins'
# build.sh scripts), redis-server and haproxy (Debian packages).
set -euo pipefail
cd "$(dirname "$0")"

CARGO_COMPONENT_VERSION=0.21.1
# The scale-out tests' Redis and load balancer, from Debian 12's packages.
REDIS_VERSION=5:7.0.15-1~deb12u7
HAPROXY_VERSION=2.6.12-1+deb12u3

rustup target add wasm32-wasip2
# It prints `cargo-component-component 0.21.1`.
if ! cargo component --version 2>/dev/null | grep -qw "$CARGO_COMPONENT_VERSION"; then
  cargo install cargo-component --version "$CARGO_COMPONENT_VERSION" --locked
fi

installed_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }
if [ "$(installed_version redis-server)" != "$REDIS_VERSION" ] ||
  [ "$(installed_version haproxy)" != "$HAPROXY_VERSION" ]; then
  as_root=""
  [ "$(id -u)" = 0 ] || as_root=sudo
  packages=(redis-server="$REDIS_VERSION" haproxy="$HAPROXY_VERSION")
  $as_root apt-get install -y -q "${packages[@]}" >/dev/null ||
    { $as_root apt-get update -q >/dev/null && $as_root apt-get install -y -q "${packages[@]}" >/dev/null; }
fi

cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
for script in plugins/calc-py/build.sh plugins/calc-js/build.sh \
  plugins/testing/misbehave-py/build.sh plugins/testing/misbehave-js/build.sh; do
  bash "$script" >/dev/null
done

python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml==6.0.3
python3 deploy/check.py
(cd guest-sdk/python && python3 -m unittest --quiet)
(cd plugins/calc-py && python3 -m unittest --quiet)
(cd guest-sdk/js && node --test)
(cd plugins/calc-js && npm test --silent)

cargo test --workspace "$@"
