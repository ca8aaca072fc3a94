"""Stream one utterance through the edge's WebSocket like a live client, and time what comes back.

The utterance is sent between 0.5 s of leading and 1.5 s of trailing silence, in 100 ms frames paced at
``speed`` x real time. End of speech is taken from the audio timeline (when the clip's last sample is
due), not from the VAD, so the latency includes the endpointer's silence wait.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from websockets.asyncio.client import connect

from speech_bench.manifest import Utterance

LEAD_S, TAIL_S, FRAME_S = 0.5, 1.5, 0.1


@dataclass
class Record:
    """What one utterance gave in one mode."""

    utterance: Utterance
    mode: str
    text: str = ""
    edge_text: str = ""
    cloud_text: str = ""
    escalated: bool = False
    reasons: list[str] = field(default_factory=list)
    edge_p_wrong: float | None = None
    cloud_p_wrong: float | None = None
    latency_ms: float | None = None
    """From end of speech (audio timeline) to the last final."""
    finalize_ms: list[float] = field(default_factory=list)
    first_partial_ms: float | None = None
    """From start of speech (audio timeline) to the first partial."""
    partials: int = 0
    finals: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "utterance"}
        data.update(
            audio_filepath=str(self.utterance.path), reference=self.utterance.text, kind=self.utterance.kind,
            duration=self.utterance.duration, set=self.utterance.set,
        )  # fmt: skip
        return data


def load_audio(utterance: Utterance) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(str(utterance.path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if not 8000 <= rate <= 48000:
        mono, rate = soxr.resample(mono, rate, 16000).astype(np.float32), 16000
    return mono, int(rate)


async def stream_utterance(url: str, utterance: Utterance, mode: str, speed: float) -> Record:
    audio, rate = load_audio(utterance)
    lead, tail = np.zeros(int(LEAD_S * rate), np.float32), np.zeros(int(TAIL_S * rate), np.float32)
    pcm = (np.clip(np.concatenate([lead, audio, tail]), -1, 1) * 32767).astype("<i2").tobytes()
    frame = int(rate * FRAME_S) * 2
    speech_s = len(audio) / rate
    record = Record(utterance, mode)
    pace = speed if speed > 0 else 0.0
    async with connect(url, max_size=2**22, open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": rate, "encoding": "pcm_s16le"}))
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"edge refused the stream: {ready}")
        t0 = time.monotonic()
        speech_start = t0 + LEAD_S / pace if pace else t0
        speech_end = t0 + (LEAD_S + speech_s) / pace if pace else t0
        finals: list[tuple[float, dict[str, Any]]] = []

        async def read() -> None:
            async for message in ws:
                event = json.loads(message)
                now = time.monotonic()
                kind = event.get("type")
                if kind == "partial":
                    record.partials += 1
                    if record.first_partial_ms is None:
                        record.first_partial_ms = 1000 * (now - speech_start)
                elif kind == "final":
                    finals.append((now, event))
                elif kind == "error":
                    record.errors.append(str(event.get("code")))
                elif kind == "end":
                    return

        reader = asyncio.create_task(read())
        for i, offset in enumerate(range(0, len(pcm), frame)):
            if pace:
                await asyncio.sleep(max(0.0, t0 + i * FRAME_S / pace - time.monotonic()))
            await ws.send(pcm[offset : offset + frame])
        if not pace:
            speech_end = time.monotonic()
        await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(reader, timeout=300)
    record.finals = len(finals)
    events = [e for _, e in finals]
    record.text = " ".join(e["text"] for e in events).strip()
    record.edge_text = " ".join(e.get("edge_text") or "" for e in events).strip()
    record.cloud_text = " ".join(e.get("cloud_text") or "" for e in events).strip()
    record.escalated = any(e.get("escalated") for e in events)
    record.reasons = [str(e["reason"]) for e in events if e.get("reason")]
    record.finalize_ms = [float(e.get("finalize_ms", 0.0)) for e in events]
    if events:
        record.edge_p_wrong = 1.0 - min(float(e["edge_confidence"]) for e in events)
        clouds = [e["cloud_confidence"] for e in events if e.get("cloud_confidence") is not None]
        record.cloud_p_wrong = 1.0 - min(float(c) for c in clouds) if clouds else None
        record.latency_ms = 1000 * (finals[-1][0] - speech_end)
    return record
