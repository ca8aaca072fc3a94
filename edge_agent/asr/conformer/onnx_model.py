"""A NeMo cache-aware streaming model on onnxruntime, in the layouts sherpa-onnx reads.

A model directory holds ``tokens.txt`` and either or both of
- the streaming CTC layout: ``model.onnx`` or ``model.int8.onnx`` (the encoder and CTC head in one graph);
- the streaming transducer layout: ``encoder.onnx``, ``decoder.onnx``, ``joiner.onnx`` (or their
  ``.int8.onnx`` copies), NeMo's RNNT prediction net and joint exported on their own.
A hybrid RNNT/CTC model may ship both; ``head`` picks one. The encoder step takes five inputs and
returns five outputs, addressed by position as sherpa-onnx does (names vary between exporter versions;
see ``docs/nemo-streaming-format.md`` §3 and §5):

    audio_signal [B, feat, window_size], length [B], cache_last_channel [B, N, C, D],
    cache_last_time [B, N, D, K], cache_last_channel_len [B]
    -> logprobs [B, T, V + 1] (CTC) or encoder outputs [B, D, T] (transducer), encoded_lengths,
       and the three caches for the next step.

The geometry (``window_size`` feature frames per step, ``chunk_shift`` frames advanced) and the cache
shapes come from the graph's metadata (the keys sherpa-onnx's export scripts write). States are
immutable: a step returns new arrays, so a stream can keep earlier states and branch from them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
TRANSDUCER_PARTS = ("encoder", "decoder", "joiner")
Head = Literal["auto", "ctc", "rnnt"]


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
    """The directory is not a NeMo streaming export this loader understands."""


def _transducer_files(directory: Path) -> dict[str, Path] | None:
    """encoder/decoder/joiner graphs (int8 copies preferred, as for the CTC graph), or None."""
    found = {}
    for part in TRANSDUCER_PARTS:
        path = next(
            (
                directory / f"{part}{s}"
                for s in (".int8.onnx", ".onnx")
                if (directory / f"{part}{s}").is_file()
            ),
            None,
        )
        if path is None:
            return None
        found[part] = path
    return found


def _find_graphs(directory: Path, head: Head) -> tuple[Literal["ctc", "rnnt"], dict[str, Path]]:
    """Which head to run and its graphs: ``auto`` takes the transducer when there is one (as NeMo decodes
    a hybrid model by default; the bundled model's transducer is also the more accurate head), else CTC."""
    ctc = next((directory / n for n in GRAPH_FILES if (directory / n).is_file()), None)
    transducer = _transducer_files(directory)
    if head in ("auto", "rnnt") and transducer is not None:
        return "rnnt", transducer
    if head in ("auto", "ctc") and ctc is not None:
        return "ctc", {"model": ctc}
    if head == "ctc":
        raise ModelFormatError(
            f"{directory}: no CTC graph ({' or '.join(GRAPH_FILES)}); this directory holds "
            + ("a streaming transducer: set EDGE_CONFORMER_HEAD=rnnt" if transducer else "no model")
        )
    if head == "rnnt":
        raise ModelFormatError(
            f"{directory}: no transducer graphs (encoder, decoder and joiner .onnx"
            + ("; this directory holds the CTC layout: set EDGE_CONFORMER_HEAD=ctc)" if ctc else ")")
        )
    if any(directory.glob("decoder_joint-*.onnx")):
        raise ModelFormatError(
            f"{directory}: NeMo's fused export (encoder-*.onnx + decoder_joint-*.onnx) is not read; export "
            "the encoder, decoder and joint on their own (encoder.onnx, decoder.onnx, joiner.onnx; README)"
        )
    raise ModelFormatError(
        f"{directory}: no {' or '.join(GRAPH_FILES)} (CTC) and no encoder/decoder/joiner .onnx (transducer)"
    )


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own unexported types for unreadable graphs
        raise ModelFormatError(f"{path}: onnxruntime cannot load it: {exc}") from exc


def _int(meta: dict[str, str], key: str, path: Path) -> int:
    try:
        return int(meta[key])
    except (KeyError, ValueError) as exc:
        raise ModelFormatError(f"{path}: metadata {key!r} missing or not an integer") from exc


def _durations(meta: dict[str, str], classes: object, vocab_size: int, path: Path) -> tuple[int, ...]:
    """TDT durations: the joint's outputs past the tokens and blank are duration logits. Their frame
    advances come from the ``tdt_durations`` metadata (e.g. ``0,1,2,3,4``), else each logit's index is its
    advance (sherpa-onnx's convention; NeMo's default durations are 0..4)."""
    extra = classes - (vocab_size + 1) if isinstance(classes, int) else None
    if extra is not None and extra < 0:
        raise ModelFormatError(
            f"{path}: joint has {classes} outputs, fewer than vocab_size + 1 = {vocab_size + 1}"
        )
    if "tdt_durations" in meta:
        try:
            listed = tuple(int(v) for v in meta["tdt_durations"].replace(",", " ").split())
        except ValueError as exc:
            raise ModelFormatError(f"{path}: metadata 'tdt_durations' is not a list of integers") from exc
        if not listed or min(listed) < 0 or (extra is not None and len(listed) != extra):
            raise ModelFormatError(
                f"{path}: metadata 'tdt_durations' {meta['tdt_durations']!r} does not match the joint's "
                f"{extra} duration outputs"
            )
        return listed
    return tuple(range(extra)) if extra else ()


class NemoStreamingModel:
    """The shared, read-only model: one encoder ``step`` per chunk, state in and state out.

    With the CTC head a step yields per-frame log-probs; with the transducer head, encoder frames that
    ``TransducerGreedy`` decodes with the ``decoder`` and ``joiner`` sessions."""

    def __init__(self, directory: Path, threads: int = 2, head: Head = "auto") -> None:
        self.head, graphs = _find_graphs(directory, head)
        path = graphs["model"] if self.head == "ctc" else graphs["encoder"]
        self.path = path
        self.session = _session(path, threads)
        self.decoder = _session(graphs["decoder"], 1) if self.head == "rnnt" else None
        self.joiner = _session(graphs["joiner"], 1) if self.head == "rnnt" else None
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
            # NeMo's "NA" and the "None" some export scripts write both mean no normalization.
            n_mels=self.geometry.feat_dim,
            normalize="" if normalize.strip().lower() in ("", "na", "none") else normalize,
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
        if self.head == "ctc":
            out_dim = outputs[0].shape[-1]
            if isinstance(out_dim, int) and out_dim != self.vocab_size + 1:
                raise ModelFormatError(f"{path}: output 0 has {out_dim} classes, expected vocab_size + 1")
        else:
            self._check_transducer(graphs, meta)
        self.silence = np.full((self.geometry.feat_dim, 1), np.log(LOG_GUARD), np.float32)
        log.info("conformer %s: window %d, shift %d, caches %s / %s", path, self.geometry.window,
                 self.geometry.shift, self.cache_channel_shape, self.cache_time_shape)  # fmt: skip

    def _check_transducer(self, graphs: dict[str, Path], meta: dict[str, str]) -> None:
        assert self.decoder is not None and self.joiner is not None
        dec_in, dec_out = self.decoder.get_inputs(), self.decoder.get_outputs()
        if len(dec_in) != 4 or len(dec_out) != 4:
            raise ModelFormatError(
                f"{graphs['decoder']}: expected NeMo's prediction net (4 inputs: targets, target_length, "
                f"h, c; 4 outputs), got {len(dec_in)} inputs and {len(dec_out)} outputs"
            )
        if len(self.joiner.get_inputs()) != 2 or len(self.joiner.get_outputs()) != 1:
            raise ModelFormatError(f"{graphs['joiner']}: expected 2 inputs (encoder, decoder) and 1 output")
        # The LSTM state's shape: sherpa-onnx's metadata keys, else the graph's static state shape.
        layers, _, hidden = dec_in[2].shape
        for key, value in (("pred_rnn_layers", layers), ("pred_hidden", hidden)):
            if key not in meta and not isinstance(value, int):
                raise ModelFormatError(
                    f"{self.path}: metadata {key!r} missing and the decoder's state is dynamic"
                )
        self.pred_layers = (
            _int(meta, "pred_rnn_layers", self.path) if "pred_rnn_layers" in meta else int(layers)
        )
        self.pred_hidden = _int(meta, "pred_hidden", self.path) if "pred_hidden" in meta else int(hidden)
        self.decoder_names = [i.name for i in dec_in]
        self.joiner_names = [i.name for i in self.joiner.get_inputs()]
        classes = self.joiner.get_outputs()[0].shape[-1]
        self.durations = _durations(meta, classes, self.vocab_size, graphs["joiner"])

    durations: tuple[int, ...] = ()
    """TDT: the frame advance of each duration logit (after the token logits); empty for RNN-T."""

    def predict(
        self, token: int, state: tuple[np.ndarray, np.ndarray] | None
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Prediction net on one token: (decoder output [1, H, 1], next LSTM state)."""
        assert self.decoder is not None
        if state is None:
            zeros = np.zeros((self.pred_layers, 1, self.pred_hidden), np.float32)
            state = (zeros, zeros)
        feeds = dict(zip(self.decoder_names, (
            np.array([[token]], np.int32), np.array([1], np.int32), state[0], state[1],
        ), strict=True))  # fmt: skip
        out, _, h, c = self.decoder.run(None, feeds)
        return out, (h, c)

    def joint(self, encoder: np.ndarray, decoder: np.ndarray) -> np.ndarray:
        """Joint logits [T, V + 1 (+ TDT durations)] of encoder frames [T, D] against one prediction
        output [1, H, 1]."""
        assert self.joiner is not None
        feeds = dict(zip(self.joiner_names, (encoder.T[None].astype(np.float32), decoder), strict=True))
        (logits,) = self.joiner.run(None, feeds)
        return np.asarray(logits)[0, :, 0, :]

    def initial_state(self) -> CacheState:
        return CacheState(
            np.zeros((1, *self.cache_channel_shape), np.float32),
            np.zeros((1, *self.cache_time_shape), np.float32),
            np.zeros(1, np.int64),
        )

    def step(self, features: np.ndarray, state: CacheState) -> tuple[np.ndarray, CacheState]:
        """features [feat, window] -> (log-probs [frames, V + 1] or encoder frames [frames, D], state)."""
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
        out, lengths, channel, time, channel_len = self.session.run(None, feeds)
        frames_out = out[0] if self.head == "ctc" else out[0].T  # encoder outputs are channels first
        frames = int(np.asarray(lengths).reshape(-1)[0]) if np.asarray(lengths).size else len(frames_out)
        return frames_out[: min(frames, len(frames_out))], CacheState(channel, time, np.asarray(channel_len))
