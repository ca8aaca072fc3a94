"""Hotwords on the edge: the context graph (``edge_agent.asr.hotwords``), the tokenizations that feed it
and the decoders that use it, on scripted log-probs (exact asserts, no model runs)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from edge_agent.asr.conformer.ctc import CtcGreedy, prefix_beam_search
from edge_agent.asr.conformer.stream import BUNDLED
from edge_agent.asr.conformer.tokens import Vocabulary
from edge_agent.asr.conformer.transducer import TransducerGreedy
from edge_agent.asr.hotwords import (
    MAX_TAKE_BACKS,
    ROOT,
    ContextGraph,
    GraphCache,
    GreedyBias,
    merge_hotwords,
    spellings,
    token_variants,
    validate_hotwords,
)
from edge_agent.asr.moonshine.backend import DecoderCache, Encoded
from edge_agent.asr.moonshine.decoding import beam_nbest, greedy_decode
from tests.test_transducer_greedy import ScriptedModel, _frames


def graph(*phrases: Sequence[int], bonus: float = 1.0) -> ContextGraph:
    return ContextGraph([(tuple(p), "".join(map(str, p))) for p in phrases], bonus)


def walk(g: ContextGraph, tokens: Sequence[int]) -> tuple[float, int]:
    """Total score change of emitting ``tokens`` (then ending), and the state before the end."""
    state, total = ROOT, 0.0
    for token in tokens:
        gain, state = g.step(state, token)
        total += gain
    return total + g.finalize(state), state


# -- validation --------------------------------------------------------------------------------------


def test_validate_trims_and_drops_repeats() -> None:
    assert validate_hotwords(["  Kubernetes ", "Dr.  Okonkwo", "Kubernetes"]) == ("Kubernetes", "Dr. Okonkwo")
    assert validate_hotwords([]) == ()
    assert validate_hotwords(("a",) * 100) == ("a",)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("Kubernetes", "must be a list of strings"),
        ({"a": 1}, "must be a list of strings"),
        (["ok", 3], r"hotwords\[1\] must be a string"),
        (["ok", "   "], r"hotwords\[1\] is empty"),
        (["x" * 60], r"hotwords\[0\] is longer than 50 characters: 'x{40}'\.\.\."),
        (["a"] * 101, "101 phrases; at most 100"),
    ],
)
def test_validate_refuses(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_hotwords(value)


def test_a_long_phrase_is_quoted_briefly() -> None:
    with pytest.raises(ValueError) as info:
        validate_hotwords(["y" * 5000])
    assert len(str(info.value)) < 150


def test_merge_keeps_the_first_occurrence_first() -> None:
    assert merge_hotwords(["b", "a"], ["a", "c"], []) == ("b", "a", "c")


def test_spellings_add_a_capital_first_letter() -> None:
    assert spellings("kubectl") == ["kubectl", "Kubectl"]
    assert spellings("Okonkwo") == ["Okonkwo"]
    assert token_variants(["ab", "b"], lambda p: [[ord(c) for c in p], [], [ord(p[-1])]]) == [
        ((97, 98), "ab"),
        ((98,), "ab"),
    ]


# -- the graph ---------------------------------------------------------------------------------------


def test_scores_inside_a_path_completed_and_abandoned() -> None:
    g = graph([1, 2, 3], [2, 4], bonus=1.5)
    # Inside a path every token earns the bonus; completing it pays the whole path again.
    assert g.step(ROOT, 1) == (1.5, 1)
    gain, state = g.step(1, 2)
    assert gain == 1.5 and g.depth(state) == 2
    gain, end = g.step(state, 3)
    assert gain == 1.5 + 4.5 and g.matched(end) == "123"
    assert g.finalize(end) == -4.5  # the extra payment is what the end gives back: 4.5 kept
    # Abandoned after two tokens: the 3.0 gained goes back.
    assert walk(g, [1, 2, 7]) == (0.0, ROOT)
    assert walk(g, [1, 2]) == (0.0, state)  # decoding ended inside the path
    # "1 2 4": the failure arc from "1 2" lands on "2", which "4" completes: only "2 4" is kept.
    total, last = walk(g, [1, 2, 4])
    assert total == 3.0 and g.matched(last) == "24"
    assert walk(g, [5, 6]) == (0.0, ROOT)


def test_total_score_is_the_bonus_per_token_of_every_phrase_occurrence() -> None:
    """Aho-Corasick counting: whatever is emitted, the score it ends with is ``bonus`` times the tokens of
    the phrases that occur in it (overlapping occurrences included), checked against brute force."""
    rng = random.Random(7)
    for _ in range(300):
        phrases = {
            tuple(rng.choice("abc") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 4))
        }
        g = ContextGraph([(tuple(map(ord, p)), "".join(p)) for p in phrases], bonus=0.5)
        sequence = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        expected = sum(
            len(p)
            for p in phrases
            for end in range(len(p), len(sequence) + 1)
            if tuple(sequence[end - len(p) : end]) == p
        )
        assert walk(g, list(map(ord, sequence)))[0] == pytest.approx(0.5 * expected), (phrases, sequence)


def test_boost_is_every_token_that_leads_into_the_trie() -> None:
    g = graph([1, 2, 3], [2, 4], [9])
    assert g.boost(ROOT).tolist() == [1, 2, 9]
    one_two = g.step(g.step(ROOT, 1)[1], 2)[1]
    # Continue "1 2 3", or "2 4" through the failure arc to "2", or start any phrase.
    assert g.boost(one_two).tolist() == [1, 2, 3, 4, 9]
    assert g.boost(one_two) is g.boost(one_two)  # cached, read-only
    assert not g.boost(one_two).flags.writeable


def test_argmax_adds_the_bonus_before_choosing() -> None:
    g = graph([3, 4], bonus=2.0)
    row = np.log(np.array([0.05, 0.6, 0.1, 0.2, 0.05]))
    assert g.argmax(row, ROOT) == 3  # log 0.2 + 2 > log 0.6
    assert graph([3, 4], bonus=1.0).argmax(row, ROOT) == 1  # log 0.2 + 1 < log 0.6
    assert g.argmax(row, ROOT, exclude=(3,)) == 1
    assert g.argmax(row, g.step(ROOT, 3)[1]) == 3  # "3 4" goes on with 4 (0.05): 3 restarts, wins
    tie = np.log(np.array([0.5, 0.5 * np.exp(-2.0)]))
    assert graph([1], bonus=2.0).argmax(tie.astype(np.float64), ROOT) == 0  # a tie keeps the plain choice
    biased = g.biased(row[None, :], ROOT)
    assert biased.shape == (1, 5) and biased[0, 3] == pytest.approx(row[3] + 2.0) and biased[0, 1] == row[1]


def test_greedy_bias_takes_back_the_choices_of_an_abandoned_phrase() -> None:
    g = graph([3, 4], [3, 5, 6], bonus=2.0)
    bias = GreedyBias(g)
    row = np.log(np.array([0.6, 0.05, 0.05, 0.2, 0.05, 0.05, 0.0 + 1e-9]))
    # Position 0: the bonus makes 3 beat 0; nothing to take back yet.
    assert bias.choose(row, 0) == (3, True)
    assert bias.accept(0, 3, True) is None and bias.pending == (0,)
    # Position 1: 0 is emitted (plain), which abandons "3 ...": back to position 0.
    assert bias.accept(1, 0, False) == 0
    bias.rewind(0)
    assert bias.state == ROOT and bias.pending == () and bias.take_backs == 1
    assert bias.choose(row, 0) == (0, False)  # 3 is not boosted at position 0 any more
    assert bias.choose(row, 1) == (3, True)  # ... but still elsewhere
    # A phrase completed keeps its choices; a natural choice is never pending.
    bias = GreedyBias(g)
    assert bias.accept(0, 3, True) is None and bias.accept(1, 4, True) is None
    assert bias.pending == () and bias.unfinished() is None and g.matched(bias.state) == "34"
    bias = GreedyBias(g)
    bias.accept(0, 3, False)
    assert bias.accept(1, 5, True) is None and bias.pending == (1,)
    assert bias.unfinished() == 1  # decoding ends inside "3 5 6"
    copy = bias.copy()
    bias.rewind(1)
    assert bias.state == g.step(ROOT, 3)[1] and copy.pending == (1,)


def test_take_backs_are_bounded() -> None:
    g = graph([3, 4], bonus=2.0)
    bias = GreedyBias(g)
    for _ in range(MAX_TAKE_BACKS):
        bias.accept(0, 3, True)
        assert bias.accept(1, 0, False) == 0
        bias.rewind(0)
    row = np.log(np.array([0.6, 0.05, 0.05, 0.2, 0.05]))
    assert bias.choose(row, 5) == (0, False)  # spent: no bonus any more
    bias.accept(0, 3, True)
    assert bias.accept(1, 0, False) is None and bias.unfinished() is None


def test_graph_rejects_a_negative_bonus_and_caches_by_list() -> None:
    with pytest.raises(ValueError, match="bonus must be >= 0"):
        graph([1], bonus=-1.0)
    built: list[tuple[str, ...]] = []

    def build(phrases: tuple[str, ...]) -> ContextGraph:
        built.append(phrases)
        return graph([1])

    cache = GraphCache(build, size=2)
    assert cache.get([]) is None
    first = cache.get(["a"])
    assert cache.get(("a",)) is first
    cache.get(["b"])
    cache.get(["c"])  # the oldest list ("a") goes
    cache.get(["a"])
    assert built == [("a",), ("b",), ("c",), ("a",)]


# -- tokenizations -----------------------------------------------------------------------------------


def test_conformer_vocabulary_segments_phrases_like_its_tokenizer() -> None:
    vocab = Vocabulary.from_file(BUNDLED / "tokens.txt")

    def pieces(text: str) -> list[str]:
        return [vocab.pieces[i] for i in vocab.encode(text)]

    # The bundled model's own SentencePiece segmentations (checked with its tokenizer.model).
    assert pieces("Kubernetes") == ["▁k", "u", "b", "er", "n", "e", "t", "e", "s"]
    assert pieces("Dr. Okonkwo") == ["▁", "d", "r", "▁o", "k", "on", "k", "w", "o"]
    assert pieces("Tallinn") == ["▁", "t", "a", "ll", "in", "n"]
    assert pieces("the meeting") == ["▁the", "▁meeting"]
    assert vocab.normalize("Zoë's  Café!") == "zoe's cafe"
    assert vocab.encode("?!") == []
    assert vocab.decode(vocab.encode("O'Brien, Reykjavik")) == "o'brien reykjavik"


def test_moonshine_tokenizer_encodes_as_the_model_writes() -> None:
    from edge_agent.asr.moonshine.ort_convert import default_model_dir
    from edge_agent.asr.moonshine.tokenizer import TextDecoder

    text = TextDecoder(default_model_dir() / "tokenizer.bin")
    names = [text._tokenizer.id_to_token(i) for i in text.encode("Dr. Okonkwo")]
    assert names == ["▁Dr", ".", "▁Ok", "onk", "wo"]
    assert [text._tokenizer.id_to_token(i) for i in text.encode("Kubernetes", word_start=False)] == [
        "K",
        "ubernetes",
    ]
    # The ids Moonshine base emitted for two of the test clips (its greedy decode): encoding the text
    # gives them back.
    assert text.encode("Please schedule a meeting with Dr. Alvarez next Tuesday afternoon.") == [
        3529, 20410, 263, 11781, 411, 4942, 29889, 838, 5280, 29920, 2446, 323, 1041, 3250, 17724, 29889,
    ]  # fmt: skip
    assert text.encode("Set a timer for 25 minutes and call it pasta.") == [
        3789, 263, 12237, 363, 29871, 29906, 29945, 6233, 322, 1246, 372, 4940, 29874, 29889,
    ]  # fmt: skip
    for sentence in ("Ask Ngozi about the Łódź office, naïvely?", "Kubernetes"):
        assert text.decode(text.encode(sentence)) == sentence


# -- Moonshine's decoders on a scripted encoder-decoder ----------------------------------------------

BOS, EOS, VOCAB = 1, 2, 8
# Per position: the model's distribution. It says "3 4 5" but "6 7" is a close second at the start.
SCRIPTED = [{3: 0.5, 6: 0.3}, {4: 0.5, 7: 0.2}, {5: 0.9}, {EOS: 0.9}, {EOS: 0.9}]


def _row(position: int) -> np.ndarray:
    wanted = SCRIPTED[min(position, len(SCRIPTED) - 1)]
    rest = (1.0 - sum(wanted.values())) / (VOCAB - len(wanted))
    probs = np.full(VOCAB, rest)
    for token, p in wanted.items():
        probs[token] = p
    return np.log(probs).astype(np.float32)


@dataclass(frozen=True)
class _Cache:
    length: int

    def truncate(self, length: int) -> _Cache:
        return _Cache(length)


ENCODED = Encoded(hidden=np.zeros((1, 1, 1), np.float32), audio_samples=16000)


class ScriptedDecoder:
    """Log-probs that depend only on the position (so any prefix gets the script's next row)."""

    name = "scripted"
    bos_id, eos_id = BOS, EOS
    end_ids = (EOS,)

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, audio: np.ndarray) -> Encoded:
        return ENCODED

    def prefill(self, encoded: Encoded, tokens: Sequence[int]) -> tuple[np.ndarray, _Cache]:
        self.calls += 1
        return np.stack([_row(i) for i in range(len(tokens))]), _Cache(len(tokens))

    def step(self, encoded: Encoded, cache: DecoderCache, token: int) -> tuple[np.ndarray, _Cache]:
        self.calls += 1
        return _row(cache.length), _Cache(cache.length + 1)

    def max_tokens(self, audio_samples: int) -> int:
        return 10

    def detokenize(self, tokens: Sequence[int]) -> str:
        return " ".join(f"t{t}" for t in tokens if t > EOS)

    def starts_word(self, token: int) -> bool:
        return True


def test_greedy_decode_takes_a_hotword_within_the_bonus() -> None:
    model = ScriptedDecoder()
    plain = greedy_decode(model, ENCODED)
    assert plain.ids == (3, 4, 5) and plain.finished
    g = graph([6, 7], bonus=1.0)  # log 0.3 + 1 > log 0.5, then log 0.2 + 1 > log 0.5
    biased = greedy_decode(model, ENCODED, hotwords=g)
    assert biased.ids == (6, 7, 5) and biased.text == "t6 t7 t5"
    # Tokens carry the model's own log-probs, not the boosted ones.
    assert [t.logprob for t in biased.tokens] == pytest.approx(np.log([0.3, 0.2, 0.9]).tolist())
    assert greedy_decode(model, ENCODED, hotwords=graph([6, 7], bonus=0.3)).ids == (3, 4, 5)


def test_pilot_verification_reproduces_the_biased_greedy_decode() -> None:
    g = graph([6, 7], bonus=1.0)
    model = ScriptedDecoder()
    same = greedy_decode(model, ENCODED, pilot=(6, 7, 5), hotwords=g)
    assert same.ids == (6, 7, 5) and same.reused_tokens == 3 and same.decoder_calls == 1
    # A pilot decoded without the list is verified with it: it disagrees at once, and the decode
    # continues from there to the biased result.
    other = greedy_decode(model, ENCODED, pilot=(3, 4, 5), hotwords=g)
    assert other.ids == (6, 7, 5) and other.reused_tokens == 0


def test_greedy_decode_takes_back_a_phrase_it_cannot_finish() -> None:
    model = ScriptedDecoder()
    # "6" wins position 0 with the bonus, but "6 9" cannot go on ("9" stays far behind "4"): the decode
    # goes back to position 0 and takes 3, as without the list.
    decoded = greedy_decode(model, ENCODED, hotwords=graph([6, 9], bonus=1.0))
    assert decoded.ids == (3, 4, 5) and decoded.finished
    # Going back reused the rows it had; the rows after it came from new steps (one per position)
    # and a pass for the decode's first rows.
    assert decoded.decoder_calls <= 1 + 1 + 4
    # The same with a pilot that said "6 4 5": verified against the biased choices, then taken back.
    piloted = greedy_decode(model, ENCODED, pilot=(6, 4, 5), hotwords=graph([6, 9], bonus=1.0))
    assert piloted.ids == (3, 4, 5) and piloted.reused_tokens == 0
    # Unfinished at the end of decoding: "3 4 5 7" would need a 7 that never comes.
    assert greedy_decode(model, ENCODED, hotwords=graph([3, 4, 5, 7], bonus=0.5)).ids == (3, 4, 5)


def test_beam_ranks_with_the_graph_and_reports_plain_log_probs() -> None:
    model = ScriptedDecoder()
    plain = beam_nbest(model, ENCODED, beam=3, n_best=2)
    assert plain[0].ids == (3, 4, 5)
    biased = beam_nbest(model, ENCODED, beam=3, n_best=2, hotwords=graph([6, 7], bonus=1.0))
    assert biased[0].ids == (6, 7, 5)
    assert biased[0].logprob == pytest.approx(float(np.log([0.3, 0.2, 0.9, 0.9]).sum()), abs=1e-6)
    # A hotword path left unfinished gives its bonus back: "6 4 5" does not outrank "3 4 5".
    texts = [h.ids for h in beam_nbest(model, ENCODED, beam=3, n_best=3, hotwords=graph([6, 9], bonus=1.0))]
    assert texts.index((3, 4, 5)) < texts.index((6, 4, 5))


# -- conformer decoders ------------------------------------------------------------------------------

CTC_BLANK = 4


def _ctc(rows: Sequence[dict[int, float]]) -> np.ndarray:
    out = []
    for wanted in rows:
        rest = (1.0 - sum(wanted.values())) / (CTC_BLANK + 1 - len(wanted))
        probs = np.full(CTC_BLANK + 1, rest)
        for token, p in wanted.items():
            probs[token] = p
        out.append(np.log(probs))
    return np.array(out)


# Frame 1 says 0 and frame 3 says 1; token 2 is second at frame 1 and token 3 second at frame 3.
CTC_FRAMES = _ctc([{4: 0.9}, {0: 0.5, 2: 0.3}, {4: 0.9}, {1: 0.45, 3: 0.35}, {4: 0.9}])


def test_ctc_greedy_takes_the_hotword_and_the_state_follows() -> None:
    plain = CtcGreedy(CTC_BLANK)
    plain.accept(CTC_FRAMES)
    assert [t.id for t in plain.tokens] == [0, 1]
    biased = CtcGreedy(CTC_BLANK, graph([2, 3], bonus=1.0))
    biased.accept(CTC_FRAMES[:2])
    branch = biased.copy()  # a copy carries the graph's state
    biased.accept(CTC_FRAMES[2:])
    branch.accept(CTC_FRAMES[2:])
    assert [t.id for t in biased.tokens] == [2, 3] == [t.id for t in branch.tokens]
    assert [t.frame for t in biased.tokens] == [1, 3]
    assert biased.tokens[0].logprob == pytest.approx(np.log(0.3))
    # Without "2" first, "3" alone is no phrase start: the state decides.
    alone = CtcGreedy(CTC_BLANK, graph([2, 3], bonus=1.0))
    alone.accept(CTC_FRAMES[2:])
    assert [t.id for t in alone.tokens] == [1]


def test_ctc_greedy_with_an_idle_graph_equals_plain_decoding() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(60, 9)) * 3
    logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    plain, idle = CtcGreedy(8), CtcGreedy(8, graph([1, 2, 3], [4], bonus=0.0))
    for chunk in np.array_split(logprobs, 7):
        plain.accept(chunk)
        idle.accept(chunk)
    assert plain.tokens == idle.tokens and len(plain.tokens) > 10


def test_ctc_greedy_does_not_boost_the_running_label() -> None:
    # Frame 1 repeats token 2 (second best there): boosting it would only lengthen its run.
    frames = _ctc([{2: 0.6}, {4: 0.5, 2: 0.4}, {2: 0.6}])
    greedy = CtcGreedy(CTC_BLANK, graph([2, 2], bonus=1.0))
    greedy.accept(frames)
    assert [t.id for t in greedy.tokens] == [2, 2] and [t.frame for t in greedy.tokens] == [0, 2]


def test_ctc_greedy_takes_back_an_abandoned_phrase() -> None:
    # "2" wins frame 1 with the bonus, but frame 3 says 1 and 3 is not close (log 0.05 + 1 < log 0.5).
    frames = _ctc([{4: 0.9}, {0: 0.5, 2: 0.3}, {4: 0.9}, {1: 0.5, 3: 0.05}, {4: 0.9}])
    greedy = CtcGreedy(CTC_BLANK, graph([2, 3], bonus=1.0))
    greedy.accept(frames[:3])
    assert [t.id for t in greedy.tokens] == [2]  # a partial may show the phrase begun
    greedy.accept(frames[3:])  # a later chunk abandons it: back to frame 1
    assert [t.id for t in greedy.tokens] == [0, 1] and [t.frame for t in greedy.tokens] == [1, 3]
    # Ended inside the phrase: ``settle`` takes it back (the final), a pilot keeps it.
    ended = CtcGreedy(CTC_BLANK, graph([2, 3], bonus=1.0))
    ended.accept(frames[:3])
    branch = ended.copy()
    ended.settle()
    assert [t.id for t in ended.tokens] == [0] and [t.id for t in branch.tokens] == [2]


def test_prefix_beam_search_ranks_with_hotwords() -> None:
    plain = prefix_beam_search(CTC_FRAMES, CTC_BLANK, beam=8, n_best=8)
    assert plain[0][0] == (0, 1)
    biased = prefix_beam_search(CTC_FRAMES, CTC_BLANK, beam=8, n_best=8, hotwords=graph([2, 3], bonus=1.0))
    assert biased[0][0] == (2, 3)
    # The log-prob returned is the model's (summed over alignments), not the boosted score: with a beam
    # wide enough to keep every prefix, both searches sum the same alignments.
    exact = dict(prefix_beam_search(CTC_FRAMES, CTC_BLANK, beam=10_000, n_best=10_000, token_prune=4))
    wide = prefix_beam_search(CTC_FRAMES, CTC_BLANK, 10_000, 10_000, 4, hotwords=graph([2, 3], bonus=1.0))
    assert wide[0][0] == (2, 3) and wide[0][1] == pytest.approx(exact[(2, 3)], rel=1e-12)
    # An unfinished phrase gains nothing: "2 1" stays behind "0 1" (0.5 > 0.3 at frame 1).
    partial = [labels for labels, _ in prefix_beam_search(CTC_FRAMES, CTC_BLANK, hotwords=graph([2, 0]))]
    assert partial.index((0, 1)) < partial.index((2, 1))


def test_prefix_beam_search_extends_with_hotword_labels_beyond_the_pruning() -> None:
    # token_prune=1 keeps only each frame's best label; the hotword's label is still tried.
    biased = prefix_beam_search(CTC_FRAMES, CTC_BLANK, token_prune=1, hotwords=graph([2, 3], bonus=1.0))
    assert biased[0][0] == (2, 3)
    assert (2, 3) not in dict(prefix_beam_search(CTC_FRAMES, CTC_BLANK, token_prune=1))


class _CloseSecond(ScriptedModel):
    """The scripted transducer, with token 3 a close second wherever it wants token 2."""

    def joint(self, encoder: np.ndarray, decoder: np.ndarray) -> np.ndarray:
        logits = super().joint(encoder, decoder)
        logits[logits[:, 2] == 4.0, 3] = 3.5
        return logits


def test_transducer_greedy_takes_the_hotword() -> None:
    script = [[], [1, 2], [], [], [3], [4, 4, 0], [], [2]]
    plain = TransducerGreedy(_CloseSecond(script))  # type: ignore[arg-type]
    plain.accept(_frames(len(script)))
    assert [t.id for t in plain.tokens] == [1, 2, 3, 4, 4, 0, 2]
    model = _CloseSecond(script)
    biased = TransducerGreedy(model, hotwords=graph([1, 3], bonus=1.0))  # type: ignore[arg-type]
    biased.accept(_frames(2))
    branch = biased.copy()
    biased.accept(_frames(len(script))[2:])
    branch.accept(_frames(len(script))[2:])
    # "1 3" replaces "1 2" at frame 1; at frame 7 no phrase is under way, so 2 stays.
    assert [t.id for t in biased.tokens] == [1, 3, 3, 4, 4, 0, 2] == [t.id for t in branch.tokens]
    joint = 4.0 - np.log(np.exp(4.0) + np.exp(3.5) + 4)
    assert biased.tokens[1].logprob == pytest.approx(joint - 0.5)


def test_transducer_greedy_takes_back_an_abandoned_phrase() -> None:
    script = [[], [1, 2], [], [], [3], [4, 4, 0], [], [2]]
    # "1 3 9": 3 replaces 2 at frame 1 with the bonus, but the next token (3, at frame 4) is no 9:
    # back to frame 1, where 2 stays.
    model = _CloseSecond(script)
    greedy = TransducerGreedy(model, hotwords=graph([1, 3, 9], bonus=1.0))  # type: ignore[arg-type]
    greedy.accept(_frames(3))
    assert [t.id for t in greedy.tokens] == [1, 3]
    greedy.accept(_frames(len(script))[3:])
    assert [t.id for t in greedy.tokens] == [1, 2, 3, 4, 4, 0, 2]
    ended = TransducerGreedy(_CloseSecond(script), hotwords=graph([1, 3, 9], bonus=1.0))  # type: ignore[arg-type]
    ended.accept(_frames(3))
    ended.settle()
    assert [t.id for t in ended.tokens] == [1, 2]


def test_scripted_helpers_are_consistent() -> None:
    # The scripted rows are distributions (guards the fixtures above).
    for position in range(len(SCRIPTED)):
        assert float(np.exp(_row(position)).sum()) == pytest.approx(1.0, abs=1e-6)
    assert np.exp(CTC_FRAMES).sum(axis=1) == pytest.approx(np.ones(len(CTC_FRAMES)))


class MarkedDecoder(ScriptedDecoder):
    """Token 5 is a sentence's end mark (like "."): the text "3 4 5" ends in one."""

    end_ids = (EOS, 5)


def test_p_end_is_the_end_mass_right_after_the_last_word() -> None:
    rest = (1.0 - 0.9) / (VOCAB - 1)  # row 2 gives 0.9 to token 5, the rest evenly
    # No end marks in the text: the mass at the end of sequence (P(EOS) = 0.9 there).
    assert greedy_decode(ScriptedDecoder(), ENCODED).p_end == pytest.approx(0.9)
    # Ending in a mark: the mass where the mark was chosen, mark and end of sequence together.
    marked = MarkedDecoder()
    for decoded in (
        greedy_decode(marked, ENCODED),
        greedy_decode(marked, ENCODED, pilot=[3, 4, 5]),  # verified pilot rows
        greedy_decode(marked, ENCODED, pilot=[3, 4]),
        greedy_decode(marked, ENCODED, hotwords=graph([6, 7], bonus=0.3)),  # biased search, no switch
    ):
        assert decoded.ids == (3, 4, 5)
        assert decoded.p_end == pytest.approx(0.9 + rest, rel=1e-5)
    # Cut before the end (an offramp's stop): not known.
    assert greedy_decode(ScriptedDecoder(), ENCODED, stop=lambda tokens: len(tokens) == 2).p_end is None
