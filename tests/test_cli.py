"""The ``cloud-server`` console script as users run it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from speech_bench.services import free_port
from tests.speech import Clip, wer

pytestmark = pytest.mark.model


def _script() -> str:
    path = shutil.which("cloud-server") or str(Path(sys.executable).parent / "cloud-server")
    assert Path(path).exists(), "cloud-server is not installed (pip install -e .)"
    return path


def test_serves_both_interfaces_and_stops_gracefully(model_cache: str, real_clips: list[Clip]) -> None:
    rest, grpc_port = free_port(), free_port()
    env = {**os.environ, "CLOUD_PORT": "1", "CLOUD_MODEL_CACHE_DIR": model_cache, "CLOUD_MODEL": "tiny.en"}
    proc = subprocess.Popen(
        [
            _script(),
            "--host",
            "127.0.0.1",
            "--port",
            str(rest),
            "--grpc-host",
            "127.0.0.1",
            "--grpc-port",
            str(grpc_port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        ready = False
        while time.monotonic() < deadline and proc.poll() is None and not ready:
            try:
                ready = httpx.get(f"http://127.0.0.1:{rest}/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert ready, "server did not become ready"
        clip = next(c for c in real_clips if c.kind == "read")
        with open(clip.path, "rb") as f:
            response = httpx.post(
                f"http://127.0.0.1:{rest}/v1/audio/transcriptions",
                files={"file": ("a.wav", f, "audio/wav")},
                data={"model": "tiny.en"},
                timeout=60,
            )
        assert response.status_code == 200
        assert wer([clip.text], [response.json()["text"]]) < 0.2  # tiny.en is weaker than base
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0]
    assert "shutting down" in output


def test_unknown_model_is_a_clear_startup_error() -> None:
    proc = subprocess.run([_script(), "--model", "medium"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "unknown model 'medium'" in proc.stderr
    assert "pip install" in proc.stderr
