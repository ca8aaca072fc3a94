"""The edge agent under systemd: the unit file verifies, and the notify protocol is spoken correctly."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "edge-agent.service"
AGENT = Path(sys.executable).parent / "edge-agent"


def test_unit_file_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd"
    # Verify against this machine's install of the agent instead of /opt.
    unit = tmp_path / "edge-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/edge-cloud-asr/.venv/bin/edge-agent", str(AGENT)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "" and done.stdout.strip() == "", (
        done.stderr + done.stdout
    )  # no warnings either
    text = UNIT.read_text()
    for directive in (
        *("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=edge-agent"),
        *("EnvironmentFile=/etc/edge-agent/env", "StateDirectory=edge-agent", "NoNewPrivileges=yes"),
        *("ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "ReadWritePaths=/var/lib/edge-agent"),
        "DeviceAllow=char-alsa rw",
    ):
        assert directive in text, directive


@pytest.mark.model
def test_ready_after_model_and_port_then_watchdog_pings(tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify_path))
        listener.settimeout(120)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(notify_path),
            "WATCHDOG_USEC": "1000000",
            "EDGE_MODEL_CACHE_DIR": str(ROOT / ".cache" / "edge-models"),
            "EDGE_QUEUE_PATH": str(tmp_path / "q.sqlite3"),
        }
        proc = subprocess.Popen(
            [str(AGENT), "--host", "127.0.0.1", "--port", str(port), "--cloud-target", ""],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            messages: list[str] = []
            while not any(m.startswith("READY=1") for m in messages):
                messages.append(listener.recv(4096).decode())
            # READY means the model is loaded and the port already answers.
            assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["status"] == "ok"
            listener.settimeout(3)
            started = time.monotonic()
            pings = 0
            while pings < 3:
                if listener.recv(4096).decode() == "WATCHDOG=1":
                    pings += 1
            assert time.monotonic() - started < 3  # every 0.5 s for a 1 s watchdog
            proc.send_signal(signal.SIGTERM)
            listener.settimeout(20)
            while listener.recv(4096).decode() != "STOPPING=1":
                pass
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
