"""Word errors after Whisper's English text normalization (numbers, punctuation, casing), via jiwer."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _normalizer() -> Any:
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    return " ".join(_normalizer()(text).split())


def errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words) after normalization."""
    import jiwer

    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return len(hyp.split()), 0
    if not hyp:
        return len(ref.split()), len(ref.split())
    out = jiwer.process_words(ref, hyp)
    return int(out.substitutions + out.deletions + out.insertions), len(ref.split())


def corpus_wer(pairs: Sequence[tuple[str, str]]) -> float:
    total_errors = total_words = 0
    for reference, hypothesis in pairs:
        e, w = errors(reference, hypothesis)
        total_errors += e
        total_words += w
    return total_errors / total_words if total_words else 0.0
