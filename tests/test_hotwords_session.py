"""A session's hotwords on the scripted model and cloud (tests/fake_asr.py): every utterance's stream is
created with them, and every escalation carries them to the cloud, the session's own before the
``EDGE_HOTWORDS`` defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.asr.hotwords import validate_hotwords
from edge_agent.escalation.context import edge_context
from edge_agent.recognizer import Recognizer
from edge_agent.session import Session
from edge_agent.settings import EdgeSettings
from tests.fake_asr import FakeEscalator, FakeModel, speech
from tests.test_session import CONFIDENT, GAP, HARD, LEAD, RATE, _drain, _feed, _of, _rec, _run


def _session_events(rec: Recognizer, audio: np.ndarray, hotwords: tuple[str, ...]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []

    async def scenario(rec: Recognizer) -> None:
        session = Session(rec, RATE, "pcm_s16le", session_id="s", hotwords=hotwords)
        await _feed(session, audio)
        await session.finish()
        events.extend(_drain(session))

    _run(rec, scenario)
    return events


def test_streams_and_escalations_carry_the_sessions_hotwords_then_the_defaults(tmp_path: Path) -> None:
    model, cloud = FakeModel(), FakeEscalator("cloud words")
    rec = _rec(tmp_path, model, cloud, hotwords=("Kafka", "Okonkwo"))
    audio = np.concatenate([LEAD, speech(*CONFIDENT), GAP, speech(*HARD), GAP])
    events = _session_events(rec, audio, ("Okonkwo", "Kubernetes"))
    first, second = _of(events, "final")
    assert first["source"] == "edge" and second["escalated"]
    expected = ("Okonkwo", "Kubernetes", "Kafka")
    assert [s.hotwords for s in model.streams] == [expected, expected]
    # Every request to the cloud (early pilot stream, final) says them.
    assert cloud.contexts and all(tuple(c.hotwords) == expected for c in cloud.contexts)


def test_without_hotwords_nothing_is_added(tmp_path: Path) -> None:
    model, cloud = FakeModel(), FakeEscalator("cloud words")
    events = _session_events(_rec(tmp_path, model, cloud), np.concatenate([LEAD, speech(*HARD), GAP]), ())
    assert _of(events, "final")[0]["escalated"]
    assert [s.hotwords for s in model.streams] == [()]
    assert cloud.contexts and all(list(c.hotwords) == [] for c in cloud.contexts)


def test_edge_context_lists_the_hotwords_in_order() -> None:
    from edge_agent.asr.interface import Decoded
    from edge_agent.offramp import Reason

    decoded = Decoded((), "text", True, 1)
    context = edge_context("u1", decoded, 0.4, Reason.LOW_CONFIDENCE, "m", True, (), ("b", "a"))
    assert list(context.hotwords) == ["b", "a"] and context.n_best[0].text == "text"


def test_edge_hotwords_setting_reads_commas_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_HOTWORDS", " Kubernetes , Dr. Okonkwo,,Kubernetes")
    assert EdgeSettings().hotwords == ("Kubernetes", "Dr. Okonkwo")
    monkeypatch.setenv("EDGE_HOTWORDS", '["Smith, John", "Tallinn"]')
    assert EdgeSettings().hotwords == ("Smith, John", "Tallinn")
    monkeypatch.setenv("EDGE_HOTWORDS", '["x' + "y" * 60 + '"]')
    with pytest.raises(ValueError, match="longer than 50 characters"):
        EdgeSettings()
    monkeypatch.setenv("EDGE_HOTWORDS", "")
    assert EdgeSettings().hotwords == () == validate_hotwords([])
    monkeypatch.setenv("EDGE_HOTWORD_BONUS", "-1")
    with pytest.raises(ValueError, match="hotword_bonus"):
        EdgeSettings()
