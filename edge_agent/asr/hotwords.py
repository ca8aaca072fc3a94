"""Hotwords (contextual biasing): a token trie of phrases whose tokens get a bonus while decoding.

A session may name phrases the user is likely to say (names, product words, jargon). Each model family
turns a phrase into the token sequences it could emit for it (``token_variants``) and builds a
``ContextGraph`` over them: a trie with Aho-Corasick failure arcs, after the context graph of icefall and
sherpa-onnx (``sherpa-onnx/csrc/context-graph.cc``). Every arc carries the same ``bonus`` (a log-prob).

Two ways to use it:

* greedy search (``GreedyBias``): before the argmax, every token that continues a live path (or starts
  one, or restarts one through a failure arc) gets ``bonus`` added to its log-prob; the state of the one
  hypothesis follows what was emitted. Beam search takes a bonus back by score when its phrase is left
  unfinished; greedy search has one hypothesis, so it takes back the *choices* the bonus made: when the
  path they began is abandoned (a token that does not continue it, or the end of decoding), the decoder
  goes back to the first of them and chooses again without that token there.
* beam search (``step``, ``finalize``): a hypothesis's score gains the bonus for every token inside a
  path, and gives back what it gained when the path is abandoned before the phrase is complete (the
  failure arc's score) or when decoding ends inside one (``finalize``); a completed phrase keeps its
  bonus. A partial match therefore gains nothing in the end.

States are plain node numbers: a hypothesis carries one int, and a graph does not change once built (it
is shared by the streams of one hotword list; ``boost`` only memoizes, on the one inference thread).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

MAX_HOTWORDS = 100
"""Phrases one session may name (the same bound as the Realtime endpoint's)."""
MAX_HOTWORD_CHARS = 50
"""Longest phrase, in characters."""
ROOT = 0


def validate_hotwords(value: object, what: str = "hotwords") -> tuple[str, ...]:
    """A client's list of phrases: non-empty strings (after trimming), at most ``MAX_HOTWORDS`` of at
    most ``MAX_HOTWORD_CHARS`` characters. Repeats are dropped, order kept. Raises ValueError saying
    what is wrong (the message quotes at most 60 characters of what was sent)."""
    if not isinstance(value, list | tuple):
        raise ValueError(f"{what} must be a list of strings")
    if len(value) > MAX_HOTWORDS:
        raise ValueError(f"{what}: {len(value)} phrases; at most {MAX_HOTWORDS}")
    phrases: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"{what}[{i}] must be a string")
        phrase = " ".join(item.split())
        if not phrase:
            raise ValueError(f"{what}[{i}] is empty")
        if len(phrase) > MAX_HOTWORD_CHARS:
            raise ValueError(f"{what}[{i}] is longer than {MAX_HOTWORD_CHARS} characters: {phrase[:40]!r}...")
        phrases.append(phrase)
    return tuple(dict.fromkeys(phrases))


def merge_hotwords(*lists: Iterable[str]) -> tuple[str, ...]:
    """Several lists as one, first occurrence first (the cloud keeps the first phrases when its prompt
    is full, so the most specific list goes first)."""
    return tuple(dict.fromkeys(p for phrases in lists for p in phrases))


def spellings(phrase: str) -> list[str]:
    """The written forms a cased model may emit for a phrase: as given, and with a capital first letter
    (the phrase may open a sentence)."""
    forms = [phrase, phrase[:1].upper() + phrase[1:]]
    return list(dict.fromkeys(forms))


def token_variants(
    phrases: Iterable[str], encode: Callable[[str], Sequence[Sequence[int]]]
) -> list[tuple[tuple[int, ...], str]]:
    """(token sequence, phrase) for every sequence ``encode`` gives for every phrase, without repeats or
    empty sequences. ``encode`` is the model family's: it knows its word-boundary marks and casing."""
    out: dict[tuple[int, ...], str] = {}
    for phrase in phrases:
        for sequence in encode(phrase):
            tokens = tuple(int(t) for t in sequence)
            if tokens:
                out.setdefault(tokens, phrase)
    return list(out.items())


@dataclass
class _Node:
    token: int
    depth: int
    node_score: float
    """Bonus accumulated from the root to here (what abandoning the path here gives back)."""
    is_end: bool = False
    phrase: str = ""
    fail: int = ROOT
    output: int = -1
    """The nearest phrase end on this node's failure chain (-1: none)."""
    output_score: float = 0.0
    """Paid on arrival: a phrase ending here (or at ``output``) keeps its bonus for good."""


class ContextGraph:
    """A trie of token sequences with failure arcs; states are node numbers (``ROOT`` is 0)."""

    def __init__(self, sequences: Iterable[tuple[Sequence[int], str]], bonus: float) -> None:
        if bonus < 0:
            raise ValueError(f"the hotword bonus must be >= 0, got {bonus}")
        self.bonus = float(bonus)
        self._nodes = [_Node(token=-1, depth=0, node_score=0.0)]
        self._next: list[dict[int, int]] = [{}]
        self.phrases: list[str] = []
        for tokens, phrase in sequences:
            if not tokens:
                continue
            node = ROOT
            for token in tokens:
                child = self._next[node].get(int(token))
                if child is None:
                    parent = self._nodes[node]
                    child = len(self._nodes)
                    self._nodes.append(_Node(int(token), parent.depth + 1, parent.node_score + self.bonus))
                    self._next.append({})
                    self._next[node][int(token)] = child
                node = child
            end = self._nodes[node]
            if not end.is_end:
                end.is_end, end.phrase = True, phrase
            self.phrases.append(phrase)
        self._link()
        self._boost: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        """Nodes, the root included."""
        return len(self._nodes)

    def _link(self) -> None:
        """Failure arcs (to the longest proper suffix of a node's path that is also a path from the root)
        and output arcs, breadth first as Aho-Corasick builds them: a node's failure chain is shallower,
        so it is complete when the node is reached."""
        queue: deque[int] = deque(self._next[ROOT].values())
        for child in queue:
            node = self._nodes[child]
            node.output_score = node.node_score if node.is_end else 0.0
        while queue:
            current = queue.popleft()
            for token, child in self._next[current].items():
                fail = self._nodes[current].fail
                while token not in self._next[fail] and fail != ROOT:
                    fail = self._nodes[fail].fail
                node = self._nodes[child]
                node.fail = self._next[fail].get(token, ROOT)
                output = node.fail
                while output != ROOT and not self._nodes[output].is_end:
                    output = self._nodes[output].fail
                node.output = output if output != ROOT else -1
                own = node.node_score if node.is_end else 0.0
                node.output_score = own + (self._nodes[output].output_score if node.output >= 0 else 0.0)
                queue.append(child)

    def _arrive(self, state: int, token: int) -> int:
        """The node ``token`` leads to from ``state``: a child, else through the failure chain (the
        root when no path takes it)."""
        node = state
        while True:
            child = self._next[node].get(token)
            if child is not None:
                return child
            if node == ROOT:
                return ROOT
            node = self._nodes[node].fail

    def step(self, state: int, token: int) -> tuple[float, int]:
        """(score change, next state) for emitting ``token`` in ``state`` (beam search).

        Inside a path the change is ``+bonus``; leaving it gives back what the path had accumulated
        (landing, through the failure chain, on the longest suffix still in the trie, whose own
        accumulated bonus is counted again); completing a phrase pays its whole bonus once more, so it is
        kept when the path later ends. The sum of the changes along any token sequence, plus
        ``finalize`` at its end, is ``bonus`` times the tokens of the phrases it completed."""
        if token in self._next[state]:
            node = self._next[state][token]
            score = self.bonus
        else:
            # The root's failure arc is the root: from there no path takes the token.
            node = self._arrive(self._nodes[state].fail, token)
            score = self._nodes[node].node_score - self._nodes[state].node_score
        return score + self._nodes[node].output_score, node

    def finalize(self, state: int) -> float:
        """The score change when decoding ends in ``state``: what an unfinished path gained goes back."""
        return -self._nodes[state].node_score

    def matched(self, state: int) -> str | None:
        """The phrase a path ending in ``state`` completes (the longest one), if any."""
        node = self._nodes[state]
        if node.is_end:
            return node.phrase
        return self._nodes[node.output].phrase if node.output >= 0 else None

    def extends(self, state: int, token: int) -> bool:
        """``token`` continues the live path of ``state`` (a child in the trie)."""
        return token in self._next[state]

    def depth(self, state: int) -> int:
        """Tokens of the live path ``state`` stands for (0 at the root)."""
        return self._nodes[state].depth

    def boost(self, state: int) -> np.ndarray:
        """The tokens greedy search boosts in ``state``, sorted: those that lead to a node other than
        the root (continuing the path, restarting a suffix of it, or starting a phrase)."""
        cached = self._boost.get(state)
        if cached is None:
            tokens: set[int] = set()
            node = state
            while True:
                tokens.update(self._next[node])
                if node == ROOT:
                    break
                node = self._nodes[node].fail
            cached = np.array(sorted(tokens), dtype=np.int64)
            cached.flags.writeable = False
            self._boost[state] = cached
        return cached

    def biased(self, logprobs: np.ndarray, state: int) -> np.ndarray:
        """``logprobs`` (the last axis is the vocabulary) with ``bonus`` added to the boosted tokens
        (a new array; ids outside the vocabulary are ignored)."""
        out = np.array(logprobs, dtype=np.result_type(logprobs, np.float32))
        ids = self.boost(state)
        ids = ids[ids < out.shape[-1]]
        out[..., ids] += self.bonus
        return out

    def argmax(self, logprobs: np.ndarray, state: int, exclude: Collection[int] = ()) -> int:
        """Greedy search's choice from one row of log-probs in ``state``: the best token once the
        boosted ones have their bonus. Tokens in ``exclude`` get no bonus (CTC: the previous frame's
        label, whose repetition emits nothing; tokens a take-back ruled out)."""
        plain = int(np.argmax(logprobs))
        ids = self.boost(state)
        ids = ids[ids < logprobs.shape[-1]]
        if exclude:
            ids = ids[~np.isin(ids, np.fromiter(exclude, dtype=np.int64))]
        if not len(ids) or self.bonus == 0:
            return plain
        values = logprobs[ids] + self.bonus
        best = int(np.argmax(values))
        # A tie keeps the unboosted choice, as without a bonus.
        return int(ids[best]) if values[best] > logprobs[plain] else plain


MAX_TAKE_BACKS = 8
"""Take-backs one greedy decode may make (a bound on the decoding work a list can add); past them the
bonus is no longer applied."""


@dataclass(frozen=True)
class _Pending:
    position: int
    token: int
    state: int
    """The graph's state before the choice."""


@dataclass
class GreedyBias:
    """One greedy hypothesis's use of a graph (see the module docstring).

    The decoder asks ``choose`` at each position (a token index, or a CTC frame), tells ``accept`` what
    it emits, and asks ``unfinished`` when decoding ends. Either may name a position to go back to: the
    decoder then restores its own state as it was before that position, calls ``rewind`` and decodes
    from there again; the token the bonus chose there is not boosted there again."""

    graph: ContextGraph
    state: int = ROOT
    take_backs: int = 0
    _pending: list[_Pending] = field(default_factory=list)
    """Choices the bonus made on the live path (it chose other than the plain argmax), oldest first."""
    _banned: dict[int, set[int]] = field(default_factory=dict)

    def copy(self) -> GreedyBias:
        return GreedyBias(
            self.graph,
            self.state,
            self.take_backs,
            list(self._pending),
            {k: set(v) for k, v in self._banned.items()},
        )

    @property
    def pending(self) -> tuple[int, ...]:
        """Positions of the choices a take-back may still undo (those the bonus made on the live path)."""
        return tuple(p.position for p in self._pending)

    def choose(self, logprobs: np.ndarray, position: int, exclude: Collection[int] = ()) -> tuple[int, bool]:
        """(token, whether the bonus chose it over the plain argmax) at ``position``. Once the take-backs
        are spent the bonus is not applied any more: a decode that keeps starting phrases it cannot
        finish is better left to the model (without this it ran into repetitions)."""
        plain = int(np.argmax(logprobs))
        if self.take_backs >= MAX_TAKE_BACKS:
            return plain, False
        banned = self._banned.get(position, set())
        token = self.graph.argmax(logprobs, self.state, {*exclude, *banned})
        return token, token != plain

    def accept(self, position: int, token: int, forced: bool) -> int | None:
        """Follow an emitted token. Returns the position to go back to when it abandons a path the bonus
        began (nothing is followed then), else None."""
        if self._pending and not self.graph.extends(self.state, token) and self.take_backs < MAX_TAKE_BACKS:
            return self._pending[0].position
        before = self.state
        self.state = self.graph.step(before, token)[1]
        if forced:
            self._pending.append(_Pending(position, token, before))
        if self.graph.matched(self.state) is not None or self.state == ROOT:
            self._pending.clear()  # a completed phrase keeps its choices
        return None

    def unfinished(self) -> int | None:
        """At the end of decoding: the position to go back to when a path the bonus began is unfinished."""
        if self._pending and self.take_backs < MAX_TAKE_BACKS:
            return self._pending[0].position
        return None

    def rewind(self, position: int) -> None:
        """Back to the state before ``position`` (a position ``accept``/``unfinished`` named), with the
        token the bonus chose there ruled out there."""
        first = self._pending[0]
        assert first.position == position, (first, position)
        self._banned = {p: b for p, b in self._banned.items() if p <= position}
        self._banned.setdefault(position, set()).add(first.token)
        self.state = first.state
        self._pending.clear()
        self.take_backs += 1


class GraphCache:
    """Graphs by phrase list, so the utterances of one session (and sessions with the same list) share
    one graph. Bounded: the oldest lists go first."""

    def __init__(self, build: Callable[[tuple[str, ...]], ContextGraph | None], size: int = 32) -> None:
        self._build = build
        self._size = size
        self._graphs: dict[tuple[str, ...], ContextGraph | None] = {}

    def get(self, phrases: Sequence[str]) -> ContextGraph | None:
        """The graph for ``phrases`` (None for an empty list, or when ``build`` says so)."""
        key = tuple(phrases)
        if not key:
            return None
        if key not in self._graphs:
            if len(self._graphs) >= self._size:
                self._graphs.pop(next(iter(self._graphs)))
            self._graphs[key] = self._build(key)
        return self._graphs[key]
