#!/usr/bin/env bash
# Set everything up and run the checks: lint, types, then the test suite on real models and audio.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# Debian tools the tests use: TTS voices for synthetic speech, docker-compose (1.29) to validate
# docker-compose.yml offline, systemd-analyze to verify the unit file, chromium for the browser page's test
# (driven by Playwright, which is told to use this browser and downloads none).
debs="flite espeak-ng docker-compose systemd chromium"
tools="flite espeak-ng docker-compose systemd-analyze chromium"
missing=0
for tool in $tools; do command -v "$tool" >/dev/null || missing=1; done
if [ "$missing" -eq 1 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $debs >/dev/null
    else
        echo "install the Debian packages: sudo apt-get install $debs; then rerun" >&2
        exit 1
    fi
fi
export HF_HUB_OFFLINE=1
.venv/bin/python scripts/build_test_audio.py
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
