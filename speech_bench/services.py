"""Start the real cloud server and edge agents as processes on free loopback ports, and read their
health, metrics and memory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from asr_common.readiness import free_port, wait_ready

_BIN = Path(sys.executable).parent


def status_mb(pid: int, field: str) -> float | None:
    """A memory field of /proc/PID/status (``VmHWM``: peak RSS, ``VmRSS``: RSS now), MB; None when
    the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) / 1024 if match else None


def peak_rss_mb(pid: int) -> float | None:
    return status_mb(pid, "VmHWM")


def metric(text: str, name: str, labels: str = "") -> float:
    """Sum of a Prometheus sample (optionally one label set) in an exposition text."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.eE+-]+)$", re.M)
    for match in pattern.finditer(text):
        if labels and labels not in (match.group(1) or ""):
            continue
        total += float(match.group(2))
    return total


@dataclass
class Service:
    name: str
    url: str
    """HTTP base URL (health/metrics)."""
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def peak_rss_mb(self) -> float | None:
        return peak_rss_mb(self.proc.pid) if self.proc is not None else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_cloud(model: str, threads: int, log: Path, env: Mapping[str, str] | None = None) -> Service:
    """``env``: more ``CLOUD_*`` settings for this process (e.g. ``CLOUD_MAX_QUEUE``)."""
    rest, grpc_port = free_port(), free_port()
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "CLOUD_LOG_LEVEL": "WARNING", **(env or {})}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                *(str(_BIN / "cloud-server"), "--host", "127.0.0.1", "--port", str(rest)),
                *("--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port)),
                *("--model", model, "--cpu-threads", str(threads)),
            ],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    service = Service("cloud", f"http://127.0.0.1:{rest}", proc, {"grpc": f"127.0.0.1:{grpc_port}"})
    try:
        wait_ready(f"{service.url}/ready", proc, log=log)
    except BaseException:
        service.stop()
        raise
    return service


def start_edge(
    args: list[str],
    cloud_target: str,
    queue: Path,
    log: Path,
    model: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Service:
    """``env``: more ``EDGE_*`` settings for this process (e.g. ``EDGE_MAX_SESSIONS``)."""
    port = free_port()
    # EDGE_LOG_LEVEL from the environment wins (DEBUG shows each endpoint decision in the log).
    environ = {"EDGE_LOG_LEVEL": "WARNING", **os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    if model:
        environ["EDGE_MODEL"] = model
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                *(str(_BIN / "edge-agent"), "--host", "127.0.0.1", "--port", str(port)),
                *("--cloud-target", cloud_target, "--queue-path", str(queue), *args),
            ],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    service = Service("edge", f"http://127.0.0.1:{port}", proc)
    try:
        wait_ready(f"{service.url}/health", proc, log=log)
    except BaseException:
        service.stop()
        raise
    return service
