"""Pure pieces of finalizing an utterance: the escalation plan, the EdgeContext, the event builders."""

from __future__ import annotations

from dataclasses import replace

import pytest

from asr_common.protos import speech_pb2
from edge_agent import events
from edge_agent.asr.interface import Decoded, Hypothesis, TokenInfo
from edge_agent.confidence import word_error_rate
from edge_agent.escalation.context import edge_context
from edge_agent.offramp import Decision, EscalationPlan, Reason, plan_escalation
from tests.fake_asr import cloud_result

CONFIDENT = Decision(False, 0.2)
DOUBTFUL = Decision(True, 0.7, Reason.LOW_CONFIDENCE)


@pytest.mark.parametrize(
    ("decision", "stopped", "early", "always", "cloud", "expected"),
    [
        (CONFIDENT, False, False, False, True, EscalationPlan(False, None, 0.2, False)),
        (DOUBTFUL, False, False, False, True, EscalationPlan(True, Reason.LOW_CONFIDENCE, 0.7, True)),
        (DOUBTFUL, False, False, False, False, EscalationPlan(False, None, 0.7, False)),  # no cloud
        (CONFIDENT, True, False, False, True, EscalationPlan(True, Reason.DECODE_STOPPED, 1.0, True)),
        (CONFIDENT, True, False, False, False, EscalationPlan(False, None, 1.0, False)),
        # An early escalation was counted when it began, whatever the final decode says.
        (CONFIDENT, False, True, False, True, EscalationPlan(True, Reason.EARLY_PILOT, 0.2, False)),
        (DOUBTFUL, True, True, False, True, EscalationPlan(True, Reason.EARLY_PILOT, 1.0, False)),
        (CONFIDENT, False, False, True, True, EscalationPlan(True, Reason.FORCED, 0.2, True)),
        (CONFIDENT, False, True, True, True, EscalationPlan(True, Reason.FORCED, 0.2, False)),
    ],
)
def test_escalation_plan(
    decision: Decision, stopped: bool, early: bool, always: bool, cloud: bool, expected: EscalationPlan
) -> None:
    plan = plan_escalation(decision, stopped, early, always, cloud)
    # The score a target offload follows is P(wrong) here (no route model); a stopped decode counts as 1.
    assert plan.score == (1.0 if stopped else decision.p_wrong)
    assert replace(plan, score=0.0) == expected


def _decoded(text: str) -> Decoded:
    tokens = tuple(TokenInfo(i, -0.5, 1.0) for i in range(len(text.split())))
    return Decoded(tokens, text, True, 3)


def test_edge_context_carries_the_best_and_distinct_alternatives() -> None:
    alternatives = [Hypothesis((1,), "go forward", -1.0), Hypothesis((2,), "go for word", -2.5)]
    context = edge_context(
        "u-1", _decoded("go forward"), 0.25, Reason.DECODE_STOPPED, "m", True, alternatives
    )
    assert context.utterance_id == "u-1" and context.edge_model == "m" and context.is_final
    assert context.reason == speech_pb2.LOW_CONFIDENCE and context.reason_detail == "decode_stopped"
    assert context.confidence == pytest.approx(0.75)
    assert [(h.text, round(h.log_prob, 3)) for h in context.n_best] == [
        ("go forward", -1.0),
        ("go for word", -2.5),
    ]
    assert context.n_best[0].confidence == pytest.approx(0.75) and context.n_best[1].confidence == 0.0
    early = edge_context("u-2", _decoded("hi"), 0.9, Reason.EARLY_PILOT, "m", False)
    assert early.reason == speech_pb2.EARLY_PILOT and not early.is_final and len(early.n_best) == 1


SPAN = events.UtteranceSpan("s-1", 1.0, 3.0, "silence", 2, "complete")
EDGE = events.EdgeVerdict("go forward", 0.6, [("go", 0.9), ("forward", 0.8)], 2)


def test_final_event_from_the_edge() -> None:
    event = events.final(SPAN, EDGE, events.NO_CLOUD, "edge", None, 0.25, 0.0504)
    assert event == {
        "type": "final", "utterance_id": "s-1", "text": "go forward", "confidence": 0.4, "source": "edge",
        "transcribed": True, "language": "en",
        "escalated": False, "reason": None, "edge_confidence": 0.4, "cloud_confidence": None,
        "edge_text": "go forward", "cloud_text": None, "cloud_pending": False,
        "words": [
            {"word": "go", "start": 1.0, "end": 1.545, "confidence": 0.9},  # by length + 1: 3 of 11
            {"word": "forward", "start": 1.545, "end": 3.0, "confidence": 0.8},
        ],
        "word_timing": "estimated", "start": 1.0, "end": 3.0, "end_reason": "silence", "endpoint": "complete",
        "latency_ms": 250.0,
        "finalize_ms": 50.4, "pilots": 2, "reused_tokens": 2,
    }  # fmt: skip


def test_final_event_from_the_cloud_and_pending() -> None:
    cloud = events.CloudVerdict(cloud_result("go forward ten"), 0.1, pending=False)
    event = events.final(SPAN, EDGE, cloud, "cloud", "low_confidence", 0.9, 0.8)
    assert event["text"] == "go forward ten" and event["source"] == "cloud" and event["escalated"]
    assert event["confidence"] == 0.9 and event["cloud_confidence"] == 0.9 and event["edge_confidence"] == 0.4
    assert event["word_timing"] == "aligned" and event["cloud_text"] == "go forward ten"
    assert [(w["word"], w["start"], w["end"]) for w in event["words"]] == [
        ("go", 1.0, 1.1), ("forward", 1.1, 1.2), ("ten", 1.2, 1.3)
    ]  # fmt: skip
    waiting = events.final(
        SPAN, EDGE, events.CloudVerdict(None, None, True), "edge", "low_confidence", 0.5, 0.5
    )
    assert waiting["cloud_pending"] and waiting["text"] == "go forward" and waiting["cloud_text"] is None
    assert waiting["escalated"] and waiting["reason"] == "low_confidence"


def test_correction_keeps_the_likelier_text() -> None:
    better = events.correction("s-1", "go for word", 0.8, "go forward", 0.1)
    assert better == {
        "type": "correction", "utterance_id": "s-1", "text": "go forward", "source": "cloud",
        "language": "en", "confidence": 0.9, "edge_confidence": 0.2, "cloud_confidence": 0.9,
        "cloud_text": "go forward",
    }  # fmt: skip
    worse = events.correction("s-1", "go forward", 0.1, "go for word", 0.8)
    assert worse["text"] == "go forward" and worse["source"] == "edge" and worse["confidence"] == 0.9


def test_word_error_rate_ignores_case_and_punctuation() -> None:
    assert word_error_rate("Go forward, ten meters.", "go forward ten meters") == 0.0
    assert word_error_rate("go forward ten meters", "go for ten meters") == 0.25
    assert word_error_rate("", "") == 0.0 and word_error_rate("", "noise") == 1.0


def test_pilot_agreement() -> None:
    from edge_agent.confidence import pilot_agreement

    previous = _decoded("a b c d")
    kept = Decoded(previous.tokens[:3], "a b c", True, 2, reused_tokens=3)
    assert pilot_agreement(kept, previous, verifies=True) == 0.75
    assert pilot_agreement(kept, previous, verifies=False) == 1.0  # hypotheses only grow
    assert pilot_agreement(kept, None, verifies=True) == 1.0
    assert pilot_agreement(kept, _decoded(""), verifies=True) == 1.0
