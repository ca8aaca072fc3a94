"""gRPC end to end against the real Whisper base model on loopback."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asr_common.protos import speech_pb2, speech_pb2_grpc
from tests.servers import ThreadedCloud, cloud_settings
from tests.speech import Clip, normalize, wer

pytestmark = pytest.mark.model


@pytest.fixture()
def stub(cloud: ThreadedCloud) -> Iterator[speech_pb2_grpc.CloudRecognizerStub]:
    with grpc.insecure_channel(cloud.grpc_target) as channel:
        yield speech_pb2_grpc.CloudRecognizerStub(channel)


def _request(clip_pcm: bytes, **config: object) -> speech_pb2.RecognizeRequest:
    return speech_pb2.RecognizeRequest(
        config=speech_pb2.RecognitionConfig(sample_rate_hz=16000, **config),  # type: ignore[arg-type]
        audio=clip_pcm,
        context=speech_pb2.EdgeContext(
            utterance_id="utt-1",
            n_best=[speech_pb2.EdgeHypothesis(text="edge guess", confidence=0.4, log_prob=-3.0)],
            confidence=0.4,
            reason=speech_pb2.LOW_CONFIDENCE,
        ),
    )


def test_recognize_wer_on_real_and_tts_speech(
    stub: speech_pb2_grpc.CloudRecognizerStub, real_clips: list[Clip], tts_clips: list[Clip]
) -> None:
    for clips, limit in ((real_clips, 0.15), (tts_clips, 0.15)):
        hyps = []
        for clip in clips:
            response = stub.Recognize(_request(clip.pcm16(), language="en"), timeout=60)
            assert response.model == "base"
            assert response.audio_seconds == pytest.approx(clip.duration, abs=0.01)
            hyps.append(response.hypotheses[0].text)
        assert wer([c.text for c in clips], hyps) < limit


def test_recognize_n_best_ordered_distinct_with_word_times(
    stub: speech_pb2_grpc.CloudRecognizerStub, real_clips: list[Clip]
) -> None:
    clip = next(c for c in real_clips if c.kind == "read")
    response = stub.Recognize(_request(clip.pcm16(), n_best=3, word_timestamps=True), timeout=60)
    assert response.utterance_id == "utt-1"
    assert response.language == "en"
    hyps = response.hypotheses
    assert 2 <= len(hyps) <= 3
    keys = [" ".join(re.sub(r"[^\w\s']", " ", h.text.casefold()).split()) for h in hyps]
    assert len(set(keys)) == len(hyps), "hypotheses differing only in casing/punctuation are merged"
    scores = [h.avg_logprob for h in hyps]
    assert scores == sorted(scores, reverse=True)
    confidences = [h.confidence for h in hyps]
    assert confidences == sorted(confidences, reverse=True)
    assert all(0.0 < c <= 1.0 for c in confidences)
    assert wer([clip.text], [hyps[0].text]) < 0.15
    for h in hyps:
        assert h.words, "word timestamps were asked for"
        assert normalize(" ".join(w.word for w in h.words)) == normalize(h.text)
        starts = [w.start for w in h.words]
        assert starts == sorted(starts)
        for w in h.words:
            assert 0.0 <= w.start <= w.end <= clip.duration + 0.05
            assert 0.0 <= w.probability <= 1.0


def test_streaming_recognize_with_context_update(
    stub: speech_pb2_grpc.CloudRecognizerStub, real_clips: list[Clip]
) -> None:
    clip = next(c for c in real_clips if c.kind == "read")
    pcm = clip.pcm16()
    chunk = 3200  # 100 ms, and odd offsets in between are fine as long as the total is even

    def messages() -> Iterator[speech_pb2.StreamingRecognizeRequest]:
        yield speech_pb2.StreamingRecognizeRequest(
            streaming_config=speech_pb2.StreamingConfig(
                config=speech_pb2.RecognitionConfig(n_best=2, word_timestamps=True, language="en"),
                context=speech_pb2.EdgeContext(utterance_id="early-1", reason=speech_pb2.EARLY_PILOT),
            )
        )
        for i in range(0, len(pcm), chunk + 1):
            yield speech_pb2.StreamingRecognizeRequest(audio=pcm[i : i + chunk + 1])
        yield speech_pb2.StreamingRecognizeRequest(
            context=speech_pb2.EdgeContext(utterance_id="early-1", is_final=True, confidence=0.3)
        )

    responses = list(stub.StreamingRecognize(messages(), timeout=60))
    assert len(responses) == 1
    result = responses[0].result
    assert result.utterance_id == "early-1"
    assert 1 <= len(result.hypotheses) <= 2
    assert result.audio_seconds == pytest.approx(clip.duration, abs=0.01)
    assert wer([clip.text], [result.hypotheses[0].text]) < 0.15
    assert result.hypotheses[0].words[-1].end <= clip.duration + 0.05


def test_a_retried_utterance_is_answered_again_not_decoded_twice(
    stub: speech_pb2_grpc.CloudRecognizerStub, cloud: ThreadedCloud, real_clips: list[Clip]
) -> None:
    clip = next(c for c in real_clips if c.kind == "command")
    request = _request(clip.pcm16(), language="en", n_best=2)
    request.context.utterance_id = "retried-1"
    decodes = cloud.metric("cloud_inference_seconds_count", {"operation": "recognize"})
    replays = cloud.metric(
        "cloud_requests_total", {"interface": "grpc", "route": "Recognize", "status": "REPLAYED"}
    )
    first = stub.Recognize(request, timeout=60)
    again = stub.Recognize(request, timeout=60)
    assert again == first and first.hypotheses
    assert cloud.metric("cloud_inference_seconds_count", {"operation": "recognize"}) == decodes + 1
    assert (
        cloud.metric(
            "cloud_requests_total", {"interface": "grpc", "route": "Recognize", "status": "REPLAYED"}
        )
        == replays + 1
    )
    # Other audio under the same id is another utterance: decoded.
    other = _request(real_clips[0].pcm16(), language="en", n_best=2)
    other.context.utterance_id = "retried-1"
    assert stub.Recognize(other, timeout=60).hypotheses
    assert cloud.metric("cloud_inference_seconds_count", {"operation": "recognize"}) == decodes + 2


def test_long_audio_is_segmented_not_hallucinated(
    stub: speech_pb2_grpc.CloudRecognizerStub, long_clip: Clip
) -> None:
    assert long_clip.duration > 30
    response = stub.Recognize(_request(long_clip.pcm16(), language="en", word_timestamps=True), timeout=120)
    best = response.hypotheses[0]
    assert wer([long_clip.text], [best.text]) < 0.15
    assert best.words[-1].end > 30  # the times follow the original timeline past the first window
    assert best.words[-1].end <= long_clip.duration + 0.05


@pytest.mark.parametrize(
    ("audio", "config", "message"),
    [
        (b"", {}, "empty"),
        (b"\x00\x01\x02", {}, "odd byte count"),
        (b"\x00\x00" * 16000, {"sample_rate_hz": 8000}, "sample_rate_hz"),
        (b"\x00\x00" * 16000 * 121, {}, "too long"),
        (b"\x00\x00" * 16000, {"n_best": 99}, "n_best"),
    ],
)
def test_bad_input_is_invalid_argument(
    stub: speech_pb2_grpc.CloudRecognizerStub, audio: bytes, config: dict[str, int], message: str
) -> None:
    request = speech_pb2.RecognizeRequest(config=speech_pb2.RecognitionConfig(**config), audio=audio)
    with pytest.raises(grpc.RpcError) as info:
        stub.Recognize(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_streaming_bad_input_is_invalid_argument(stub: speech_pb2_grpc.CloudRecognizerStub) -> None:
    audio_first = [speech_pb2.StreamingRecognizeRequest(audio=b"\x00\x00")]
    odd_total = [
        speech_pb2.StreamingRecognizeRequest(streaming_config=speech_pb2.StreamingConfig()),
        speech_pb2.StreamingRecognizeRequest(audio=b"\x00\x00\x00"),
    ]
    no_audio = [speech_pb2.StreamingRecognizeRequest(streaming_config=speech_pb2.StreamingConfig())]
    too_long = [
        speech_pb2.StreamingRecognizeRequest(streaming_config=speech_pb2.StreamingConfig()),
        *[speech_pb2.StreamingRecognizeRequest(audio=b"\x00\x00" * 16000 * 10) for _ in range(13)],
    ]
    for messages, text in (
        (audio_first, "first message"),
        (odd_total, "odd"),
        (no_audio, "empty"),
        (too_long, "too long"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            list(stub.StreamingRecognize(iter(messages), timeout=30))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, text
        assert text in info.value.details()


def test_health_transitions_and_model_not_ready(model_cache: str, real_clips: list[Clip]) -> None:
    cloud = ThreadedCloud(cloud_settings(model_cache)).start(load=False)
    try:
        with grpc.insecure_channel(cloud.grpc_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            name = "speech.v1.CloudRecognizer"
            for service in ("", name):
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = speech_pb2_grpc.CloudRecognizerStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Recognize(_request(real_clips[0].pcm16()), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            watch = health.Watch(health_pb2.HealthCheckRequest(service=name), timeout=60)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            cloud.call(cloud.server.load())
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            assert stub.Recognize(_request(real_clips[0].pcm16()), timeout=60).hypotheses
            watch.cancel()
    finally:
        cloud.stop()


def test_overload_is_resource_exhausted(model_cache: str, long_clip: Clip, real_clips: list[Clip]) -> None:
    cloud = ThreadedCloud(cloud_settings(model_cache, max_queue=1, retry_after_s=3)).start()
    try:
        with grpc.insecure_channel(cloud.grpc_target) as channel:
            stub = speech_pb2_grpc.CloudRecognizerStub(channel)
            busy = stub.Recognize.future(_request(long_clip.pcm16(), language="en"), timeout=120)
            deadline = time.monotonic() + 30
            while cloud.runtime.pool.pending < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert cloud.runtime.pool.pending == 1
            with pytest.raises(grpc.RpcError) as info:
                stub.Recognize(_request(real_clips[0].pcm16()), timeout=30)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert ("retry-after", "3") in (info.value.trailing_metadata() or ())
            assert busy.result().hypotheses  # the admitted request still completes
            assert stub.Recognize(_request(real_clips[0].pcm16()), timeout=60).hypotheses
    finally:
        cloud.stop()


def test_deadline_expiry_cancels_queued_work(
    model_cache: str, long_clip: Clip, real_clips: list[Clip]
) -> None:
    cloud = ThreadedCloud(cloud_settings(model_cache, max_queue=4)).start()
    try:
        with grpc.insecure_channel(cloud.grpc_target) as channel:
            stub = speech_pb2_grpc.CloudRecognizerStub(channel)
            first = stub.Recognize.future(_request(long_clip.pcm16(), language="en"), timeout=120)
            deadline = time.monotonic() + 30
            while cloud.runtime.pool.pending < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(grpc.RpcError) as info:
                stub.Recognize(_request(real_clips[0].pcm16()), timeout=0.5)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert first.result().hypotheses
            deadline = time.monotonic() + 30
            while cloud.runtime.pool.pending > 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert cloud.runtime.pool.pending == 0
            # Only the first request ever reached the model: the expired one was dropped from the queue.
            samples = cloud.runtime.metrics.registry.get_sample_value(
                "cloud_inference_seconds_count", {"operation": "recognize"}
            )
            assert samples == 1
    finally:
        cloud.stop()


def test_api_key_required_and_never_logged(
    model_cache: str, real_clips: list[Clip], caplog: pytest.LogCaptureFixture
) -> None:
    key = "s3cret-key-value"
    cloud = ThreadedCloud(cloud_settings(model_cache, api_key=key)).start()
    try:
        with grpc.insecure_channel(cloud.grpc_target) as channel:
            stub = speech_pb2_grpc.CloudRecognizerStub(channel)
            for metadata in ((), (("authorization", "Bearer wrong"),)):
                with pytest.raises(grpc.RpcError) as info:
                    stub.Recognize(_request(real_clips[0].pcm16()), metadata=metadata, timeout=30)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as info:
                list(stub.StreamingRecognize(iter([]), timeout=30))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = stub.Recognize(
                _request(real_clips[0].pcm16()), metadata=(("authorization", f"Bearer {key}"),), timeout=60
            )
            assert ok.hypotheses
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
    finally:
        cloud.stop()
    assert key not in caplog.text


def test_pcm_silence_gives_no_confident_text(stub: speech_pb2_grpc.CloudRecognizerStub) -> None:
    rng = np.random.default_rng(0)
    noise = (rng.normal(0, 0.001, 16000 * 3) * 32767).astype("<i2").tobytes()
    response = stub.Recognize(_request(noise, language="en"), timeout=60)
    assert [h.text for h in response.hypotheses] == [""]
    assert all(h.confidence < 0.5 and h.no_speech_prob > 0.5 for h in response.hypotheses)
