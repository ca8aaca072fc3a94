"""Greedy decoding with per-token confidences, and the pilot-verified final decode (PASU).

Verification feeds the pilot's tokens through the decoder in ONE teacher-forced pass over the final
audio's encoder output, keeps the prefix the model still agrees with, and continues step by step
from the first disagreement. Because the parallel pass yields the same logits as the sequential
steps, the result equals a plain greedy decode of the final audio.

With hotwords (``edge_agent.asr.hotwords``) both decoders add the bonus to the tokens that continue a
phrase before choosing; verification applies the same bonus along the pilot's tokens, so it still
reproduces the greedy decode. Tokens keep the model's own log-probs and entropies (the confidence
model was fitted on those).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_agent.asr.hotwords import ROOT, ContextGraph, GreedyBias
from edge_agent.asr.interface import Decoded, Hypothesis, StopCheck, TokenInfo
from edge_agent.asr.moonshine.backend import DecoderCache, Encoded, EncoderDecoder


def _info(logprobs: np.ndarray, token: int) -> TokenInfo:
    probs = np.exp(logprobs)
    entropy = float(-(probs * logprobs).sum())
    return TokenInfo(token, float(logprobs[token]), entropy)


def _end_mass(model: EncoderDecoder, logprobs: np.ndarray) -> float:
    """Probability of ending the text at this position (a sentence's end mark or end of sequence)."""
    return float(np.exp(logprobs[list(model.end_ids)]).sum())


def _after_last_word(model: EncoderDecoder, tokens: Sequence[TokenInfo]) -> int:
    """Position of the first of the text's trailing end marks (``len(tokens)``: it has none)."""
    marks = set(model.end_ids)
    i = len(tokens)
    while i > 0 and tokens[i - 1].id in marks:
        i -= 1
    return i


def greedy_decode(
    model: EncoderDecoder,
    encoded: Encoded,
    pilot: Sequence[int] = (),
    stop: StopCheck | None = None,
    hotwords: ContextGraph | None = None,
) -> Decoded:
    """Greedy decode; with ``pilot`` tokens, verify them in one pass first and continue from there.

    ``stop`` is asked after every new token; returning True ends decoding early (an offramp).
    ``hotwords`` biases the choices towards the phrases of the graph (``_biased_decode``)."""
    limit = model.max_tokens(encoded.audio_samples)
    pilot = [t for t in pilot if t != model.eos_id][: limit - 1]
    logprobs, cache = model.prefill(encoded, [model.bos_id, *pilot])
    if hotwords is not None:
        return _biased_decode(model, encoded, pilot, stop, GreedyBias(hotwords), logprobs, cache)
    calls = 1
    tokens: list[TokenInfo] = []
    # Row i of the pass predicts the token after position i; accept pilot tokens while they match.
    agreed = 0
    ends: list[float] = []  # each token's row's P(end), for Decoded.p_end
    for i, expected in enumerate(pilot):
        if int(np.argmax(logprobs[i])) != expected:
            break
        tokens.append(_info(logprobs[i], expected))
        ends.append(_end_mass(model, logprobs[i]))
        agreed += 1
    reused = agreed
    next_logprobs = logprobs[agreed]
    cache = _keep(cache, agreed + 1)
    finished = False
    while len(tokens) < limit:
        token = int(np.argmax(next_logprobs))
        ends.append(_end_mass(model, next_logprobs))
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
    last = _after_last_word(model, tokens)
    p_end = ends[last] if last < len(ends) else None
    return Decoded(tuple(tokens), model.detokenize(ids), finished, calls, reused, p_end=p_end)


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _biased_decode(
    model: EncoderDecoder,
    encoded: Encoded,
    pilot: Sequence[int],
    stop: StopCheck | None,
    bias: GreedyBias,
    pilot_rows: np.ndarray,
    cache: DecoderCache,
) -> Decoded:
    """Greedy decoding with hotwords: the same decisions as ``greedy_decode`` but with the bonus, and
    with the choices of an abandoned phrase taken back (``GreedyBias``), which can move decoding back to
    an earlier position. Each position's row is kept, so going back costs no model call for the row
    there; the next row comes from the pilot's pass while the tokens still follow the pilot, from one
    step on a cache that holds exactly the tokens before, or else from a new parallel pass."""
    limit = model.max_tokens(encoded.audio_samples)
    calls = 1
    fed = list(pilot)
    """The tokens (after BOS) whose keys and values ``cache`` holds."""
    tokens: list[TokenInfo] = []
    rows: list[np.ndarray] = []
    finished = False

    def rewind(position: int) -> None:
        del tokens[position:], rows[position + 1 :]
        bias.rewind(position)

    while True:
        i = len(tokens)
        if i == len(rows):
            ids = [t.id for t in tokens]
            if i < len(pilot_rows) and _common(ids, pilot) >= i:
                rows.append(pilot_rows[i])
            elif _common(fed, ids) >= i - 1:
                cache = _keep(cache, i)
                row, cache = model.step(encoded, cache, ids[-1])
                fed = ids
                rows.append(row)
                calls += 1
            else:
                all_rows, cache = model.prefill(encoded, [model.bos_id, *ids])
                fed = ids
                rows.append(all_rows[i])
                calls += 1
        row = rows[i]
        token, forced = bias.choose(row, i)
        if token == model.eos_id:
            back = bias.unfinished()
            if back is not None:
                rewind(back)
                continue
            finished = True
            break
        back = bias.accept(i, token, forced)
        if back is not None:
            rewind(back)
            continue
        tokens.append(_info(row, token))
        if stop is not None and stop(tokens):
            break
        if len(tokens) >= limit:
            back = bias.unfinished()
            if back is None:
                break
            rewind(back)
    ids = [t.id for t in tokens]
    reused = _common(ids, pilot)
    last = _after_last_word(model, tokens)
    p_end = _end_mass(model, rows[last]) if last < len(rows) else None
    return Decoded(tuple(tokens), model.detokenize(ids), finished, calls, reused, p_end=p_end)


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


def beam_nbest(
    model: EncoderDecoder,
    encoded: Encoded,
    beam: int = 3,
    n_best: int = 3,
    hotwords: ContextGraph | None = None,
) -> list[Hypothesis]:
    """A small beam search: up to ``n_best`` distinct hypotheses ranked by length-normalized log-prob.

    Used only when an utterance is escalated, to send the cloud the edge's alternatives. With
    ``hotwords`` each beam carries its place in the graph: candidates come from the boosted log-probs,
    and the ranking score gains the graph's bonus for tokens inside a phrase and gives it back for a
    phrase left unfinished (``ContextGraph.step``/``finalize``); a hypothesis reports its plain
    log-prob, which is what the cloud's second pass weighs."""
    limit = model.max_tokens(encoded.audio_samples)
    logprobs, cache = model.prefill(encoded, [model.bos_id])
    # Each live beam: (score with the context bonus, plain log-prob, ids, graph state, cache,
    # next-token log-probs).
    beams: list[tuple[float, float, tuple[int, ...], int, DecoderCache, np.ndarray]] = [
        (0.0, 0.0, (), ROOT, cache, logprobs[0])
    ]
    finished: list[tuple[float, float, tuple[int, ...]]] = []
    for _ in range(limit):
        candidates: list[tuple[float, float, int, int, int]] = []
        for index, (score, plain, _, state, _, next_lp) in enumerate(beams):
            pool = next_lp if hotwords is None else hotwords.biased(next_lp, state)
            for token in np.argpartition(pool, -beam)[-beam:]:
                token = int(token)
                if token == model.eos_id:
                    bonus, after = (0.0, ROOT) if hotwords is None else (hotwords.finalize(state), ROOT)
                else:
                    bonus, after = (0.0, ROOT) if hotwords is None else hotwords.step(state, token)
                lp = float(next_lp[token])
                candidates.append((score + lp + bonus, plain + lp, index, token, after))
        candidates.sort(reverse=True)
        survivors: list[tuple[float, float, tuple[int, ...], int, DecoderCache, np.ndarray]] = []
        for score, plain, index, token, after in candidates:
            ids = beams[index][2]
            if token == model.eos_id:
                finished.append((score, plain, ids))
                continue
            if len(survivors) < beam:
                next_lp, grown = model.step(encoded, beams[index][4], token)
                survivors.append((score, plain, (*ids, token), after, grown, next_lp))
        beams = survivors
        best_finished = max((s / max(1, len(i)) for s, _, i in finished), default=-np.inf)
        if not beams or (
            len(finished) >= n_best and all(s / len(i) < best_finished for s, _, i, _, _, _ in beams)
        ):
            break
    for score, plain, ids, state, _, _ in beams:
        finished.append((score + (hotwords.finalize(state) if hotwords is not None else 0.0), plain, ids))
    ranked = sorted(finished, key=lambda item: item[0] / max(1, len(item[2])), reverse=True)
    out: list[Hypothesis] = []
    seen: set[str] = set()
    for _, plain, ids in ranked:
        text = model.detokenize(ids)
        key = " ".join(text.casefold().split())
        if key in seen:
            continue
        seen.add(key)
        out.append(Hypothesis(ids, text, plain))
        if len(out) == n_best:
            break
    return out
