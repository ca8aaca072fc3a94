"""Splitting audio that is too long for one model call at its quietest points."""

from __future__ import annotations

import numpy as np

FRAME_S = 0.030
"""Length of the frames whose energy is compared."""
HOP_S = 0.010
"""Spacing of the candidate frames (they overlap)."""


def split_long(
    audio: np.ndarray, max_s: float, sample_rate: int = 16000, search_s: float = 3.0
) -> list[tuple[int, int]]:
    """Cut ``audio`` (1-D) into consecutive ``(start, end)`` sample ranges, each at most ``max_s`` long.

    Audio no longer than ``max_s`` is one piece. Otherwise each piece ends inside the last ``search_s``
    seconds before its limit (``start + max_s``), at the centre of the 30 ms frame with the lowest
    energy among frames starting every 10 ms and lying wholly in that search window; of equally quiet
    frames the latest wins (longer pieces, fewer cuts). If the window cannot hold a frame, the piece
    ends at the limit. The pieces cover ``[0, len(audio))`` exactly, in order; empty audio gives ``[]``.
    """
    if audio.ndim != 1:
        raise ValueError(f"expected 1-D audio, got shape {audio.shape}")
    if max_s <= 0 or search_s < 0 or sample_rate <= 0:
        raise ValueError(
            f"need max_s > 0, search_s >= 0, sample_rate > 0 (got {max_s}, {search_s}, {sample_rate})"
        )
    n = audio.shape[0]
    max_n = int(max_s * sample_rate)
    if max_n < 1:
        raise ValueError(f"max_s={max_s} is shorter than one sample at {sample_rate} Hz")
    frame = max(1, round(FRAME_S * sample_rate))
    hop = max(1, round(HOP_S * sample_rate))
    search_n = int(search_s * sample_rate)

    pieces: list[tuple[int, int]] = []
    start = 0
    while n - start > max_n:
        limit = start + max_n
        lo = max(start, limit - search_n)
        pieces.append((start, _quietest_cut(audio, lo, limit, frame, hop)))
        start = pieces[-1][1]
    if start < n:
        pieces.append((start, n))
    return pieces


def _quietest_cut(audio: np.ndarray, lo: int, hi: int, frame: int, hop: int) -> int:
    """Centre of the lowest-energy ``frame`` inside ``audio[lo:hi]`` (frames every ``hop``), or ``hi``."""
    if hi - lo < frame:
        return hi
    squares = np.square(audio[lo:hi], dtype=np.float64)
    cumulative = np.concatenate(([0.0], np.cumsum(squares)))
    starts = np.arange(0, hi - lo - frame + 1, hop)
    energies = cumulative[starts + frame] - cumulative[starts]
    # Cumulative sums leave rounding noise of the order of eps * total; treat that as a tie.
    tolerance = 1e-9 * max(float(cumulative[-1]), 1e-30)
    quiet = np.flatnonzero(energies <= energies.min() + tolerance)
    return lo + int(starts[quiet[-1]]) + (frame + 1) // 2
