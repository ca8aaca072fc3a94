"""The cloud's pilots, without I/O: when a stream's next pilot is due, where its latest result waits
for the final, and how much of a pilot greedy decoding of the full audio confirms.

A pilot is a greedy decode of the audio a StreamingRecognize stream has received so far, run while
the inference pool is idle. At the end the final decode teacher-forces the latest pilot's tokens on
the full audio and keeps the longest prefix that greedy decoding would have chosen itself, so a
greedy final is the same with or without a pilot.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from cloud_server.results import PilotHypothesis


class PilotSchedule:
    """Decides when a stream's next pilot is due; at most one is in flight."""

    def __init__(self, interval_samples: int, max_samples: int) -> None:
        if interval_samples < 1:
            raise ValueError("interval_samples must be positive")
        self._interval = interval_samples
        self._max = max_samples
        self._last_start = 0
        self.in_flight = False

    def due(self, received: int) -> bool:
        """True when ``received`` samples hold enough new audio for a pilot and none is running.

        Past ``max_samples`` (one decoding window) no pilot is due: the final could not use it."""
        return not self.in_flight and received <= self._max and received - self._last_start >= self._interval

    def started(self, samples: int) -> None:
        self.in_flight = True
        self._last_start = samples

    def finished(self) -> None:
        self.in_flight = False


class LatestPilot:
    """The most recent pilot of one stream. Written and read on inference threads: the final reads it
    when it starts running, so a pilot that finished just before is still used."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pilot: PilotHypothesis | None = None

    def offer(self, pilot: PilotHypothesis) -> None:
        """Keep ``pilot`` unless a pilot of more audio is already kept."""
        with self._lock:
            if self._pilot is None or pilot.samples >= self._pilot.samples:
                self._pilot = pilot

    def get(self) -> PilotHypothesis | None:
        with self._lock:
            return self._pilot


def verified_prefix(
    logits: np.ndarray, tokens: Sequence[int], suppress: np.ndarray, suppress_begin: np.ndarray
) -> tuple[int, float]:
    """How many leading ``tokens`` greedy decoding would choose, and their summed log-probability.

    ``logits[i]`` are the next-token logits after the first ``i`` tokens were forced (teacher
    forcing; at least ``len(tokens)`` rows). Each row is masked as ``generate()`` masks it
    (``suppress`` at every step, ``suppress_begin`` at the first) before its argmax is compared
    with the token; the log-probabilities are of the same masked distributions, as ``generate()``
    scores its own tokens.
    """
    count = min(len(tokens), len(logits))
    if count == 0:
        return 0, 0.0
    rows = np.array(logits[:count], dtype=np.float64)
    rows[:, suppress] = -np.inf
    rows[0, suppress_begin] = -np.inf
    targets = np.asarray(tokens[:count], dtype=np.int64)
    agree = rows.argmax(axis=1) == targets
    verified = count if agree.all() else int(np.argmin(agree))
    if verified == 0:
        return 0, 0.0
    kept = rows[:verified]
    peak = kept.max(axis=1, keepdims=True)
    log_norm = peak[:, 0] + np.log(np.exp(kept - peak).sum(axis=1))
    picked = kept[np.arange(verified), targets[:verified]]
    return verified, float((picked - log_norm).sum())
