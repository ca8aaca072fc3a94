"""The language offramp's pure parts: the decision, the escalation plan and choice, the events, the
cloud's allow-list pick, the client's request, and the session's routing on a scripted model and cloud
(tests/fake_asr.py). The real models are in tests/test_language_models.py."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest
from pydantic import ValidationError

from asr_common.protos import speech_pb2
from cloud_server.engine import pick_language
from edge_agent import events
from edge_agent.asr.interface import TokenInfo
from edge_agent.confidence import EDGE_FEATURES, LogisticModel
from edge_agent.escalation.breaker import CircuitBreaker
from edge_agent.escalation.client import CloudClient, CloudResult
from edge_agent.language import (
    LanguageCalibration,
    LanguagePolicy,
    is_english,
    language_policy,
    parse_languages,
)
from edge_agent.offramp import Decision, EscalationPlan, LanguageState, Reason, choose, plan_escalation
from edge_agent.recognizer import Recognizer
from edge_agent.session import Session
from edge_agent.settings import EdgeSettings
from tests.fake_asr import (
    BLOCK,
    FakeEscalator,
    FakeModel,
    FakeStream,
    FakeVad,
    cloud_result,
    silence,
    speech,
    words_for,
    write_calibration,
)
from tests.test_session import _drain, _feed, _of, _run

RATE = 16000
LEAD = silence(2 * BLOCK / RATE)
GAP = silence(4 * BLOCK / RATE)
HARD = (0.9, 0.85, 0.95, 0.9, 0.85, 0.95, 0.9, 0.85)  # the fake's hard words: log-prob -2.5
CONFIDENT = (0.3, 0.4, 0.5, 0.6, 0.3, 0.4, 0.5, 0.6)


def _model(feature: str, weight: float, bias: float) -> LogisticModel:
    """P = sigmoid(weight * feature + bias) (mean 0, scale 1)."""
    n = len(EDGE_FEATURES)
    weights = tuple(weight if f == feature else 0.0 for f in EDGE_FEATURES)
    return LogisticModel(EDGE_FEATURES, (0.0,) * n, (1.0,) * n, weights, bias)


# P(not English) = sigmoid(-4 * mean_logprob - 2): the fake's hard words (-2.5) ~1.0, confident ones 0.12.
BY_LOGPROB = LanguageCalibration(
    _model("mean_logprob", -4.0, -2.0), _model("mean_logprob", -4.0, -2.0), 0.5, 0.8, model="fake"
)


def test_parse_languages() -> None:
    assert parse_languages("es, DE,es") == ("en", "es", "de")  # English first, always allowed
    assert parse_languages(["fr", "en"]) == ("fr", "en")
    assert parse_languages("") == () and parse_languages(" , ") == ()  # any language
    assert parse_languages("en") == ("en",)
    assert parse_languages("haw,yue") == ("en", "haw", "yue")  # Whisper's three-letter codes
    for bad in ("spanish", "e", "es-ES", "1a"):
        with pytest.raises(ValueError, match="not a language code"):
            parse_languages(bad)


def test_language_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert EdgeSettings().languages == ("en", "es", "de", "fr", "it", "pt", "nl")
    assert EdgeSettings().other_languages_to_cloud
    monkeypatch.setenv("EDGE_LANGUAGES", "pl,uk")
    monkeypatch.setenv("EDGE_OTHER_LANGUAGES_TO_CLOUD", "false")
    settings = EdgeSettings()
    assert settings.languages == ("en", "pl", "uk") and not settings.other_languages_to_cloud
    monkeypatch.setenv("EDGE_LANGUAGES", "")
    assert EdgeSettings().languages == ()
    monkeypatch.setenv("EDGE_LANGUAGES", "polish")
    with pytest.raises(ValidationError, match="not a language code"):
        EdgeSettings()


def test_is_english() -> None:
    assert is_english("en") and is_english("")  # a cloud that did not say
    assert not is_english("es") and not is_english("und")


def test_language_decisions() -> None:
    policy = LanguagePolicy(BY_LOGPROB)
    hard = [TokenInfo(1, -2.5, 1.0)] * 5
    clear = [TokenInfo(1, -0.01, 1.0)] * 5
    final = policy.at_final(hard, 3.0, 0.9, 1.0, True)
    assert final.other and final.p_other == pytest.approx(1 / (1 + math.exp(-8.0)))
    english = policy.at_final(clear, 3.0, 0.9, 1.0, True)
    assert not english.other and english.p_other == pytest.approx(1 / (1 + math.exp(1.96)))
    assert policy.at_pilot(hard, 1.0, 0.9, 1.0).other  # 1 s of audio is enough
    assert not policy.at_pilot(hard, 0.99, 0.9, 1.0).other  # less is not
    assert not policy.at_pilot([], 2.0, 0.9, 1.0).other  # nothing decoded yet
    assert not policy.at_pilot(clear, 2.0, 0.9, 1.0).other
    # At the threshold counts: P(not English) >= threshold.
    at = LanguagePolicy(replace(BY_LOGPROB, threshold=english.p_other))
    assert at.at_final(clear, 3.0, 0.9, 1.0, True).other


def test_language_calibration_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "language.json"
    BY_LOGPROB.save(path, {"held_out": 1})
    assert LanguageCalibration.parse(path.read_text()) == BY_LOGPROB
    with pytest.raises(ValueError, match="version"):
        LanguageCalibration.parse('{"version": 2}')


def test_language_policy_is_off_for_english_only_and_unfitted_models() -> None:
    assert language_policy("moonshine-base", ("en",)) is None  # nothing to detect
    assert language_policy("fake", ("en", "es")) is None  # no model fitted on it
    assert language_policy("conformer:/models/mine", ()) is None  # a user's model: not the bundled one's
    policy = language_policy("moonshine-base", ("en", "es"))
    assert policy is not None and policy.calibration.model == "moonshine-base"
    assert 0.0 < policy.calibration.threshold <= policy.calibration.early_threshold < 1.0
    assert language_policy("moonshine-base", ()) is not None  # any language
    # The bundled conformer cannot tell other languages from English it garbles: none ships for it.
    assert language_policy("conformer-small", ("en", "es")) is None
    assert language_policy("conformer-small+rnnt", ("en", "es")) is None


CONFIDENT_DECISION = Decision(False, 0.2)
DOUBTFUL = Decision(True, 0.7, Reason.LOW_CONFIDENCE)
OTHER = LanguageState(other=True)
OTHER_PRIVATE = LanguageState(other=True, to_cloud=False)
EARLY = LanguageState(early=True)


@pytest.mark.parametrize(
    ("decision", "stopped", "early", "always", "cloud", "language", "expected"),
    [
        # Other-language speech escalates, asks for detection, and its edge text is no transcript.
        (CONFIDENT_DECISION, False, False, False, True, OTHER,
         EscalationPlan(True, Reason.LANGUAGE, 0.2, True, detect_language=True, edge_usable=False)),
        (DOUBTFUL, True, False, False, True, OTHER,
         EscalationPlan(True, Reason.LANGUAGE, 1.0, True, detect_language=True, edge_usable=False)),
        # An early English stream gives way to a request for detection: a new escalation, counted now.
        (DOUBTFUL, False, True, False, True, OTHER,
         EscalationPlan(True, Reason.LANGUAGE, 0.7, True, detect_language=True, edge_usable=False)),
        # Already streaming for detection: stays so, even when the final decode looks English.
        (CONFIDENT_DECISION, False, True, False, True, EARLY,
         EscalationPlan(True, Reason.LANGUAGE, 0.2, False, detect_language=True)),
        # Privacy: nothing leaves the device, not even a low-confidence or forced escalation.
        (DOUBTFUL, False, False, False, True, OTHER_PRIVATE,
         EscalationPlan(False, None, 0.7, False, edge_usable=False)),
        (CONFIDENT_DECISION, False, False, True, True, OTHER_PRIVATE,
         EscalationPlan(False, None, 0.2, False, edge_usable=False)),
        # English speech under privacy escalates as always.
        (DOUBTFUL, False, False, False, True, LanguageState(to_cloud=False),
         EscalationPlan(True, Reason.LOW_CONFIDENCE, 0.7, True)),
        # No cloud: nothing to ask, and still no English text for other speech.
        (CONFIDENT_DECISION, False, False, False, False, OTHER,
         EscalationPlan(False, None, 0.2, False, edge_usable=False)),
        # Forced (always the cloud) keeps its reason and asks for detection.
        (CONFIDENT_DECISION, False, False, True, True, OTHER,
         EscalationPlan(True, Reason.FORCED, 0.2, True, detect_language=True, edge_usable=False)),
    ],
)  # fmt: skip
def test_escalation_plan_for_other_languages(
    decision: Decision,
    stopped: bool,
    early: bool,
    always: bool,
    cloud: bool,
    language: LanguageState,
    expected: EscalationPlan,
) -> None:
    plan = plan_escalation(decision, stopped, early, always, cloud, language)
    # The score a target offload follows is P(wrong) here (no route model); a stopped decode counts as 1.
    assert plan.score == (1.0 if stopped else decision.p_wrong)
    assert replace(plan, score=0.0) == expected


def test_choose_keeps_the_cloud_for_other_languages() -> None:
    assert choose(0.1, 0.9, "es") == "cloud"  # the English edge text of Spanish speech is meaningless
    assert choose(0.1, 0.9, "en") == "edge" and choose(0.1, 0.9, "") == "edge"
    assert choose(None, 0.9) == "cloud"  # no usable edge text
    assert choose(None, None) == "edge"  # nothing from the cloud: the caller says "not transcribed"
    assert choose(0.4, None, "es") == "edge"


SPAN = events.UtteranceSpan("s-1", 1.0, 3.0, "silence", 2, None)


def test_final_event_of_speech_kept_on_the_device() -> None:
    edge = events.EdgeVerdict("a sound the whole", 0.6, [("a", 0.5)], 0, usable=False)
    event = events.final(SPAN, edge, events.NO_CLOUD, "edge", "language", 0.25, 0.05, escalated=False)
    assert event == {
        "type": "final", "utterance_id": "s-1", "text": "", "confidence": 0.0, "source": "edge",
        "transcribed": False, "language": "und", "escalated": False, "reason": "language",
        "edge_confidence": 0.4, "cloud_confidence": None, "edge_text": "a sound the whole",
        "cloud_text": None, "cloud_pending": False, "words": [], "word_timing": "estimated",
        "start": 1.0, "end": 3.0, "end_reason": "silence", "endpoint": None, "latency_ms": 250.0,
        "finalize_ms": 50.0, "pilots": 2, "reused_tokens": 0,
    }  # fmt: skip
    # Escalated for detection, the cloud still pending: not transcribed yet either, a correction follows.
    pending = events.final(SPAN, edge, events.CloudVerdict(None, None, True), "edge", "language", 0.5, 0.5)
    assert pending["escalated"] and pending["cloud_pending"] and not pending["transcribed"]
    assert pending["text"] == "" and pending["language"] == "und"


def test_final_event_in_the_clouds_language() -> None:
    spanish = replace(cloud_result("hola a todos"), language="es")
    edge = events.EdgeVerdict("hola at those", 0.6, [], 0, usable=False)
    event = events.final(SPAN, edge, events.CloudVerdict(spanish, 0.1, False), "cloud", "language", 1, 1)
    assert (event["text"], event["language"], event["transcribed"]) == ("hola a todos", "es", True)
    english = events.final(SPAN, replace(edge, usable=True), events.NO_CLOUD, "edge", None, 1, 1)
    assert (english["language"], english["transcribed"]) == ("en", True)


def test_correction_in_another_language() -> None:
    event = events.correction("s-1", "", None, "hola a todos", 0.3, "es")
    assert event == {
        "type": "correction", "utterance_id": "s-1", "text": "hola a todos", "source": "cloud",
        "language": "es", "confidence": 0.7, "edge_confidence": None, "cloud_confidence": 0.7,
        "cloud_text": "hola a todos",
    }  # fmt: skip
    forced = events.correction("s-1", "hello at all", 0.05, "hola a todos", 0.3, "es")
    assert forced["source"] == "cloud" and forced["text"] == "hola a todos" and forced["confidence"] == 0.7


def test_cloud_picks_the_most_probable_allowed_language() -> None:
    scores = [("gl", 0.5), ("es", 0.3), ("pt", 0.15), ("en", 0.05)]
    assert pick_language(scores) == ("gl", 0.5)
    assert pick_language(scores, ("en", "es", "pt")) == ("es", 0.3)  # Whisper's probability, as is
    assert pick_language(scores, ("en",)) == ("en", 0.05)
    assert pick_language(scores, ("fr", "de")) == ("gl", 0.5)  # none scored: the most probable overall
    with pytest.raises(ValueError, match="no language scores"):
        pick_language([], ("en",))


def test_client_asks_for_detection_only_for_other_language_speech() -> None:
    client = CloudClient("localhost:1", None, 1.0, 3, CircuitBreaker(3, 1.0), languages=("en", "es"))
    english = client.config(speech_pb2.EdgeContext(utterance_id="u"))
    assert english.language == "en" and list(english.languages) == [] and english.n_best == 3
    assert client.config().language == "en"
    other = client.config(speech_pb2.EdgeContext(utterance_id="u", other_language=True))
    assert other.language == "" and list(other.languages) == ["en", "es"]
    # A queued escalation keeps it: the queue stores the context, the retry rebuilds the config from it.
    queued = speech_pb2.EdgeContext.FromString(
        speech_pb2.EdgeContext(other_language=True, reason=speech_pb2.RETRY).SerializeToString()
    )
    assert client.config(queued).language == ""


def test_client_of_an_edge_without_a_language_offramp_always_asks_for_detection() -> None:
    client = CloudClient(
        "localhost:1", None, 1.0, 3, CircuitBreaker(3, 1.0), languages=("en", "es"), detect_always=True
    )
    for context in (speech_pb2.EdgeContext(utterance_id="u"), None):
        config = client.config(context)
        assert config.language == "" and list(config.languages) == ["en", "es"] and config.n_best == 3


def _settings(tmp_path: Path, **overrides: Any) -> EdgeSettings:
    return EdgeSettings(
        calibration_path=write_calibration(tmp_path / "calibration.json"),
        queue_path=tmp_path / "queue.sqlite3",
        **overrides,
    )


def test_an_edge_model_without_a_language_offramp_lets_the_cloud_detect(tmp_path: Path) -> None:
    # The scripted model ("fake") has no language model, as the bundled conformer has none.
    rec = Recognizer(_settings(tmp_path, cloud_target="127.0.0.1:1"), model=_Model(), vad=FakeVad())
    assert rec.language is None and rec.cloud_detects_language
    english_only = _settings(tmp_path, cloud_target="127.0.0.1:1", languages="en")
    assert not Recognizer(english_only, model=_Model(), vad=FakeVad()).cloud_detects_language
    rec.language = LanguagePolicy(BY_LOGPROB)  # an edge that judges the language itself
    assert not rec.cloud_detects_language


def test_privacy_needs_an_edge_model_that_can_tell_other_languages(tmp_path: Path) -> None:
    private = _settings(tmp_path, cloud_target="127.0.0.1:1", other_languages_to_cloud=False)
    with pytest.raises(ValueError, match="EDGE_OTHER_LANGUAGES_TO_CLOUD=false needs an edge model"):
        Recognizer(private, model=_Model(), vad=FakeVad())
    # Nothing can leave the device without a cloud, and EDGE_LANGUAGES=en sends everything as English.
    no_cloud = _settings(tmp_path, cloud_target="", other_languages_to_cloud=False)
    Recognizer(no_cloud, model=_Model(), vad=FakeVad())
    english = _settings(tmp_path, cloud_target="127.0.0.1:1", other_languages_to_cloud=False, languages="en")
    Recognizer(english, model=_Model(), vad=FakeVad())


# -- the session's routing, on the scripted model and cloud --------------------------------------------


class SpanishCloud(FakeEscalator):
    """Answers in Spanish, as the cloud does when it detects Spanish."""

    async def recognize(self, session_id: str, context: Any, pcm: bytes, deadline_s: float) -> CloudResult:
        self.contexts.append(context)
        return replace(cloud_result("hola a todos"), language="es")

    async def finish_early(
        self, stream: Any, session_id: str, context: Any, pcm: bytes, deadline_s: float
    ) -> CloudResult:
        stream.sent_before_finish = len(stream.audio)
        self.contexts.append(context)
        return replace(cloud_result("hola a todos"), language="es")


class _Model(FakeModel):
    """The scripted model, taking (and ignoring) a session's hotwords whatever the fake's version."""

    def create_stream(self, hotwords: Sequence[str] = ()) -> FakeStream:
        return super().create_stream()


def _rec(
    tmp_path: Path, escalator: FakeEscalator | None, language: LanguageCalibration, **overrides: Any
) -> Recognizer:
    settings = EdgeSettings(
        cloud_target="",
        calibration_path=write_calibration(tmp_path / "calibration.json"),
        queue_path=tmp_path / "queue.sqlite3",
        pre_roll_ms=BLOCK * 1000 // RATE,
        **overrides,
    )
    rec = Recognizer(settings, model=_Model(), vad=FakeVad())
    rec.escalator = escalator  # type: ignore[assignment]
    rec.language = LanguagePolicy(language)
    return rec


def _stream(rec: Recognizer, audio: np.ndarray) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    async def scenario(rec: Recognizer) -> None:
        session = Session(rec, RATE, "pcm_s16le", session_id="s")
        await _feed(session, audio)
        await session.finish()
        out.extend(_drain(session))

    _run(rec, scenario)
    return out


def test_other_language_streams_early_for_detection_and_keeps_the_clouds_answer(tmp_path: Path) -> None:
    cloud = SpanishCloud()
    events_ = _stream(_rec(tmp_path, cloud, BY_LOGPROB), np.concatenate([LEAD, speech(*HARD), GAP]))
    (final,) = _of(events_, "final")
    assert (final["text"], final["source"], final["language"]) == ("hola a todos", "cloud", "es")
    assert final["escalated"] and final["reason"] == "language" and final["transcribed"]
    (stream,) = cloud.streams  # the first pilot on 1 s of audio opened it, before the confidence offramp
    assert not stream.cancelled and stream.sent_before_finish >= 2 * RATE * 1.0
    first, last = cloud.contexts[0], cloud.contexts[-1]
    assert first.reason == speech_pb2.LANGUAGE and first.other_language and not first.is_final
    # English words for Spanish speech are no candidates for the cloud's second pass.
    assert last.is_final and last.other_language and list(last.n_best) == []


class UnsureEnglishCloud(FakeEscalator):
    """Detects English, with a text its confidence model finds likely wrong (avg log-prob -3)."""

    async def recognize(self, session_id: str, context: Any, pcm: bytes, deadline_s: float) -> CloudResult:
        self.contexts.append(context)
        return cloud_result("hello to all", -3.0)

    async def finish_early(
        self, stream: Any, session_id: str, context: Any, pcm: bytes, deadline_s: float
    ) -> CloudResult:
        self.contexts.append(context)
        return cloud_result("hello to all", -3.0)


def test_speech_judged_foreign_that_the_cloud_hears_as_english_keeps_the_edge_text_as_a_candidate(
    tmp_path: Path,
) -> None:
    # Noisy English can look foreign to the edge (here: any final of over 1.72 s of audio); the cloud,
    # asked to detect, says English. The edge's text is then kept when it is the likelier one.
    by_length = _model("log_duration", 10.0, -10.0 * math.log(1.5))
    foreign = LanguageCalibration(by_length, by_length, 0.5, 0.8, model="fake")
    cloud = UnsureEnglishCloud()
    events_ = _stream(_rec(tmp_path, cloud, foreign), np.concatenate([LEAD, speech(*CONFIDENT), GAP]))
    (final,) = _of(events_, "final")
    assert cloud.contexts[-1].other_language  # it was sent for detection
    assert (final["text"], final["source"], final["language"]) == (words_for(*CONFIDENT), "edge", "en")
    assert final["escalated"] and final["reason"] == "language" and final["transcribed"]
    assert final["edge_confidence"] > final["cloud_confidence"]


def test_english_speech_is_unchanged(tmp_path: Path) -> None:
    cloud = SpanishCloud()
    events_ = _stream(_rec(tmp_path, cloud, BY_LOGPROB), np.concatenate([LEAD, speech(*CONFIDENT), GAP]))
    (final,) = _of(events_, "final")
    assert (final["text"], final["source"], final["language"]) == (words_for(*CONFIDENT), "edge", "en")
    assert not final["escalated"] and final["reason"] is None and final["transcribed"]
    assert cloud.contexts == []


def test_privacy_keeps_other_language_speech_on_the_device(tmp_path: Path) -> None:
    cloud = SpanishCloud()
    rec = _rec(tmp_path, cloud, BY_LOGPROB, other_languages_to_cloud=False)
    events_ = _stream(rec, np.concatenate([LEAD, speech(*HARD), GAP, speech(*CONFIDENT), GAP]))
    foreign, english = _of(events_, "final")
    assert (foreign["text"], foreign["transcribed"], foreign["language"]) == ("", False, "und")
    assert foreign["reason"] == "language" and not foreign["escalated"] and foreign["words"] == []
    # Nothing went to the cloud: no early stream (its audio would not be judged yet), no request.
    assert cloud.contexts == [] and cloud.streams == [] and cloud.ahead == 0
    assert english["text"] == words_for(*CONFIDENT) and english["transcribed"]


def test_no_cloud_still_says_other_language_speech_was_not_transcribed(tmp_path: Path) -> None:
    events_ = _stream(_rec(tmp_path, None, BY_LOGPROB), np.concatenate([LEAD, speech(*HARD), GAP]))
    (final,) = _of(events_, "final")
    assert (final["text"], final["transcribed"], final["language"]) == ("", False, "und")
    assert final["reason"] == "language" and not final["escalated"]


def test_a_pilot_judged_other_language_replaces_the_early_english_stream(tmp_path: Path) -> None:
    # Hard words escalate early (the confidence offramp) at the first pilot, on ~1 s of audio; this
    # language model only says "not English" from 1.72 s of audio on (sigmoid(10 (ln s - ln 1.5)) >= 0.8).
    by_length = _model("log_duration", 10.0, -10.0 * math.log(1.5))
    late = LanguageCalibration(by_length, by_length, 0.5, 0.8, model="fake")
    cloud = SpanishCloud()
    events_ = _stream(_rec(tmp_path, cloud, late), np.concatenate([LEAD, speech(*HARD), GAP]))
    english_stream, detection_stream = cloud.streams
    assert english_stream.cancelled and not detection_stream.cancelled
    assert cloud.contexts[0].reason == speech_pb2.EARLY_PILOT and not cloud.contexts[0].other_language
    assert cloud.contexts[1].reason == speech_pb2.LANGUAGE and cloud.contexts[1].other_language
    # The new stream got the utterance from its start, not only the audio since the switch.
    assert detection_stream.sent_before_finish >= len(english_stream.audio)
    (final,) = _of(events_, "final")
    assert final["reason"] == "language" and final["language"] == "es" and final["source"] == "cloud"


def test_late_answer_for_speech_not_transcribed_is_a_correction_in_its_language(tmp_path: Path) -> None:
    rec = _rec(tmp_path, FakeEscalator(None), BY_LOGPROB)
    out: list[dict[str, Any]] = []

    async def scenario(rec: Recognizer) -> None:
        session = Session(rec, RATE, "pcm_s16le", session_id="s")
        await _feed(session, np.concatenate([LEAD, speech(*HARD), GAP]))
        await session.finish()
        session.on_correction("s-1", replace(cloud_result("hola a todos", -3.0), language="es"))
        out.extend(_drain(session))

    _run(rec, scenario)
    (final,) = _of(out, "final")
    assert final["cloud_pending"] and not final["transcribed"] and final["text"] == ""
    (correction,) = _of(out, "correction")
    assert (correction["text"], correction["source"]) == ("hola a todos", "cloud")
    assert correction["language"] == "es"
    # Whisper's own confidence (0.9): the English-fitted cloud model would say 0.0 at this log-prob.
    assert correction["confidence"] == 0.9


def test_a_final_judged_other_language_replaces_the_early_english_stream(tmp_path: Path) -> None:
    # Pilots never look foreign to this language model; the final decode (2.3 s of audio) does.
    never = _model("log_duration", 0.0, -10.0)
    at_final = LanguageCalibration(_model("log_duration", 10.0, -10.0 * math.log(1.5)), never, 0.5, 0.8)
    cloud = SpanishCloud()
    rec = _rec(tmp_path, cloud, at_final)
    events_ = _stream(rec, np.concatenate([LEAD, speech(*HARD), GAP]))
    (english_stream,) = cloud.streams  # the confidence offramp's, asking for English
    assert english_stream.cancelled and not cloud.contexts[0].other_language
    request = cloud.contexts[-1]  # a new request, for detection, with the whole utterance
    assert request.is_final and request.other_language and request.reason == speech_pb2.LANGUAGE
    (final,) = _of(events_, "final")
    assert (final["reason"], final["language"], final["source"]) == ("language", "es", "cloud")
    metrics = generate_latest(rec.metrics.registry).decode()
    assert 'edge_escalations_total{reason="early_pilot"} 1.0' in metrics
    assert 'edge_escalations_total{reason="language"} 1.0' in metrics
