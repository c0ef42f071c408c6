#!/usr/bin/env bash
# Builds the misbehaving Python test plugin into
# plugins/testing/misbehave-py/target/misbehave_py.wasm (the last line printed).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../../../guest-sdk/python/build.sh" "$here" misbehave_agent misbehave_py
