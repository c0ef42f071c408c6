#!/usr/bin/env bash
# Builds the Python calculator into plugins/calc-py/target/calc_py.wasm (the
# last line printed), installing componentize-py on first use.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../../guest-sdk/python/build.sh" "$here" calc_agent calc_py
