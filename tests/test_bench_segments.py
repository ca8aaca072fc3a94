"""speech-bench's pure pieces: where the speech ends in a clip, and split/merged counts from final spans."""

from __future__ import annotations

import numpy as np
import pytest

from speech_bench.segments import (
    FRAME_S,
    SegmentationCounts,
    cleanly_finalized,
    count_segmentation,
    estimate_speech_span,
)

RATE = 16000


def _tone(seconds: float, amplitude: float = 0.3, hz: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.float32)


def test_tone_between_silences_on_frame_boundaries_is_found_exactly() -> None:
    audio = np.concatenate([_silence(0.5), _tone(0.8), _silence(0.7)])
    assert estimate_speech_span(audio, RATE) == pytest.approx((0.5, 1.3), abs=1e-9)


@pytest.mark.parametrize(("lead", "length"), [(0.513, 0.777), (0.3071, 1.2345), (0.019, 0.4)])
def test_tone_edges_off_the_frame_grid_are_within_one_frame(lead: float, length: float) -> None:
    audio = np.concatenate([_silence(lead), _tone(length), _silence(0.6)])
    start, end = estimate_speech_span(audio, RATE) or (None, None)
    assert start is not None and end is not None
    # The frame holding an edge counts as speech: the start is early and the end late, never the other way.
    assert lead - FRAME_S <= start <= lead
    assert lead + length <= end <= lead + length + FRAME_S


def test_a_room_noise_floor_40_db_down_is_not_speech() -> None:
    rng = np.random.default_rng(0)
    audio = np.concatenate([_silence(0.4), _tone(1.0), _silence(1.0)])
    audio = audio + rng.normal(scale=0.3 / np.sqrt(2) * 10 ** (-55 / 20), size=len(audio)).astype(np.float32)
    assert estimate_speech_span(audio, RATE) == pytest.approx((0.4, 1.4), abs=1e-9)


def test_a_click_does_not_set_the_scale() -> None:
    audio = np.concatenate([_silence(0.5), _tone(1.0, amplitude=1e-4), _silence(0.5)])
    audio[100] = 1.0  # a one-sample click in the leading silence, its frame 58 dB above the quiet speech
    start, end = estimate_speech_span(audio, RATE) or (None, None)
    assert start == pytest.approx(0.0)  # the click's frame is loud, so it is in the span...
    assert end == pytest.approx(1.5)  # ...but it does not push the quiet speech under the threshold


def test_a_quiet_tail_within_40_db_is_speech_and_below_it_is_not() -> None:
    loud, soft, faint = _tone(0.6), _tone(0.2, amplitude=0.3 * 10 ** (-30 / 20)), _tone(0.2, 0.3e-3)
    audio = np.concatenate([_silence(0.2), loud, soft, faint, _silence(0.4)])
    assert estimate_speech_span(audio, RATE) == pytest.approx((0.2, 1.0), abs=1e-9)


def test_silence_and_empty_audio_have_no_speech() -> None:
    assert estimate_speech_span(_silence(1.0), RATE) is None
    assert estimate_speech_span(np.zeros(0, np.float32), RATE) is None


def test_a_tone_to_the_end_of_the_clip_ends_with_the_clip() -> None:
    audio = np.concatenate([_silence(0.25), _tone(0.505)])  # the last frame is a partial one
    assert estimate_speech_span(audio, RATE) == pytest.approx((0.24, 0.755), abs=1e-9)


def test_other_rates() -> None:
    rate = 8000
    audio = np.concatenate([np.zeros(4000), 0.3 * np.ones(2400), np.zeros(800)])
    assert estimate_speech_span(audio, rate) == pytest.approx((0.5, 0.8), abs=1e-9)


SENTENCES = [(0.5, 2.5), (4.0, 6.0), (7.5, 9.0)]


def test_one_final_per_sentence_is_clean() -> None:
    # Finals carry the VAD's pre-roll (0.3 s) and end padding: they graze the pauses, not the next sentence.
    finals = [(0.2, 2.7), (3.7, 6.1), (7.2, 9.1)]
    assert count_segmentation(SENTENCES, finals) == SegmentationCounts(3, 3, 0, 0, 0, 0)
    assert cleanly_finalized(SENTENCES, finals) == {0: 0, 1: 1, 2: 2}


def test_a_false_endpoint_inside_a_sentence_is_a_split() -> None:
    finals = [(0.2, 2.7), (3.7, 4.9), (5.2, 6.1), (7.2, 9.1)]
    assert count_segmentation(SENTENCES, finals) == SegmentationCounts(3, 4, 1, 0, 0, 0)
    assert cleanly_finalized(SENTENCES, finals) == {0: 0, 2: 3}


def test_a_final_across_a_pause_is_a_merge() -> None:
    finals = [(0.2, 2.7), (3.7, 9.1)]
    assert count_segmentation(SENTENCES, finals) == SegmentationCounts(3, 2, 0, 1, 0, 0)
    assert cleanly_finalized(SENTENCES, finals) == {0: 0}


def test_split_and_merged_together() -> None:
    # Sentence 1 is cut in two, and its second half runs on into sentence 2.
    finals = [(0.2, 2.7), (3.7, 4.9), (5.2, 9.1)]
    assert count_segmentation(SENTENCES, finals) == SegmentationCounts(3, 3, 1, 1, 0, 0)


def test_missed_sentences_and_spurious_finals() -> None:
    finals = [(0.2, 2.7), (2.9, 3.5), (7.2, 9.1)]  # sentence 1 got nothing; a final in the pause
    assert count_segmentation(SENTENCES, finals) == SegmentationCounts(3, 3, 0, 0, 1, 1)
    assert count_segmentation(SENTENCES, []) == SegmentationCounts(3, 0, 0, 0, 3, 0)


def test_grazing_less_than_the_minimum_overlap_does_not_count() -> None:
    finals = [(0.2, 4.05), (3.95, 6.1)]  # each touches its neighbour's sentence by 50 ms
    assert count_segmentation(SENTENCES[:2], finals) == SegmentationCounts(2, 2, 0, 0, 0, 0)
    # With a looser overlap the first final merges both sentences, and the second is split between two.
    loose = count_segmentation(SENTENCES[:2], finals, min_overlap_s=0.04)
    assert loose == SegmentationCounts(2, 2, 1, 1, 0, 0)
