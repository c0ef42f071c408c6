#!/usr/bin/env bash
# Serves the calculator agent (calc_agent.py) with the reference server,
# `osmosis serve` of osmosis-ai 0.2.17, on 127.0.0.1:PORT, in the foreground
# (the osmosis process replaces this shell, so killing the PID this script was
# started with stops the server). Installs the SDK first when needed
# (setup.sh; see there for OSMOSIS_SDK_SRC). Extra arguments go to
# `osmosis serve` (e.g. --log-level warning, --log DIR).
#
#   --host 127.0.0.1  loopback only; also skips the SDK's public-IP lookup,
#                     which it does (over the network) only for 0.0.0.0
#   --local           no API key on /v1/rollout/init (like rollout-host without
#                     --api-key) and no registration with the Osmosis
#                     Platform, so no `osmosis login` and no network
#   LITELLM_LOCAL_MODEL_COST_MAP=True
#                     the SDK imports litellm, which otherwise fetches its
#                     model price list from the internet at import time
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 PORT [osmosis serve options...]" >&2
    exit 2
fi
port="$1"
shift

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="$("$here/setup.sh" | tail -n 1)"
cd "$here"
export LITELLM_LOCAL_MODEL_COST_MAP=True
export PYTHONUNBUFFERED=1
exec "$(dirname "$py")/osmosis" serve -m calc_agent:agent_loop -p "$port" --host 127.0.0.1 --local "$@"
