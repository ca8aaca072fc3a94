"""Moonshine base on plain onnxruntime: encoder plus merged decoder with a KV cache."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_agent.asr.moonshine.backend import Encoded
from edge_agent.asr.moonshine.tokenizer import BOS_ID, EOS_ID, TextDecoder

log = logging.getLogger(__name__)
_TOKENS_PER_SECOND = 6.5  # Moonshine's own bound; speech rarely exceeds ~4 tokens/s


@dataclass(frozen=True)
class MoonshineFiles:
    encoder: Path
    decoder: Path
    tokenizer: Path


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return np.asarray(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)), dtype=np.float32)


@dataclass(frozen=True)
class MoonshineCache:
    """Self-attention keys/values per layer (growing) and cross-attention ones (fixed)."""

    self_kv: tuple[np.ndarray, ...]
    cross_kv: tuple[np.ndarray, ...]

    @property
    def length(self) -> int:
        return int(self.self_kv[0].shape[2])

    def truncate(self, length: int) -> MoonshineCache:
        return MoonshineCache(tuple(kv[:, :, :length] for kv in self.self_kv), self.cross_kv)


class MoonshineModel:
    """The shared recognizer. Thread-safe: onnxruntime sessions may run concurrently."""

    bos_id = BOS_ID
    eos_id = EOS_ID

    def __init__(self, files: MoonshineFiles, threads: int = 2, name: str = "moonshine-base") -> None:
        self.name = name
        self.files = files
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        self._encoder = ort.InferenceSession(str(files.encoder), options, providers=providers)
        self._decoder = ort.InferenceSession(str(files.decoder), options, providers=providers)
        self._text = TextDecoder(files.tokenizer)
        self.end_ids = (EOS_ID, *self._text.sentence_end_ids)
        names = [i.name for i in self._decoder.get_inputs()]
        self._layers = sum(1 for n in names if n.endswith(".decoder.key"))
        head = next(i for i in self._decoder.get_inputs() if i.name.endswith(".decoder.key"))
        self._heads, self._head_dim = int(head.shape[1]), int(head.shape[3])
        self._outputs = [o.name for o in self._decoder.get_outputs()]

    def encode(self, audio: np.ndarray) -> Encoded:
        samples = np.ascontiguousarray(audio, dtype=np.float32).reshape(1, -1)
        (hidden,) = self._encoder.run(None, {"input_values": samples})
        return Encoded(hidden=hidden, audio_samples=samples.shape[1])

    def max_tokens(self, audio_samples: int) -> int:
        return max(8, math.ceil(audio_samples / 16000 * _TOKENS_PER_SECOND) + 4)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._text.decode(tokens)

    def starts_word(self, token: int) -> bool:
        return self._text.starts_word(token)

    def encode_text(self, text: str, word_start: bool = True) -> list[int]:
        """Token ids of ``text`` (``word_start``: as a new word, after "▁")."""
        return self._text.encode(text, word_start)

    def _run(
        self, encoded: Encoded, ids: np.ndarray, cache: MoonshineCache | None
    ) -> tuple[np.ndarray, MoonshineCache]:
        feeds: dict[str, np.ndarray] = {"input_ids": ids, "encoder_hidden_states": encoded.hidden}
        batch = ids.shape[0]
        if cache is None:
            empty = np.zeros((batch, self._heads, 0, self._head_dim), dtype=np.float32)
            for layer in range(self._layers):
                for kind in ("decoder", "encoder"):
                    feeds[f"past_key_values.{layer}.{kind}.key"] = empty
                    feeds[f"past_key_values.{layer}.{kind}.value"] = empty
            feeds["use_cache_branch"] = np.array([False])
        else:
            for layer in range(self._layers):
                feeds[f"past_key_values.{layer}.decoder.key"] = cache.self_kv[2 * layer]
                feeds[f"past_key_values.{layer}.decoder.value"] = cache.self_kv[2 * layer + 1]
                feeds[f"past_key_values.{layer}.encoder.key"] = cache.cross_kv[2 * layer]
                feeds[f"past_key_values.{layer}.encoder.value"] = cache.cross_kv[2 * layer + 1]
            feeds["use_cache_branch"] = np.array([True])
        outputs = dict(zip(self._outputs, self._decoder.run(self._outputs, feeds), strict=True))
        self_kv = tuple(
            outputs[f"present.{layer}.decoder.{part}"]
            for layer in range(self._layers)
            for part in ("key", "value")
        )
        if cache is None:
            cross_kv = tuple(
                outputs[f"present.{layer}.encoder.{part}"]
                for layer in range(self._layers)
                for part in ("key", "value")
            )
        else:
            cross_kv = cache.cross_kv  # the cached branch does not recompute them
        return outputs["logits"], MoonshineCache(self_kv, cross_kv)

    def prefill(self, encoded: Encoded, tokens: Sequence[int]) -> tuple[np.ndarray, MoonshineCache]:
        ids = np.asarray([list(tokens)], dtype=np.int64)
        logits, cache = self._run(encoded, ids, None)
        return log_softmax(logits[0]), cache

    def step(self, encoded: Encoded, cache: object, token: int) -> tuple[np.ndarray, MoonshineCache]:
        assert isinstance(cache, MoonshineCache)
        logits, grown = self._run(encoded, np.asarray([[token]], dtype=np.int64), cache)
        return log_softmax(logits[0, -1]), grown
