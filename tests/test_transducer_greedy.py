"""RNN-T greedy search (``edge_agent.asr.conformer.transducer``) on a scripted joint: exact asserts.

The scripted model wants frame ``t`` to emit ``SCRIPT[t]``; its prediction "network" output is the number
of tokens emitted so far, and the joint says "emit the next scripted token" while that count is behind
the script's count up to the frame, blank otherwise (what a well-trained transducer does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_agent.asr.conformer.transducer import TransducerGreedy

BLANK = 5
SCRIPT = [[], [1, 2], [], [], [3], [4, 4, 0], [], [2]]


@dataclass
class Vocab:
    blank: int = BLANK


class ScriptedModel:
    def __init__(self, script: list[list[int]]) -> None:
        self.vocabulary = Vocab()
        self.tokens = [t for frame in script for t in frame]
        self.due = np.cumsum([len(frame) for frame in script])  # tokens due by the end of each frame
        self.joint_calls = 0

    def predict(
        self, token: int, state: tuple[np.ndarray, np.ndarray] | None
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        count = 0 if state is None else int(state[0][0, 0, 0]) + (token != BLANK)
        h = np.full((1, 1, 1), count, np.float32)
        return h.copy(), (h, h)

    def joint(self, encoder: np.ndarray, decoder: np.ndarray) -> np.ndarray:
        self.joint_calls += 1
        emitted = int(decoder[0, 0, 0])
        logits = np.zeros((len(encoder), BLANK + 1), np.float32)
        for row, frame in enumerate(encoder[:, 0].astype(int)):
            best = self.tokens[emitted] if emitted < self.due[frame] else BLANK
            logits[row, best] = 4.0
        return logits


def _frames(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32)[:, None]


def test_emits_the_scripted_tokens_at_their_frames() -> None:
    model = ScriptedModel(SCRIPT)
    greedy = TransducerGreedy(model)  # type: ignore[arg-type]
    greedy.accept(_frames(len(SCRIPT)))
    assert [t.id for t in greedy.tokens] == [1, 2, 3, 4, 4, 0, 2]
    assert [t.frame for t in greedy.tokens] == [1, 1, 4, 5, 5, 5, 7]
    assert greedy.frames == len(SCRIPT)
    # Confidence: log-softmax of a 4.0 logit among five zeros; entropy of that distribution.
    p = np.exp(4.0) / (np.exp(4.0) + 5)
    assert all(abs(t.logprob - np.log(p)) < 1e-6 for t in greedy.tokens)
    expected_entropy = -(p * np.log(p) + 5 * (1 - p) / 5 * np.log((1 - p) / 5))
    assert all(abs(t.entropy - expected_entropy) < 1e-5 for t in greedy.tokens)
    # One joint call per emission plus one to find there is nothing more, not one per frame.
    assert model.joint_calls == 7 + 1


def test_the_result_does_not_depend_on_how_frames_are_chunked() -> None:
    whole = TransducerGreedy(ScriptedModel(SCRIPT))  # type: ignore[arg-type]
    whole.accept(_frames(len(SCRIPT)))
    for split in ([1, 7], [2, 2, 2, 2], [3, 5], [1] * 8, [5, 0, 3]):
        greedy = TransducerGreedy(ScriptedModel(SCRIPT))  # type: ignore[arg-type]
        start = 0
        for size in split:
            greedy.accept(_frames(len(SCRIPT))[start : start + size])
            start += size
        assert greedy.tokens == whole.tokens, split


def test_copies_branch_independently() -> None:
    model = ScriptedModel(SCRIPT)
    greedy = TransducerGreedy(model)  # type: ignore[arg-type]
    greedy.accept(_frames(4))
    branch = greedy.copy()
    branch.accept(_frames(8)[4:])
    assert [t.id for t in greedy.tokens] == [1, 2] and greedy.frames == 4
    assert [t.id for t in branch.tokens] == [1, 2, 3, 4, 4, 0, 2]
    greedy.accept(_frames(8)[4:6])
    assert [t.id for t in greedy.tokens] == [1, 2, 3, 4, 4, 0]


def test_at_most_max_symbols_per_frame() -> None:
    script = [[1] * 12, [], [2]]
    greedy = TransducerGreedy(ScriptedModel(script), max_symbols=10)  # type: ignore[arg-type]
    greedy.accept(_frames(3))
    # Ten at frame 0; the two left over come out at the next frame, before frame 2's own token.
    assert [t.frame for t in greedy.tokens] == [0] * 10 + [1, 1, 2]
    assert [t.id for t in greedy.tokens] == [1] * 12 + [2]
