"""``edge-agent stream FILE``: stream an audio file to a running agent as a live client would.

Audio is sent in 100 ms PCM16 frames at the file's own sample rate, in real time (``--speed 1``)
or faster; events are printed as they arrive and a progress bar shows how much has been sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return audio.mean(axis=1), int(rate)


def _show(event: dict[str, Any], out: Any) -> None:
    kind = event.get("type")
    if kind == "partial":
        print(f"  … {event['text']}", file=out, flush=True)
    elif kind == "final":
        via = event["source"]
        extra = f" escalated ({event['reason']})" if event.get("escalated") else ""
        pending = " [cloud pending]" if event.get("cloud_pending") else ""
        print(
            f"FINAL [{event['start']:.2f}-{event['end']:.2f}s] ({via}, conf {event['confidence']:.2f},"
            f" {event['latency_ms']:.0f} ms{extra}){pending}: {event['text']}",
            file=out,
            flush=True,
        )
    elif kind == "correction":
        print(
            f"CORRECTION {event['utterance_id']} ({event['source']}): {event['text']}", file=out, flush=True
        )
    elif kind == "error":
        print(f"ERROR {event['code']}: {event['message']}", file=out, flush=True)
    elif kind == "end":
        print(f"end: {event['utterances']} utterance(s)", file=out, flush=True)


async def stream_file(
    url: str, path: Path, speed: float, show: bool = True, frame_ms: int = 100
) -> list[dict[str, Any]]:
    """Stream ``path`` to ``url``; return every event received (through ``end``)."""
    audio, rate = read_audio(path)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    frame = int(rate * frame_ms / 1000) * 2
    received: list[dict[str, Any]] = []
    async with connect(url, max_size=2**22) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": rate, "encoding": "pcm_s16le"}))

        async def reader() -> None:
            try:
                async for message in ws:
                    event = json.loads(message)
                    received.append(event)
                    if show:
                        tqdm.write("", end="")
                        _show(event, sys.stdout)
                    if event.get("type") == "end":
                        return
            except ConnectionClosed:
                return

        task = asyncio.create_task(reader())
        started = time.monotonic()
        bar = tqdm(total=len(pcm) // 2, unit="sample", unit_scale=True, disable=not show, file=sys.stderr)
        for i, offset in enumerate(range(0, len(pcm), frame)):
            chunk = pcm[offset : offset + frame]
            if speed > 0:
                due = started + i * frame_ms / 1000 / speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            await ws.send(chunk)
            bar.update(len(chunk) // 2)
        bar.close()
        await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(task, timeout=120)
    return received


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="edge-agent stream", description=__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("--url", default="ws://127.0.0.1:8765/v1/stream")
    parser.add_argument(
        "--speed", type=float, default=1.0, help="1 = real time, 4 = four times faster, 0 = no pacing"
    )
    parser.add_argument("--json", action="store_true", help="print the raw events as JSON lines")
    args = parser.parse_args(argv)
    events = asyncio.run(stream_file(args.url, args.file, args.speed, show=not args.json))
    if args.json:
        for event in events:
            print(json.dumps(event))
