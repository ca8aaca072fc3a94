"""The edge agent under systemd: the unit file verifies, and the notify protocol is spoken correctly."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
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


@pytest.mark.model
def test_a_wedged_event_loop_stops_the_watchdog_pings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pings come from the agent's event loop, so a loop stuck in a blocking call stops them and
    systemd's WatchdogSec restarts the agent (Restart=on-failure). The test marks the wedge with its own
    datagrams on the notify socket, sent from the loop's thread, so the order of what arrives tells
    which pings fell inside it: no clock is compared."""
    from edge_agent import systemd
    from edge_agent.cli import serve
    from edge_agent.settings import EdgeSettings
    from speech_bench.services import free_port

    notify_path = tmp_path / "notify.sock"
    received: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify_path))
        listener.settimeout(0.2)
        listening = threading.Event()
        listening.set()

        def listen() -> None:
            while listening.is_set():
                try:
                    received.append(listener.recv(4096).decode())
                except TimeoutError:
                    continue

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
        monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping every 0.2 s
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        settings = EdgeSettings(
            host="127.0.0.1", port=free_port(), cloud_target="",
            model_cache_dir=ROOT / ".cache" / "edge-models", queue_path=tmp_path / "q.sqlite3",
        )  # fmt: skip

        async def run() -> None:
            server = asyncio.create_task(serve(settings))
            while "READY=1" not in "".join(received):
                assert not server.done()
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            systemd.notify("TEST=wedged")
            time.sleep(2.0)  # noqa: ASYNC251 -- the point: a blocking call wedges the loop
            systemd.notify("TEST=resumed")
            await asyncio.sleep(1.0)
            os.kill(os.getpid(), signal.SIGTERM)  # the agent's own handler: a clean stop
            await asyncio.wait_for(server, 30)

        try:
            asyncio.run(run())
            deadline = time.monotonic() + 10
            while "STOPPING=1" not in received and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            listening.clear()
            thread.join(5)
    ready = next(i for i, m in enumerate(received) if m.startswith("READY=1"))
    wedged, resumed = received.index("TEST=wedged"), received.index("TEST=resumed")
    assert received[ready:wedged].count("WATCHDOG=1") >= 3  # ~5 in the second before
    assert received[wedged:resumed] == ["TEST=wedged"]  # ~10 were due: none came
    assert received[resumed:].count("WATCHDOG=1") >= 3
    assert received[-1] == "STOPPING=1"
