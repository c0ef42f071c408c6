#!/usr/bin/env bash
# Builds the misbehaving JavaScript test plugin into
# plugins/testing/misbehave-js/target/misbehave_js.wasm (the last line printed).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../../../guest-sdk/js/build.sh" "$here" src/agent.js misbehave_js
