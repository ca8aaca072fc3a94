"""Greedy decoding with per-token confidences, and the pilot-verified final decode (PASU).

Verification feeds the pilot's tokens through the decoder in ONE teacher-forced pass over the final
audio's encoder output, keeps the prefix the model still agrees with, and continues step by step
from the first disagreement. Because the parallel pass yields the same logits as the sequential
steps, the result equals a plain greedy decode of the final audio.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_agent.asr.interface import Decoded, Hypothesis, StopCheck, TokenInfo
from edge_agent.asr.moonshine.backend import DecoderCache, Encoded, EncoderDecoder


def _info(logprobs: np.ndarray, token: int) -> TokenInfo:
    probs = np.exp(logprobs)
    entropy = float(-(probs * logprobs).sum())
    return TokenInfo(token, float(logprobs[token]), entropy)


def greedy_decode(
    model: EncoderDecoder,
    encoded: Encoded,
    pilot: Sequence[int] = (),
    stop: StopCheck | None = None,
) -> Decoded:
    """Greedy decode; with ``pilot`` tokens, verify them in one pass first and continue from there.

    ``stop`` is asked after every new token; returning True ends decoding early (an offramp)."""
    limit = model.max_tokens(encoded.audio_samples)
    pilot = [t for t in pilot if t != model.eos_id][: limit - 1]
    logprobs, cache = model.prefill(encoded, [model.bos_id, *pilot])
    calls = 1
    tokens: list[TokenInfo] = []
    # Row i of the pass predicts the token after position i; accept pilot tokens while they match.
    agreed = 0
    for i, expected in enumerate(pilot):
        if int(np.argmax(logprobs[i])) != expected:
            break
        tokens.append(_info(logprobs[i], expected))
        agreed += 1
    reused = agreed
    next_logprobs = logprobs[agreed]
    cache = _keep(cache, agreed + 1)
    finished = False
    while len(tokens) < limit:
        token = int(np.argmax(next_logprobs))
        if token == model.eos_id:
            finished = True
            break
        tokens.append(_info(next_logprobs, token))
        if stop is not None and stop(tokens):
            break
        if len(tokens) >= limit:
            break
        next_logprobs, cache = model.step(encoded, cache, token)
        calls += 1
    ids = [t.id for t in tokens]
    return Decoded(tuple(tokens), model.detokenize(ids), finished, calls, reused)


def _keep(cache: DecoderCache, length: int) -> DecoderCache:
    return cache if cache.length == length else cache.truncate(length)


def words_of(model: EncoderDecoder, tokens: Sequence[TokenInfo]) -> list[tuple[str, float]]:
    """(word, exp(mean token log-prob)) per word; words begin at the tokenizer's word-start pieces."""
    groups: list[list[TokenInfo]] = []
    for token in tokens:
        if not groups or (model.starts_word(token.id) and model.detokenize([t.id for t in groups[-1]])):
            groups.append([])
        groups[-1].append(token)
    out = []
    for group in groups:
        text = model.detokenize([t.id for t in group])
        if text:
            out.append((text, round(float(np.exp(np.mean([t.logprob for t in group]))), 4)))
    return out


def beam_nbest(model: EncoderDecoder, encoded: Encoded, beam: int = 3, n_best: int = 3) -> list[Hypothesis]:
    """A small beam search: up to ``n_best`` distinct hypotheses ranked by length-normalized log-prob.

    Used only when an utterance is escalated, to send the cloud the edge's alternatives."""
    limit = model.max_tokens(encoded.audio_samples)
    logprobs, cache = model.prefill(encoded, [model.bos_id])
    # Each live beam: (sum logprob, ids, cache, next-token logprobs).
    beams: list[tuple[float, tuple[int, ...], DecoderCache, np.ndarray]] = [(0.0, (), cache, logprobs[0])]
    finished: list[tuple[float, tuple[int, ...]]] = []
    for _ in range(limit):
        candidates: list[tuple[float, int, int]] = []
        for index, (score, _, _, next_lp) in enumerate(beams):
            for token in np.argpartition(next_lp, -beam)[-beam:]:
                candidates.append((score + float(next_lp[token]), index, int(token)))
        candidates.sort(reverse=True)
        survivors: list[tuple[float, tuple[int, ...], DecoderCache, np.ndarray]] = []
        for score, index, token in candidates:
            ids = beams[index][1]
            if token == model.eos_id:
                finished.append((score, ids))
                continue
            if len(survivors) < beam:
                next_lp, grown = model.step(encoded, beams[index][2], token)
                survivors.append((score, (*ids, token), grown, next_lp))
        beams = survivors
        best_finished = max((s / max(1, len(i)) for s, i in finished), default=-np.inf)
        if not beams or (len(finished) >= n_best and all(s / len(i) < best_finished for s, i, _, _ in beams)):
            break
    finished.extend((s, i) for s, i, _, _ in beams)
    ranked = sorted(finished, key=lambda item: item[0] / max(1, len(item[1])), reverse=True)
    out: list[Hypothesis] = []
    seen: set[str] = set()
    for score, ids in ranked:
        text = model.detokenize(ids)
        key = " ".join(text.casefold().split())
        if key in seen:
            continue
        seen.add(key)
        out.append(Hypothesis(ids, text, score))
        if len(out) == n_best:
            break
    return out
