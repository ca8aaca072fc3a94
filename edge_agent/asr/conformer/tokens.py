"""The vocabulary of a NeMo streaming model: ``tokens.txt`` and piece ids to text.

``tokens.txt`` (sherpa-onnx export, ``docs/nemo-streaming-format.md`` §6) holds one ``<piece> <id>`` per
line for every SentencePiece piece and a last line ``<blk> V``: the CTC/RNNT blank is the last id. Pieces
mark a word start with ``▁`` (U+2581); byte-fallback pieces ``<0xHH>`` stand for single UTF-8 bytes.

``encode`` (hotword phrases) segments text without the SentencePiece model, which the export does not
ship: a unigram vocabulary lists its pieces by falling log-probability, so the id stands in for it.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BLANK = "<blk>"
WORD_START = "\u2581"
SPECIAL = frozenset({"<unk>", BLANK, "<s>", "</s>", "<pad>"})
"""Pieces with no text of their own."""

_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_PIECE_COST = 1.3
"""Segmentation cost of a piece beyond its rank: with log P(piece id i) ~ -1.3 - ln i (the bundled
model's SentencePiece scores follow -1.36 - 1.07 ln i), the best segmentation under these stand-in
scores is the tokenizer's own for 91 % of 2,087 WordNet words."""


def _piece_bytes(piece: str) -> bytes:
    match = _BYTE.fullmatch(piece)
    if match is not None:
        return bytes([int(match.group(1), 16)])
    return piece.replace(WORD_START, " ").encode("utf-8")


@dataclass(frozen=True)
class Vocabulary:
    pieces: tuple[str, ...]
    """Piece of each id; the blank is the last."""
    blank: int
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)
    _longest: int = field(init=False, repr=False, compare=False)
    _chars: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids: dict[str, int] = {}
        for token_id, piece in enumerate(self.pieces):
            if piece not in SPECIAL and not _BYTE.fullmatch(piece):
                ids.setdefault(piece, token_id)
        object.__setattr__(self, "_ids", ids)
        object.__setattr__(self, "_longest", max((len(p) for p in ids), default=1))
        object.__setattr__(self, "_chars", frozenset(c for p in ids for c in p if c != WORD_START))

    @classmethod
    def from_pieces(cls, pieces: Iterable[str]) -> Vocabulary:
        """A vocabulary from the pieces in id order; the last must be ``<blk>``."""
        pieces = tuple(pieces)
        if BLANK not in pieces:
            raise ValueError(f"vocabulary has no {BLANK} (the CTC/RNNT blank)")
        if pieces.index(BLANK) != len(pieces) - 1 or pieces.count(BLANK) > 1:
            # NeMo appends the blank after the SentencePiece vocabulary; anything else is another format.
            last = len(pieces) - 1
            raise ValueError(f"{BLANK} must be the last id ({last}), found at {pieces.index(BLANK)}")
        return cls(pieces, len(pieces) - 1)

    @classmethod
    def from_file(cls, path: Path) -> Vocabulary:
        """Parse ``tokens.txt``: ids must be exactly 0..N-1 (in any order) and ``<blk>`` the last."""
        by_id: dict[int, str] = {}
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            # Split at the last space: the id is always last, whatever the piece holds.
            piece, _, id_text = line.rpartition(" ")
            try:
                token_id = int(id_text)
            except ValueError:
                raise ValueError(f"{path}:{number}: expected '<piece> <id>', got {line!r}") from None
            if not piece:
                raise ValueError(f"{path}:{number}: expected '<piece> <id>', got {line!r}")
            if token_id in by_id:
                raise ValueError(f"{path}:{number}: id {token_id} appears twice")
            by_id[token_id] = piece
        expected = set(range(len(by_id)))
        if set(by_id) != expected:
            missing = sorted(expected - set(by_id))[:5]
            raise ValueError(f"{path}: ids must be contiguous 0..{len(by_id) - 1}; missing {missing}")
        try:
            return cls.from_pieces(by_id[i] for i in range(len(by_id)))
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def __len__(self) -> int:
        return len(self.pieces)

    def _piece(self, token_id: int) -> str:
        # Negative ids would index from the end and silently decode the wrong piece.
        if not 0 <= token_id < len(self.pieces):
            raise ValueError(f"token id {token_id} outside the vocabulary (0..{len(self.pieces) - 1})")
        return self.pieces[token_id]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``: pieces joined, ``▁`` as a space, spaces collapsed; special pieces skipped."""
        # Bytes first, then one UTF-8 decode: a character may be spread over several byte pieces.
        data = b"".join(_piece_bytes(p) for p in map(self._piece, ids) if p not in SPECIAL)
        return " ".join(data.decode("utf-8", errors="replace").split())

    def normalize(self, text: str) -> str:
        """``text`` in the characters the vocabulary writes: a letter the vocabulary has only in the
        other case is switched (a lower-case model gets "dr okonkwo" for "Dr. Okonkwo"), an accented one
        loses its accent, and any other character it lacks (punctuation) separates words."""
        out = []
        for char in text:
            if char in self._chars:
                out.append(char)
            elif char.lower() in self._chars:
                out.append(char.lower())
            elif char.upper() in self._chars:
                out.append(char.upper())
            elif (base := unicodedata.normalize("NFKD", char)[:1].lower()) in self._chars:
                out.append(base)  # "ë" as "e": the letter without its accent
            else:
                out.append(" ")
        return " ".join("".join(out).split())

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (normalized first, each word after "▁"): per word, the segmentation with
        the best stand-in unigram score (``_PIECE_COST``). Empty when a word cannot be spelled."""
        ids: list[int] = []
        for word in self.normalize(text).split():
            pieces = self._segment(WORD_START + word)
            if pieces is None:
                return []
            ids.extend(pieces)
        return ids

    def _segment(self, word: str) -> list[int] | None:
        """Viterbi over the ways to cut ``word`` into vocabulary pieces; None when none covers it."""
        best: list[tuple[float, int, int]] = [(0.0, -1, -1)] + [(-math.inf, -1, -1)] * len(word)
        for end in range(1, len(word) + 1):
            for start in range(max(0, end - self._longest), end):
                token_id = self._ids.get(word[start:end])
                if token_id is None or best[start][0] == -math.inf:
                    continue
                score = best[start][0] - _PIECE_COST - math.log(max(token_id, 1))
                if score > best[end][0]:
                    best[end] = (score, start, token_id)
        if best[-1][0] == -math.inf:
            return None
        out: list[int] = []
        end = len(word)
        while end > 0:
            _, start, token_id = best[end]
            out.append(token_id)
            end = start
        return out[::-1]

    def word_groups(self, ids: Sequence[int]) -> list[tuple[str, list[int]]]:
        """Each word's text and the positions in ``ids`` of its pieces (special pieces belong to none).

        A piece starting with ``▁`` starts a word, and so does the first piece. Groups without text (a
        lone ``▁``) are dropped, so the words joined by spaces are ``decode(ids)``."""
        groups: list[list[int]] = []
        for position, token_id in enumerate(ids):
            piece = self._piece(token_id)
            if piece in SPECIAL:
                continue
            if not groups or piece.startswith(WORD_START):
                groups.append([])
            groups[-1].append(position)
        words = [(self.decode([ids[p] for p in group]), group) for group in groups]
        return [(text, group) for text, group in words if text]
