#!/usr/bin/env bash
# Set everything up and run the checks: lint, types, then the test suite on real models and audio.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# Synthetic test speech comes from Debian's TTS voices.
if ! command -v flite >/dev/null || ! command -v espeak-ng >/dev/null; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq flite espeak-ng >/dev/null
    else
        echo "install flite and espeak-ng (sudo apt-get install flite espeak-ng) and rerun" >&2
        exit 1
    fi
fi
export HF_HUB_OFFLINE=1
.venv/bin/python scripts/build_test_audio.py
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
