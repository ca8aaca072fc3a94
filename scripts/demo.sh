#!/usr/bin/env bash
# Set everything up, start the cloud server and the edge agent, stream the bundled sample through the edge.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m speech_bench.demo "$@"
