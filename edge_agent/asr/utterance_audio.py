"""One utterance's audio, shared by the event loop (writes) and the inference thread (reads)."""

from __future__ import annotations

import threading

import numpy as np

RATE = 16000


class UtteranceAudio:
    """A growing buffer of one utterance's audio: written by the event loop, read by the inference thread.

    Capacity doubles as needed (no copy of everything per chunk); the lock makes a read see whole writes."""

    def __init__(self, initial_samples: int = 4 * RATE) -> None:
        self._data = np.zeros(initial_samples, dtype=np.float32)
        self._size = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    def append(self, audio: np.ndarray) -> None:
        samples = np.asarray(audio, dtype=np.float32).reshape(-1)
        with self._lock:
            needed = self._size + samples.size
            if needed > self._data.size:
                grown = np.zeros(max(needed, 2 * self._data.size), dtype=np.float32)
                grown[: self._size] = self._data[: self._size]
                self._data = grown
            self._data[self._size : needed] = samples
            self._size = needed

    def read(self, end: int | None = None, start: int = 0) -> np.ndarray:
        """A copy of samples ``[start, end)`` (to the last one when ``end`` is None)."""
        with self._lock:
            stop = self._size if end is None else min(end, self._size)
            return self._data[min(start, stop) : stop].copy()
