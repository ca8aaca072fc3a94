"""A target offload rate on the traffic the agent hears (``edge_agent.offload``): the threshold's exact
arithmetic, and a session whose confidences never reach the calibrated threshold escalating the least
confident share once it has heard enough."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.offload import OffloadTarget
from edge_agent.recognizer import Recognizer
from edge_agent.session import Session
from tests.fake_asr import FakeEscalator, FakeModel, speech
from tests.test_session import CONFIDENT, GAP, LEAD, RATE, _drain, _feed, _of, _rec, _run


def test_threshold_is_the_calibrated_one_until_enough_finals_were_seen() -> None:
    target = OffloadTarget(0.25, fallback=0.9, window=8, min_samples=4)
    for p in (0.1, 0.2, 0.3):
        target.observe(p)
    assert target.threshold() == 0.9 and target.seen == 3
    target.observe(0.4)
    # ceil(0.25 * 4) = 1 of the 4 lies above: 0.4 > 0.3
    assert target.threshold() == 0.3


def test_threshold_keeps_the_share_and_follows_the_window() -> None:
    target = OffloadTarget(0.2, fallback=0.5, window=10, min_samples=5)
    for p in (0.05, 0.9, 0.1, 0.6, 0.2, 0.3, 0.7, 0.15, 0.25, 0.35):
        target.observe(p)
    assert target.threshold() == 0.6  # 0.9 and 0.7 lie above: 2 of 10
    for p in (0.01, 0.02, 0.03):  # the window forgets 0.05, 0.9 and 0.1
        target.observe(p)
    assert target.threshold() == 0.35  # now 0.7 and 0.6 lie above
    target.observe(math.nan)  # not a probability: ignored
    assert target.seen == 10


def test_extreme_rates_and_bad_settings() -> None:
    never = OffloadTarget(0.0, fallback=0.5, window=4, min_samples=1)
    always = OffloadTarget(1.0, fallback=0.5, window=4, min_samples=1)
    for target in (never, always):
        target.observe(0.99)
        target.observe(0.0)
    assert never.threshold() == math.inf and always.threshold() == -math.inf
    with pytest.raises(ValueError):
        OffloadTarget(1.5, fallback=0.5)
    with pytest.raises(ValueError):
        OffloadTarget(0.2, fallback=0.5, window=10, min_samples=11)


# One hard word in eight: P(wrong) = sigmoid(-4 * mean log-prob - 2) = 0.33, below the scripted
# calibration's threshold (0.5); all confident: 0.12.
ONE_HARD = (0.3, 0.4, 0.5, 0.9, 0.3, 0.4, 0.5, 0.6)


def _finals(rec: Recognizer, levels: list[tuple[float, ...]]) -> list[dict[str, Any]]:
    finals: list[dict[str, Any]] = []

    async def scenario(rec: Recognizer) -> None:
        session = Session(rec, RATE, "pcm_s16le", session_id="s")
        for utterance in levels:
            await _feed(session, np.concatenate([LEAD, speech(*utterance), GAP]))
        await session.finish()
        finals.extend(_of(_drain(session), "final"))

    _run(rec, scenario)
    return finals


def test_session_escalates_the_least_confident_share_once_warmed_up(tmp_path: Path) -> None:
    # 16 confident and 4 one-hard-word utterances warm it up (20 finals), then 4 more of each.
    levels = [CONFIDENT] * 16 + [ONE_HARD] * 4 + [ONE_HARD, CONFIDENT] * 4
    (tmp_path / "fixed").mkdir()
    (tmp_path / "target").mkdir()
    fixed = _finals(_rec(tmp_path / "fixed", FakeModel(), FakeEscalator()), levels)
    assert len(fixed) == len(levels) and not any(f["escalated"] for f in fixed)

    rec = _rec(tmp_path / "target", FakeModel(), FakeEscalator(), target_offload_rate=0.25)
    finals = _finals(rec, levels)
    assert len(finals) == len(levels)
    # Until 20 finals were seen the calibration set's threshold for 25 % (0.75) holds: nothing escalates.
    # Then 5 of the last 20+ lie above the threshold, which sits on the confident ones' 0.12.
    escalated = [i for i, f in enumerate(finals) if f["escalated"]]
    assert escalated == [20, 22, 24, 26], escalated
    assert {finals[i]["reason"] for i in escalated} == {"low_confidence"}
    assert rec.offload is not None and rec.offload.seen == len(levels)
    gauge = rec.metrics.registry.get_sample_value("edge_escalation_threshold")
    # 8 of the 28 were one-hard-word finals (29 %, above the share): the threshold rose to their P(wrong),
    # so the next one would not escalate.
    one_hard_p = 1 / (1 + math.exp(-(-4 * (-2.5 - 7 * 0.01) / 8 - 2)))
    assert gauge == rec.offload.threshold() == pytest.approx(one_hard_p)
