"""split_long: pieces cover the audio, respect the limit, and end at the quietest frame."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_agent.audio.segmenter import split_long

RATE = 16000


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(round(seconds * RATE))).astype(np.float32)


def test_short_audio_is_one_piece() -> None:
    assert split_long(noise(10.0), max_s=10.0) == [(0, 160000)]
    assert split_long(noise(1.0), max_s=25.0) == [(0, 16000)]
    assert split_long(np.zeros(0, dtype=np.float32), max_s=25.0) == []


def test_cuts_at_planted_pauses_inside_the_search_window() -> None:
    audio = noise(25.0)
    audio[50000:50480] = 0  # quiet, but before the search window [112000, 160000): ignored
    audio[130080:130560] = 0  # a 30 ms gap on the 10 ms candidate grid of the first window
    audio[250320:250800] = 0  # and one in the second piece's window [242320, 290320)
    assert split_long(audio, max_s=10.0, search_s=3.0) == [(0, 130320), (130320, 250560), (250560, 400000)]


def test_cut_lands_in_a_quiet_stretch_off_the_grid() -> None:
    audio = noise(25.0)
    audio[140003:140903] = 0.001 * audio[140003:140903]  # 56 ms of near silence, not grid-aligned
    (start, cut), *_ = split_long(audio, max_s=10.0)
    assert start == 0
    assert 140003 + 240 <= cut <= 140903 - 240  # the chosen 30 ms frame lies wholly in the quiet part


def test_equally_quiet_frames_prefer_the_latest() -> None:
    # Digital silence everywhere: each cut is the centre of the last frame before the limit.
    assert split_long(np.zeros(400000, dtype=np.float32), max_s=10.0) == [
        (0, 159760),
        (159760, 319520),
        (319520, 400000),
    ]


def test_no_search_window_cuts_at_the_limit() -> None:
    assert split_long(noise(25.0), max_s=10.0, search_s=0.0) == [
        (0, 160000),
        (160000, 320000),
        (320000, 400000),
    ]


def test_search_window_longer_than_a_piece() -> None:
    audio = noise(5.0)
    audio[1600:2080] = 0
    assert split_long(audio, max_s=2.0, search_s=3.0)[0] == (0, 1840)


def test_other_sample_rates_and_integer_audio() -> None:
    audio = np.ones(30 * 8000, dtype=np.int16)
    audio[100000:100240] = 0  # 30 ms at 8 kHz, on the 80-sample grid from 96000
    assert split_long(audio, max_s=13.0, sample_rate=8000, search_s=1.0)[0] == (0, 100120)


def test_random_audio_invariants() -> None:
    rng = np.random.default_rng(3)
    for trial in range(40):
        n = int(rng.integers(0, 60 * RATE))
        audio = noise(n / RATE, seed=trial) * rng.random(n).astype(np.float32)
        max_s = float(rng.uniform(0.5, 25.0))
        search_s = float(rng.uniform(0.0, 5.0))
        pieces = split_long(audio, max_s=max_s, search_s=search_s)
        max_n = int(max_s * RATE)
        if n == 0:
            assert pieces == []
            continue
        assert pieces[0][0] == 0
        assert pieces[-1][1] == n
        for (_, end), (start, _) in itertools.pairwise(pieces):
            assert end == start
        for start, end in pieces:
            assert 0 < end - start <= max_n
        for start, end in pieces[:-1]:
            assert end >= start + max_n - int(search_s * RATE)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        split_long(np.zeros((10, 2), dtype=np.float32), max_s=1.0)
    with pytest.raises(ValueError):
        split_long(noise(1.0), max_s=0.0)
    with pytest.raises(ValueError):
        split_long(noise(1.0), max_s=1.0, search_s=-1.0)
