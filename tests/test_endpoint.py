"""Endpointer: scripted probability sequences give exact event lists.

Most tests use 10-sample windows at 1 kHz, so one window is 10 ms and every position is easy to read:
min_speech 30 ms = 3 windows, min_silence 40 ms = 4 windows, pre-roll 20 ms, tail pad 10 ms,
max utterance 200 ms = 20 windows; threshold 0.5, neg_threshold 0.35.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from edge_agent.audio.endpoint import (
    EndpointConfig,
    Endpointer,
    EndpointEvent,
    SilenceBegan,
    SpeechEnd,
    SpeechResumed,
    SpeechStart,
)

CFG = EndpointConfig(
    threshold=0.5,
    min_silence_ms=40,
    min_speech_ms=30,
    max_utterance_s=0.2,
    pre_roll_ms=20,
    window_samples=10,
    sample_rate=1000,
    end_pad_ms=10,
)
S, N = 0.9, 0.0  # clear speech, clear silence


def run(
    probs: list[float], config: EndpointConfig = CFG, flush: bool = False
) -> list[tuple[int, EndpointEvent]]:
    """(window index, event) for every event; flush events get index len(probs)."""
    ep = Endpointer(config)
    out = [(k, e) for k, p in enumerate(probs) for e in ep.push(p)]
    if flush:
        out += [(len(probs), e) for e in ep.flush()]
    return out


def test_config_derived_values() -> None:
    assert CFG.neg_threshold == pytest.approx(0.35)
    assert dataclasses.replace(CFG, threshold=0.1).neg_threshold == pytest.approx(0.01)
    assert (CFG.min_speech_samples, CFG.min_silence_samples, CFG.pre_roll_samples) == (30, 40, 20)
    assert (CFG.end_pad_samples, CFG.max_samples) == (10, 200)
    with pytest.raises(dataclasses.FrozenInstanceError):
        CFG.threshold = 0.6  # type: ignore[misc]


@pytest.mark.parametrize(
    "changes",
    [
        {"threshold": 0.0},
        {"threshold": 1.5},
        {"min_silence_ms": -1},
        {"pre_roll_ms": -5},
        {"max_utterance_s": 0.04},
    ],
)
def test_invalid_config(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(CFG, **changes)


def test_silence_only_gives_nothing() -> None:
    assert run([N] * 50, flush=True) == []
    assert run([0.49] * 50, flush=True) == []  # just under the threshold


def test_one_utterance_with_pre_roll_and_tail_pad() -> None:
    probs = [N] * 5 + [S] * 6 + [N] * 6
    assert run(probs, flush=True) == [
        (7, SpeechStart(30)),  # speech from window 5 (sample 50) confirmed after 3 windows; 20 pre-roll
        (11, SilenceBegan(110)),  # first non-speech window starts at 110
        (14, SpeechEnd(30, 120, "silence")),  # 40 samples of silence seen; end = 110 + 10 pad
    ]


def test_pre_roll_is_clamped_at_stream_start() -> None:
    assert run([N] + [S] * 3)[0] == (3, SpeechStart(0))


def test_pre_roll_does_not_reach_into_the_previous_utterance() -> None:
    cfg = dataclasses.replace(CFG, pre_roll_ms=50)
    probs = [S] * 5 + [N] * 4 + [S] * 3 + [N] * 4
    assert run(probs, cfg) == [
        (2, SpeechStart(0)),
        (5, SilenceBegan(50)),
        (8, SpeechEnd(0, 60, "silence")),
        (11, SpeechStart(60)),  # 90 - 50 = 40 would overlap the previous utterance, which ended at 60
        (12, SilenceBegan(120)),
        (15, SpeechEnd(60, 130, "silence")),
    ]


def test_tail_pad_is_clamped_to_what_has_been_seen() -> None:
    cfg = dataclasses.replace(CFG, end_pad_ms=100)
    assert run([S] * 3 + [N] * 4, cfg)[-1] == (6, SpeechEnd(0, 70, "silence"))


def test_short_bursts_are_dropped() -> None:
    assert run([N] * 3 + [S] * 2 + [N] * 10 + [S, S, 0.1, S, S] + [N] * 10, flush=True) == []


def test_min_speech_counts_windows_between_the_thresholds() -> None:
    # 0.4 is below the threshold but above neg_threshold: it cannot start a burst, but it sustains one.
    assert run([0.4, S, 0.4, 0.4])[0] == (3, SpeechStart(0))
    assert run([0.4, 0.4, 0.4, 0.4]) == []


def test_hysteresis_in_speech() -> None:
    probs = [S] * 3 + [0.4] * 10 + [0.34] + [N] * 4
    assert run(probs) == [
        (2, SpeechStart(0)),
        (13, SilenceBegan(130)),  # 0.4 >= neg_threshold kept it speech; 0.34 does not
        (16, SpeechEnd(0, 140, "silence")),
    ]


def test_speech_resumed_before_min_silence() -> None:
    probs = [S] * 4 + [N] * 3 + [S] * 2 + [N] * 4
    assert run(probs) == [
        (2, SpeechStart(0)),
        (4, SilenceBegan(40)),
        (7, SpeechResumed()),
        (9, SilenceBegan(90)),
        (12, SpeechEnd(0, 100, "silence")),
    ]


def test_only_the_full_threshold_cancels_a_silence() -> None:
    # 0.45 is in the hysteresis band: it neither resumes speech nor resets the silence timer.
    probs = [S] * 4 + [N, 0.45, 0.45, 0.45]
    assert run(probs) == [(2, SpeechStart(0)), (4, SilenceBegan(40)), (7, SpeechEnd(0, 50, "silence"))]


def test_max_length_split_while_speaking() -> None:
    probs = [N] * 2 + [S] * 40
    assert run(probs, flush=True) == [
        (4, SpeechStart(0)),
        (19, SpeechEnd(0, 200, "max_length")),  # one more window would make it 210 > 200
        (20, SpeechStart(200)),  # the speaker goes on: the next utterance starts where the last ended
        (39, SpeechEnd(200, 400, "max_length")),
        (40, SpeechStart(400)),
        (42, SpeechEnd(400, 420, "stream_end")),
    ]


def test_max_length_split_continues_only_with_speech() -> None:
    # Hysteresis band continues the speech; silence right after the cut opens nothing.
    assert run([S] * 20 + [0.4])[-1] == (20, SpeechStart(200))
    assert run([S] * 20 + [N] * 10, flush=True) == [
        (2, SpeechStart(0)),
        (19, SpeechEnd(0, 200, "max_length")),
    ]
    # Cut on the last window: the stream end does not produce an empty utterance.
    assert run([S] * 20, flush=True) == [(2, SpeechStart(0)), (19, SpeechEnd(0, 200, "max_length"))]


def test_max_length_reached_during_silence() -> None:
    probs = [S] * 17 + [N] * 5
    assert run(probs, flush=True) == [
        (2, SpeechStart(0)),
        (17, SilenceBegan(170)),
        (19, SpeechEnd(0, 180, "max_length")),  # ends at the padded silence start, not at 200
    ]


def test_pre_roll_shrinks_only_when_an_utterance_could_not_fit() -> None:
    cfg = dataclasses.replace(CFG, pre_roll_ms=500)
    assert run([N] * 30 + [S] * 3, cfg)[0] == (32, SpeechStart(140))  # 330 + 10 - 200
    assert run([N] * 30 + [S] * 3)[0] == (32, SpeechStart(280))


def test_flush_closes_an_utterance_in_silence() -> None:
    assert run([S] * 5 + [N] * 2, flush=True)[-2:] == [
        (5, SilenceBegan(50)),
        (7, SpeechEnd(0, 60, "stream_end")),
    ]


def test_flush_drops_an_unconfirmed_burst_and_is_idempotent() -> None:
    ep = Endpointer(CFG)
    ep.push(S)
    assert ep.flush() == []
    assert ep.flush() == []
    assert [*ep.push(S), *ep.push(S)] == []  # a fresh burst after the flush; needs 3 windows again
    assert ep.push(S) == [SpeechStart(0)]  # pre-roll from 20 reaches back to 0
    assert ep.in_utterance
    assert ep.utterance_start == 0
    assert ep.flush() == [SpeechEnd(0, 40, "stream_end")]
    assert not ep.in_utterance
    assert ep.flush() == []


def test_zero_min_silence_ends_in_the_same_window() -> None:
    cfg = dataclasses.replace(CFG, min_silence_ms=0, min_speech_ms=0)
    assert run([S, N], cfg) == [(0, SpeechStart(0)), (1, SilenceBegan(10)), (1, SpeechEnd(0, 20, "silence"))]


def test_reset_and_position() -> None:
    ep = Endpointer(CFG)
    for _ in range(3):
        ep.push(S)
    assert ep.position == 30
    ep.reset()
    assert ep.position == 0
    assert not ep.in_utterance
    assert ep.utterance_start is None


def test_default_16k_config() -> None:
    cfg = EndpointConfig(
        threshold=0.5, min_silence_ms=500, min_speech_ms=200, max_utterance_s=20, pre_roll_ms=300
    )
    # min_speech 3200 samples -> 7 windows of 512; min_silence 8000 -> 16 windows; pre-roll 4800.
    probs = [N] * 20 + [S] * 30 + [N] * 16
    assert run(probs, cfg) == [
        (26, SpeechStart(20 * 512 - 4800)),
        (50, SilenceBegan(50 * 512)),
        (65, SpeechEnd(20 * 512 - 4800, 50 * 512 + 1600, "silence")),
    ]


def test_random_sequences_give_well_formed_utterances() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        # Runs of speech-like and silence-like probabilities of random lengths.
        probs: list[float] = []
        while len(probs) < 300:
            level = rng.choice([0.05, 0.4, 0.6, 0.95])
            probs += [float(min(1.0, max(0.0, level + rng.normal(0, 0.1))))] * int(rng.integers(1, 30))
        ep = Endpointer(CFG)
        events = [e for p in probs for e in ep.push(p)] + ep.flush()
        open_start: int | None = None
        last_end = 0
        silence_open = False
        for e in events:
            if isinstance(e, SpeechStart):
                assert open_start is None
                assert e.start_sample >= last_end
                open_start = e.start_sample
            elif isinstance(e, SilenceBegan):
                assert open_start is not None and not silence_open
                silence_open = True
            elif isinstance(e, SpeechResumed):
                assert silence_open
                silence_open = False
            else:
                assert isinstance(e, SpeechEnd)
                assert e.start_sample == open_start
                assert open_start < e.end_sample <= ep.position
                assert e.end_sample - e.start_sample <= CFG.max_samples
                last_end, open_start, silence_open = e.end_sample, None, False
        assert open_start is None


def test_pause_silence_ends_a_pause_that_is_already_long_enough() -> None:
    ep = Endpointer(CFG)
    for p in [S] * 5 + [N] * 2:  # speech from 0 (start 0), pause from window 5: 20 samples so far
        ep.push(p)
    assert ep.pause_samples == 20
    assert ep.set_pause_silence(20) == [SpeechEnd(0, 60, "silence")]  # pause start 50 + 10 pad
    assert not ep.in_utterance and ep.pause_samples == 0


def test_pause_silence_never_ends_before_the_end_pad_is_in() -> None:
    ep = Endpointer(CFG)
    for p in [S] * 5 + [N]:  # pause of 10 samples = the pad
        ep.push(p)
    assert ep.set_pause_silence(0) == [SpeechEnd(0, 60, "silence")]
    ep = Endpointer(dataclasses.replace(CFG, end_pad_ms=30))
    for p in [S] * 5 + [N]:
        ep.push(p)
    assert ep.set_pause_silence(0) == []  # 10 of the 30-sample pad seen: wait
    assert ep.push(N) == [] and ep.push(N) == [SpeechEnd(0, 80, "silence")]


def test_longer_pause_silence_holds_the_utterance_open() -> None:
    ep = Endpointer(CFG)
    for p in [S] * 5 + [N]:
        ep.push(p)
    assert ep.set_pause_silence(70) == []
    events = [(k, e) for k, p in enumerate([N] * 8) for e in ep.push(p)]
    assert events == [(5, SpeechEnd(0, 60, "silence"))]  # at 70 samples of pause, not the usual 40


def test_pause_silence_lasts_one_pause_only() -> None:
    ep = Endpointer(CFG)
    for p in [S] * 5 + [N]:
        ep.push(p)
    ep.set_pause_silence(100)
    assert ep.push(S) == [SpeechResumed()]
    events = [(k, e) for k, p in enumerate([N] * 6) for e in ep.push(p)]
    assert events[0] == (0, SilenceBegan(70))
    assert events[1] == (3, SpeechEnd(0, 80, "silence"))  # back to min_silence (40)


def test_pause_silence_outside_a_pause_is_ignored() -> None:
    ep = Endpointer(CFG)
    assert ep.set_pause_silence(10) == []
    for p in [S] * 5:
        ep.push(p)
    assert ep.set_pause_silence(10) == [] and ep.in_utterance
