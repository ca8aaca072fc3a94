"""Where speech is in a clip, and how a stream's finals line up with the sentences it was made of.

Pure functions on arrays and spans (seconds), no IO: the streaming code and the tests share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FRAME_S = 0.02
LOUD_RANK = 3
"""The scale is the RMS of the clip's third-loudest frame, not the loudest, so a click of a frame or two
does not set it (a percentile would not do: in a clip that is mostly silence it lands on silence)."""
RELATIVE_DB = -40.0
"""A frame is speech when its RMS is within this of the loud frames (the bench-set builder trims at the
same -40 dB), so soft word endings count as speech and only room silence does not."""


def estimate_speech_span(audio: np.ndarray, rate: int) -> tuple[float, float] | None:
    """(start, end) of the speech in seconds from the clip start, from frame energy; None if silent.

    Frames of 20 ms whose RMS is within ``RELATIVE_DB`` of the clip's loud frames are speech; the span
    runs from the start of the first such frame to the end of the last one (clamped to the clip), so
    each edge is at most one frame early (start) or late (end). Used for manifests that do not say.
    """
    frame = max(1, round(FRAME_S * rate))
    samples = np.asarray(audio, dtype=np.float64)
    if samples.ndim != 1:
        raise ValueError(f"expected mono audio, got shape {samples.shape}")
    frames = -(-len(samples) // frame)
    if frames == 0:
        return None
    padded = np.zeros(frames * frame)
    padded[: len(samples)] = samples
    # A short last frame is padded with zeros: its RMS is diluted, which only errs towards "not speech"
    # for a sliver shorter than a frame.
    rms = np.sqrt((padded.reshape(frames, frame) ** 2).mean(axis=1))
    loud = float(np.sort(rms)[-min(LOUD_RANK, frames)])
    if loud <= 0.0:
        return None
    speech = np.flatnonzero(rms > loud * 10 ** (RELATIVE_DB / 20))
    if len(speech) == 0:
        return None
    start = speech[0] * frame / rate
    end = min(len(samples), (speech[-1] + 1) * frame) / rate
    return float(start), float(end)


@dataclass(frozen=True)
class SegmentationCounts:
    """How the finals of one stream segmented the sentences spoken in it."""

    sentences: int
    finals: int
    split: int
    """Sentences covered by two or more finals (an endpoint fired inside the sentence)."""
    merged: int
    """Finals covering two or more sentences (the pause between them did not end the utterance)."""
    missed: int
    """Sentences no final covers."""
    spurious: int
    """Finals that cover no sentence."""


MIN_OVERLAP_S = 0.1
"""A final covers a sentence when their spans share at least this much: a final's span carries the
VAD's pre-roll and end padding, which may graze the neighbouring pause but never 100 ms of speech
across a between-sentence pause."""


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return min(a[1], b[1]) - max(a[0], b[0])


def coverage(
    sentences: Sequence[tuple[float, float]],
    finals: Sequence[tuple[float, float]],
    min_overlap_s: float = MIN_OVERLAP_S,
) -> list[list[int]]:
    """For each final, the indices of the sentences it covers (all spans on one timeline, seconds)."""
    return [
        [i for i, sentence in enumerate(sentences) if _overlap(final, sentence) >= min_overlap_s]
        for final in finals
    ]


def count_segmentation(
    sentences: Sequence[tuple[float, float]],
    finals: Sequence[tuple[float, float]],
    min_overlap_s: float = MIN_OVERLAP_S,
) -> SegmentationCounts:
    """Split, merged, missed and spurious counts for the finals' (start, end) spans against the
    sentences' (speech start, speech end) spans, both in seconds of the same stream."""
    covers = coverage(sentences, finals, min_overlap_s)
    per_sentence = [sum(i in c for c in covers) for i in range(len(sentences))]
    return SegmentationCounts(
        sentences=len(sentences),
        finals=len(finals),
        split=sum(n >= 2 for n in per_sentence),
        merged=sum(len(c) >= 2 for c in covers),
        missed=sum(n == 0 for n in per_sentence),
        spurious=sum(not c for c in covers),
    )


def cleanly_finalized(
    sentences: Sequence[tuple[float, float]],
    finals: Sequence[tuple[float, float]],
    min_overlap_s: float = MIN_OVERLAP_S,
) -> dict[int, int]:
    """sentence index -> final index, for the sentences covered by exactly one final that covers no
    other sentence: the ones whose latency means something."""
    covers = coverage(sentences, finals, min_overlap_s)
    out = {}
    for i in range(len(sentences)):
        mine = [f for f, c in enumerate(covers) if i in c]
        if len(mine) == 1 and covers[mine[0]] == [i]:
            out[i] = mine[0]
    return out
