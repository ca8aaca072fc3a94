"""Conformer vocabulary and CTC decoding: tokens.txt, text, words, greedy runs, prefix beam vs brute force."""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.asr.conformer.ctc import CtcGreedy, CtcToken, prefix_beam_search
from edge_agent.asr.conformer.tokens import Vocabulary
from edge_agent.asr.interface import TokenInfo

PIECES = (
    "<unk>",  # 0
    "▁hel",  # 1
    "lo",  # 2
    "▁wor",  # 3
    "ld",  # 4
    "▁",  # 5
    "<0xC3>",  # 6
    "<0xA9>",  # 7
    "▁caf",  # 8
    "<s>",  # 9
    "</s>",  # 10
    "<pad>",  # 11
    "<0xFF>",  # 12
    "<0xE2>",  # 13
    "<0x82>",  # 14
    "<0xAC>",  # 15
    "<blk>",  # 16
)


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary.from_pieces(PIECES)


def write_tokens(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "tokens.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --- tokens.txt ---------------------------------------------------------------------------------


def test_from_file_parses_pieces_and_blank(tmp_path: Path) -> None:
    path = write_tokens(tmp_path, ["<unk> 0", "▁the 1", "s 2", "<0x41> 3", "<blk> 4"])
    vocab = Vocabulary.from_file(path)
    assert vocab.pieces == ("<unk>", "▁the", "s", "<0x41>", "<blk>")
    assert vocab.blank == 4
    assert len(vocab) == 5


def test_from_file_accepts_ids_in_any_order_and_blank_lines(tmp_path: Path) -> None:
    path = write_tokens(tmp_path, ["▁the 1", "", "<blk> 2", "<unk> 0", ""])
    assert Vocabulary.from_file(path) == Vocabulary(("<unk>", "▁the", "<blk>"), 2)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["<unk> 0", "▁a 1", "▁b 3", "<blk> 4"], "contiguous 0..3; missing \\[2\\]"),
        (["<unk> 1", "▁a 2", "<blk> 3"], "contiguous 0..2; missing \\[0\\]"),
        (["<unk> 0", "▁a 1", "▁b 1", "<blk> 2"], "id 1 appears twice"),
        (["<unk> 0", "▁a 1", "▁b 2"], "no <blk>"),
        (["<unk> 0", "<blk> 1", "▁a 2"], "<blk> must be the last id \\(2\\), found at 1"),
        (["<unk> 0", "▁a", "<blk> 2"], ":2: expected '<piece> <id>'"),
        (["<unk> 0", " 1", "<blk> 2"], ":2: expected '<piece> <id>'"),
        (["<unk> zero", "<blk> 1"], ":1: expected '<piece> <id>'"),
    ],
)
def test_from_file_rejects_bad_files(tmp_path: Path, lines: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Vocabulary.from_file(write_tokens(tmp_path, lines))


def test_from_pieces_requires_blank_last() -> None:
    assert Vocabulary.from_pieces(["<unk>", "<blk>"]).blank == 1
    with pytest.raises(ValueError, match="no <blk>"):
        Vocabulary.from_pieces(["<unk>", "▁a"])
    with pytest.raises(ValueError, match="must be the last"):
        Vocabulary.from_pieces(["<blk>", "▁a", "<blk>"])


# --- text ---------------------------------------------------------------------------------------


def test_decode_joins_pieces_at_word_starts(vocab: Vocabulary) -> None:
    assert vocab.decode([1, 2, 3, 4]) == "hello world"
    assert vocab.decode([2, 3]) == "lo wor"
    assert vocab.decode([]) == ""


def test_decode_skips_special_pieces_and_collapses_spaces(vocab: Vocabulary) -> None:
    assert vocab.decode([9, 1, 0, 2, 5, 5, 3, 11, 4, 10, 16]) == "hello world"
    assert vocab.decode([5, 5, 0]) == ""


def test_decode_byte_fallback(vocab: Vocabulary) -> None:
    assert vocab.decode([8, 6, 7]) == "café"
    assert vocab.decode([5, 13, 14, 15, 2]) == "€lo"
    # A byte that is not UTF-8 on its own becomes U+FFFD instead of failing the utterance.
    assert vocab.decode([1, 12, 2]) == "hel\ufffdlo"


def test_decode_rejects_ids_outside_vocabulary(vocab: Vocabulary) -> None:
    with pytest.raises(ValueError, match="token id 17 outside"):
        vocab.decode([1, 17])
    with pytest.raises(ValueError, match="token id -1 outside"):
        vocab.decode([-1])


def test_word_groups(vocab: Vocabulary) -> None:
    assert vocab.word_groups([1, 2, 3, 4]) == [("hello", [0, 1]), ("world", [2, 3])]
    # The first piece starts a word even without "▁".
    assert vocab.word_groups([2, 3, 4]) == [("lo", [0]), ("world", [1, 2])]
    assert vocab.word_groups([]) == []


def test_word_groups_skip_special_pieces_and_keep_bytes_together(vocab: Vocabulary) -> None:
    ids = [9, 1, 0, 2, 8, 6, 7, 5, 13, 14, 15, 5, 16]
    groups = vocab.word_groups(ids)
    assert groups == [("hello", [1, 3]), ("café", [4, 5, 6]), ("€", [7, 8, 9, 10])]
    assert " ".join(text for text, _ in groups) == vocab.decode(ids)


# --- greedy ---------------------------------------------------------------------------------------

BLANK = 3  # three labels (0, 1, 2), blank last


def peaked(path: list[int], p: float = 0.7, width: int = BLANK + 1) -> np.ndarray:
    """Log-probs with ``p`` on the given id of each frame and the rest spread evenly."""
    probs = np.full((len(path), width), (1.0 - p) / (width - 1))
    probs[np.arange(len(path)), path] = p
    return np.log(probs)


def ids(tokens: list[CtcToken]) -> list[int]:
    return [t.id for t in tokens]


def test_greedy_collapses_runs_and_blank_separated_repeats() -> None:
    greedy = CtcGreedy(BLANK)
    greedy.accept(peaked([0, 0, 3, 0, 1, 1, 3, 3, 2, 2]))
    assert ids(greedy.tokens) == [0, 0, 1, 2]
    assert [t.frame for t in greedy.tokens] == [0, 3, 4, 8]
    assert greedy.frames == 10


def test_greedy_repeats_without_blank_are_one_token() -> None:
    greedy = CtcGreedy(BLANK)
    greedy.accept(peaked([1, 1, 1, 2, 1]))
    assert ids(greedy.tokens) == [1, 2, 1]
    assert [t.frame for t in greedy.tokens] == [0, 3, 4]


def test_greedy_all_blank_and_empty_chunks() -> None:
    greedy = CtcGreedy(BLANK)
    greedy.accept(np.zeros((0, BLANK + 1), np.float32))
    greedy.accept(peaked([3, 3, 3]))
    assert greedy.tokens == []
    assert greedy.frames == 3


def test_greedy_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match=r"expected log-probs \[frames, 4\]"):
        CtcGreedy(BLANK).accept(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="expected log-probs"):
        CtcGreedy(BLANK).accept(np.zeros(4))


def test_greedy_token_keeps_best_frame_of_its_run() -> None:
    probs = np.array(
        [
            [0.5, 0.25, 0.125, 0.125],  # run of 0 starts
            [0.7, 0.1, 0.1, 0.1],  # best frame of the run
            [0.6, 0.2, 0.1, 0.1],  # worse: ignored
            [0.7, 0.0, 0.2, 0.1],  # as good as the best: the first one stays
            [0.1, 0.1, 0.1, 0.7],  # blank ends the run
            [0.25, 0.25, 0.5, 0.0],  # token 2; a zero probability must not make the entropy NaN
        ]
    )
    with np.errstate(divide="ignore"):
        logprobs = np.log(probs)
    greedy = CtcGreedy(BLANK)
    greedy.accept(logprobs)
    first, second = greedy.tokens
    assert (first.id, first.frame, first.logprob) == (0, 0, float(np.log(0.7)))
    assert first.entropy == pytest.approx(-(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1)), rel=1e-12)
    assert (second.id, second.frame, second.logprob) == (2, 5, float(np.log(0.5)))
    assert second.entropy == pytest.approx(1.5 * math.log(2), rel=1e-12)
    assert second.to_info() == TokenInfo(2, float(np.log(0.5)), second.entropy)


def random_logprobs(rng: np.random.Generator, frames: int, width: int, blank_bias: float) -> np.ndarray:
    """Peaky log-softmax frames with long runs and many blanks, like a CTC model's output."""
    logits = rng.normal(0.0, 3.0, (frames, width))
    logits[:, -1] += blank_bias
    # Hold each frame's logits for a few frames so that runs cross chunk boundaries.
    logits = np.repeat(logits[: frames // 3 + 1], 3, axis=0)[:frames] + rng.normal(0.0, 0.5, (frames, width))
    shifted = logits - logits.max(axis=1, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))).astype(np.float32)


def test_greedy_incremental_equals_batch() -> None:
    rng = np.random.default_rng(7)
    logprobs = random_logprobs(rng, 600, 9, blank_bias=2.0)
    batch = CtcGreedy(8)
    batch.accept(logprobs)
    assert len(batch.tokens) > 50  # the data has tokens, runs and blanks to get wrong
    for sizes in ([1], [2], [7], [13, 0, 1, 50]):
        greedy = CtcGreedy(8)
        start = 0
        for size in itertools.cycle(sizes):
            if start >= len(logprobs):
                break
            greedy.accept(logprobs[start : start + size])
            start += size
        assert greedy.tokens == batch.tokens
        assert greedy.frames == batch.frames


def test_greedy_copy_is_independent() -> None:
    head = peaked([3, 1, 1], p=0.6)
    tail = peaked([1, 2, 3], p=0.9)  # continues the run of 1 with a better frame
    greedy = CtcGreedy(BLANK)
    greedy.accept(head)
    before = greedy.tokens
    speculative = greedy.copy()
    speculative.accept(tail)
    assert ids(speculative.tokens) == [1, 2]
    assert speculative.tokens[0].logprob == float(np.log(0.9))
    assert greedy.tokens == before
    assert greedy.frames == 3
    # The original goes on exactly as if no copy had been made.
    greedy.accept(tail)
    assert greedy.tokens == speculative.tokens
    reference = CtcGreedy(BLANK)
    reference.accept(np.concatenate([head, tail]))
    assert greedy.tokens == reference.tokens


def test_greedy_blank_defaults_to_the_last_id() -> None:
    greedy = CtcGreedy()
    assert greedy.logprobs().shape == (0, 0)
    greedy.accept(peaked([0, 3, 3, 2]))
    assert greedy.blank == BLANK
    assert ids(greedy.tokens) == [0, 2]
    with pytest.raises(ValueError, match=r"expected log-probs \[frames, 4\]"):
        greedy.accept(np.zeros((1, 5)))
    with pytest.raises(ValueError, match=r"expected log-probs \[frames, V\+1\]"):
        CtcGreedy().accept(np.zeros(4))


def test_greedy_keeps_the_frames_for_n_best() -> None:
    first, second = peaked([0, 3]).astype(np.float32), peaked([1, 1, 2]).astype(np.float32)
    greedy = CtcGreedy(BLANK)
    assert greedy.logprobs().shape == (0, BLANK + 1)
    greedy.accept(first)
    branch = greedy.copy()
    greedy.accept(np.zeros((0, BLANK + 1), np.float32))
    greedy.accept(second)
    second[:] = 0.0  # the caller reusing its buffer changes nothing
    kept = greedy.logprobs()
    assert kept.dtype == np.float32
    assert not kept.flags.writeable
    np.testing.assert_array_equal(kept, np.concatenate([first, peaked([1, 1, 2]).astype(np.float32)]))
    assert greedy.logprobs() is kept  # joined once
    np.testing.assert_array_equal(branch.logprobs(), first)


def test_greedy_tokens_returns_a_copy() -> None:
    greedy = CtcGreedy(BLANK)
    greedy.accept(peaked([0, 1]))
    greedy.tokens.clear()
    assert ids(greedy.tokens) == [0, 1]


# --- prefix beam search ---------------------------------------------------------------------------


def brute_force(logprobs: np.ndarray, blank: int) -> dict[tuple[int, ...], float]:
    """log P(labels) for every label sequence, summing every alignment of the T frames."""
    paths: dict[tuple[int, ...], list[float]] = {}
    frames, width = logprobs.shape
    for path in itertools.product(range(width), repeat=frames):
        labels = tuple(s for i, s in enumerate(path) if s != blank and (i == 0 or path[i - 1] != s))
        score = sum(float(logprobs[t, s]) for t, s in enumerate(path))
        paths.setdefault(labels, []).append(score)
    return {labels: float(np.logaddexp.reduce(scores)) for labels, scores in paths.items()}


def classic() -> np.ndarray:
    """Two frames where blank wins each frame but "a" wins overall: .35² + 2·.35·.6 = .5425 > .6² = .36."""
    return np.log(np.array([[0.35, 0.05, 0.6], [0.35, 0.05, 0.6]]))


def test_prefix_beam_sums_paths_where_greedy_and_best_path_lose() -> None:
    logprobs = classic()
    exact = brute_force(logprobs, blank=2)
    greedy = CtcGreedy(2)
    greedy.accept(logprobs)
    assert greedy.tokens == []  # greedy (and the best single path, blank blank) say nothing
    paths = itertools.product(range(3), repeat=2)
    best_path = max(paths, key=lambda p: logprobs[0, p[0]] + logprobs[1, p[1]])
    assert best_path == (2, 2)

    results = prefix_beam_search(logprobs, blank=2)
    winner, score = results[0]
    assert winner == (0,)
    assert max(exact, key=lambda k: exact[k]) == (0,)
    assert score == pytest.approx(exact[(0,)], abs=1e-12)
    assert score == pytest.approx(math.log(0.5425), abs=1e-12)
    assert results[1][0] == ()
    assert results[1][1] == pytest.approx(math.log(0.36), abs=1e-12)


def test_prefix_beam_equals_brute_force_when_nothing_is_pruned() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 1.5, (5, 4))
    logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    exact = brute_force(logprobs, blank=3)
    # At most 3⁰ + ... + 3⁵ = 364 label sequences of 5 frames: a beam of 400 keeps all of them.
    results = prefix_beam_search(logprobs, blank=3, beam=400, n_best=400, token_prune=3)
    assert {labels for labels, _ in results} == set(exact)
    for labels, score in results:
        assert score == pytest.approx(exact[labels], abs=1e-12)
    scores = [score for _, score in results]
    assert scores == sorted(scores, reverse=True)
    assert math.fsum(math.exp(s) for s in scores) == pytest.approx(1.0, abs=1e-12)


def test_prefix_beam_repeated_labels_need_a_blank_between() -> None:
    separated = peaked([0, 3, 0], p=0.9)
    (labels, score), *_ = prefix_beam_search(separated, blank=BLANK)
    assert labels == (0, 0)
    assert score == pytest.approx(brute_force(separated, BLANK)[(0, 0)], abs=1e-12)

    run = peaked([0, 0, 0], p=0.9)
    results = prefix_beam_search(run, blank=BLANK, n_best=8)
    exact = brute_force(run, BLANK)
    assert results[0][0] == (0,)
    assert results[0][1] == pytest.approx(exact[(0,)], abs=1e-12)
    # (0, 0) is still reachable (0 blank 0) and gets exactly its alignments' mass.
    assert dict(results)[(0, 0)] == pytest.approx(exact[(0, 0)], abs=1e-12)


def test_prefix_beam_n_best_is_distinct_and_sorted() -> None:
    rng = np.random.default_rng(11)
    logprobs = random_logprobs(rng, 40, 9, blank_bias=1.0)
    results = prefix_beam_search(logprobs, blank=8, beam=8, n_best=4)
    assert len(results) == 4
    assert len({labels for labels, _ in results}) == 4
    scores = [score for _, score in results]
    assert scores == sorted(scores, reverse=True)
    assert all(math.isfinite(s) for s in scores)
    # The n-best are the head of a longer list from the same beam.
    assert prefix_beam_search(logprobs, blank=8, beam=8, n_best=8)[:4] == results


def test_prefix_beam_of_one_keeps_the_best_prefix_per_frame() -> None:
    # Beam 1 cannot keep "a" alive at the first frame (.35 < .6), so it ends with the best path's answer.
    results = prefix_beam_search(classic(), blank=2, beam=1, n_best=4)
    assert results == [((), pytest.approx(math.log(0.36), abs=1e-12))]
    # On confident frames it is greedy decoding.
    logprobs = peaked([0, 0, 3, 0, 1, 2], p=0.8)
    greedy = CtcGreedy(BLANK)
    greedy.accept(logprobs)
    ((labels, score),) = prefix_beam_search(logprobs, blank=BLANK, beam=1)
    assert list(labels) == ids(greedy.tokens) == [0, 0, 1, 2]
    assert score <= brute_force(logprobs, BLANK)[labels] + 1e-12


def test_prefix_beam_token_prune_limits_new_labels() -> None:
    # Label 1 is never the best non-blank label of a frame, so with one candidate no prefix has it.
    results = prefix_beam_search(classic(), blank=2, beam=8, n_best=8, token_prune=1)
    assert [labels for labels, _ in results] == [(0,), ()]
    assert results[0][1] == pytest.approx(math.log(0.5425), abs=1e-12)
    full = prefix_beam_search(classic(), blank=2, beam=8, n_best=8, token_prune=2)
    assert {labels for labels, _ in full} == set(brute_force(classic(), 2))
    assert len(full) == 5  # (), (0,), (1,), (0, 1), (1, 0)


def test_prefix_beam_edge_cases() -> None:
    assert prefix_beam_search(np.zeros((0, 4), np.float32), blank=3) == [((), 0.0)]
    # float32 input (the model's) is accepted.
    ((labels, _),) = prefix_beam_search(peaked([1, 3]).astype(np.float32), blank=3, n_best=1)
    assert labels == (1,)
    with pytest.raises(ValueError, match="must be >= 1"):
        prefix_beam_search(classic(), blank=2, beam=0)
    with pytest.raises(ValueError, match="must be >= 1"):
        prefix_beam_search(classic(), blank=2, n_best=0)
    with pytest.raises(ValueError, match=r"expected log-probs \[frames, 4\]"):
        prefix_beam_search(classic(), blank=3)


def test_prefix_beam_is_fast_enough_for_an_utterance() -> None:
    # 100 frames (8 s), 256 pieces + blank, beam 8: the n-best must cost little next to the final decode.
    logprobs = random_logprobs(np.random.default_rng(5), 100, 257, blank_bias=4.0)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        results = prefix_beam_search(logprobs, blank=256, beam=8, n_best=4)
        timings.append(time.perf_counter() - start)
    assert len(results) == 4
    assert min(timings) < 0.05
