"""A NeMo cache-aware streaming CTC model on onnxruntime, in the layout sherpa-onnx reads.

A model directory holds ``model.onnx`` or ``model.int8.onnx`` (the encoder and CTC head in one graph)
and ``tokens.txt``. The graph takes five inputs and returns five outputs, addressed by position as
sherpa-onnx does (names vary between exporter versions; see ``docs/nemo-streaming-format.md`` §3):

    audio_signal [B, feat, window_size], length [B], cache_last_channel [B, N, C, D],
    cache_last_time [B, N, D, K], cache_last_channel_len [B]
    -> logprobs [B, T, V + 1], encoded_lengths, and the three caches for the next step.

The geometry (``window_size`` feature frames per step, ``chunk_shift`` frames advanced) and the cache
shapes come from the graph's metadata (the keys sherpa-onnx's export scripts write). States are
immutable: a step returns new arrays, so a stream can keep earlier states and branch from them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_agent.asr.conformer.features import LOG_GUARD, FeatureConfig
from edge_agent.asr.conformer.tokens import Vocabulary

log = logging.getLogger(__name__)
REQUIRED_METADATA = (
    "vocab_size", "window_size", "chunk_shift", "subsampling_factor",
    "cache_last_channel_dim1", "cache_last_channel_dim2", "cache_last_channel_dim3",
    "cache_last_time_dim1", "cache_last_time_dim2", "cache_last_time_dim3",
)  # fmt: skip
GRAPH_FILES = ("model.int8.onnx", "model.onnx")


@dataclass(frozen=True)
class Geometry:
    window: int
    """Feature frames fed per step (the chunk plus the subsampler's pre-encode cache)."""
    shift: int
    """Feature frames one step advances (the chunk)."""
    subsampling: int
    feat_dim: int

    @property
    def pre_encode(self) -> int:
        return self.window - self.shift

    @property
    def chunk_samples(self) -> int:
        return self.shift * FeatureConfig().hop


@dataclass(frozen=True)
class CacheState:
    channel: np.ndarray
    time: np.ndarray
    channel_len: np.ndarray


class ModelFormatError(ValueError):
    """The directory is not a NeMo streaming CTC export this loader understands."""


def _find_graph(directory: Path) -> Path:
    for name in GRAPH_FILES:
        if (directory / name).is_file():
            return directory / name
    if (directory / "encoder.onnx").is_file() or (directory / "encoder.int8.onnx").is_file():
        raise ModelFormatError(
            f"{directory} holds a streaming transducer (encoder/decoder/joiner); this edge reads the "
            "streaming CTC layout (model.onnx + tokens.txt): export the hybrid model with its CTC head"
        )
    raise ModelFormatError(f"{directory}: no {' or '.join(GRAPH_FILES)}")


def _int(meta: dict[str, str], key: str, path: Path) -> int:
    try:
        return int(meta[key])
    except (KeyError, ValueError) as exc:
        raise ModelFormatError(f"{path}: metadata {key!r} missing or not an integer") from exc


class NemoCtcModel:
    """The shared, read-only model: one ``step`` per chunk, state in and state out."""

    def __init__(self, directory: Path, threads: int = 2) -> None:
        path = _find_graph(directory)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        missing = [k for k in REQUIRED_METADATA if k not in meta]
        if missing:
            raise ModelFormatError(
                f"{path}: metadata lacks {', '.join(missing)} (export with sherpa-onnx's script)"
            )
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 5 or len(outputs) != 5:
            raise ModelFormatError(
                f"{path}: expected 5 inputs and 5 outputs, got {len(inputs)} and {len(outputs)}"
            )
        self.input_names = [i.name for i in inputs]
        feat = inputs[0].shape[1]
        self.vocab_size = _int(meta, "vocab_size", path)
        self.geometry = Geometry(
            window=_int(meta, "window_size", path),
            shift=_int(meta, "chunk_shift", path),
            subsampling=_int(meta, "subsampling_factor", path),
            feat_dim=feat if isinstance(feat, int) else int(meta.get("feat_dim", 80)),
        )
        self.cache_channel_shape = tuple(_int(meta, f"cache_last_channel_dim{i}", path) for i in (1, 2, 3))
        self.cache_time_shape = tuple(_int(meta, f"cache_last_time_dim{i}", path) for i in (1, 2, 3))
        normalize = meta.get("normalize_type", "")
        self.features = FeatureConfig(
            n_mels=self.geometry.feat_dim, normalize="" if normalize == "NA" else normalize
        )
        if self.features.normalize:
            raise ModelFormatError(
                f"{path}: normalize_type {normalize!r} cannot stream (streaming models use none)"
            )
        self.vocabulary = Vocabulary.from_file(directory / "tokens.txt")
        if self.vocabulary.blank != self.vocab_size:
            raise ModelFormatError(
                f"{directory / 'tokens.txt'}: blank id {self.vocabulary.blank} "
                f"!= vocab_size {self.vocab_size}"
            )
        out_dim = outputs[0].shape[-1]
        if isinstance(out_dim, int) and out_dim != self.vocab_size + 1:
            raise ModelFormatError(f"{path}: output 0 has {out_dim} classes, expected vocab_size + 1")
        self.silence = np.full((self.geometry.feat_dim, 1), np.log(LOG_GUARD), np.float32)
        log.info("conformer %s: window %d, shift %d, caches %s / %s", path, self.geometry.window,
                 self.geometry.shift, self.cache_channel_shape, self.cache_time_shape)  # fmt: skip

    def initial_state(self) -> CacheState:
        return CacheState(
            np.zeros((1, *self.cache_channel_shape), np.float32),
            np.zeros((1, *self.cache_time_shape), np.float32),
            np.zeros(1, np.int64),
        )

    def step(self, features: np.ndarray, state: CacheState) -> tuple[np.ndarray, CacheState]:
        """features [feat, window] -> (log-probs [frames, V + 1], next state)."""
        if features.shape != (self.geometry.feat_dim, self.geometry.window):
            raise ValueError(
                f"step expects features {(self.geometry.feat_dim, self.geometry.window)}, "
                f"got {features.shape}"
            )
        feeds = dict(zip(self.input_names, (
            features[None].astype(np.float32, copy=False),
            np.array([self.geometry.window], np.int64),
            state.channel, state.time, state.channel_len,
        ), strict=True))  # fmt: skip
        logprobs, lengths, channel, time, channel_len = self.session.run(None, feeds)
        frames = int(np.asarray(lengths).reshape(-1)[0]) if np.asarray(lengths).size else logprobs.shape[1]
        return logprobs[0, : min(frames, logprobs.shape[1])], CacheState(
            channel, time, np.asarray(channel_len)
        )
