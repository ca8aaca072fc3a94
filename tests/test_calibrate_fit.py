"""``edge-agent calibrate``'s fit on synthetic feature rows: labels, thresholds and the escalation it
would make (pure logic, exact or tightly bounded)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edge_agent.calibrate import Row, cloud_answers, fit, targets
from edge_agent.confidence import CLOUD_FEATURES, EDGE_FEATURES


def _row(edge_errors: int, cloud_errors: int, words: int, mean_logprob: float, model: str = "m") -> Row:
    edge = dict.fromkeys(EDGE_FEATURES, 0.0) | {"mean_logprob": mean_logprob}
    cloud = dict.fromkeys(CLOUD_FEATURES, 0.0)
    return Row(
        "set",
        "clean",
        "ref",
        "edge",
        "cloud",
        edge_errors,
        cloud_errors,
        words,
        edge,
        dict(edge),
        cloud,
        model,
    )


def test_targets_binary_and_word_error_rate() -> None:
    rows = [_row(0, 1, 10, 0.0), _row(3, 0, 10, 0.0), _row(12, 2, 8, 0.0)]
    assert targets(rows, "binary") == ([0.0, 1.0, 1.0], [1.0, 0.0, 1.0])
    assert targets(rows, "wer") == ([0.0, 0.3, 1.0], [0.1, 0.0, 0.25])
    with pytest.raises(ValueError, match="binary or wer"):
        targets(rows, "other")


def _weak_edge_rows(seed: int) -> list[Row]:
    """A weak edge model: every clip has errors, more of them the lower its mean log-prob; the cloud
    makes one error per clip."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(200):
        share = float(rng.uniform(0.1, 0.9))
        rows.append(_row(max(1, round(10 * share)), 1, 10, -3.0 * share + float(rng.normal(0, 0.2))))
    return rows


def test_a_weak_model_still_escalates_its_worst_clips_with_wer_labels() -> None:
    rows = _weak_edge_rows(0)
    assert all(r.edge_errors > 0 for r in rows)  # binary labels would all be 1: nothing to rank
    calibration, report = fit(rows, max_offload=0.25, source="synthetic", labels="wer")
    assert 0.15 <= report["offload"] <= 0.25
    assert report["hybrid_wer"] < report["edge_wer"] - 0.05
    # The clips it escalates are the worst ones: their edge error rate is well above the rest's.
    p = np.array([calibration.final.probability(r.final) for r in rows])
    flagged = p > calibration.threshold
    share = np.array([r.edge_errors / r.words for r in rows])
    assert share[flagged].mean() > share[~flagged].mean() + 0.3
    # Held-out clips from the same process are ranked the same way (the fit is not memorising).
    held_out = _weak_edge_rows(1)
    p_held = np.array([calibration.final.probability(r.final) for r in held_out])
    share_held = np.array([r.edge_errors / r.words for r in held_out])
    assert np.corrcoef(p_held, share_held)[0, 1] > 0.8


def test_cloud_answers_from_an_earlier_run_by_clip() -> None:
    def row(kind: str, reference: str, text: str, logprob: float) -> Row:
        r = _row(0, 0, 3, 0.0)
        cloud = r.cloud | {"avg_logprob": logprob, "no_speech_prob": 0.01}
        return replace(r, kind=kind, reference=reference, cloud_text=text, cloud=cloud)

    rows = [row("clean", "a b c", "a b c", -0.1), row("babble", "a b c", "a b", -0.5),
            row("clean", "d e", "d e", -0.2), row("clean", "d e", "d", -0.3)]  # fmt: skip
    assert cloud_answers(rows) == {
        ("set", "clean", "a b c"): ("a b c", -0.1, 0.01),
        ("set", "babble", "a b c"): ("a b", -0.5, 0.01),
    }  # the twice-recorded ("set", "clean", "d e") is decoded again, not guessed
