#!/usr/bin/env bash
# Builds the JavaScript calculator into plugins/calc-js/target/calc_js.wasm
# (the last line printed), installing the pinned JS toolchain on first use.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../../guest-sdk/js/build.sh" "$here" src/agent.js calc_js
