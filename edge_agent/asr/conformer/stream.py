"""The conformer as an edge model: a stream encodes each chunk once, as it arrives (late contextualization).

While the user speaks, ``advance`` turns the new audio into feature frames and runs one encoder step per
complete window, carrying the attention and convolution caches; CTC greedy decoding of each step's
frames extends the running hypothesis (the pilot; partials come from it). At the endpoint ``finalize``
only has the frames after the last complete step left: it pads them with silence to whole windows and
runs those steps on a *branch* of the state (states are immutable), so a speculative final at the first
pause leaves the stream free to go on if the speaker does.

``finalize(end)`` answers for exactly the first ``end`` samples: when the pilot already encoded past
``end`` (a client that sends big frames), it restarts from the last kept state before ``end``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.asr.conformer.ctc import CtcGreedy, prefix_beam_search
from edge_agent.asr.conformer.features import StreamingFeatures, log_mel_from
from edge_agent.asr.conformer.onnx_model import CacheState, Head, NemoStreamingModel
from edge_agent.asr.conformer.transducer import TdtGreedy, TransducerGreedy
from edge_agent.asr.hotwords import ContextGraph, GraphCache, spellings, token_variants
from edge_agent.asr.interface import Capabilities, Decoded, Hypothesis, StopCheck, TokenInfo, YieldCheck
from edge_agent.asr.utterance_audio import UtteranceAudio

HOP = 160
KEPT_STATES = 12
"""Encoder states kept per stream to restart a final from (12 steps of 320 ms: ~4 s)."""
HOTWORD_BONUS = 4.0
"""Log-prob added to a token that continues a hotword, tuned on held-apart sentences and voices
(``scripts/bench_hotwords.py``, BENCHMARKS.md)."""


FrameDecoder = CtcGreedy | TransducerGreedy
"""Greedy search over the encoder step's frames: CTC log-probs, or transducer encoder outputs."""


def new_decoder(model: NemoStreamingModel, hotwords: ContextGraph | None = None) -> FrameDecoder:
    if model.head == "ctc":
        return CtcGreedy(model.vocabulary.blank, hotwords)
    if model.durations:
        return TdtGreedy(model, hotwords=hotwords)
    return TransducerGreedy(model, hotwords=hotwords)


@dataclass(frozen=True)
class _Checkpoint:
    steps: int
    state: CacheState
    greedy: FrameDecoder


class ConformerRecognizer:
    """``AsrModel`` over a NeMo streaming export, CTC or transducer head (shared; streams hold all
    per-utterance state). The n-best comes from CTC prefix beam search; the transducer head has none."""

    def __init__(
        self, model: NemoStreamingModel, name: str, beam: int = 8, hotword_bonus: float = HOTWORD_BONUS
    ) -> None:
        self.onnx = model
        self._name = name
        self.beam = beam
        self.hotword_bonus = hotword_bonus
        self._graphs = GraphCache(self._graph)
        self._caps = Capabilities(
            native_streaming=True,
            chunk_samples=model.geometry.chunk_samples,
            prefix_verification=False,
            n_best=model.head == "ctc",
            max_audio_s=None,
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def capabilities(self) -> Capabilities:
        return self._caps

    def create_stream(self, hotwords: Sequence[str] = ()) -> ConformerStream:
        return ConformerStream(self, self._graphs.get(hotwords))

    def _graph(self, phrases: Sequence[str]) -> ContextGraph | None:
        if self.hotword_bonus <= 0:
            return None
        return ContextGraph(token_variants(phrases, self.phrase_tokens), self.hotword_bonus)

    def phrase_tokens(self, phrase: str) -> list[list[int]]:
        """The token sequences the model may emit for a phrase: each spelling in the vocabulary's
        characters (a lower-case model has one)."""
        return [self.onnx.vocabulary.encode(form) for form in spellings(phrase)]

    def words(self, tokens: Sequence[TokenInfo]) -> list[tuple[str, float]]:
        """(word, exp(mean token log-prob)) per word; words begin at "▁" pieces."""
        ids = [t.id for t in tokens]
        out = []
        for text, positions in self.onnx.vocabulary.word_groups(ids):
            if text:
                mean = float(np.mean([tokens[p].logprob for p in positions]))
                out.append((text, round(float(np.exp(mean)), 4)))
        return out


class ConformerStream:
    def __init__(self, rec: ConformerRecognizer, hotwords: ContextGraph | None = None) -> None:
        self.rec = rec
        self.model = rec.onnx
        self.hotwords = hotwords
        self._audio = UtteranceAudio()
        # Inference-thread state from here on.
        self._fed = 0  # samples of _audio turned into feature frames
        self._features = StreamingFeatures(self.model.features)
        self._frames: list[np.ndarray] = []  # exact feature frames not yet behind the current window
        self._frame_base = 0  # global index of _frames[0]
        self._state = self.model.initial_state()
        self._greedy: FrameDecoder = new_decoder(self.model, hotwords)
        self._steps = 0
        self._checkpoints: deque[_Checkpoint] = deque(maxlen=KEPT_STATES)
        self._checkpoints.append(_Checkpoint(0, self._state, self._greedy.copy()))
        self._last_logprobs: np.ndarray | None = None
        self.encoder_steps = 0
        """Encoder calls this stream made (pilot and final), for benchmarks."""

    @property
    def samples(self) -> int:
        return self._audio.size

    def accept(self, audio: np.ndarray) -> None:
        self._audio.append(audio)

    # -- inference thread ----------------------------------------------------------------

    def _drain(self) -> None:
        new = self._audio.read(start=self._fed)
        if not len(new):
            return
        self._fed += len(new)
        frames = self._features.accept(new)
        if frames.shape[1]:
            self._frames.append(frames)

    def _window(self, step: int, frames: np.ndarray, base: int) -> np.ndarray | None:
        g = self.model.geometry
        start = step * g.shift - base
        if start < 0 or start + g.window > frames.shape[1]:
            return None
        return frames[:, start : start + g.window]

    def _run_step(self, features: np.ndarray, state: CacheState, greedy: FrameDecoder) -> CacheState:
        frames, state = self.model.step(features, state)
        greedy.accept(frames)
        self.encoder_steps += 1
        return state

    def _exact_frames(self) -> np.ndarray:
        if len(self._frames) > 1:
            self._frames = [np.concatenate(self._frames, axis=1)]
        return self._frames[0] if self._frames else np.zeros((self.model.geometry.feat_dim, 0), np.float32)

    def _decoded(self, greedy: FrameDecoder, samples: int, finished: bool, stopped: bool = False) -> Decoded:
        tokens = tuple(t.to_info() for t in greedy.tokens)
        text = self.model.vocabulary.decode([t.id for t in tokens])
        return Decoded(tokens, text, finished, self.encoder_steps, 0, samples, stopped)

    def advance(self, should_yield: YieldCheck) -> Decoded | None:
        """Encode every complete window of new audio, one step at a time (yielding between steps)."""
        self._drain()
        g = self.model.geometry
        while True:
            frames = self._exact_frames()
            window = self._window(self._steps, frames, self._frame_base)
            if window is None:
                break
            if should_yield():
                return None if self._steps == 0 else self._decoded(self._greedy, self._covered(), False)
            self._state = self._run_step(window, self._state, self._greedy)
            self._steps += 1
            self._checkpoints.append(_Checkpoint(self._steps, self._state, self._greedy.copy()))
            # Frames before the next window's start are never read again.
            drop = self._steps * g.shift - self._frame_base
            self._frames = [frames[:, drop:]]
            self._frame_base += drop
        return self._decoded(self._greedy, self._covered(), False)

    def _covered(self) -> int:
        # All audio taken in so far: every sample is in a feature frame or waiting for its window, and
        # the session schedules the next advance one chunk of audio after this point.
        return self._fed

    def finalize(self, end: int | None = None, stop: StopCheck | None = None) -> Decoded:
        self._drain()
        end = self._fed if end is None else max(0, min(end, self._fed))
        g = self.model.geometry
        audio = self._audio.read(end)
        total = len(audio) // HOP
        # The last kept state whose windows lie entirely before ``end`` (their frames are the same
        # whether or not the signal ends there: every sample a frame covers precedes ``end``).
        exact_limit = max(0, (end - 256) // HOP + 1) if end >= 256 else 0
        start_from = next(
            (c for c in reversed(self._checkpoints) if c.steps * g.shift + g.pre_encode <= exact_limit),
            self._checkpoints[0],
        )
        state, greedy = start_from.state, start_from.greedy.copy()
        first = start_from.steps * g.shift
        frames = (
            log_mel_from(audio, first, self.model.features)
            if first < total
            else np.zeros((g.feat_dim, 0), np.float32)
        )
        # Pad the remaining frames with digital silence to whole windows (as padding the audio with
        # zeros would), so the last spoken frames get their look-ahead.
        needed = max(0, total - first)
        steps = max(1, -(-max(0, needed - g.pre_encode) // g.shift)) if needed else 0
        length = steps * g.shift + g.pre_encode if steps else 0
        if length > frames.shape[1]:
            frames = np.concatenate(
                [frames, np.repeat(self.model.silence, length - frames.shape[1], axis=1)], axis=1
            )
        stopped = False
        for k in range(steps):
            before = len(greedy.tokens)
            state = self._run_step(frames[:, k * g.shift : k * g.shift + g.window], state, greedy)
            if (
                stop is not None
                and len(greedy.tokens) > before
                and stop([t.to_info() for t in greedy.tokens])
            ):
                stopped = True
                break
        if not stopped:
            greedy.settle()  # the utterance ends here: a phrase the hotword bonus began must be finished
        self._last_logprobs = greedy.logprobs() if isinstance(greedy, CtcGreedy) else None
        return self._decoded(greedy, end, not stopped, stopped)

    def n_best(self, n: int) -> list[Hypothesis]:
        if self._last_logprobs is None or n <= 0 or len(self._last_logprobs) == 0:
            return []
        vocab = self.model.vocabulary
        beams = prefix_beam_search(
            self._last_logprobs, vocab.blank, beam=max(self.rec.beam, n), n_best=n, hotwords=self.hotwords
        )
        return [Hypothesis(ids, vocab.decode(ids), logprob) for ids, logprob in beams]


BUNDLED = Path(__file__).resolve().parents[2] / "models" / "conformer-small"
BUNDLED_NAME = "conformer-small"


def load_conformer(
    directory: Path | None, threads: int, head: Head = "auto", hotword_bonus: float | None = None
) -> ConformerRecognizer:
    """The bundled conformer (``directory`` None) or a NeMo streaming export in ``directory``; ``head``
    picks CTC or transducer where a hybrid model ships both (``auto``: the transducer when present);
    ``hotword_bonus`` None is the tuned ``HOTWORD_BONUS``."""
    model = NemoStreamingModel(BUNDLED if directory is None else directory, threads, head)
    name = BUNDLED_NAME if directory is None else f"conformer:{directory.resolve().name}"
    # A calibration belongs to one head: the transducer's confidences are not the CTC head's.
    bonus = HOTWORD_BONUS if hotword_bonus is None else hotword_bonus
    return ConformerRecognizer(model, name if model.head == "ctc" else f"{name}+rnnt", hotword_bonus=bonus)
