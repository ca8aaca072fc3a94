#!/usr/bin/env bash
# Set everything up, start the cloud server and transcribe the bundled sample over REST and gRPC.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m cloud_server.demo "$@"
