"""RNN-T greedy decoding over a NeMo transducer's encoder frames (sherpa-onnx
``online-transducer-greedy-search-nemo-decoder.cc``, ``docs/nemo-streaming-format.md`` §7.3).

For each encoder frame, the joint scores the frame against the prediction net's output for the tokens
emitted so far; a non-blank argmax is emitted and fed to the prediction net, and the same frame is
scored again (at most ``max_symbols`` tokens per frame); a blank moves on to the next frame. The state
(prediction output, LSTM state, tokens) carries over chunks, so the result does not depend on how the
frames are split. States are never modified in place: ``copy`` is cheap and branches are independent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edge_agent.asr.conformer.ctc import CtcToken

if TYPE_CHECKING:
    from edge_agent.asr.conformer.onnx_model import NemoStreamingModel

MAX_SYMBOLS_PER_FRAME = 10
"""NeMo's ``greedy.max_symbols`` and sherpa-onnx's default."""


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return np.asarray(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)))


class TransducerGreedy:
    """Incremental RNN-T greedy search; tokens carry their joint log-prob and entropy (confidence)."""

    def __init__(self, model: NemoStreamingModel, max_symbols: int = MAX_SYMBOLS_PER_FRAME) -> None:
        self.model = model
        self.blank = model.vocabulary.blank
        self.max_symbols = max_symbols
        # The prediction net is primed with the blank id and zero states (NeMo's blank_as_pad start).
        self._pred, self._state = model.predict(self.blank, None)
        self._tokens: list[CtcToken] = []
        self._frames = 0

    @property
    def tokens(self) -> list[CtcToken]:
        return list(self._tokens)

    @property
    def frames(self) -> int:
        return self._frames

    def copy(self) -> TransducerGreedy:
        other = object.__new__(TransducerGreedy)
        other.model, other.blank, other.max_symbols = self.model, self.blank, self.max_symbols
        other._pred, other._state = self._pred, self._state
        other._tokens = list(self._tokens)
        other._frames = self._frames
        return other

    def accept(self, encoder: np.ndarray) -> None:
        """Decode the next encoder frames [k, D]."""
        t = 0
        emitted = 0  # tokens emitted at frame t so far
        while t < len(encoder):
            # Score every remaining frame against the current prediction in one joint call: most frames
            # are blank, so this finds the next emission with one call instead of one per frame.
            logprobs = _log_softmax(self.model.joint(encoder[t:], self._pred))
            best = logprobs.argmax(axis=1)
            first = 1 if emitted >= self.max_symbols else 0  # frame t has had its maximum: move on
            voiced = np.flatnonzero(best[first:] != self.blank) + first
            if not len(voiced):
                break
            k = int(voiced[0])
            if k > 0:
                emitted = 0
            token_id = int(best[k])
            row = logprobs[k]
            entropy = float(-(np.exp(row) * row).sum())
            self._tokens.append(CtcToken(token_id, self._frames + t + k, float(row[token_id]), entropy))
            self._pred, self._state = self.model.predict(token_id, self._state)
            t += k
            emitted += 1
        self._frames += len(encoder)


class TdtGreedy(TransducerGreedy):
    """Greedy search of a Token-and-Duration Transducer (NeMo's TDT; sherpa-onnx's ``DecodeOneTDT``).

    The joint's output is the token logits (blank last) followed by one logit per duration in
    ``model.durations``: each step emits the best token (unless blank) and moves ``duration`` frames on.
    Guards as in NeMo and sherpa-onnx: a blank with duration 0 moves one frame; after ``max_symbols``
    tokens on one frame the search moves one frame. A duration may reach past the chunk: the overshoot
    carries into the next chunk, so chunking does not change the result.
    """

    def __init__(self, model: NemoStreamingModel, max_symbols: int = MAX_SYMBOLS_PER_FRAME) -> None:
        super().__init__(model, max_symbols)
        self.durations = tuple(model.durations)
        self._carry = 0  # frames of the next chunk that a duration already skipped
        self._on_frame = 0  # tokens emitted on the current frame

    def copy(self) -> TdtGreedy:
        other = object.__new__(TdtGreedy)
        other.__dict__.update(self.__dict__)
        other._tokens = list(self._tokens)
        return other

    def accept(self, encoder: np.ndarray) -> None:
        n, classes = len(encoder), self.blank + 1
        t = self._carry
        while t < n:
            # Score every remaining frame against the current prediction: blanks only move in time, so
            # the rows stay valid until the next emission (one joint call per emission).
            logits = self.model.joint(encoder[t:], self._pred)
            base, emitted = t, False
            while t < n and not emitted:
                row = logits[t - base]
                token_lp = _log_softmax(row[:classes])
                token_id = int(token_lp.argmax())
                skip = self.durations[int(row[classes:].argmax())]
                if token_id != self.blank:
                    entropy = float(-(np.exp(token_lp) * token_lp).sum())
                    token = CtcToken(token_id, self._frames + t, float(token_lp[token_id]), entropy)
                    self._tokens.append(token)
                    self._pred, self._state = self.model.predict(token_id, self._state)
                    self._on_frame += 1
                    emitted = True
                if skip > 0:
                    self._on_frame = 0
                if self._on_frame >= self.max_symbols or (token_id == self.blank and skip == 0):
                    self._on_frame, skip = 0, 1
                t += skip
        self._carry = t - n
        self._frames += n
