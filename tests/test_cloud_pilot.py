"""Cloud pilots: the schedule, the verification and the pool's priority exactly, then Whisper tiny.en
end to end (the engine directly, and over gRPC on loopback)."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import numpy as np
import pytest

from asr_common.protos import speech_pb2, speech_pb2_grpc
from cloud_server.engine import EdgeCandidate, RequestCancelledError, SecondPassWeights, WhisperEngine
from cloud_server.model_store import resolve_model
from cloud_server.pilot import LatestPilot, PilotSchedule, verified_prefix
from cloud_server.pool import InferencePool
from cloud_server.results import PilotHypothesis, RecognizeOptions
from cloud_server.settings import CloudSettings
from tests.servers import ThreadedCloud, cloud_settings, wait_until
from tests.speech import Clip, wer

CHUNK = 3200  # 100 ms of PCM16 at 16 kHz
GREEDY = speech_pb2.RecognitionConfig(language="en", beam_size=1, n_best=1, sample_rate_hz=16000)
GREEDY_OPTIONS = RecognizeOptions(language="en", beam_size=1, n_best=1)


# -- the pure pieces ---------------------------------------------------------------------------


def test_schedule_waits_for_new_audio_and_one_pilot_at_a_time() -> None:
    schedule = PilotSchedule(interval_samples=8000, max_samples=480_000)
    assert not schedule.due(7999)
    assert schedule.due(8000)
    schedule.started(8000)
    assert not schedule.due(40_000), "one pilot in flight per stream"
    schedule.finished()
    assert not schedule.due(15_999)
    assert schedule.due(16_000)
    assert not schedule.due(480_001), "past one window no pilot is due"


def _log_softmax(row: np.ndarray) -> np.ndarray:
    peak = row.max()
    return np.asarray(row - (peak + np.log(np.exp(row - peak).sum())))


def test_verified_prefix_masks_as_generate_does() -> None:
    suppress, begin = np.array([5]), np.array([6])
    logits = np.zeros((4, 8))
    logits[0, 6], logits[0, 2] = 5.0, 3.0  # the blank wins unmasked: masked at the first step only
    logits[1, 5], logits[1, 1] = 9.0, 2.0  # a suppressed token wins unmasked
    logits[2, 6], logits[2, 3], logits[2, 4] = 7.0, 4.0, 1.0  # the blank is allowed after the first step
    count, logprob = verified_prefix(logits, [2, 1, 6, 3], suppress, begin)  # row 3 prefers 0
    assert count == 3
    rows = logits[:3].copy()
    rows[:, 5] = -np.inf
    rows[0, 6] = -np.inf
    expected = sum(_log_softmax(rows[i])[t] for i, t in enumerate([2, 1, 6]))
    assert logprob == pytest.approx(expected, abs=1e-12)
    assert verified_prefix(logits, [2, 1, 3], suppress, begin)[0] == 2, "stops at the first disagreement"
    assert verified_prefix(logits, [6], suppress, begin) == (0, 0.0), "never a blank first token"
    assert verified_prefix(logits, [], suppress, begin) == (0, 0.0)


def test_latest_pilot_keeps_the_one_with_most_audio() -> None:
    latest = LatestPilot()
    assert latest.get() is None
    later = PilotHypothesis((1, 2), "en", None, samples=32_000)
    latest.offer(later)
    latest.offer(PilotHypothesis((1,), "en", None, samples=16_000))  # finished late, decoded less
    assert latest.get() is later


def test_background_work_yields_to_requests_and_is_never_counted() -> None:
    async def scenario() -> None:
        pool = InferencePool(workers=1, max_pending=1, retry_after_s=1)
        running = threading.Event()

        def pilot(cancel: threading.Event) -> str:
            running.set()
            if not cancel.wait(30):
                return "never cancelled"
            raise RequestCancelledError("request cancelled")

        try:
            job = pool.try_background(pilot)
            assert job is not None
            assert pool.try_background(lambda cancel: "second") is None, "one per worker"
            assert await asyncio.to_thread(running.wait, 30)
            assert pool.pending == 0 and pool.background == 1
            # Admitted although max_pending is 1 (background work holds no slot); it cancels the pilot.
            assert await pool.run(lambda cancel: "request") == "request"
            with pytest.raises(RequestCancelledError):
                await job.result()
            assert job.cancelled

            release = threading.Event()
            busy = asyncio.ensure_future(pool.run(lambda cancel: release.wait(30)))
            assert await asyncio.to_thread(wait_until, lambda: pool.pending == 1, 30)
            assert pool.try_background(lambda cancel: "while busy") is None
            release.set()
            assert await busy
            assert await asyncio.to_thread(wait_until, lambda: pool.pending == 0 and pool.background == 0, 30)
            later = pool.try_background(lambda cancel: "idle again")
            assert later is not None and await later.result() == "idle again"
        finally:
            pool.shutdown()

    asyncio.run(asyncio.wait_for(scenario(), 60))


# -- Whisper tiny.en ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(model_cache: str) -> WhisperEngine:
    location = resolve_model("tiny.en", Path(model_cache))
    return WhisperEngine(location, compute_type="int8", cpu_threads=2, workers=1)


@pytest.fixture(scope="module")
def pilot_cloud(model_cache: str) -> Iterator[ThreadedCloud]:
    settings = cloud_settings(model_cache, model="tiny.en", pilot=True, pilot_interval_s=0.5, max_audio_s=120)
    server = ThreadedCloud(settings).start()
    yield server
    server.stop()


def _pilots(cloud: ThreadedCloud, event: str) -> float:
    return cloud.metric("cloud_pilots_total", {"event": event})


@pytest.mark.model
def test_greedy_final_is_the_same_with_a_pilot(
    engine: WhisperEngine, tts_clips: list[Clip], real_clips: list[Clip]
) -> None:
    options = GREEDY_OPTIONS
    reused = 0
    for clip in [*tts_clips[:4], *(c for c in real_clips if c.duration > 2.5)][:8]:
        audio = clip.samples()
        plain = engine.recognize(audio, options)
        assert plain.pilot_tokens == 0
        for fraction in (0.7, 1.0):
            pilot = engine.pilot(audio[: int(len(audio) * fraction)], options)
            final = engine.recognize(audio, options, pilot=pilot)
            assert final.hypotheses[0].text == plain.hypotheses[0].text, (clip.path.name, fraction)
            assert final.hypotheses[0].avg_logprob == pytest.approx(plain.hypotheses[0].avg_logprob, abs=1e-3)
            assert final.hypotheses[0].no_speech_prob == pytest.approx(plain.hypotheses[0].no_speech_prob)
            assert final.pilot_audio_seconds == pytest.approx(pilot.samples / 16000)
            if fraction == 1.0:
                # A pilot of the same audio is greedy decoding itself: all of it is confirmed.
                assert final.pilot_tokens == len(pilot.tokens) > 0, clip.path.name
            reused += final.pilot_tokens
    assert reused > 0


@pytest.mark.model
def test_beam_final_starts_every_hypothesis_with_the_verified_tokens(
    engine: WhisperEngine, real_clips: list[Clip]
) -> None:
    options = RecognizeOptions(language="en", beam_size=5, n_best=3, word_timestamps=True)
    clip = next(c for c in real_clips if c.duration > 6)
    audio = clip.samples()
    pilot = engine.pilot(audio[: int(len(audio) * 0.8)], GREEDY_OPTIONS)
    final = engine.recognize(audio, options, pilot=pilot)
    assert 0 < final.pilot_tokens <= len(pilot.tokens)
    prefix = engine._tokenizer("en").decode(list(pilot.tokens[: final.pilot_tokens])).strip()
    assert 1 <= len(final.hypotheses) <= 3
    for hypothesis in final.hypotheses:
        assert hypothesis.text.startswith(prefix), (prefix, hypothesis.text)
        assert hypothesis.words and hypothesis.words[-1].end <= clip.duration + 0.05
    assert wer([clip.text], [final.hypotheses[0].text]) < 0.2


@pytest.mark.model
def test_second_pass_ranks_cloud_candidates_decoded_from_the_pilot(
    engine: WhisperEngine, real_clips: list[Clip]
) -> None:
    weights = SecondPassWeights.load(CloudSettings().second_pass_weights)
    clip = next(c for c in real_clips if c.duration > 6)
    audio = clip.samples()
    pilot = engine.pilot(audio[: int(len(audio) * 0.8)], GREEDY_OPTIONS)
    edge = [EdgeCandidate(clip.text, -3.0), EdgeCandidate("and mister john", -9.0)]
    options = RecognizeOptions(language="en", n_best=3, word_timestamps=True)
    result = engine.recognize_with_edge(audio, options, edge, weights, pilot=pilot)
    assert 0 < result.pilot_tokens <= len(pilot.tokens)
    assert engine.recognize_with_edge(audio, options, edge, weights).pilot_tokens == 0
    assert 1 <= len(result.hypotheses) <= 3
    assert all(h.words for h in result.hypotheses if h.text)
    assert wer([clip.text], [result.hypotheses[0].text]) < 0.2


def _stream(
    messages: queue.Queue[speech_pb2.StreamingRecognizeRequest | None],
) -> Iterator[speech_pb2.StreamingRecognizeRequest]:
    while (message := messages.get(timeout=120)) is not None:
        yield message


def _config(config: speech_pb2.RecognitionConfig) -> speech_pb2.StreamingRecognizeRequest:
    return speech_pb2.StreamingRecognizeRequest(
        streaming_config=speech_pb2.StreamingConfig(
            config=config,
            context=speech_pb2.EdgeContext(utterance_id="pilot-1", reason=speech_pb2.EARLY_PILOT),
        )
    )


def _paced(
    cloud: ThreadedCloud, pcm: bytes, config: speech_pb2.RecognitionConfig
) -> Iterator[speech_pb2.StreamingRecognizeRequest]:
    """The stream's messages; after each chunk that makes a pilot due, waits for that pilot to end
    (so audio arrives no faster than the cloud pilots it, whatever the machine's load)."""
    yield _config(config)
    interval = int(cloud.runtime.settings.pilot_interval_s * 32000)
    since = 0
    for start in range(0, len(pcm), CHUNK):
        chunk = pcm[start : start + CHUNK]
        ended = _pilots_ended(cloud)
        yield speech_pb2.StreamingRecognizeRequest(audio=chunk)
        since += len(chunk)
        if since >= interval:
            since = 0
            wait_until(partial(_more_pilots_ended, cloud, ended))


def _pilots_ended(cloud: ThreadedCloud) -> float:
    return sum(_pilots(cloud, event) for event in ("completed", "cancelled", "failed"))


def _more_pilots_ended(cloud: ThreadedCloud, count: float) -> bool:
    return _pilots_ended(cloud) > count


@pytest.mark.model
def test_paced_stream_reuses_its_pilot_and_answers_as_without(
    pilot_cloud: ThreadedCloud, real_clips: list[Clip]
) -> None:
    clip = next(c for c in real_clips if c.duration > 6)
    pcm = clip.pcm16()
    with grpc.insecure_channel(pilot_cloud.grpc_target) as channel:
        stub = speech_pb2_grpc.CloudRecognizerStub(channel)
        completed = _pilots(pilot_cloud, "completed")
        reused = pilot_cloud.metric("cloud_pilot_tokens_total")
        (answer,) = stub.StreamingRecognize(_paced(pilot_cloud, pcm, GREEDY), timeout=180)
        result = answer.result
        assert _pilots(pilot_cloud, "completed") >= completed + 2
        assert result.pilot_tokens > 0
        assert pilot_cloud.metric("cloud_pilot_tokens_total") == reused + result.pilot_tokens
        unary = stub.Recognize(
            speech_pb2.RecognizeRequest(config=GREEDY, audio=pcm),
            timeout=60,
        )
        assert unary.pilot_tokens == 0
        assert result.hypotheses[0].text == unary.hypotheses[0].text
        assert result.hypotheses[0].avg_logprob == pytest.approx(unary.hypotheses[0].avg_logprob, abs=1e-3)
        assert wer([clip.text], [result.hypotheses[0].text]) < 0.2

        # The edge's usual request: a beam, an n-best and word times, from the verified prefix.
        config = speech_pb2.RecognitionConfig(language="en", n_best=2, word_timestamps=True)
        (answer,) = stub.StreamingRecognize(_paced(pilot_cloud, pcm, config), timeout=180)
        result = answer.result
        assert result.pilot_tokens > 0
        assert 1 <= len(result.hypotheses) <= 2
        assert result.audio_seconds == pytest.approx(clip.duration, abs=0.01)
        assert result.hypotheses[0].words[-1].end <= clip.duration + 0.05
        assert wer([clip.text], [result.hypotheses[0].text]) < 0.2


@pytest.mark.model
def test_pilots_yield_to_unary_requests(
    pilot_cloud: ThreadedCloud, long_clip: Clip, real_clips: list[Clip]
) -> None:
    pcm = long_clip.pcm16()
    short = next(c for c in real_clips if c.kind == "read")
    runtime = pilot_cloud.runtime

    def unary(audio: bytes) -> speech_pb2.RecognizeRequest:
        return speech_pb2.RecognizeRequest(config=speech_pb2.RecognitionConfig(language="en"), audio=audio)

    with grpc.insecure_channel(pilot_cloud.grpc_target) as channel:
        stub = speech_pb2_grpc.CloudRecognizerStub(channel)
        messages: queue.Queue[speech_pb2.StreamingRecognizeRequest | None] = queue.Queue()
        responses = stub.StreamingRecognize(_stream(messages), timeout=300)
        started, cancelled = _pilots(pilot_cloud, "started"), _pilots(pilot_cloud, "cancelled")
        messages.put(_config(GREEDY))
        messages.put(speech_pb2.StreamingRecognizeRequest(audio=pcm[: 20 * 32000]))
        # A pilot of 20 s is running when a request arrives: it is cancelled, the request answered.
        assert wait_until(lambda: runtime.pool.background == 1 and _pilots(pilot_cloud, "started") > started)
        answer = stub.Recognize(unary(short.pcm16()), timeout=60)
        assert wer([short.text], [answer.hypotheses[0].text]) < 0.2
        assert wait_until(lambda: _pilots(pilot_cloud, "cancelled") > cancelled)

        # While a request runs, audio that makes a pilot due starts none.
        started, skipped = _pilots(pilot_cloud, "started"), _pilots(pilot_cloud, "skipped")
        busy = stub.Recognize.future(unary(pcm), timeout=120)
        assert wait_until(lambda: runtime.pool.pending == 1)
        messages.put(speech_pb2.StreamingRecognizeRequest(audio=pcm[20 * 32000 : 21 * 32000]))
        assert wait_until(lambda: _pilots(pilot_cloud, "skipped") > skipped)
        assert _pilots(pilot_cloud, "started") == started
        assert busy.result().hypotheses

        # Idle again: the next chunk starts a pilot, and the final uses it.
        completed = _pilots(pilot_cloud, "completed")
        messages.put(speech_pb2.StreamingRecognizeRequest(audio=pcm[21 * 32000 : 22 * 32000]))
        assert wait_until(lambda: _pilots(pilot_cloud, "completed") > completed)
        assert _pilots(pilot_cloud, "started") == started + 1
        messages.put(speech_pb2.StreamingRecognizeRequest(audio=pcm[22 * 32000 : 22 * 32000 + 8000]))
        messages.put(None)
        (result,) = responses
        assert result.result.pilot_tokens > 0
        assert result.result.audio_seconds == pytest.approx(22.25, abs=0.01)


@pytest.mark.model
def test_streaming_bad_input_is_still_invalid_argument(pilot_cloud: ThreadedCloud) -> None:
    config = speech_pb2.StreamingRecognizeRequest(streaming_config=speech_pb2.StreamingConfig())
    cases = (
        ([speech_pb2.StreamingRecognizeRequest(audio=b"\x00\x00")], "first message"),
        ([config, speech_pb2.StreamingRecognizeRequest(audio=b"\x00\x00" * 16000 + b"\x00")], "odd"),
        ([config], "empty"),
        (
            [config, *[speech_pb2.StreamingRecognizeRequest(audio=b"\x00\x00" * 160000) for _ in range(13)]],
            "too long",
        ),
        (
            [
                _config(speech_pb2.RecognitionConfig(n_best=99)),
                speech_pb2.StreamingRecognizeRequest(audio=b"\x00\x00" * 32000),
            ],
            "n_best",
        ),
    )
    with grpc.insecure_channel(pilot_cloud.grpc_target) as channel:
        stub = speech_pb2_grpc.CloudRecognizerStub(channel)
        for messages, text in cases:
            with pytest.raises(grpc.RpcError) as info:
                list(stub.StreamingRecognize(iter(messages), timeout=60))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, text
            assert text in (info.value.details() or ""), text
    # Pilots of aborted streams stop with them.
    assert wait_until(lambda: pilot_cloud.runtime.pool.background == 0)


@pytest.mark.model
def test_pilots_off(model_cache: str, real_clips: list[Clip]) -> None:
    cloud = ThreadedCloud(cloud_settings(model_cache, model="tiny.en", pilot=False)).start()
    try:
        clip = next(c for c in real_clips if c.kind == "read")
        pcm = clip.pcm16()
        messages = [
            _config(GREEDY),
            *(
                speech_pb2.StreamingRecognizeRequest(audio=pcm[i : i + CHUNK])
                for i in range(0, len(pcm), CHUNK)
            ),
        ]
        with grpc.insecure_channel(cloud.grpc_target) as channel:
            stub = speech_pb2_grpc.CloudRecognizerStub(channel)
            (answer,) = stub.StreamingRecognize(iter(messages), timeout=60)
        assert answer.result.pilot_tokens == 0
        assert _pilots(cloud, "started") == 0 and _pilots(cloud, "skipped") == 0
        assert wer([clip.text], [answer.result.hypotheses[0].text]) < 0.2
    finally:
        cloud.stop()
