"""RNN-T greedy decoding over a NeMo transducer's encoder frames (sherpa-onnx
``online-transducer-greedy-search-nemo-decoder.cc``, ``docs/nemo-streaming-format.md`` §7.3).

For each encoder frame, the joint scores the frame against the prediction net's output for the tokens
emitted so far; a non-blank argmax is emitted and fed to the prediction net, and the same frame is
scored again (at most ``max_symbols`` tokens per frame); a blank moves on to the next frame. The state
(prediction output, LSTM state, tokens) carries over chunks, so the result does not depend on how the
frames are split. States are never modified in place: ``copy`` is cheap and branches are independent.

With a hotword graph (``edge_agent.asr.hotwords``) each frame's choice is made with the graph's bonus on
the tokens that continue a phrase; emitted tokens keep the joint's own log-prob and entropy. RNN-T
greedy search also takes back the choices of a phrase it abandons (``GreedyBias``: back to the frame of
the bonus's first choice in it, with the prediction net's state of then); TDT search only adds the bonus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edge_agent.asr.conformer.ctc import CtcToken
from edge_agent.asr.hotwords import ROOT, ContextGraph, GreedyBias

if TYPE_CHECKING:
    from edge_agent.asr.conformer.onnx_model import NemoStreamingModel

_LstmState = tuple[np.ndarray, np.ndarray]
MAX_SYMBOLS_PER_FRAME = 10
"""NeMo's ``greedy.max_symbols`` and sherpa-onnx's default."""


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return np.asarray(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)))


class TransducerGreedy:
    """Incremental RNN-T greedy search; tokens carry their joint log-prob and entropy (confidence)."""

    def __init__(
        self,
        model: NemoStreamingModel,
        max_symbols: int = MAX_SYMBOLS_PER_FRAME,
        hotwords: ContextGraph | None = None,
    ) -> None:
        self.model = model
        self.blank = model.vocabulary.blank
        self.max_symbols = max_symbols
        self.hotwords = hotwords
        self._context = ROOT  # the hotword graph's state after the tokens so far (TDT)
        # The prediction net is primed with the blank id and zero states (NeMo's blank_as_pad start).
        self._pred, self._state = model.predict(self.blank, None)
        self._tokens: list[CtcToken] = []
        self._frames = 0
        # With hotwords (RNN-T): the encoder frames so far (a take-back decodes some again), the next
        # decision (frame, tokens emitted on it), and what a take-back restores, by decision.
        self._bias = GreedyBias(hotwords) if hotwords is not None else None
        self._encoded: list[np.ndarray] = []
        self._at = (0, 0)
        self._snapshots: dict[int, tuple[list[CtcToken], np.ndarray, _LstmState, tuple[int, int]]] = {}

    @property
    def tokens(self) -> list[CtcToken]:
        return list(self._tokens)

    @property
    def frames(self) -> int:
        return self._frames

    def copy(self) -> TransducerGreedy:
        other = object.__new__(TransducerGreedy)
        other.model, other.blank, other.max_symbols = self.model, self.blank, self.max_symbols
        other.hotwords, other._context = self.hotwords, self._context
        other._pred, other._state = self._pred, self._state
        other._tokens = list(self._tokens)
        other._frames = self._frames
        other._bias = self._bias.copy() if self._bias is not None else None
        other._encoded, other._at, other._snapshots = list(self._encoded), self._at, dict(self._snapshots)
        return other

    def accept(self, encoder: np.ndarray) -> None:
        """Decode the next encoder frames [k, D]."""
        if self._bias is not None:
            self._encoded.append(np.array(encoder))
            self._frames += len(encoder)
            self._decode(self._bias)
            return
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

    def _decode(self, bias: GreedyBias) -> None:
        """Greedy search with hotwords from the next decision to the last frame: as ``accept`` (one
        joint call per emission), each frame's choice made with the bonus; an emission that abandons a
        phrase the bonus began goes back to that choice instead (``GreedyBias``)."""
        if len(self._encoded) > 1:
            self._encoded = [np.concatenate(self._encoded)]
        encoder = self._encoded[0]
        frame, emitted = self._at
        while frame < len(encoder):
            logprobs = _log_softmax(self.model.joint(encoder[frame:], self._pred))
            for k, row in enumerate(logprobs):
                on_frame = emitted if k == 0 else 0
                if on_frame >= self.max_symbols:
                    continue  # this frame has had its maximum: move on
                # One decision per (frame, token on it): a take-back rules a token out there only.
                position = (frame + k) * (self.max_symbols + 1) + on_frame
                token_id, forced = bias.choose(row, position)
                if token_id == self.blank:
                    continue
                back = bias.accept(position, token_id, forced)
                if back is not None:
                    self._tokens, self._pred, self._state, (frame, emitted) = self._rewind(back, bias)
                    break
                if forced:
                    self._snapshots[position] = (
                        list(self._tokens),
                        self._pred,
                        self._state,
                        (frame + k, on_frame),
                    )
                entropy = float(-(np.exp(row) * row).sum())
                self._tokens.append(CtcToken(token_id, frame + k, float(row[token_id]), entropy))
                self._pred, self._state = self.model.predict(token_id, self._state)
                frame, emitted = frame + k, on_frame + 1
                break
            else:
                frame, emitted = len(encoder), 0
        self._at = (frame, emitted)
        kept = set(bias.pending)
        self._snapshots = {p: v for p, v in self._snapshots.items() if p in kept}

    def _rewind(
        self, position: int, bias: GreedyBias
    ) -> tuple[list[CtcToken], np.ndarray, _LstmState, tuple[int, int]]:
        tokens, pred, state, at = self._snapshots[position]
        self._snapshots = {p: v for p, v in self._snapshots.items() if p < position}
        bias.rewind(position)
        return list(tokens), pred, state, at

    def settle(self) -> None:
        """The utterance ended: take back the choices of a phrase the bonus began and nobody finished
        (decoding the frames since again). Without hotwords, nothing to do."""
        bias = self._bias
        while bias is not None and (back := bias.unfinished()) is not None:
            self._tokens, self._pred, self._state, self._at = self._rewind(back, bias)
            self._decode(bias)


class TdtGreedy(TransducerGreedy):
    """Greedy search of a Token-and-Duration Transducer (NeMo's TDT; sherpa-onnx's ``DecodeOneTDT``).

    The joint's output is the token logits (blank last) followed by one logit per duration in
    ``model.durations``: each step emits the best token (unless blank) and moves ``duration`` frames on.
    Guards as in NeMo and sherpa-onnx: a blank with duration 0 moves one frame; after ``max_symbols``
    tokens on one frame the search moves one frame. A duration may reach past the chunk: the overshoot
    carries into the next chunk, so chunking does not change the result.
    """

    def __init__(
        self,
        model: NemoStreamingModel,
        max_symbols: int = MAX_SYMBOLS_PER_FRAME,
        hotwords: ContextGraph | None = None,
    ) -> None:
        super().__init__(model, max_symbols, hotwords)
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
                token_id = (
                    int(token_lp.argmax())
                    if self.hotwords is None
                    else self.hotwords.argmax(token_lp, self._context)
                )
                skip = self.durations[int(row[classes:].argmax())]
                if token_id != self.blank:
                    entropy = float(-(np.exp(token_lp) * token_lp).sum())
                    token = CtcToken(token_id, self._frames + t, float(token_lp[token_id]), entropy)
                    self._tokens.append(token)
                    self._follow(token_id)
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

    def _follow(self, token_id: int) -> None:
        if self.hotwords is not None:
            self._context = self.hotwords.step(self._context, token_id)[1]
