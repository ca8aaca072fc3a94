"""Stream one utterance through the edge's WebSocket as a live client would, and time what comes back.

Two client patterns, both cut the clip at the end of its speech (``Utterance.speech_end``), so the
clip's own trailing silence is never sent:

* ``open-mic`` (the product's main job): 0.5 s of leading silence, the speech, then silence in 100 ms
  frames at the same pace, as a microphone goes on sending, until the final for the utterance arrives
  (the first final after the end of speech), or for ``OPEN_MIC_CAP_S`` at most (a timeout). ``stop`` is
  sent only after that, to end the session cleanly. The edge's endpointer must end the utterance itself.
* ``push-to-talk``: the leading silence and the speech, then ``stop`` at once.

Frames are paced at ``speed`` x real time and each leaves when its last sample is due, as from a
microphone; the leading silence is stretched (by less than a frame) so the speech ends on a frame
boundary. Latency runs from the moment the last speech sample was due (the audio timeline, so it
includes the endpointer's silence wait) to the arrival of the final. It is recorded when the utterance
gave exactly one final (and, open-mic, before any ``stop``); a ``correction`` that may follow later does
not count. Items with ``segments`` (several sentences with pauses) are streamed open-mic as a whole and
their finals are matched to the sentences (``speech_bench.segments``).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from websockets.asyncio.client import ClientConnection, connect

from speech_bench.manifest import Utterance, parse_row
from speech_bench.segments import SegmentationCounts, cleanly_finalized, count_segmentation

OPEN_MIC, PUSH_TO_TALK = "open-mic", "push-to-talk"
PATTERNS = (OPEN_MIC, PUSH_TO_TALK)
"""In reporting order: open-mic is the headline."""
LEGACY_PATTERN = "clip-end"
"""Records of reports written before the patterns: whole clip, 1.5 s of silence, ``stop``, timed from
the clip end."""
LEAD_S, FRAME_S = 0.5, 0.1
OPEN_MIC_CAP_S = 6.0
"""Wall time after the end of speech before an open-mic utterance counts as a timeout (at ``--speed``
above 1 that is more seconds of silence, so a slow final is not cut short by a fast replay)."""
TIMEOUT = "open_mic_timeout"


@dataclass
class Record:
    """What one utterance gave in one mode and one pattern."""

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
    """From the end of speech (when its last sample was due) to the final; None unless exactly one
    final came (open-mic: before ``stop``)."""
    finalize_ms: list[float] = field(default_factory=list)
    first_partial_ms: float | None = None
    """From start of speech (audio timeline) to the first partial."""
    partials: int = 0
    finals: int = 0
    errors: list[str] = field(default_factory=list)
    pattern: str = OPEN_MIC
    speech_end_s: float | None = None
    """Where the speech ended on the stream's timeline (seconds, leading silence included)."""
    final_spans: list[list[float]] = field(default_factory=list)
    """Each final's [start, end] on the stream's timeline, as the edge reported them."""
    final_at_ms: list[float] = field(default_factory=list)
    """Each final's arrival, in ms after the end of speech was due (negative: before it)."""
    end_reasons: list[str] = field(default_factory=list)
    """Why the edge ended each utterance (``silence``: its endpointer; ``stream_end``: the ``stop``)."""
    segmentation: SegmentationCounts | None = None
    """For items with segments: how the finals segmented the sentences."""
    sentence_latency_ms: list[float] = field(default_factory=list)
    """For items with segments: latency of each sentence that exactly one final covered, from that
    sentence's end of speech."""

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k not in ("utterance", "segmentation")}
        data["segmentation"] = asdict(self.segmentation) if self.segmentation is not None else None
        row = self.utterance.to_row()
        row["reference"] = row.pop("text")
        data.update(row)
        return data

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Record:
        """A record from a report (reports written before the patterns give ``clip-end`` records)."""
        utterance = parse_row({**row, "text": row["reference"]}, Path(), str(row.get("set", "")))
        fields = {k: v for k, v in row.items() if k in cls.__dataclass_fields__ and k != "utterance"}
        fields.setdefault("pattern", LEGACY_PATTERN)
        counts = fields.pop("segmentation", None)
        return cls(
            utterance=utterance,
            segmentation=SegmentationCounts(**counts) if counts else None,
            **fields,
        )


def load_audio(utterance: Utterance) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(str(utterance.path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if not 8000 <= rate <= 48000:
        mono, rate = soxr.resample(mono, rate, 16000).astype(np.float32), 16000
    return mono, int(rate)


@dataclass(frozen=True)
class StreamPlan:
    """The samples one utterance is sent as: leading silence, then the clip up to its end of speech."""

    pcm: bytes
    rate: int
    frame: int
    """Samples per frame."""
    lead: int
    """Samples of leading silence (a frame boundary falls at the end of speech)."""
    speech_start: int
    """Stream sample where the speech starts."""
    speech_end: int
    """Stream sample just after the last speech sample (a multiple of ``frame``)."""

    @property
    def frames(self) -> int:
        return self.speech_end // self.frame


def pcm16(audio: np.ndarray) -> bytes:
    """Float samples as PCM16 little-endian bytes (clipped to [-1, 1])."""
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def plan_stream(audio: np.ndarray, rate: int, utterance: Utterance) -> StreamPlan:
    frame = round(rate * FRAME_S)
    end = len(audio) if utterance.speech_end is None else round(utterance.speech_end * rate)
    end = min(len(audio), max(1, end))
    lead = round(LEAD_S * rate)
    lead += -(lead + end) % frame
    start = lead + min(end - 1, round((utterance.speech_start or 0.0) * rate))
    samples = np.concatenate([np.zeros(lead, np.float32), audio[:end]])
    return StreamPlan(pcm16(samples), rate, frame, lead, start, lead + end)


async def stream_utterance(
    url: str, utterance: Utterance, mode: str, speed: float, pattern: str = OPEN_MIC
) -> Record:
    """One utterance, one WebSocket session, in ``pattern`` (items with segments: always open-mic)."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}")
    if utterance.segments:
        pattern = OPEN_MIC
    audio, rate = load_audio(utterance)
    plan = plan_stream(audio, rate, utterance)
    record = Record(utterance, mode, pattern=pattern, speech_end_s=round(plan.speech_end / rate, 3))
    pace = speed if speed > 0 else 0.0
    frame_bytes = 2 * plan.frame
    async with connect(url, max_size=2**22, open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": rate, "encoding": "pcm_s16le"}))
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"edge refused the stream: {ready}")
        t0 = time.monotonic()

        def due(sample: int) -> float:
            """Wall time at which a stream sample is due (unpaced: now)."""
            return t0 + sample / rate / pace if pace else time.monotonic()

        speech_start_at = due(plan.speech_start)
        finals: list[tuple[float, dict[str, Any]]] = []

        async def read() -> None:
            async for message in ws:
                event = json.loads(message)
                now = time.monotonic()
                kind = event.get("type")
                if kind == "partial":
                    record.partials += 1
                    if record.first_partial_ms is None:
                        record.first_partial_ms = 1000 * (now - speech_start_at)
                elif kind == "final":
                    finals.append((now, event))
                elif kind == "error":
                    record.errors.append(str(event.get("code")))
                elif kind == "end":
                    return

        reader = asyncio.create_task(read())
        for i in range(plan.frames):
            if pace:  # a frame leaves when its last sample is due
                await asyncio.sleep(max(0.0, due((i + 1) * plan.frame) - time.monotonic()))
            await ws.send(plan.pcm[i * frame_bytes : (i + 1) * frame_bytes])
        speech_end_at = due(plan.speech_end)
        if pattern == OPEN_MIC and not await _silence_until_final(
            ws, reader, finals, speech_end_at, plan, pace or 1.0
        ):
            record.errors.append(TIMEOUT)
        stopped_at = time.monotonic()
        await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(reader, timeout=300)
    _fill(record, finals, speech_end_at, stopped_at if pattern == OPEN_MIC else None)
    if utterance.segments:
        _segment(record, plan, pace or 1.0, 1000 * (stopped_at - speech_end_at))
    return record


async def _silence_until_final(
    ws: ClientConnection,
    reader: asyncio.Task[None],
    finals: list[tuple[float, dict[str, Any]]],
    speech_end_at: float,
    plan: StreamPlan,
    pace: float,
) -> bool:
    """Send silence frames, paced, until a final arrives after the end of speech; False at the cap.

    The first final after the end of speech is the utterance's: an earlier one ended before the speech
    did (the utterance was split), and the edge sends finals in order."""
    silence = bytes(2 * plan.frame)
    started = max(speech_end_at, time.monotonic())
    cap = round(OPEN_MIC_CAP_S * max(1.0, pace) / FRAME_S)
    for k in range(cap + 1):
        if any(at >= speech_end_at for at, _ in finals):
            return True
        if reader.done():  # the connection ended early: the caller's await on the reader says why
            return True
        if k == cap:
            break
        await asyncio.sleep(max(0.0, started + (k + 1) * FRAME_S / pace - time.monotonic()))
        await ws.send(silence)
    return False


def _fill(
    record: Record,
    finals: list[tuple[float, dict[str, Any]]],
    speech_end_at: float,
    stopped_at: float | None,
) -> None:
    """The record's texts, confidences and latencies from the finals (arrival time, event)."""
    record.finals = len(finals)
    events = [e for _, e in finals]
    record.text = " ".join(e["text"] for e in events).strip()
    record.edge_text = " ".join(e.get("edge_text") or "" for e in events).strip()
    record.cloud_text = " ".join(e.get("cloud_text") or "" for e in events).strip()
    record.escalated = any(e.get("escalated") for e in events)
    record.reasons = [str(e["reason"]) for e in events if e.get("reason")]
    record.finalize_ms = [float(e.get("finalize_ms", 0.0)) for e in events]
    record.final_spans = [[float(e.get("start", 0.0)), float(e.get("end", 0.0))] for e in events]
    record.final_at_ms = [round(1000 * (at - speech_end_at), 1) for at, _ in finals]
    record.end_reasons = [str(e.get("end_reason", "")) for e in events]
    if events:
        record.edge_p_wrong = 1.0 - min(float(e["edge_confidence"]) for e in events)
        clouds = [e["cloud_confidence"] for e in events if e.get("cloud_confidence") is not None]
        record.cloud_p_wrong = 1.0 - min(float(c) for c in clouds) if clouds else None
    # Open-mic: a final that only came after ``stop`` was forced by it, which is push-to-talk's figure.
    if len(finals) == 1 and (stopped_at is None or finals[0][0] < stopped_at):
        record.latency_ms = record.final_at_ms[0]


def _segment(record: Record, plan: StreamPlan, pace: float, stop_ms: float) -> None:
    """Match the finals to the item's sentences; time the sentences that got one final of their own.

    ``stop_ms``: when ``stop`` was sent, in ms after the end of speech was due."""
    lead_s = plan.lead / plan.rate
    sentences = [(lead_s + s.speech_start, lead_s + s.speech_end) for s in record.utterance.segments]
    spans = [(a, b) for a, b in record.final_spans]
    record.segmentation = count_segmentation(sentences, spans)
    speech_end_s = plan.speech_end / plan.rate
    for i, f in sorted(cleanly_finalized(sentences, spans).items()):
        if record.final_at_ms[f] >= stop_ms:
            continue  # forced by stop, not by the endpointer
        # The sentence's end was due (speech end - sentence end) / pace before the item's.
        record.sentence_latency_ms.append(
            round(record.final_at_ms[f] + 1000 * (speech_end_s - sentences[i][1]) / pace, 1)
        )
