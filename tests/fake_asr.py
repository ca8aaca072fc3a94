"""A scripted edge model, VAD and cloud, so ``Session`` can be tested without models or sockets.

The fake "recognizes" a block of 4096 samples (256 ms, eight VAD windows) whose mean magnitude is
``a`` as the word ``w{round(100 a)}``: the test knows from the audio it sends what the final must say.
Blocks louder than 0.8 are "hard" (log-prob -2.5, so the calibrated offramps escalate them); others are
confident (-0.01). The fake VAD calls a 512-sample window speech when its mean magnitude is above 0.05.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.asr.interface import Capabilities, Decoded, Hypothesis, StopCheck, TokenInfo, YieldCheck
from edge_agent.confidence import CLOUD_FEATURES, EDGE_FEATURES
from edge_agent.escalation.client import CloudHypothesis, CloudResult, CloudUnavailable, CloudWord
from tests.edge_client import pcm16 as pcm

__all__ = ["pcm"]

BLOCK = 4096
WINDOW = 512
HARD = 0.8


def speech(*levels: float, block: int = BLOCK) -> np.ndarray:
    """Audio the fake hears as one word per level."""
    return np.concatenate([np.full(block, level, np.float32) for level in levels])


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16000), np.float32)


def words_for(*levels: float) -> str:
    return " ".join(f"w{round(100 * level)}" for level in levels)


@dataclass
class Call:
    kind: str  # "advance" | "finalize" | "n_best"
    samples: int
    stream: int
    result: str = ""


@dataclass
class FakeModel:
    name: str = "fake"
    native_streaming: bool = False
    chunk_samples: int = 0
    punctuation: bool = False
    """Texts end with a full stop, as a model that writes punctuation does."""
    spelled: dict[int, str] = field(default_factory=dict)
    """Words for some token ids instead of ``w{id}`` (to script words like "and")."""
    advance_steps: int = 1
    """Units of work one ``advance`` takes; ``should_yield`` is asked between them."""
    step_s: float = 0.0
    fail_finalize: set[int] = field(default_factory=set)
    """Stream numbers (1-based) whose finalize raises."""
    calls: list[Call] = field(default_factory=list)
    advance_started: threading.Event = field(default_factory=threading.Event)
    streams: list[FakeStream] = field(default_factory=list)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            native_streaming=self.native_streaming,
            chunk_samples=self.chunk_samples,
            prefix_verification=not self.native_streaming,
            n_best=True,
            max_audio_s=20.0,
            punctuation=self.punctuation,
        )

    def create_stream(self, hotwords: Sequence[str] = ()) -> FakeStream:
        stream = FakeStream(self, len(self.streams) + 1)
        stream.hotwords = tuple(hotwords)
        self.streams.append(stream)
        return stream

    def words(self, tokens: Sequence[TokenInfo]) -> list[tuple[str, float]]:
        return [(f"w{t.id}", float(np.exp(t.logprob))) for t in tokens]


class FakeStream:
    def __init__(self, model: FakeModel, number: int) -> None:
        self._model = model
        self.number = number
        self._chunks: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._size = 0
        self._consumed = 0
        self._last: Decoded | None = None
        self.hotwords: tuple[str, ...] = ()
        """The phrases the stream was created with."""

    @property
    def samples(self) -> int:
        return self._size

    @property
    def audio(self) -> np.ndarray:
        with self._lock:
            return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)

    def accept(self, audio: np.ndarray) -> None:
        with self._lock:
            self._chunks.append(np.array(audio, dtype=np.float32))
            self._size += len(audio)

    def _decode(self, end: int, stop: StopCheck | None = None) -> Decoded:
        audio = self.audio[:end]
        tokens: list[TokenInfo] = []
        stopped = False
        for i in range(0, len(audio) - BLOCK + 1, BLOCK):
            level = float(np.abs(audio[i : i + BLOCK]).mean())
            if level > 0.05:
                tokens.append(TokenInfo(round(100 * level), -2.5 if level > HARD else -0.01, 0.1))
                if stop is not None and stop(tokens):
                    stopped = True
                    break
        previous = self._last.ids if self._last is not None else ()
        reused = 0
        for a, b in zip(previous, (t.id for t in tokens), strict=False):
            if a != b:
                break
            reused += 1
        text = " ".join(self._model.spelled.get(t.id, f"w{t.id}") for t in tokens)
        p_end = None
        if self._model.punctuation and text:
            text += "."
            # As sure the text ended as of its last word (a hard word ends a sentence in doubt).
            p_end = None if stopped else math.exp(tokens[-1].logprob)
        return Decoded(tuple(tokens), text, not stopped, len(tokens) + 1, reused, end, stopped, p_end)

    def advance(self, should_yield: YieldCheck) -> Decoded | None:
        self._model.advance_started.set()
        end = self._size
        if self._model.native_streaming:
            end = self._consumed + (end - self._consumed) // max(1, self._model.chunk_samples) * max(
                1, self._model.chunk_samples
            )
        for _ in range(self._model.advance_steps):
            if should_yield() and not self._model.native_streaming:
                self._model.calls.append(Call("advance", -1, self.number))
                return None
            time.sleep(self._model.step_s)
        self._consumed = end
        self._last = self._decode(end)
        self._model.calls.append(Call("advance", end, self.number, self._last.text))
        return self._last

    def finalize(self, end: int | None = None, stop: StopCheck | None = None) -> Decoded:
        if self.number in self._model.fail_finalize:
            raise RuntimeError("scripted decode failure")
        result = self._decode(self._size if end is None else end, stop)
        self._model.calls.append(Call("finalize", result.samples, self.number, result.text))
        return result

    def n_best(self, n: int) -> list[Hypothesis]:
        self._model.calls.append(Call("n_best", n, self.number))
        return [Hypothesis((1,), "alternative", -3.0)]


class FakeVadStream:
    def __init__(self) -> None:
        self._pending = np.zeros(0, np.float32)

    def accept(self, samples16k: np.ndarray) -> list[float]:
        data = np.concatenate([self._pending, samples16k])
        full = len(data) // WINDOW * WINDOW
        self._pending = data[full:]
        windows = data[:full].reshape(-1, WINDOW)
        return [0.95 if float(np.abs(w).mean()) > 0.05 else 0.02 for w in windows]


class FakeVad:
    def create_stream(self) -> FakeVadStream:
        return FakeVadStream()


def write_calibration(path: Path, model: str = "fake") -> Path:
    """P(wrong) = sigmoid(-4 * mean_logprob - 2): confident words 0.12, hard words ~1.0."""

    def flat(names: tuple[str, ...]) -> dict[str, Any]:
        n = len(names)
        return {"features": list(names), "mean": [0.0] * n, "scale": [1.0] * n,
                "weights": [-4.0] + [0.0] * (n - 1), "bias": -2.0}  # fmt: skip

    data = {
        "version": 1, "final": flat(EDGE_FEATURES), "pilot": flat(EDGE_FEATURES),
        "cloud": flat(CLOUD_FEATURES),
        "threshold": 0.5, "early_threshold": 0.8, "stop_threshold": 0.95,
        "score_quantiles": list(np.linspace(0, 1, 101)), "source": "scripted", "model": model,
    }  # fmt: skip
    path.write_text(json.dumps(data))
    return path


def cloud_result(text: str, avg_logprob: float = -0.05) -> CloudResult:
    words = tuple(CloudWord(w, 0.1 * i, 0.1 * i + 0.1, 0.9) for i, w in enumerate(text.split()))
    return CloudResult((CloudHypothesis(text, 0.9, avg_logprob, 0.01, words),), "en", "scripted", 0.01, 0.01)


class FakeCloudStream:
    def __init__(self) -> None:
        self.audio = bytearray()
        self.cancelled = False
        self.sent_before_finish = 0

    def send_audio(self, data: bytes) -> None:
        self.audio += data

    def cancel(self) -> None:
        self.cancelled = True


class FakeEscalator:
    """Answers every escalation with ``answer`` (None: the cloud did not answer in time)."""

    def __init__(self, answer: str | None = "cloud words") -> None:
        self.answer = answer
        self.contexts: list[Any] = []
        self.streams: list[FakeCloudStream] = []
        self.queue_depth = 0
        self.ahead = 0
        """Speculative escalations asked (``try_recognize``)."""

    def status(self) -> str:
        return "closed"

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def recognize(
        self, session_id: str, context: Any, pcm: bytes, deadline_s: float
    ) -> CloudResult | None:
        self.contexts.append(context)
        return cloud_result(self.answer) if self.answer is not None else None

    async def try_recognize(self, context: Any, pcm: bytes, deadline_s: float) -> CloudResult:
        self.contexts.append(context)
        self.ahead += 1
        if self.answer is None:
            raise CloudUnavailable("scripted: no answer", retryable=True)
        return cloud_result(self.answer)

    def open_early(self, session_id: str, context: Any) -> FakeCloudStream:
        self.contexts.append(context)
        self.streams.append(FakeCloudStream())
        return self.streams[-1]

    async def finish_early(
        self, stream: FakeCloudStream, session_id: str, context: Any, pcm: bytes, deadline_s: float
    ) -> CloudResult | None:
        stream.sent_before_finish = len(stream.audio)
        self.contexts.append(context)
        return cloud_result(self.answer) if self.answer is not None else None
