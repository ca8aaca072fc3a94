"""Moonshine's tokenizer, built with the ``tokenizers`` library from the vocabulary the model ships.

``tokenizer.bin`` (moonshine-cpp) lists the 32000 SentencePiece-style BPE pieces as length-prefixed
byte strings, in id order; ids 3..258 are the byte-fallback pieces. Decoding needs only this
vocabulary (no merges), so no second package is pulled in for ``tokenizer.json``. Encoding (hotword
phrases) needs no merge list either: a SentencePiece BPE vocabulary lists its merged pieces in the order
the merges were learned, which is the order encoding applies them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders
from tokenizers.models import BPE

BOS_ID = 1
EOS_ID = 2
_BYTE_FIRST, _BYTE_LAST = 3, 258


def read_vocab(path: Path) -> list[bytes]:
    data = path.read_bytes()
    pieces: list[bytes] = []
    i = 0
    while i < len(data):
        # A varint length prefix (pieces are short: one or two bytes of length).
        length, shift = 0, 0
        while True:
            byte = data[i]
            i += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        pieces.append(data[i : i + length])
        i += length
    if i != len(data):
        raise ValueError(f"{path}: truncated vocabulary")
    return pieces


def load_tokenizer(path: Path) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` that decodes Moonshine token ids to text."""
    vocab: dict[str, int] = {}
    for idx, piece in enumerate(read_vocab(path)):
        if _BYTE_FIRST <= idx <= _BYTE_LAST:
            name = f"<0x{piece[0]:02X}>"
        else:
            name = piece.decode("utf-8")
        vocab.setdefault(name, idx)
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tokenizer


class TextDecoder:
    def __init__(self, path: Path) -> None:
        self._tokenizer = load_tokenizer(path)
        vocab = read_vocab(path)
        # Pieces that open a new word carry SentencePiece's word-boundary mark.
        self._word_start = [piece.startswith("▁".encode()) for piece in vocab]
        self._ids: dict[str, int] = {}
        # Every piece that is a sentence's end mark, with or without the word mark (" ." is a piece too);
        # the byte pieces of ".", "?" and "!" (ids 36, 49, 66) count as well.
        self.sentence_end_ids = tuple(
            idx for idx, piece in enumerate(vocab) if piece.replace("▁".encode(), b"") in (b".", b"?", b"!")
        )
        for idx, piece in enumerate(vocab):
            if idx > _BYTE_LAST:  # not the special pieces (<unk>, <s>, </s>) nor the byte pieces
                self._ids.setdefault(piece.decode("utf-8", errors="replace"), idx)

    def encode(self, text: str, word_start: bool = True) -> list[int]:
        """Token ids of ``text`` as SentencePiece BPE encodes it: spaces become "▁" (one more in front
        when ``word_start``), characters the vocabulary lacks become byte pieces, then the adjacent pair
        whose merged piece has the lowest id (the earliest-learned merge) is merged until none is left;
        the leftmost such pair first."""
        text = text.replace(" ", "▁")
        if word_start:
            text = "▁" + text
        # A piece of text, or the id of a byte piece (for characters the vocabulary lacks): byte pieces
        # never merge.
        symbols: list[str | int] = []
        for char in text:
            if char in self._ids:
                symbols.append(char)
            else:
                symbols.extend(_BYTE_FIRST + byte for byte in char.encode("utf-8"))
        while True:
            best: tuple[int, int] | None = None  # (merged piece's id, position)
            for i, (left, right) in enumerate(itertools.pairwise(symbols)):
                if isinstance(left, str) and isinstance(right, str):
                    merged = self._ids.get(left + right)
                    if merged is not None and (best is None or merged < best[0]):
                        best = (merged, i)
            if best is None:
                break
            i = best[1]
            symbols[i : i + 2] = [f"{symbols[i]}{symbols[i + 1]}"]
        return [self._ids[s] if isinstance(s, str) else s for s in symbols]

    def starts_word(self, token: int) -> bool:
        return 0 <= token < len(self._word_start) and self._word_start[token]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode([i for i in ids if i > EOS_ID], skip_special_tokens=True)).strip()
