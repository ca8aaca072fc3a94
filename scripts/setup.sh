#!/usr/bin/env bash
# Create .venv if it is missing and install the project into it (idempotent).
# Usage: bash scripts/setup.sh [EXTRAS]   e.g. "dev" for the test tools; default "edge,cloud" (both services
# on one machine). A device needs only "edge", a server only "cloud".
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-edge,cloud}"
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
if [ -n "$extras" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
else
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
fi
