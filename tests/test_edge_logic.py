"""Pure logic of the edge: scheduling, confidence models, offramp policy, tokenizer."""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.asr.interface import TokenInfo
from edge_agent.asr.moonshine.ort_convert import default_model_dir
from edge_agent.asr.moonshine.tokenizer import TextDecoder, read_vocab
from edge_agent.confidence import (
    CLOUD_FEATURES,
    EDGE_FEATURES,
    PICK_FEATURES,
    Calibration,
    LogisticModel,
    cloud_beats_edge,
    edge_features,
    fit_logistic,
    pick_features,
)
from edge_agent.offramp import OfframpPolicy, Reason, choose, plan_escalation
from edge_agent.worker import InferenceWorker, Job, pick_next


def _job(kind: str, key: Hashable | None = None, cancelled: bool = False) -> Job[Any]:
    loop = asyncio.new_event_loop()
    future: asyncio.Future[Any] = loop.create_future()
    if cancelled:
        future.cancel()
    loop.close()
    return Job(lambda: None, future, kind, key)


def test_pick_next_prefers_finals_then_oldest_pilot() -> None:
    f1, f2 = _job("final"), _job("final")
    p_a, p_b = _job("pilot", "a"), _job("pilot", "b")
    finals = deque([f1, f2])
    pilots: OrderedDict[Hashable, Job[Any]] = OrderedDict([("a", p_a), ("b", p_b)])
    assert pick_next(finals, pilots) is f1
    assert pick_next(finals, pilots) is f2
    assert pick_next(finals, pilots) is p_a
    assert pick_next(finals, pilots) is p_b
    assert pick_next(finals, pilots) is None


def test_pick_next_skips_cancelled() -> None:
    finals = deque([_job("final", cancelled=True)])
    live = _job("pilot", "a")
    pilots: OrderedDict[Hashable, Job[Any]] = OrderedDict(
        [("z", _job("pilot", "z", cancelled=True)), ("a", live)]
    )
    assert pick_next(finals, pilots) is live


def test_worker_runs_finals_before_pilots_and_replaces_stale_pilots() -> None:
    order: list[str] = []

    async def scenario() -> None:
        worker = InferenceWorker()
        blocker = asyncio.Event()
        loop = asyncio.get_running_loop()

        def first() -> str:
            asyncio.run_coroutine_threadsafe(blocker.wait(), loop).result(5)
            order.append("first")
            return "first"

        worker.start()
        running = asyncio.ensure_future(worker.run_final(first))
        await asyncio.sleep(0.05)
        old = worker.offer_pilot("s1", lambda: order.append("old pilot"))
        new = worker.offer_pilot("s1", lambda: order.append("new pilot"))
        other = worker.offer_pilot("s2", lambda: order.append("s2 pilot"))
        final = asyncio.ensure_future(worker.run_final(lambda: order.append("final")))
        await asyncio.sleep(0.05)
        assert worker.final_waiting
        blocker.set()
        await asyncio.gather(running, final, new, other)
        assert old.cancelled()
        await worker.stop()

    asyncio.run(scenario())
    assert order == ["first", "final", "new pilot", "s2 pilot"]


def test_logistic_fit_separates_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for _ in range(400):
        wrong = int(rng.random() < 0.3)
        rows.append({"a": rng.normal(-1.5 if wrong else -0.2, 0.3), "b": rng.normal(0, 1)})
        labels.append(wrong)
    model = fit_logistic(rows, labels, ["a", "b"])
    assert model.probability({"a": -1.6, "b": 0.0}) > 0.9
    assert model.probability({"a": -0.1, "b": 0.0}) < 0.1
    assert abs(model.weights[1]) < abs(model.weights[0]) / 5  # the noise feature barely counts
    again = LogisticModel.from_json(model.to_json())
    assert again.probability({"a": -1.0, "b": 1.0}) == model.probability({"a": -1.0, "b": 1.0})


def _flat_model(names: tuple[str, ...], bias: float, weight: float = 0.0) -> LogisticModel:
    n = len(names)
    return LogisticModel(names, (0.0,) * n, (1.0,) * n, (weight,) + (0.0,) * (n - 1), bias)


def _calibration() -> Calibration:
    # P(wrong) = sigmoid(-4 * mean_logprob - 2): mean log-prob -0.05 -> 0.14, -2.0 -> 0.9975.
    final = _flat_model(EDGE_FEATURES, -2.0, -4.0)
    pilot = _flat_model(EDGE_FEATURES, -2.0, -4.0)
    cloud = _flat_model(CLOUD_FEATURES, -2.0, -4.0)
    quantiles = tuple(float(q) for q in np.linspace(0.0, 1.0, 101))
    return Calibration(1, final, pilot, cloud, 0.5, 0.8, 0.95, quantiles)


def _tokens(logprob: float, n: int = 8) -> list[TokenInfo]:
    return [TokenInfo(10 + i, logprob, 0.5) for i in range(n)]


def test_policy_thresholds_direct_from_file_and_from_offload_rate(tmp_path: Path) -> None:
    cal = _calibration()
    assert OfframpPolicy.from_calibration(cal).threshold == 0.5
    direct = OfframpPolicy.from_calibration(cal, threshold=0.3)
    assert direct.threshold == 0.3
    assert direct.early_threshold == pytest.approx(0.6) and direct.stop_threshold == pytest.approx(0.75)
    by_rate = OfframpPolicy.from_calibration(cal, threshold=0.3, target_offload_rate=0.2)
    assert by_rate.threshold == pytest.approx(0.8)  # 80th percentile of the calibration scores
    path = tmp_path / "cal.json"
    cal.save(path)
    assert Calibration.load(path) == cal


def test_policy_decisions() -> None:
    policy = OfframpPolicy.from_calibration(_calibration())
    confident, hopeless = _tokens(-0.05), _tokens(-2.0)
    final = policy.at_final(confident, 3.0, 0.9, 1.0, True)
    assert not final.escalate and final.p_wrong < 0.5
    bad = policy.at_final(hopeless, 3.0, 0.9, 1.0, True)
    assert bad.escalate and bad.reason is Reason.LOW_CONFIDENCE
    assert policy.at_pilot(hopeless, 2.0, 0.9, 1.0).escalate
    assert not policy.at_pilot(hopeless, 0.5, 0.9, 1.0).escalate  # too little audio to judge yet
    assert not policy.at_pilot(confident, 2.0, 0.9, 1.0).escalate
    assert policy.should_stop(hopeless, 3.0, 0.9)
    assert not policy.should_stop(hopeless[:3], 3.0, 0.9)  # too few tokens to judge
    assert not policy.should_stop(confident, 3.0, 0.9)


def test_choose_keeps_the_likelier_result() -> None:
    assert choose(0.4, None) == "edge"
    assert choose(0.4, 0.1) == "cloud"
    assert choose(0.1, 0.4) == "edge"
    assert choose(0.3, 0.3) == "edge"
    # A pick model's P(cloud beats edge) decides when given, not the two P(wrong).
    assert choose(0.1, 0.4, "en", 0.7) == "cloud"
    assert choose(0.4, 0.1, "en", 0.3) == "edge"
    assert choose(0.4, 0.1, "en", 0.5) == "edge"  # a tie goes to the edge
    assert choose(0.4, None, "en", 0.9) == "edge"  # no cloud text: nothing to pick
    assert choose(None, 0.4, "en", 0.1) == "cloud"  # no usable edge text


def _routed() -> Calibration:
    # route: P(cloud beats edge) = sigmoid(-2 * mean_logprob - 1): -0.05 -> 0.29, -2.0 -> 0.95.
    route = _flat_model(EDGE_FEATURES, -1.0, -2.0)
    pick = _flat_model(PICK_FEATURES, 0.0, 1.0)
    return replace(_calibration(), threshold=0.6, route=route, pick=pick)


def test_policy_with_a_route_model_escalates_by_what_the_cloud_would_gain() -> None:
    cal = _routed()
    policy = OfframpPolicy.from_calibration(cal)
    assert (policy.threshold, policy.early_threshold, policy.stop_threshold) == (0.6, 0.8, 0.95)
    # The early and stop thresholds are on the pilot model's scale: a direct or target threshold on the
    # route model's scale leaves them as calibrated.
    direct = OfframpPolicy.from_calibration(cal, threshold=0.3)
    assert (direct.threshold, direct.early_threshold, direct.stop_threshold) == (0.3, 0.8, 0.95)
    by_rate = OfframpPolicy.from_calibration(cal, threshold=0.3, target_offload_rate=0.2)
    assert by_rate.threshold == pytest.approx(0.8) and by_rate.early_threshold == 0.8
    middling = policy.at_final(_tokens(-0.5), 3.0, 0.9, 1.0, True)
    # P(edge wrong) = sigmoid(2 - 2) = 0.5, P(cloud beats edge) = sigmoid(1 - 1) = 0.5: below 0.6.
    assert middling.p_wrong == pytest.approx(0.5) and middling.score == pytest.approx(0.5)
    assert not middling.escalate
    bad = policy.at_final(_tokens(-1.0), 3.0, 0.9, 1.0, True)
    assert bad.escalate and bad.reason is Reason.LOW_CONFIDENCE
    assert bad.score == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert bad.p_wrong == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert bad.features is not None and bad.features["mean_logprob"] == pytest.approx(-1.0)


def test_plan_carries_the_score_and_features_except_for_a_stopped_decode() -> None:
    policy = OfframpPolicy.from_calibration(_routed())
    decision = policy.at_final(_tokens(-1.0), 3.0, 0.9, 1.0, True)
    plan = plan_escalation(decision, False, False, False, True)
    assert plan.escalate and plan.score == decision.score and plan.features == decision.features
    stopped = plan_escalation(decision, True, False, False, True)
    assert stopped.score == 1.0 and stopped.p_edge == 1.0 and stopped.features is None
    # Without a route model the score is P(wrong) itself.
    plain = OfframpPolicy.from_calibration(_calibration()).at_final(_tokens(-1.0), 3.0, 0.9, 1.0, True)
    assert plan_escalation(plain, False, False, False, True).score == plain.p_wrong


def test_a_pick_model_reads_both_sides_features() -> None:
    pick = _flat_model(PICK_FEATURES, 0.0, 1.0)  # P = sigmoid(edge mean log-prob)
    edge = dict.fromkeys(EDGE_FEATURES, 0.0) | {"mean_logprob": 2.0}
    p = cloud_beats_edge(pick, edge, -0.3, 0.01, "turn on the light", "turn on the lights", 2.0)
    assert p == pytest.approx(1 / (1 + math.exp(-2.0)))
    feats = pick_features(edge, dict.fromkeys(CLOUD_FEATURES, 1.0))
    assert (
        set(feats) == set(PICK_FEATURES)
        and feats["edge_mean_logprob"] == 2.0
        and feats["cloud_repetition"] == 1.0
    )


def test_a_calibration_with_route_and_pick_saves_and_loads(tmp_path: Path) -> None:
    cal = _routed()
    path = tmp_path / "routed.json"
    cal.save(path)
    assert Calibration.load(path) == cal
    feats = edge_features(_tokens(-1.0), 3.0, 0.9, 1.0)
    assert cal.escalation_score(feats) == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert _calibration().escalation_score(feats) == _calibration().final.probability(feats)


def test_edge_features() -> None:
    feats = edge_features([TokenInfo(5, -0.5, 1.0), TokenInfo(6, -1.5, 2.0)], 2.0, 0.75, 0.5, finished=False)
    assert feats["mean_logprob"] == -1.0 and feats["min_logprob"] == -1.5
    assert feats["mean_entropy"] == 1.5 and feats["max_entropy"] == 2.0
    assert feats["tokens_per_s"] == 1.0 and feats["speech_ratio"] == 0.75
    assert feats["pilot_agreement"] == 0.5 and feats["unfinished"] == 1.0
    assert feats["log_duration"] == pytest.approx(math.log(2.0))
    assert set(feats) == set(EDGE_FEATURES)


def test_shipped_calibration_loads() -> None:
    cal = Calibration.load()
    assert 0.0 < cal.threshold < 1.0
    assert cal.early_threshold <= cal.stop_threshold <= 1.0
    assert len(cal.score_quantiles) == 101
    # Moonshine's escalates by the route model (its threshold is on that scale) and picks with both sides.
    assert cal.route is not None and cal.pick is not None and cal.model == "moonshine-base"
    assert cal.score_quantiles[0] <= cal.threshold <= cal.score_quantiles[-1]


def test_tokenizer_decodes_moonshine_ids() -> None:
    path = default_model_dir() / "tokenizer.bin"
    assert len(read_vocab(path)) == 32000
    text = TextDecoder(path)
    ids = [1, 15043, 3186, 29892, 445, 338, 263, 1243, 310, 29871, 29941, 29900, 29995, 3694, 29889, 2]
    assert text.decode(ids) == "Hello world, this is a test of 30% numbers."
    assert text.starts_word(15043) and not text.starts_word(29892)
    # Byte-fallback pieces rebuild UTF-8: 0xC3 0xA9 is "é".
    assert text.decode([3 + 0xC3, 3 + 0xA9]) == "é"
