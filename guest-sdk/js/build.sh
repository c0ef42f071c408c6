#!/usr/bin/env bash
# Builds a JavaScript agent into a rollout-host plugin:
#   guest-sdk/js/build.sh PLUGIN_DIR ENTRY NAME
# makes PLUGIN_DIR/target/NAME.wasm from PLUGIN_DIR/ENTRY (an ES module
# ending with `export const agent = exportAgent(MyAgent)`) and prints its
# path as the last line. Each JS plugin's own build.sh calls this.
#
# The JS toolchain (componentize-js 0.23.0 and esbuild, pinned by
# toolchain/package-lock.json next to this script) is installed on first use
# into <repo>/.tools/js and reused after. Steps: esbuild bundles the entry
# and the rollout-guest SDK into one ES module, picking the SDK's component
# host imports (the `componentize` condition); componentize-js makes the
# component of world `rollout-agent` from <repo>/wit with the `http` and
# `fetch-event` features off (rollout-host provides no wasi:http).
set -euo pipefail

if [[ $# -ne 3 ]]; then
  echo "usage: $0 PLUGIN_DIR ENTRY NAME" >&2
  exit 2
fi
sdk="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$sdk/../.." && pwd)"
here="$(cd "$1" && pwd)"
entry="$2"
name="$3"
tools="$repo/.tools/js"
bin="$tools/node_modules/.bin"
out="$here/target"
bundle="$out/$name.js"
wasm="$out/$name.wasm"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "build.sh: node and npm are needed (Node 20 or later)" >&2
  exit 1
fi

# The toolchain, (re)installed when the committed lock differs from the one
# last installed (the stamp is written only after a successful install).
stamp="$tools/.installed-lock.json"
if ! cmp -s "$sdk/toolchain/package-lock.json" "$stamp" ||
  [[ ! -x "$bin/componentize-js" || ! -x "$bin/esbuild" || ! -x "$bin/jco" ]]; then
  echo "build.sh: installing the JS toolchain into $tools" >&2
  mkdir -p "$tools"
  rm -f "$stamp"
  cp "$sdk/toolchain/package.json" "$sdk/toolchain/package-lock.json" "$tools/"
  # esbuild's postinstall only re-checks the binary its platform package brings.
  (cd "$tools" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) >&2
  cp "$sdk/toolchain/package-lock.json" "$stamp"
fi

mkdir -p "$out"
# Run from the plugin folder: esbuild's path comments are relative to the working directory.
(cd "$here" && "$bin/esbuild" "$entry" \
  --bundle --format=esm --platform=neutral --target=es2022 \
  --conditions=componentize \
  --alias:rollout-guest="$repo/guest-sdk/js/src/index.js" \
  --external:'osmosis:*' \
  --legal-comments=none --log-level=warning \
  --outfile="$bundle") >&2

# componentize-js maps the working directory into the build sandbox: run it
# where the bundle is, so frames in error messages read `NAME.js:LINE:COL`.
rm -f "$wasm"
(cd "$out" && "$bin/componentize-js" "$bundle" \
  --wit "$repo/wit" --world-name rollout-agent \
  --out "$wasm" \
  --disable http fetch-event) >&2
if [[ ! -s "$wasm" ]]; then
  echo "build.sh: componentize-js wrote no $wasm" >&2
  exit 1
fi

# rollout-host provides WASI CLI, clocks, random, I/O and (empty) filesystem, no HTTP.
world="$("$bin/jco" wit "$wasm")"
if grep -q 'wasi:http' <<<"$world"; then
  echo "build.sh: $wasm imports wasi:http, which rollout-host does not provide:" >&2
  echo "$world" >&2
  exit 1
fi

echo "$wasm"
