#!/usr/bin/env bash
# Install the edge agent as a systemd service (run as root from a checkout of this repository).
# Idempotent: re-running upgrades the package and keeps /etc/edge-agent/env.
set -euo pipefail
cd "$(dirname "$0")/../.."
PREFIX=/opt/edge-cloud-asr
id edge-agent >/dev/null 2>&1 || useradd --system --home-dir /var/lib/edge-agent --shell /usr/sbin/nologin \
    --groups audio edge-agent
mkdir -p "$PREFIX" /etc/edge-agent
[ -x "$PREFIX/.venv/bin/python" ] || python3 -m venv "$PREFIX/.venv"
"$PREFIX/.venv/bin/pip" install --quiet --upgrade pip
# The edge's extra only: the device gets no Whisper, CTranslate2 or PyAV.
"$PREFIX/.venv/bin/pip" install --quiet ".[edge]"
cp README.md "$PREFIX/README.md"
[ -f /etc/edge-agent/env ] || install -m 0640 -g edge-agent deploy/systemd/env /etc/edge-agent/env
install -m 0644 deploy/systemd/edge-agent.service /etc/systemd/system/edge-agent.service
systemctl daemon-reload
systemctl enable --now edge-agent.service
echo "edge-agent installed; settings in /etc/edge-agent/env; logs: journalctl -u edge-agent"
