#!/usr/bin/env bash
# Builds a Python agent into a rollout-host plugin:
#   guest-sdk/python/build.sh PLUGIN_DIR MODULE NAME
# makes PLUGIN_DIR/target/NAME.wasm from the module MODULE in PLUGIN_DIR
# (ending with `Agent = export(MyAgentLoop)`) and prints its path as the last
# line of stdout; everything else goes to stderr. Each Python plugin's own
# build.sh calls this.
#
# componentize-py (pinned below) is installed on first use into
# <repo>/.tools/componentize-py (a venv) and reused after. Only modules
# imported at build time end up in the component.
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1

if [[ $# -ne 3 ]]; then
    echo "usage: $0 PLUGIN_DIR MODULE NAME" >&2
    exit 2
fi
sdk="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$sdk/../.." && pwd)"
here="$(cd "$1" && pwd)"
module="$2"
venv="$repo/.tools/componentize-py"
tool="$venv/bin/componentize-py"

if [[ ! -x "$tool" ]] || [[ "$("$tool" --version 2>/dev/null)" != "componentize-py $COMPONENTIZE_PY_VERSION" ]]; then
    echo "installing componentize-py $COMPONENTIZE_PY_VERSION into $venv" >&2
    [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "componentize-py==$COMPONENTIZE_PY_VERSION" >&2
fi

out="$here/target/$3.wasm"
mkdir -p "$here/target"
# The app module's `Agent` is the exported interface; the SDK comes from
# guest-sdk/python/src.
"$tool" -d "$repo/wit" -w rollout-agent componentize \
    -p "$here" -p "$sdk/src" \
    "$module" -o "$out.tmp" >&2
mv "$out.tmp" "$out"
echo "$out"
