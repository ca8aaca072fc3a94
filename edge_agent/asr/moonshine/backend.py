"""What Moonshine's decoding algorithms need of an autoregressive encoder-decoder.

``MoonshineModel`` implements it; ``decoding`` (greedy with pilot verification, beam n-best) is written
against it. One model object is shared by every stream and never mutated; per-utterance state lives in
the values these methods return.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Encoded:
    """Encoder output for one stretch of audio."""

    hidden: np.ndarray
    audio_samples: int


class DecoderCache(Protocol):
    """Key/value state after ``length`` tokens (BOS included)."""

    @property
    def length(self) -> int: ...

    def truncate(self, length: int) -> DecoderCache: ...


class EncoderDecoder(Protocol):
    name: str
    bos_id: int
    eos_id: int

    @property
    def end_ids(self) -> Sequence[int]:
        """The end of sequence and the tokens that end a sentence (".", "?", "!"): ``Decoded.p_end``."""
        ...

    def encode(self, audio: np.ndarray) -> Encoded:
        """Run the encoder on 16 kHz float32 mono audio."""
        ...

    def prefill(self, encoded: Encoded, tokens: Sequence[int]) -> tuple[np.ndarray, DecoderCache]:
        """One parallel (teacher-forced) decoder pass over ``tokens`` (starting with BOS).

        Returns log-probabilities ``[len(tokens), vocab]`` (row i predicts token i+1) and the cache."""
        ...

    def step(self, encoded: Encoded, cache: DecoderCache, token: int) -> tuple[np.ndarray, DecoderCache]:
        """Feed one token; returns the next token's log-probabilities ``[vocab]`` and the grown cache."""
        ...

    def max_tokens(self, audio_samples: int) -> int:
        """A generous bound on tokens for this much audio (stops runaway repetition)."""
        ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def starts_word(self, token: int) -> bool:
        """True when the token begins a new word (for per-word confidences)."""
        ...
