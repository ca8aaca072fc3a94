"""A fixed-size ring buffer of float32 mono samples, addressed by absolute sample index."""

from __future__ import annotations

import numpy as np


class RangeOverwrittenError(IndexError):
    """The requested samples were written once but have since been overwritten by newer audio."""


class RingBuffer:
    """Keeps the most recent ``capacity_samples`` samples of a stream.

    Storage is one preallocated array; a write costs at most two slice copies, whatever its size, and
    never reallocates. Samples are addressed either relative to the end (:meth:`read_last`) or by their
    absolute index since the stream start (:meth:`read_range`); ``total_written`` counts every sample
    ever written, including those already overwritten.
    """

    def __init__(self, capacity_samples: int) -> None:
        if capacity_samples <= 0:
            raise ValueError(f"capacity_samples must be positive, got {capacity_samples}")
        self._buf = np.zeros(capacity_samples, dtype=np.float32)
        self._capacity = capacity_samples
        self._total = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def total_written(self) -> int:
        """Samples written since the stream start (absolute index of the next sample)."""
        return self._total

    @property
    def first_available(self) -> int:
        """Absolute index of the oldest sample still held."""
        return self._total - len(self)

    def __len__(self) -> int:
        return min(self._total, self._capacity)

    def write(self, samples: np.ndarray) -> None:
        """Append ``samples`` (1-D, converted to float32), overwriting the oldest when full."""
        data = np.asarray(samples, dtype=np.float32)
        if data.ndim != 1:
            raise ValueError(f"expected 1-D mono samples, got shape {data.shape}")
        n = data.shape[0]
        if n == 0:
            return
        cap = self._capacity
        if n >= cap:
            # Only the newest `cap` samples survive; lay them out so that index == absolute % cap.
            tail = data[n - cap :]
            start = (self._total + n - cap) % cap
            self._buf[start:] = tail[: cap - start]
            self._buf[:start] = tail[cap - start :]
        else:
            start = self._total % cap
            first = min(n, cap - start)
            self._buf[start : start + first] = data[:first]
            self._buf[: n - first] = data[first:]
        self._total += n

    def read_last(self, n: int) -> np.ndarray:
        """A copy of the newest ``n`` samples (``0 <= n <= len(self)``)."""
        if not 0 <= n <= len(self):
            raise ValueError(f"cannot read the last {n} samples: the buffer holds {len(self)}")
        return self.read_range(self._total - n, self._total)

    def read_range(self, start_abs: int, end_abs: int) -> np.ndarray:
        """A copy of samples ``[start_abs, end_abs)``, absolute indices since the stream start.

        Raises :class:`RangeOverwrittenError` if part of the range is no longer held, and
        ``IndexError`` if it reaches past ``total_written``.
        """
        if start_abs < 0 or end_abs < start_abs:
            raise ValueError(f"invalid sample range [{start_abs}, {end_abs})")
        if end_abs > self._total:
            raise IndexError(
                f"sample range [{start_abs}, {end_abs}) reaches past the {self._total} samples written"
            )
        if start_abs < self.first_available:
            raise RangeOverwrittenError(
                f"sample range [{start_abs}, {end_abs}) was overwritten: only samples from "
                f"{self.first_available} to {self._total} are held (capacity {self._capacity})"
            )
        n = end_abs - start_abs
        out = np.empty(n, dtype=np.float32)
        if n == 0:
            return out
        cap = self._capacity
        start = start_abs % cap
        first = min(n, cap - start)
        out[:first] = self._buf[start : start + first]
        out[first:] = self._buf[: n - first]
        return out
