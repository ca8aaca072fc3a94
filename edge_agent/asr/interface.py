"""What every edge speech model offers the session: one shared model, one stream per utterance.

The shape follows sherpa-onnx's ``OnlineRecognizer`` / ``OnlineStream``. The model (``AsrModel``) is
loaded once per process and never mutated per client; ``create_stream()`` returns an ``AsrStream`` that
holds everything about one utterance. The session feeds the stream every sample of the utterance exactly
once, in order (``accept``), asks it to bring its running hypothesis up to the audio received
(``advance``: the pilot) and, at the endpoint, for the final (``finalize``). Streams run their model work
on the single inference thread; ``accept`` is called from the event loop, so streams guard the audio
they share between the two.

How a model family does this is its own business: Moonshine re-encodes the audio so far and verifies the
previous pilot in one decoder pass; a cache-aware streaming conformer encodes each new chunk once with
its caches. The session asks ``Capabilities`` instead of the model's type.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TokenInfo:
    id: int
    logprob: float
    """log P(token) under the model."""
    entropy: float
    """Entropy (nats) of the distribution the token was picked from."""


@dataclass(frozen=True)
class Decoded:
    """A stream's hypothesis for the audio it covers, with per-token confidences."""

    tokens: tuple[TokenInfo, ...]
    text: str
    finished: bool
    """True when the model finished on its own (end-of-sequence; not cut by a length bound or a stop)."""
    decoder_calls: int
    reused_tokens: int = 0
    """Tokens of the stream's previous hypothesis this one kept (the verified pilot prefix)."""
    samples: int = 0
    """16 kHz samples from the start of the utterance that this hypothesis covers."""
    stopped: bool = False
    """A final the offramp's stop check ended early (it holds only the start of the utterance)."""
    p_end: float | None = None
    """P(the text ends where it ends): the probability the model gave, right after the last word, to a
    sentence-ending mark or the end of the sequence (None: the model does not say, or the decode was cut
    before it ended). Adaptive endpointing reads it: a model unsure whether to *write* a full stop is
    not unsure that the sentence is over."""

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(t.id for t in self.tokens)


@dataclass(frozen=True)
class Hypothesis:
    """One of the n-best alternatives sent to the cloud's second pass."""

    ids: tuple[int, ...]
    text: str
    logprob: float
    """Sum of token log-probabilities."""


StopCheck = Callable[[Sequence[TokenInfo]], bool]
"""Asked after every new final token with all tokens so far; True ends the decode (an offramp)."""

YieldCheck = Callable[[], bool]
"""Asked by ``advance`` between units of work; True means a final is waiting for the thread."""


@dataclass(frozen=True)
class Capabilities:
    native_streaming: bool
    """The model consumes audio chunk by chunk with carried state (``advance`` is incremental): it should
    be advanced whenever a chunk is in, silence included, so that little work is left at the endpoint."""
    chunk_samples: int
    """With native streaming: the audio one ``advance`` step consumes (0 otherwise)."""
    prefix_verification: bool
    """``advance``/``finalize`` verify the previous hypothesis and may revise it, so how much of it survived
    (``Decoded.reused_tokens``) is a confidence feature. Without it hypotheses only grow."""
    n_best: bool
    """``n_best()`` returns alternatives for the last final."""
    max_audio_s: float | None
    """Longest audio one pass of the model handles well (longer audio is split by the stream, and has no
    n-best); None when unbounded."""
    punctuation: bool = False
    """The model writes punctuation (a sentence's end is in its text: adaptive endpointing uses it)."""


class AsrStream(Protocol):
    """One utterance's recognition state. Not shared between utterances or sessions."""

    @property
    def samples(self) -> int:
        """16 kHz samples accepted so far."""
        ...

    def accept(self, audio: np.ndarray) -> None:
        """Append 16 kHz float32 mono audio (event loop side; every sample once, in order)."""
        ...

    def advance(self, should_yield: YieldCheck) -> Decoded | None:
        """Bring the running hypothesis up to the audio accepted so far (the pilot; inference thread).

        Returns the new hypothesis, or None when it gave way to a waiting final (``should_yield``) before
        it had one worth publishing. A stateful stream yields only between whole units of work, so its
        state never stops half-way."""
        ...

    def finalize(self, end: int | None = None, stop: StopCheck | None = None) -> Decoded:
        """The final hypothesis for the first ``end`` samples (all accepted audio when None).

        Does not consume the stream: it may run speculatively at the first silence and, if the speaker
        goes on, the stream keeps accepting audio and a later ``finalize`` covers more of it."""
        ...

    def n_best(self, n: int) -> list[Hypothesis]:
        """Up to ``n`` distinct hypotheses for the audio of the last ``finalize`` (empty if unsupported)."""
        ...


class AsrModel(Protocol):
    """A loaded edge model, shared by every session; thread-safe for one inference thread."""

    @property
    def name(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...

    def create_stream(self, hotwords: Sequence[str] = ()) -> AsrStream:
        """A stream for one utterance; ``hotwords`` are phrases its decoding favours (names, jargon:
        ``edge_agent.asr.hotwords``), each as the user writes it."""
        ...

    def words(self, tokens: Sequence[TokenInfo]) -> list[tuple[str, float]]:
        """(word, confidence 0..1) per word of a hypothesis."""
        ...
