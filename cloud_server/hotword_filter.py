"""Which of a request's hotwords the audio plausibly holds, judged on a cheap first transcript.

Whisper prompted with a list of names starts hearing those names in speech that holds none of them
(BENCHMARKS.md, hotwords): a phrase is only worth its place in the prompt when a first hypothesis of
the same audio (the edge's, which every escalation carries) spells something close to it. A first
hypothesis misspells exactly the rare words a list is for ("Kubernetes" as "cooper netties"), so the
match is fuzzy: a phrase is compared, spaces ignored, with every run of about as many words of the
hypothesis, and kept when the best run is similar enough (rapidfuzz's normalized Levenshtein
similarity: 1 - edits / the longer length; on the tuning split it kept more of the hotwords a sentence
held, at as few unrelated phrases kept per ordinary sentence, than the Indel or Jaro-Winkler ones).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import extractOne

DEFAULT_THRESHOLD = 0.6
"""Similarity a phrase's best span must reach (BENCHMARKS.md, hotwords: tuned on the tuning split)."""
EXTRA_WORDS = 2
"""A span may have this many words more than the phrase (a name heard as several short words) and
one fewer (two words of a phrase heard as one)."""

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-case ASCII words of ``text``: accents folded, punctuation and apostrophes dropped as
    separators ("Kubernetes' pods" -> ["kubernetes", "pods"])."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return _WORD.findall(folded.replace("'", ""))


def spans(hypothesis: Sequence[str], size: int) -> list[str]:
    """Every run of ``size - 1`` to ``size + EXTRA_WORDS`` consecutive words, spaces removed."""
    out: list[str] = []
    for length in range(max(1, size - 1), size + EXTRA_WORDS + 1):
        out += ["".join(hypothesis[i : i + length]) for i in range(len(hypothesis) - length + 1)]
    return out


def similarity(phrase: str, hypotheses: Sequence[str]) -> float:
    """How closely some span of some hypothesis spells ``phrase``: 0..1, 1 for an exact match."""
    target, size = "".join(words(phrase)), len(words(phrase))
    candidates = [span for hypothesis in hypotheses for span in spans(words(hypothesis), size)]
    if not target or not candidates:
        return 0.0
    match = extractOne(target, candidates, scorer=Levenshtein.normalized_similarity)
    return float(match[1]) if match is not None else 0.0


def relevant_hotwords(
    hotwords: Sequence[str], hypotheses: Sequence[str], threshold: float = DEFAULT_THRESHOLD
) -> tuple[str, ...]:
    """The hotwords (in their order) some span of ``hypotheses`` spells with at least ``threshold``
    similarity. No hypothesis text at all keeps none: a first pass that heard nothing gives no phrase
    a reason to be in the prompt."""
    texts = [w for w in (words(h) for h in hypotheses) if w]
    if not texts:
        return ()
    # The spans of each phrase length are built once: a long hypothesis has thousands.
    by_size: dict[int, list[str]] = {}
    kept = []
    for phrase in hotwords:
        phrase_words = words(phrase)
        if not phrase_words:
            continue
        size = len(phrase_words)
        if size not in by_size:
            by_size[size] = [span for text in texts for span in spans(text, size)]
        match = extractOne(
            "".join(phrase_words),
            by_size[size],
            scorer=Levenshtein.normalized_similarity,
            score_cutoff=threshold,
        )
        if match is not None:
            kept.append(phrase)
    return tuple(kept)
