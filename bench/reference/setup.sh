#!/usr/bin/env bash
# Installs the reference rollout server, the Osmosis Python SDK's
# `osmosis serve` (osmosis-ai 0.2.17 with its `server` extra), into a venv at
# <repo>/.tools/osmosis, once; later runs reuse it. Prints the venv's python
# path as the last line of stdout (pip's output goes to stderr).
#
# Why 0.2.17 and where it comes from: 0.2.17 is the last osmosis-ai with the
# RolloutAgentLoop API and the protocol rollout-host replaces (0.2.18 and later
# need Python 3.12 and replace the API with AgentWorkflow), and PyPI no longer
# serves any osmosis-ai before 0.2.25. So the SDK is installed from
#   - $OSMOSIS_SDK_SRC when set: a source tree of tag v0.2.17 (a directory with
#     pyproject.toml), a git repository of the SDK holding that tag
#     (github.com/Osmosis-AI/osmosis-sdk-python; a bare one will do), or a
#     wheel / sdist of it;
#   - otherwise `osmosis-ai==0.2.17` from the package index (PyPI, or a
#     PIP_FIND_LINKS folder that holds it).
# Its dependencies are pinned in requirements.txt beside this script (the
# SDK's own uv.lock at v0.2.17) and installed with --no-deps.
#
# Environment: OSMOSIS_SDK_SRC (above); OSMOSIS_PYTHON, the interpreter to
# build the venv from (default python3; CPython 3.10 or later).
set -euo pipefail

OSMOSIS_VERSION=0.2.17
OSMOSIS_TAG=v0.2.17
SETUPTOOLS_VERSION=80.9.0 # builds the SDK from source (its build backend)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/.tools/osmosis"
py="$venv/bin/python"
requirements="$here/requirements.txt"
stamp_file="$venv/.rollout-host-bench-stamp"
stamp="osmosis-ai==$OSMOSIS_VERSION $(sha256sum "$requirements" | cut -c1-16)"

log() { printf 'setup.sh: %s\n' "$*" >&2; }

installed_ok() {
    [ -x "$py" ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] &&
        "$py" - "$OSMOSIS_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version("osmosis-ai") == sys.argv[1] else 1)
EOF
}

if installed_ok; then
    echo "$py"
    exit 0
fi

mkdir -p "$repo/.tools"
# One installer at a time (serve.sh may call this from several shells).
exec 9>"$repo/.tools/osmosis.lock"
flock 9
if installed_ok; then
    echo "$py"
    exit 0
fi

base_python="${OSMOSIS_PYTHON:-python3}"
if ! "$base_python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
    log "$base_python is missing or older than Python 3.10; osmosis-ai $OSMOSIS_VERSION needs 3.10+ (set OSMOSIS_PYTHON)"
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# First find the SDK (so that a missing one fails before anything is built):
# $sdk is then a wheel / sdist file or a source tree.
src="${OSMOSIS_SDK_SRC:-}"
if [ -n "$src" ]; then
    if [ -f "$src" ] || [ -f "$src/pyproject.toml" ]; then
        sdk="$(cd "$(dirname "$src")" && pwd)/$(basename "$src")"
    elif git_dir="$(git -C "$src" rev-parse --absolute-git-dir 2>/dev/null)" &&
        git --git-dir="$git_dir" rev-parse --verify -q "$OSMOSIS_TAG^{commit}" >/dev/null; then
        mkdir "$work/src"
        git --git-dir="$git_dir" archive "$OSMOSIS_TAG" | tar -x -C "$work/src"
        sdk="$work/src"
    else
        log "OSMOSIS_SDK_SRC=$src is not a file, a source tree or a git repository with tag $OSMOSIS_TAG"
        exit 1
    fi
    log "osmosis-ai $OSMOSIS_VERSION from $src"
else
    log "fetching osmosis-ai==$OSMOSIS_VERSION from the package index"
    if ! "$base_python" -m pip --disable-pip-version-check --no-input download --no-deps \
        "osmosis-ai==$OSMOSIS_VERSION" -d "$work/dist" >&2; then
        log "osmosis-ai $OSMOSIS_VERSION is not on the package index (PyPI no longer has any release before 0.2.25)."
        log "Point OSMOSIS_SDK_SRC at a git repository of github.com/Osmosis-AI/osmosis-sdk-python that has tag $OSMOSIS_TAG, or at a source tree or wheel of it, and run again."
        exit 1
    fi
    sdk="$(ls "$work"/dist/osmosis_ai-* | head -n 1)"
fi

log "creating $venv with $("$base_python" --version 2>&1)"
rm -rf "$venv"
"$base_python" -m venv "$venv"
pip=("$py" -m pip --disable-pip-version-check --no-input)

log "installing the pinned dependencies of osmosis-ai[server] $OSMOSIS_VERSION"
"${pip[@]}" install --no-deps -r "$requirements" >&2
log "installing osmosis-ai $OSMOSIS_VERSION"
if [ -d "$sdk" ]; then
    # Built with a pinned setuptools, the SDK's build backend.
    "${pip[@]}" install "setuptools==$SETUPTOOLS_VERSION" >&2
    "${pip[@]}" install --no-deps --no-build-isolation "$sdk" >&2
else
    "${pip[@]}" install --no-deps "$sdk" >&2
fi

"${pip[@]}" check >&2
"$py" - "$OSMOSIS_VERSION" <<'EOF'
import sys
from importlib.metadata import version
found = version("osmosis-ai")
if found != sys.argv[1]:
    sys.exit(f"setup.sh: installed osmosis-ai {found}, expected {sys.argv[1]}")
EOF
echo "$stamp" >"$stamp_file"
log "osmosis-ai $OSMOSIS_VERSION ready in $venv"
echo "$py"
