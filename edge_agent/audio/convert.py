"""Decoding of client audio frames and streaming resampling to the models' 16 kHz."""

from __future__ import annotations

from typing import Literal

import numpy as np
import soxr  # type: ignore[import-untyped, unused-ignore]

ENCODINGS: dict[str, np.dtype[np.generic]] = {
    "pcm_s16le": np.dtype("<i2"),
    "f32le": np.dtype("<f4"),
}
"""Wire encodings a client may announce, with their sample layout (mono, little-endian)."""

MIN_RATE = 8000
MAX_RATE = 48000
MODEL_RATE = 16000


class AudioFormatError(ValueError):
    """Audio that cannot be decoded as announced: unknown encoding, truncated sample, bad values, bad rate."""


def pcm_to_float(data: bytes | bytearray | memoryview, encoding: str) -> np.ndarray:
    """Decode one frame of mono samples to a new float32 array in [-1, 1] (s16 is scaled by 1/32768).

    Raises :class:`AudioFormatError` for an unknown encoding, a byte count that is not a whole number
    of samples, or (``f32le``) NaN/infinite samples.
    """
    dtype = ENCODINGS.get(encoding)
    if dtype is None:
        raise AudioFormatError(f"unknown audio encoding {encoding!r}; expected one of {sorted(ENCODINGS)}")
    size = len(memoryview(data).cast("B"))
    if size % dtype.itemsize:
        raise AudioFormatError(
            f"{size} bytes is not a whole number of {encoding} samples ({dtype.itemsize} bytes each)"
        )
    raw = np.frombuffer(data, dtype=dtype)
    if encoding == "pcm_s16le":
        return raw.astype(np.float32) * np.float32(1.0 / 32768.0)
    out = raw.astype(np.float32)  # a native-order, writable copy
    if not np.isfinite(out).all():
        bad = int(np.count_nonzero(~np.isfinite(out)))
        raise AudioFormatError(f"f32le audio contains {bad} non-finite sample(s) (NaN or infinity)")
    return out


def float_to_pcm16(audio: np.ndarray) -> bytes:
    """Float samples in [-1, 1] (clipped) as 16-bit little-endian PCM."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def check_rate(rate: int, what: str = "sample rate") -> int:
    """Return ``rate`` if it is an integer in [8000, 48000] Hz, else raise :class:`AudioFormatError`."""
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer):
        raise AudioFormatError(f"{what} must be an integer number of Hz, got {rate!r}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioFormatError(f"{what} {rate} Hz is outside the supported {MIN_RATE}-{MAX_RATE} Hz")
    return int(rate)


class StreamResampler:
    """Resamples a mono float32 stream chunk by chunk; the output is the same as one-shot resampling.

    Wraps :class:`soxr.ResampleStream`, which keeps the filter state between chunks (so chunk boundaries
    leave no clicks) and holds back a few samples of filter delay until :meth:`flush`. When the rates
    match, chunks pass through unchanged (as float32).
    """

    def __init__(
        self, in_rate: int, out_rate: int = MODEL_RATE, quality: Literal["HQ", "VHQ"] = "HQ"
    ) -> None:
        self.in_rate = check_rate(in_rate, "input sample rate")
        self.out_rate = check_rate(out_rate, "output sample rate")
        if quality not in ("HQ", "VHQ"):
            raise ValueError(f"quality must be 'HQ' or 'VHQ', got {quality!r}")
        self.quality = quality
        self._stream: soxr.ResampleStream | None = None
        if self.in_rate != self.out_rate:
            self._stream = soxr.ResampleStream(
                self.in_rate, self.out_rate, 1, dtype="float32", quality=quality
            )
        self._flushed = False

    @property
    def identity(self) -> bool:
        return self._stream is None

    def process(self, x: np.ndarray) -> np.ndarray:
        """Resample the next chunk (1-D); returns whatever output is ready (may be empty).

        On the identity path a float32 contiguous input is returned as is, not copied.
        """
        if self._flushed:
            raise RuntimeError("StreamResampler.process() after flush(); call reset() to start a new stream")
        data = np.ascontiguousarray(x, dtype=np.float32)
        if data.ndim != 1:
            raise AudioFormatError(f"expected 1-D mono samples, got shape {data.shape}")
        if self._stream is None:
            return data
        return self._stream.resample_chunk(data, last=False)

    def flush(self) -> np.ndarray:
        """End the stream: returns the samples still held back by the filter."""
        if self._flushed:
            return np.zeros(0, dtype=np.float32)
        self._flushed = True
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)

    def reset(self) -> None:
        """Forget all state and start a new stream with the same rates."""
        if self._stream is not None:
            self._stream.clear()
        self._flushed = False
