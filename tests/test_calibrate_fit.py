"""``edge-agent calibrate``'s fit on synthetic feature rows: labels, thresholds and the escalation it
would make (pure logic, exact or tightly bounded)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edge_agent.calibrate import Row, cloud_answers, fit, targets
from edge_agent.confidence import CLOUD_FEATURES, EDGE_FEATURES, pick_features


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


def _two_sided_rows(seed: int) -> list[Row]:
    """The edge errs more the lower its mean log-prob; the cloud's errors follow its own log-prob,
    independently: where both are bad, escalating gains nothing."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(400):
        edge_bad, cloud_bad = bool(rng.random() < 0.4), bool(rng.random() < 0.4)
        row = _row(
            6 if edge_bad else 0, 6 if cloud_bad else 0, 10, float(rng.normal(-2.0 if edge_bad else 0.0, 0.3))
        )
        cloud = row.cloud | {"avg_logprob": float(rng.normal(-1.5 if cloud_bad else -0.2, 0.2))}
        rows.append(replace(row, cloud=cloud))
    return rows


def test_route_fit_escalates_where_the_cloud_gains_and_picks_the_better_text() -> None:
    rows = _two_sided_rows(0)
    calibration, report = fit(rows, max_offload=0.25, source="synthetic", route=True)
    assert calibration.route is not None and calibration.pick is not None
    assert report["offload"] <= 0.25
    # The edge is wrong on ~40 % of clips. Its features cannot tell where the cloud is right too (60 % of
    # them, independently), so the 25 % it escalates, all wrong on the edge, fix about 60 % of their 6
    # errors in 10 words: about 0.09 off the edge's WER.
    assert report["hybrid_wer"] < report["edge_wer"] - 0.07
    held_out = _two_sided_rows(1)
    scores = np.array([calibration.escalation_score(r.final) for r in held_out])
    flagged = scores > calibration.threshold
    assert np.mean([r.edge_errors > 0 for r, f in zip(held_out, flagged, strict=True) if f]) > 0.95
    # Where the two texts differ in errors, the pick keeps the better one (equal ones need no pick).
    pick = calibration.pick
    differ = [r for r in held_out if r.edge_errors != r.cloud_errors]
    take = [pick.probability(pick_features(r.final, r.cloud)) > 0.5 for r in differ]
    better = [r.cloud_errors < r.edge_errors for r in differ]
    assert np.mean(np.array(take) == np.array(better)) > 0.95
    # The threshold and the quantiles are on the route model's scale.
    assert calibration.score_quantiles[0] <= calibration.threshold <= calibration.score_quantiles[-1]
