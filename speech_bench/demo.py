"""Quick-start demo: start ``cloud-server`` and ``edge-agent``, stream the bundled sample through the
edge over WebSocket in real time, print partials, finals and escalations, then stop both.

``python -m speech_bench.demo [AUDIO_FILE] [--speed N]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from importlib import resources
from pathlib import Path

from edge_agent.stream_client import stream_file
from speech_bench.services import start_cloud, start_edge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sample = resources.files("edge_agent") / "samples" / "demo.flac"
    parser.add_argument("audio", nargs="?", default=str(sample), help="audio file (default: bundled sample)")
    parser.add_argument("--speed", type=float, default=1.0, help="1 = real time")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="edge-demo-") as tmp:
        logs = Path(tmp)
        started = time.monotonic()
        cloud = start_cloud("base", 2, logs / "cloud.log")
        try:
            cloud_s = time.monotonic() - started
            edge = start_edge([], cloud.extra["grpc"], logs / "queue.sqlite3", logs / "edge.log")
            try:
                url = edge.url.replace("http://", "ws://") + "/v1/stream"
                edge_s = time.monotonic() - started - cloud_s
                print(f"cloud-server ready in {cloud_s:.1f} s (gRPC {cloud.extra['grpc']}, REST {cloud.url})")
                print(f"edge-agent ready in {edge_s:.1f} s ({url})\n")
                print(f"streaming {args.audio} at {args.speed:g}x real time:\n")
                events = asyncio.run(stream_file(url, Path(args.audio), args.speed))
            finally:
                edge.stop()
        finally:
            cloud.stop()
    finals = [e for e in events if e["type"] == "final"]
    if finals:
        escalated = sum(1 for e in finals if e["escalated"])
        latencies = sorted(e["latency_ms"] for e in finals)
        median = latencies[len(latencies) // 2]
        print(f"\n{len(finals)} finals, {escalated} escalated to the cloud; "
              f"final latency after end of speech: median {median:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
