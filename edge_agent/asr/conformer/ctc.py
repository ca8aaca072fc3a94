"""CTC decoding of the encoder's per-frame log-probabilities ([T, V+1], blank = the last id V).

``CtcGreedy`` is the streaming decoder (sherpa-onnx ``online-ctc-greedy-search-decoder.cc``,
``docs/nemo-streaming-format.md`` §7.2): it takes frames as the encoder produces them and keeps one token
per run of equal non-blank argmaxes. ``prefix_beam_search`` gives the n-best of a finished utterance by
summing over alignments, which greedy decoding (one best path) does not.

Both take an optional hotword graph (``edge_agent.asr.hotwords``): greedy decoding adds its bonus to the
labels that would emit a token continuing a phrase and takes back the choices of a phrase it abandons
(going back to that frame), the beam search ranks prefixes with the graph's score. Tokens and
hypotheses keep the model's own log-probs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_agent.asr.hotwords import ROOT, ContextGraph, GreedyBias
from edge_agent.asr.interface import TokenInfo

NEG_INF = -math.inf


@dataclass(frozen=True)
class CtcToken:
    id: int
    frame: int
    """Encoder frame (80 ms each, from the stream start) where the token's run began."""
    logprob: float
    """Best log-prob of the token over the frames of its run."""
    entropy: float
    """Entropy (nats) of the frame distribution at that best frame."""

    def to_info(self) -> TokenInfo:
        return TokenInfo(self.id, self.logprob, self.entropy)


def _check(logprobs: np.ndarray, blank: int) -> np.ndarray:
    frames = np.asarray(logprobs, dtype=np.float64)
    if frames.ndim != 2 or frames.shape[1] != blank + 1:
        raise ValueError(f"expected log-probs [frames, {blank + 1}] (blank {blank} last), got {frames.shape}")
    return frames


def _entropy(logprobs: np.ndarray) -> np.ndarray:
    """Entropy of each row; rows are log-softmax outputs, so exp() is the distribution."""
    p = np.exp(logprobs)
    # p = 0 (log-prob -inf) contributes nothing; 0 * -inf would be NaN.
    terms = np.multiply(p, logprobs, out=np.zeros_like(p), where=p > 0)
    return np.asarray(-terms.sum(axis=1))


class CtcGreedy:
    """Incremental CTC greedy decoding: the same tokens however the frames are split into chunks.

    ``blank`` defaults to the last id of the first frames accepted (NeMo's convention). The frames are
    kept (``logprobs()``) so that a finished utterance's n-best can be searched from them. With
    ``hotwords``, a frame's label is chosen with the graph's bonus on the labels that would emit a
    token continuing a phrase (not on the previous frame's label: repeating it emits nothing); when the
    phrase is abandoned, decoding goes back to the frame of the bonus's first choice in it and decodes
    again from there without that choice (``GreedyBias``), and ``settle`` does the same for a phrase
    still unfinished when the utterance ends."""

    def __init__(self, blank: int | None = None, hotwords: ContextGraph | None = None) -> None:
        self.blank = blank
        self.hotwords = hotwords
        self._bias = GreedyBias(hotwords) if hotwords is not None else None
        # Tokens and the previous label before each choice a take-back may undo, by frame.
        self._snapshots: dict[int, tuple[list[CtcToken], int | None]] = {}
        self._tokens: list[CtcToken] = []
        # Argmax of the last frame seen; a token is emitted when the argmax changes to a non-blank.
        # It carries over chunk boundaries, so a run split by a chunk is still one token.
        self._previous = blank
        self._frames = 0
        # Read-only chunks, shared with copies: copying the list is enough to branch.
        self._chunks: list[np.ndarray] = []

    @property
    def tokens(self) -> list[CtcToken]:
        """The tokens so far (a copy; the tokens themselves are immutable)."""
        return list(self._tokens)

    @property
    def frames(self) -> int:
        """Encoder frames accepted so far."""
        return self._frames

    def logprobs(self) -> np.ndarray:
        """Every frame accepted so far, [frames, V+1] (read-only)."""
        if len(self._chunks) > 1:
            # Join once; later calls (and copies made afterwards) reuse the joined array.
            joined = np.concatenate(self._chunks)
            joined.flags.writeable = False
            self._chunks = [joined]
        if self._chunks:
            return self._chunks[0]
        return np.zeros((0, 0 if self.blank is None else self.blank + 1), np.float32)

    def copy(self) -> CtcGreedy:
        """Independent state with the same history: decode a speculative tail without touching this one."""
        other = CtcGreedy(self.blank, self.hotwords)
        other._bias = self._bias.copy() if self._bias is not None else None
        other._snapshots = dict(self._snapshots)
        other._tokens = list(self._tokens)
        other._previous = self._previous
        other._frames = self._frames
        other._chunks = list(self._chunks)
        return other

    def accept(self, logprobs: np.ndarray) -> None:
        """Decode ``logprobs`` [k, V+1], the next k frames (k may be 0)."""
        if self.blank is None:
            shape = np.shape(logprobs)
            if len(shape) != 2 or shape[1] < 1:
                raise ValueError(f"expected log-probs [frames, V+1], got {shape}")
            self.blank = self._previous = shape[1] - 1
        frames = _check(logprobs, self.blank)
        if len(frames) == 0:
            return
        kept = np.array(logprobs)  # a copy: the caller may reuse its buffer
        kept.flags.writeable = False
        self._chunks.append(kept)
        if self._bias is not None:
            self._frames += len(frames)
            self._decode_from(self._frames - len(frames), self._bias)
            return
        best = frames.argmax(axis=1)
        voiced = np.flatnonzero(best != self.blank)
        # Entropies only where a token may be emitted or updated: most frames are blank.
        entropies = dict(zip(voiced.tolist(), _entropy(frames[voiced]).tolist(), strict=True))
        for t, token_id in enumerate(best.tolist()):
            if token_id != self.blank:
                logprob = float(frames[t, token_id])
                if token_id != self._previous:
                    self._tokens.append(CtcToken(token_id, self._frames + t, logprob, entropies[t]))
                elif logprob > self._tokens[-1].logprob:
                    # The run goes on: keep its best frame (strictly better, so ties keep the first).
                    first = self._tokens[-1].frame
                    self._tokens[-1] = CtcToken(token_id, first, logprob, entropies[t])
            self._previous = token_id
        self._frames += len(frames)

    def _decode_from(self, start: int, bias: GreedyBias) -> None:
        """Greedy decoding with hotwords of the accepted frames from ``start`` on (frame by frame: each
        emission moves the graph's state, and a take-back moves back to an earlier frame)."""
        frames = self.logprobs()
        t = start
        while t < self._frames:
            row = frames[t]
            previous = self._previous
            token_id, forced = bias.choose(row, t, () if previous is None else (previous,))
            if token_id != self.blank and token_id != previous:
                back = bias.accept(t, token_id, forced)
                if back is not None:
                    t = self._rewind(back, bias)
                    continue
                if forced:
                    self._snapshots[t] = (list(self._tokens), previous)
                entropy = float(_entropy(row[None, :])[0])
                self._tokens.append(CtcToken(token_id, t, float(row[token_id]), entropy))
            elif token_id != self.blank and float(row[token_id]) > self._tokens[-1].logprob:
                first = self._tokens[-1].frame
                self._tokens[-1] = CtcToken(
                    token_id, first, float(row[token_id]), float(_entropy(row[None, :])[0])
                )
            self._previous = token_id
            t += 1
        kept = set(bias.pending)
        self._snapshots = {f: v for f, v in self._snapshots.items() if f in kept}

    def _rewind(self, frame: int, bias: GreedyBias) -> int:
        tokens, previous = self._snapshots[frame]
        self._tokens, self._previous = list(tokens), previous
        self._snapshots = {f: v for f, v in self._snapshots.items() if f < frame}
        bias.rewind(frame)
        return frame

    def settle(self) -> None:
        """The utterance ended: take back the choices of a phrase the bonus began and nobody finished
        (decoding the frames since again). Without hotwords, nothing to do."""
        bias = self._bias
        while bias is not None and (back := bias.unfinished()) is not None:
            self._decode_from(self._rewind(back, bias), bias)


def _logaddexp(a: float, b: float) -> float:
    # Scalar log(e^a + e^b) without numpy's per-call overhead (the merge loop calls it per prefix).
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def prefix_beam_search(
    logprobs: np.ndarray,
    blank: int,
    beam: int = 8,
    n_best: int = 4,
    token_prune: int = 8,
    hotwords: ContextGraph | None = None,
) -> list[tuple[tuple[int, ...], float]]:
    """Up to ``n_best`` distinct label sequences and their log-probs (summed over alignments), best first.

    Standard CTC prefix beam search: each prefix keeps the log-prob of its alignments ending in blank and
    ending in its last label; identical prefixes reached different ways are merged. At each frame a
    prefix may be extended only by the ``token_prune`` most likely non-blank labels of that frame; staying
    on its own last label and emitting blank are always considered. With ``beam`` at least the number of
    reachable prefixes and ``token_prune`` = V the result is exact.

    With ``hotwords`` a prefix may also be extended by the labels that continue a phrase from its place
    in the graph, and prefixes are ranked by their log-prob plus the graph's score of their labels (a
    phrase left unfinished at the end gives its bonus back); the log-probs returned are the model's."""
    if beam < 1 or n_best < 1 or token_prune < 1:
        raise ValueError(f"beam, n_best and token_prune must be >= 1 (got {beam}, {n_best}, {token_prune})")
    frames = _check(logprobs, blank)
    k = min(token_prune, blank)
    # Candidate labels of every frame at once (unordered top-k; blank is not among them).
    candidates = np.argpartition(frames[:, :blank], blank - k, axis=1)[:, blank - k :] if k else None
    # A prefix's labels fix its place in the graph and its score there: (state, score) per prefix.
    context: dict[tuple[int, ...], tuple[int, float]] = {(): (ROOT, 0.0)}

    prefixes: list[tuple[int, ...]] = [()]
    ends_blank = np.array([0.0])  # log P(alignments of the prefix ending in blank)
    ends_label = np.array([NEG_INF])  # ... ending in the prefix's last label
    for t in range(len(frames)):
        row = frames[t]
        last = np.array([p[-1] if p else -1 for p in prefixes])
        total = np.logaddexp(ends_blank, ends_label)
        # Same prefix: a blank after anything, or the last label repeated without a blank in between.
        stay_blank = total + row[blank]
        stay_label = np.where(last >= 0, ends_label + row[np.maximum(last, 0)], NEG_INF)
        merged: dict[tuple[int, ...], list[float]] = {
            p: [b, n] for p, b, n in zip(prefixes, stay_blank.tolist(), stay_label.tolist(), strict=True)
        }
        if candidates is not None:
            labels = candidates[t]
            # A repeated label starts a new token only after a blank; any other label after either.
            extend = np.where(labels[None, :] == last[:, None], ends_blank[:, None], total[:, None])
            extend = extend + row[labels][None, :]
            for prefix, scores in zip(prefixes, extend.tolist(), strict=True):
                for label, score in zip(labels.tolist(), scores, strict=True):
                    _extend(merged, prefix, label, score)
            if hotwords is not None:
                for i, prefix in enumerate(prefixes):
                    for label in hotwords.boost(context[prefix][0]).tolist():
                        if label < blank and label not in labels:
                            base = ends_blank[i] if prefix and label == prefix[-1] else total[i]
                            _extend(merged, prefix, label, float(base + row[label]))
        if hotwords is not None:
            for key in merged:
                if key not in context:
                    state, score = context[key[:-1]]
                    gain, after = hotwords.step(state, key[-1])
                    context[key] = (after, score + gain)
        prefixes, ends_blank, ends_label = _prune(merged, beam, context if hotwords is not None else None)
        if hotwords is not None:
            context = {p: context[p] for p in prefixes}  # only survivors are extended next
    totals = np.logaddexp(ends_blank, ends_label).tolist()
    results = [(p, s) for p, s in zip(prefixes, totals, strict=True) if s > NEG_INF]
    if hotwords is not None:
        # The final ranking settles unfinished phrases (their bonus goes back).
        def ranked(item: tuple[tuple[int, ...], float]) -> float:
            state, score = context[item[0]]
            return item[1] + score + hotwords.finalize(state)

        results.sort(key=ranked, reverse=True)
    return results[:n_best]


def _extend(
    merged: dict[tuple[int, ...], list[float]], prefix: tuple[int, ...], label: int, score: float
) -> None:
    """Add the alignments of ``prefix + (label,)`` ending in ``label`` (log-prob ``score``)."""
    if score == NEG_INF:
        return
    key = (*prefix, label)
    entry = merged.get(key)
    if entry is None:
        merged[key] = [NEG_INF, score]
    else:
        entry[1] = _logaddexp(entry[1], score)


def _prune(
    merged: dict[tuple[int, ...], list[float]],
    beam: int,
    context: dict[tuple[int, ...], tuple[int, float]] | None = None,
) -> tuple[list[tuple[int, ...]], np.ndarray, np.ndarray]:
    """The ``beam`` best prefixes by total log-prob (plus their hotword score), best first (ties keep
    insertion order)."""
    keys = list(merged)
    scores = np.array([merged[k] for k in keys]).reshape(-1, 2)
    rank = np.logaddexp(scores[:, 0], scores[:, 1])
    if context is not None:
        rank = rank + np.array([context[k][1] for k in keys])
    order = np.argsort(-rank, kind="stable")[:beam]
    return [keys[i] for i in order], scores[order, 0], scores[order, 1]
