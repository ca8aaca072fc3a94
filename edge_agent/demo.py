"""Quick-start demo: start ``cloud-server`` and ``edge-agent``, stream the bundled sample through the
edge over WebSocket in real time, print partials, finals and escalations, then stop both.

``python -m edge_agent.demo [AUDIO_FILE] [--speed N]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import httpx

from edge_agent.stream_client import stream_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], name: str, timeout: float = 300) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{name} was not ready after {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sample = resources.files("edge_agent") / "samples" / "demo.flac"
    parser.add_argument("audio", nargs="?", default=str(sample), help="audio file (default: bundled sample)")
    parser.add_argument("--speed", type=float, default=1.0, help="1 = real time")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    rest, grpc_port, edge_port = _free_port(), _free_port(), _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLOUD_LOG_LEVEL": "WARNING", "EDGE_LOG_LEVEL": "WARNING"}
    cloud = subprocess.Popen(
        [str(bin_dir / "cloud-server"), "--host", "127.0.0.1", "--port", str(rest),
         "--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port)],
        env=env,
    )  # fmt: skip
    queue = Path(
        os.environ.get("EDGE_QUEUE_PATH", Path.home() / ".cache" / "edge-cloud-asr" / "demo-queue.sqlite3")
    )
    edge = subprocess.Popen(
        [str(bin_dir / "edge-agent"), "--host", "127.0.0.1", "--port", str(edge_port),
         "--cloud-target", f"127.0.0.1:{grpc_port}", "--queue-path", str(queue)],
        env=env,
    )  # fmt: skip
    try:
        cloud_s = _wait(f"http://127.0.0.1:{rest}/ready", cloud, "cloud-server")
        edge_s = _wait(f"http://127.0.0.1:{edge_port}/health", edge, "edge-agent")
        print(f"cloud-server ready in {cloud_s:.1f} s (gRPC 127.0.0.1:{grpc_port}); "
              f"edge-agent ready in {edge_s:.1f} s (ws://127.0.0.1:{edge_port}/v1/stream)\n")  # fmt: skip
        print(f"streaming {args.audio} at {args.speed:g}x real time:\n")
        events = asyncio.run(
            stream_file(f"ws://127.0.0.1:{edge_port}/v1/stream", Path(args.audio), args.speed)
        )
        finals = [e for e in events if e["type"] == "final"]
        escalated = sum(1 for e in finals if e["escalated"])
        latencies = sorted(e["latency_ms"] for e in finals)
        if finals:
            median = latencies[len(latencies) // 2]
            print(f"\n{len(finals)} finals, {escalated} escalated to the cloud; "
                  f"final latency after end of speech: median {median:.0f} ms")  # fmt: skip
    finally:
        for proc in (edge, cloud):
            proc.send_signal(signal.SIGTERM)
        for proc in (edge, cloud):
            proc.wait(30)


if __name__ == "__main__":
    main()
