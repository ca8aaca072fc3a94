"""scripts/bench_routing.py: the oracle within an offload, the share threshold and voice families (exact)."""

from __future__ import annotations

import numpy as np

from edge_agent.calibrate import Row
from tests.scripts import load_script

routing = load_script("bench_routing")


def _row(edge_errors: int, cloud_errors: int, words: int = 10) -> Row:
    return Row("set", "clean", "ref", "e", "c", edge_errors, cloud_errors, words, {}, {}, {})


def test_oracle_within_escalates_only_the_largest_gains_the_budget_allows() -> None:
    rows = [_row(5, 0), _row(3, 1), _row(1, 4), _row(2, 2)]  # gains 5, 2, -3, 0; 40 words
    assert routing.oracle_within(rows, 0.0) == 11 / 40
    assert routing.oracle_within(rows, 0.25) == 6 / 40  # one utterance: the gain of 5
    assert routing.oracle_within(rows, 0.5) == 4 / 40
    assert routing.oracle_within(rows, 1.0) == 4 / 40  # a loss is never taken


def test_top_share_threshold_escalates_at_most_the_share() -> None:
    p = np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.2, 0.8, 0.4])
    assert routing.top_share(p, 0.25) == 0.7
    assert int((p > routing.top_share(p, 0.25)).sum()) == 2
    assert routing.top_share(p, 0.0) == 1.0
    assert int((p > routing.top_share(p, 1.0)).sum()) == 8


def test_voice_family_drops_variant_speed_and_blend() -> None:
    assert routing.voice_family("espeak/en-gb+m3@150/40") == "espeak/en-gb"
    assert routing.voice_family("kokoro/jf_alpha+jm_kumo:0.30@90/0") == "kokoro/jf_alpha"
    assert routing.voice_family("flite/kal16") == "flite/kal16"
    assert routing.voice_family("piper/en_US-joe-medium") == "piper/en_US-joe-medium"
