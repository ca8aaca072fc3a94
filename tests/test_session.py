"""``Session`` on a scripted model, VAD and cloud (tests/fake_asr.py): scheduling and escalation logic
without models or sockets. Model output is tested on the real models elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from asr_common.protos import speech_pb2
from edge_agent.recognizer import Recognizer
from edge_agent.session import Session
from edge_agent.settings import EdgeSettings
from tests.fake_asr import (
    BLOCK,
    FakeEscalator,
    FakeModel,
    FakeVad,
    cloud_result,
    pcm,
    silence,
    speech,
    words_for,
    write_calibration,
)

RATE = 16000
FRAME = 1024
LEAD = silence(2 * BLOCK / RATE)  # speech starts on a window and block boundary
CONFIDENT = (0.3, 0.4, 0.5, 0.6, 0.3, 0.4, 0.5, 0.6)  # 8 blocks, ~2 s
GAP = silence(4 * BLOCK / RATE)  # ~1 s: ends an utterance, keeps the next one block-aligned
HARD = (0.9, 0.85, 0.95, 0.9, 0.85, 0.95, 0.9, 0.85)


def _rec(
    tmp_path: Path, model: FakeModel, escalator: FakeEscalator | None = None, **overrides: Any
) -> Recognizer:
    settings = EdgeSettings(
        cloud_target="",
        calibration_path=write_calibration(tmp_path / "calibration.json"),
        queue_path=tmp_path / "queue.sqlite3",
        pre_roll_ms=BLOCK * 1000 // RATE,  # one block of pre-roll keeps the fake's blocks aligned
        **overrides,
    )
    rec = Recognizer(settings, model=model, vad=FakeVad())
    rec.escalator = escalator  # type: ignore[assignment]
    return rec


async def _settle(rec: Recognizer) -> None:
    """Wait until the inference thread is idle and its results were delivered."""
    for _ in range(2000):
        if not rec.worker.busy and not rec.worker.pending:
            break
        await asyncio.sleep(0.005)
    for _ in range(3):
        await asyncio.sleep(0)


async def _feed(session: Session, audio: np.ndarray, settle: bool = True) -> None:
    for i in range(0, len(audio), FRAME):
        session.feed(pcm(audio[i : i + FRAME]))
        if settle:
            await _settle(session.rec)
        else:
            await asyncio.sleep(0)


def _drain(session: Session) -> list[dict[str, Any]]:
    out = []
    while not session.events.empty():
        out.append(session.events.get_nowait())
    return out


def _run(rec: Recognizer, scenario: Callable[[Recognizer], Awaitable[None]]) -> None:
    async def main() -> None:
        await rec.start()
        try:
            await asyncio.wait_for(scenario(rec), 60)
        finally:
            await rec.stop()

    asyncio.run(main())


def _stream(rec: Recognizer, audio: np.ndarray) -> list[dict[str, Any]]:
    """One session streams ``audio`` and ends it; every event it produced."""
    events: list[dict[str, Any]] = []

    async def scenario(rec: Recognizer) -> None:
        session = Session(rec, RATE, "pcm_s16le", session_id="s")
        await _feed(session, audio)
        await session.finish()
        events.extend(_drain(session))

    _run(rec, scenario)
    return events


def _of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def test_partials_then_finals_in_order(tmp_path: Path) -> None:
    model = FakeModel()
    second = (0.2, 0.25, 0.3, 0.35)
    events: list[dict[str, Any]] = []

    async def scenario(rec: Recognizer) -> None:
        session = Session(rec, RATE, "pcm_s16le", session_id="s")
        await _feed(session, np.concatenate([LEAD, speech(*CONFIDENT), GAP, speech(*second), GAP]))
        assert await session.finish() == 2
        events.extend(_drain(session))

    _run(_rec(tmp_path, model), scenario)
    finals = _of(events, "final")
    assert [f["utterance_id"] for f in finals] == ["s-1", "s-2"]
    assert [f["text"] for f in finals] == [words_for(*CONFIDENT), words_for(*second)]
    assert all(f["source"] == "edge" and not f["escalated"] and f["end_reason"] == "silence" for f in finals)
    assert [w["word"] for w in finals[0]["words"]] == words_for(*CONFIDENT).split()
    first_final = events.index(finals[0])
    partials = [e for e in events[:first_final] if e["type"] == "partial" and e["utterance_id"] == "s-1"]
    # 2 s of speech, a pilot per 400 ms of new audio after the first 600 ms: several partials, each a
    # prefix of the final (the fake never revises), while the speaker was talking.
    assert len(partials) >= 3 and finals[0]["pilots"] == len(partials)
    for partial in partials:
        assert finals[0]["text"].startswith(partial["text"])
        assert partial["end"] <= finals[0]["end"]
    assert finals[0]["reused_tokens"] == len(partials[-1]["text"].split())


def test_speculative_final_is_reused_at_the_endpoint(tmp_path: Path) -> None:
    model = FakeModel()
    events = _stream(_rec(tmp_path, model), np.concatenate([LEAD, speech(*CONFIDENT), GAP]))
    finalizes = [c for c in model.calls if c.kind == "finalize"]
    (final,) = _of(events, "final")
    assert len(finalizes) == 1  # decoded at the first silence, and that decode became the final
    assert finalizes[0].samples == round((final["end"] - final["start"]) * RATE)
    assert final["text"] == words_for(*CONFIDENT)


def test_resumed_speech_cancels_the_speculative_final(tmp_path: Path) -> None:
    model = FakeModel()
    after = (0.7, 0.2, 0.7, 0.2)
    events: list[dict[str, Any]] = []

    async def scenario(rec: Recognizer) -> None:
        session = Session(rec, RATE, "pcm_s16le", session_id="s")
        pause = silence(BLOCK / RATE)  # 256 ms: long enough to start a speculative final, too short to end
        await _feed(session, np.concatenate([LEAD, speech(*CONFIDENT), pause]))
        assert [c.kind for c in model.calls].count("finalize") == 1
        await _feed(session, np.concatenate([speech(*after), GAP]))
        await session.finish()
        events.extend(_drain(session))

    _run(_rec(tmp_path, model), scenario)
    finalizes = [c for c in model.calls if c.kind == "finalize"]
    assert len(finalizes) == 2 and finalizes[0].samples < finalizes[1].samples
    (final,) = _of(events, "final")
    assert final["text"] == f"{words_for(*CONFIDENT)} {words_for(*after)}"  # the stale decode was dropped


def test_pilot_gives_way_to_another_sessions_final(tmp_path: Path) -> None:
    # Each pilot takes 200 steps of 10 ms unless a final is waiting: it must not delay one.
    model = FakeModel(advance_steps=200, step_s=0.01)
    events: dict[str, list[dict[str, Any]]] = {}

    async def scenario(rec: Recognizer) -> None:
        slow = Session(rec, RATE, "pcm_s16le", session_id="b")
        quick = Session(rec, RATE, "pcm_s16le", session_id="a")
        await _feed(slow, np.concatenate([LEAD, speech(*CONFIDENT[:4])]), settle=False)
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, model.advance_started.wait, 10)
        await _feed(quick, np.concatenate([LEAD, speech(0.5, 0.6), GAP]), settle=False)
        await quick.finish()
        events["a"] = _drain(quick)
        await _feed(slow, np.concatenate([speech(*CONFIDENT[4:]), GAP]), settle=False)
        await slow.finish()
        events["b"] = _drain(slow)
        assert rec.worker.pilots_preempted >= 1

    _run(_rec(tmp_path, model), scenario)
    yielded = [i for i, c in enumerate(model.calls) if c.kind == "advance" and c.samples == -1]
    first_final_a = next(i for i, c in enumerate(model.calls) if c.kind == "finalize" and c.stream == 2)
    assert yielded and yielded[0] < first_final_a  # b's pilot stopped, then a's final ran
    assert [f["text"] for f in _of(events["a"], "final")] == [words_for(0.5, 0.6)]
    assert [f["text"] for f in _of(events["b"], "final")] == [words_for(*CONFIDENT)]


def test_early_escalation_streams_audio_before_the_end_of_speech(tmp_path: Path) -> None:
    model = FakeModel()
    cloud = FakeEscalator("cloud words")
    rec = _rec(tmp_path, model, cloud)
    events = _stream(rec, np.concatenate([LEAD, speech(*HARD), GAP]))
    (final,) = _of(events, "final")
    assert final["escalated"] and final["reason"] == "early_pilot"
    assert (
        final["source"] == "cloud" and final["text"] == "cloud words" and final["cloud_text"] == "cloud words"
    )
    # The final decode had the offramp's stop check too: it stopped after the policy's six tokens.
    assert final["edge_text"] == words_for(*HARD[:6]) and final["word_timing"] == "aligned"
    (stream,) = cloud.streams
    early, last = cloud.contexts[0], cloud.contexts[-1]
    assert not early.is_final and early.reason == speech_pb2.EARLY_PILOT and early.edge_model == "fake"
    assert last.is_final and last.n_best[0].text == words_for(*HARD[:6])
    # The utterance's audio went out while it was spoken: at least the pilot's first second.
    assert stream.sent_before_finish >= 2 * RATE * 1.0
    assert 'edge_escalations_total{reason="early_pilot"} 1.0' in _metrics(rec)


def test_offramp_stops_a_hopeless_final_and_sends_the_n_best(tmp_path: Path) -> None:
    model = FakeModel()
    cloud = FakeEscalator("cloud words")
    events = _stream(
        _rec(tmp_path, model, cloud, pilot=False, edge_n_best=3), np.concatenate([LEAD, speech(*HARD), GAP])
    )
    (final,) = _of(events, "final")
    assert final["reason"] == "decode_stopped" and final["source"] == "cloud"
    assert final["edge_text"] == words_for(*HARD[:6])  # stopped after the policy's six tokens
    assert final["edge_confidence"] == 0.0  # a stopped decode is never preferred
    assert [c.kind for c in model.calls] == ["finalize", "n_best"]
    (context,) = cloud.contexts
    assert [h.text for h in context.n_best] == [words_for(*HARD[:6]), "alternative"]


def _hard_then_late_answer(rec: Recognizer) -> list[dict[str, Any]]:
    """One hard utterance the cloud cannot answer in time, then its late answer: every event."""
    events: list[dict[str, Any]] = []

    async def scenario(rec: Recognizer) -> None:
        session = Session(rec, RATE, "pcm_s16le", session_id="s")
        await _feed(session, np.concatenate([LEAD, speech(*HARD), GAP]))
        await session.finish()
        session.on_correction("s-1", cloud_result("late words"))
        events.extend(_drain(session))

    _run(rec, scenario)
    return events


def test_pending_cloud_answer_then_correction(tmp_path: Path) -> None:
    events = _hard_then_late_answer(
        _rec(tmp_path, FakeModel(), FakeEscalator(None), pilot=False, offramps=False)
    )
    (final,) = _of(events, "final")
    assert final["escalated"] and final["reason"] == "low_confidence"
    assert final["cloud_pending"] and final["source"] == "edge" and final["text"] == words_for(*HARD)
    (correction,) = _of(events, "correction")
    assert correction["utterance_id"] == "s-1" and correction["source"] == "cloud"
    assert correction["text"] == "late words" and correction["cloud_text"] == "late words"


def test_failed_decode_is_reported_and_the_session_goes_on(tmp_path: Path) -> None:
    model = FakeModel(fail_finalize={1})
    events: list[dict[str, Any]] = []

    async def scenario(rec: Recognizer) -> None:
        session = Session(rec, RATE, "pcm_s16le", session_id="s")
        audio = np.concatenate([LEAD, speech(0.3, 0.4), GAP, speech(0.5, 0.6), GAP])
        await _feed(session, audio)
        await session.finish()
        events.extend(_drain(session))

    _run(_rec(tmp_path, model, pilot=False), scenario)
    assert [e["code"] for e in _of(events, "error")] == ["decode_failed"]
    assert [(f["utterance_id"], f["text"]) for f in _of(events, "final")] == [("s-2", words_for(0.5, 0.6))]


@pytest.mark.parametrize("speculative", [True, False])
def test_native_streaming_stream_sees_every_sample_once_in_order(tmp_path: Path, speculative: bool) -> None:
    model = FakeModel(native_streaming=True, chunk_samples=BLOCK)
    audio = np.concatenate([LEAD, speech(*CONFIDENT), GAP])
    events = _stream(_rec(tmp_path, model, speculative=speculative), audio)
    (stream,) = model.streams
    (final,) = _of(events, "final")
    start = round(final["start"] * RATE)
    heard = np.frombuffer(pcm(audio), "<i2").astype(np.float32) / 32768.0
    assert np.array_equal(stream.audio, heard[start : start + stream.samples])
    assert stream.samples >= round(final["end"] * RATE) - start
    advances = [c.samples for c in model.calls if c.kind == "advance"]
    assert all(s % BLOCK == 0 for s in advances) and advances == sorted(set(advances))
    speech_end = len(LEAD) + len(CONFIDENT) * BLOCK - start
    assert max(advances) > speech_end  # advanced through the pause too, not only while speech came
    assert final["text"] == words_for(*CONFIDENT)


def _metrics(rec: Recognizer) -> str:
    from prometheus_client import generate_latest

    return generate_latest(rec.metrics.registry).decode()


def _pause_at_final(rec: Recognizer, audio: np.ndarray, pause_from: int) -> tuple[list[dict[str, Any]], int]:
    """Stream ``audio`` frame by frame; the events, and how much of the pause starting at sample
    ``pause_from`` had been fed when the first final came out."""
    events: list[dict[str, Any]] = []
    fed_at_final = -1

    async def scenario(rec: Recognizer) -> None:
        nonlocal fed_at_final
        session = Session(rec, RATE, "pcm_s16le", session_id="s")
        for i in range(0, len(audio), FRAME):
            session.feed(pcm(audio[i : i + FRAME]))
            await _settle(rec)
            events.extend(_drain(session))
            if fed_at_final < 0 and _of(events, "final"):
                fed_at_final = i + FRAME - pause_from
        await session.finish()
        events.extend(_drain(session))

    _run(rec, scenario)
    return events, fed_at_final


@pytest.mark.parametrize("adaptive", [True, False])
def test_a_complete_sentence_ends_after_a_short_pause(tmp_path: Path, adaptive: bool) -> None:
    model = FakeModel(punctuation=True)
    rec = _rec(tmp_path, model, adaptive_endpoint=adaptive, endpoint_fast_ms=160, min_silence_ms=500)
    spoken = np.concatenate([LEAD, speech(*CONFIDENT)])
    events, waited = _pause_at_final(rec, np.concatenate([spoken, GAP]), len(spoken))
    (final,) = _of(events, "final")
    assert final["text"] == words_for(*CONFIDENT) + "."
    if adaptive:
        # 160 ms of pause (+ one 64 ms frame of granularity), not 500: the text ended a sentence.
        assert final["endpoint"] == "complete" and 160 * 16 <= waited <= 160 * 16 + FRAME
    else:
        assert final["endpoint"] is None and waited >= 500 * 16
    assert [c.kind for c in model.calls].count("finalize") == 1  # the speculative decode is the final


def test_a_dangling_word_holds_the_utterance_over_a_longer_pause(tmp_path: Path) -> None:
    # "... and" then 768 ms of pause: the fixed 500 ms endpoint splits the sentence, adaptive waits.
    model = FakeModel(punctuation=True, spelled={20: "and"})
    first, second = (0.3, 0.4, 0.2), (0.5, 0.6)
    pause = silence(3 * BLOCK / RATE)
    audio = np.concatenate([LEAD, speech(*first), pause, speech(*second), GAP])
    joined = _of(_stream(_rec(tmp_path, model, adaptive_endpoint=True, endpoint_slow_ms=900), audio), "final")
    assert [f["text"] for f in joined] == ["w30 w40 and w50 w60."]
    split = _of(_stream(_rec(tmp_path, FakeModel(punctuation=True, spelled={20: "and"}),
                             adaptive_endpoint=False), audio), "final")  # fmt: skip
    assert [f["text"] for f in split] == ["w30 w40 and.", "w50 w60."]


def test_a_stopped_decode_is_finished_when_the_cloud_cannot_answer(tmp_path: Path) -> None:
    model = FakeModel()
    events = _hard_then_late_answer(_rec(tmp_path, model, FakeEscalator(None), pilot=False))
    (final,) = _of(events, "final")
    assert final["reason"] == "decode_stopped" and final["cloud_pending"] and final["source"] == "edge"
    # The whole utterance, not the six tokens the offramp stopped at, with its own confidence.
    assert final["text"] == final["edge_text"] == words_for(*HARD)
    assert 0.0 < final["edge_confidence"] < 0.5
    assert [(c.kind, c.result) for c in model.calls] == [
        ("finalize", words_for(*HARD[:6])), ("finalize", words_for(*HARD))
    ]  # fmt: skip
    (correction,) = _of(events, "correction")
    assert correction["source"] == "cloud" and correction["edge_confidence"] == final["edge_confidence"]


@pytest.mark.parametrize("ahead", [True, False])
def test_speculative_escalation_asks_the_cloud_before_the_endpoint(tmp_path: Path, ahead: bool) -> None:
    model = FakeModel()
    cloud = FakeEscalator("cloud words")
    events: list[dict[str, Any]] = []
    asked_at_endpoint: list[int] = []

    async def scenario(rec: Recognizer) -> None:
        session = Session(rec, RATE, "pcm_s16le", session_id="s")
        await _feed(session, np.concatenate([LEAD, speech(*HARD), silence(0.3)]))  # pause under 500 ms
        asked_at_endpoint.append(cloud.ahead)
        await _feed(session, GAP)
        await session.finish()
        events.extend(_drain(session))

    rec = _rec(tmp_path, model, cloud, pilot=False, offramps=False, speculative_escalation=ahead)
    _run(rec, scenario)
    (final,) = _of(events, "final")
    assert final["source"] == "cloud" and final["text"] == "cloud words"
    if ahead:
        # Asked during the pause, before the endpoint fired; the final took that answer (one request).
        assert asked_at_endpoint == [1] and cloud.ahead == 1 and len(cloud.contexts) == 1
    else:
        assert asked_at_endpoint == [0] and cloud.ahead == 0 and len(cloud.contexts) == 1


def test_a_speculative_escalation_is_dropped_when_speech_resumes(tmp_path: Path) -> None:
    model = FakeModel()
    cloud = FakeEscalator("cloud words")
    after = (0.9, 0.85)
    audio = np.concatenate([LEAD, speech(*HARD), silence(BLOCK / RATE), speech(*after), GAP])
    events = _stream(_rec(tmp_path, model, cloud, pilot=False, offramps=False), audio)
    (final,) = _of(events, "final")
    assert final["edge_text"] == words_for(*HARD, *after)
    # One request at each pause; the final used the second (the whole utterance's).
    assert cloud.ahead == 2
    assert [c.n_best[0].text for c in cloud.contexts] == [words_for(*HARD), words_for(*HARD, *after)]


def test_a_failed_speculative_escalation_falls_back_and_queues(tmp_path: Path) -> None:
    cloud = FakeEscalator(None)  # no answer: the speculative attempt fails, the regular one queues
    events = _stream(_rec(tmp_path, FakeModel(), cloud, pilot=False, offramps=False),
                     np.concatenate([LEAD, speech(*HARD), GAP]))  # fmt: skip
    (final,) = _of(events, "final")
    assert final["cloud_pending"] and final["source"] == "edge" and final["text"] == words_for(*HARD)
    assert cloud.ahead == 1 and len(cloud.contexts) == 2
