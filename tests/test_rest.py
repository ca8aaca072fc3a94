"""The OpenAI-compatible REST API, driven by the real ``openai`` client and raw HTTP."""

from __future__ import annotations

import http.client
import io
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import av
import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from tests.audio_files import silence_flac, wav, with_flac_total_samples
from tests.servers import ThreadedCloud, cloud_settings, wait_until
from tests.speech import Clip, normalize, wer

pytestmark = pytest.mark.model


@pytest.fixture()
def client(cloud: ThreadedCloud) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{cloud.rest_url}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def clip(real_clips: list[Clip]) -> Clip:
    return next(c for c in real_clips if c.kind == "read")


def test_json_wer_over_real_and_tts_speech(
    client: OpenAI, real_clips: list[Clip], tts_clips: list[Clip]
) -> None:
    clips = real_clips[:6] + tts_clips[::2]
    hyps = []
    for c in clips:
        with open(c.path, "rb") as f:
            result = client.audio.transcriptions.create(model="whisper-1", file=f, language="en")
        hyps.append(result.text)
    assert wer([c.text for c in clips], hyps) < 0.15


def test_text_format(client: OpenAI, clip: Clip) -> None:
    text = client.audio.transcriptions.create(model="whisper-1", file=clip.path, response_format="text")
    assert isinstance(text, str)
    assert wer([clip.text], [text]) < 0.15


def _cue_times(body: str, sep: str) -> list[tuple[float, float]]:
    pattern = rf"(\d\d):(\d\d):(\d\d){sep}(\d\d\d) --> (\d\d):(\d\d):(\d\d){sep}(\d\d\d)"
    times = []
    for m in re.finditer(pattern, body):
        g = [int(x) for x in m.groups()]
        times.append(
            (g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000, g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000)
        )
    return times


def test_srt_and_vtt(client: OpenAI, clip: Clip) -> None:
    srt = client.audio.transcriptions.create(model="whisper-1", file=clip.path, response_format="srt")
    vtt = client.audio.transcriptions.create(model="whisper-1", file=clip.path, response_format="vtt")
    assert isinstance(srt, str) and isinstance(vtt, str)
    assert srt.startswith("1\n")
    assert vtt.startswith("WEBVTT\n\n")
    for body, sep in ((srt, ","), (vtt, r"\.")):
        times = _cue_times(body, sep)
        assert times, body
        assert all(0 <= start < end <= clip.duration + 0.5 for start, end in times)
        text = " ".join(
            line
            for line in body.splitlines()
            if line and "-->" not in line and not line.isdigit() and line != "WEBVTT"
        )
        assert wer([clip.text], [text]) < 0.15


def test_verbose_json_with_segments_and_words(client: OpenAI, clip: Clip) -> None:
    result = client.audio.transcriptions.create(
        model="whisper-1",
        file=clip.path,
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert result.language == "en"
    assert result.duration == pytest.approx(clip.duration, abs=0.01)
    assert wer([clip.text], [result.text]) < 0.15
    assert result.segments and result.words
    for seg in result.segments:
        assert 0 <= seg.start < seg.end <= clip.duration + 0.5
        assert seg.avg_logprob < 0 and 0 <= seg.no_speech_prob <= 1
    assert normalize(" ".join(w.word for w in result.words)) == normalize(result.text)
    for w in result.words:
        assert 0 <= w.start <= w.end <= clip.duration + 0.05


def _encode(samples: np.ndarray, container: str, codec: str, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "container", "codec", "rate"),
    [
        ("speech.flac", "flac", "flac", 16000),
        ("speech.mp3", "mp3", "libmp3lame", 16000),
        ("speech.ogg", "ogg", "libopus", 48000),
        ("speech.m4a", "ipod", "aac", 16000),
        ("speech.webm", "webm", "libopus", 48000),
    ],
)
def test_compressed_formats(
    client: OpenAI, clip: Clip, name: str, container: str, codec: str, rate: int
) -> None:
    data = _encode(clip.samples(), container, codec, rate)
    text = client.audio.transcriptions.create(model="whisper-1", file=(name, data), response_format="text")
    assert wer([clip.text], [text]) < 0.15


def _post(cloud: ThreadedCloud, files: dict[str, tuple[str, bytes, str]], **data: str) -> httpx.Response:
    return httpx.post(f"{cloud.rest_url}/v1/audio/transcriptions", files=files, data=data, timeout=120)


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["type"]
    message: str = body["error"]["message"]
    assert message
    return message


def test_bad_uploads_have_openai_error_shape(cloud: ThreadedCloud, clip: Clip) -> None:
    wav = clip.path.read_bytes()
    _error(_post(cloud, {"file": ("a.wav", b"", "audio/wav")}, model="whisper-1"), 400, "empty_file")
    _error(
        _post(cloud, {"file": ("a.wav", b"RIFF....garbage", "audio/wav")}, model="whisper-1"),
        400,
        "invalid_audio",
    )
    _error(
        _post(cloud, {"file": ("notes.txt", b"hello", "text/plain")}, model="whisper-1"),
        415,
        "unsupported_media_type",
    )
    _error(
        _post(cloud, {"file": ("blob", wav, "image/png")}, model="whisper-1"), 415, "unsupported_media_type"
    )
    big = b"\x00" * (6 * 1024 * 1024)  # the test server's limit is 5 MiB
    _error(_post(cloud, {"file": ("big.wav", big, "audio/wav")}, model="whisper-1"), 413, "file_too_large")
    _error(_post(cloud, {"file": ("a.wav", wav, "audio/wav")}, model="gpt-9"), 400, "model_not_found")
    _error(
        _post(cloud, {"file": ("a.wav", wav, "audio/wav")}, model="whisper-1", response_format="docx"),
        400,
        "invalid_value",
    )
    _error(
        _post(cloud, {"file": ("a.wav", wav, "audio/wav")}, model="whisper-1", temperature="7"),
        400,
        "invalid_request",
    )
    _error(
        _post(cloud, {"file": ("a.wav", wav, "audio/wav")}, model="whisper-1", language="xx"),
        400,
        "invalid_value",
    )
    missing = httpx.post(f"{cloud.rest_url}/v1/audio/transcriptions", data={"model": "whisper-1"}, timeout=30)
    assert "file" in _error(missing, 400, "invalid_request")


def test_openai_client_raises_on_bad_upload(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"not audio at all"))
    assert "decode" in str(info.value)


def test_models_health_ready_metrics(cloud: ThreadedCloud, client: OpenAI, clip: Clip) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["base", "whisper-1"]
    assert httpx.get(f"{cloud.rest_url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{cloud.rest_url}/ready").json() == {"status": "ready", "model": "base"}
    client.audio.transcriptions.create(model="base", file=clip.path)
    metrics = httpx.get(f"{cloud.rest_url}/metrics").text
    assert re.search(
        r'cloud_requests_total\{interface="rest",route="/v1/audio/transcriptions",status="200"\} [1-9]',
        metrics,
    )
    assert re.search(r'cloud_inference_seconds_count\{operation="transcribe"\} [1-9]', metrics)
    assert re.search(r'cloud_audio_seconds_total\{operation="transcribe"\} [1-9]', metrics)
    assert "cloud_queue_depth 0.0" in metrics
    assert "cloud_model_loaded 1.0" in metrics


def test_ready_is_503_until_model_loads(model_cache: str) -> None:
    cloud = ThreadedCloud(cloud_settings(model_cache)).start(load=False)
    try:
        assert httpx.get(f"{cloud.rest_url}/health").status_code == 200
        ready = httpx.get(f"{cloud.rest_url}/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        response = _post(cloud, {"file": ("a.wav", _silence_wav(), "audio/wav")}, model="whisper-1")
        assert response.headers.get("retry-after")
        _error(response, 503, "model_loading")
    finally:
        cloud.stop()


def _silence_wav() -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(16000, dtype=np.float32), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_api_key(model_cache: str, clip: Clip, caplog: pytest.LogCaptureFixture) -> None:
    key = "rest-key-123456"
    cloud = ThreadedCloud(cloud_settings(model_cache, api_key=key)).start()
    try:
        for api_key in ("wrong", ""):
            with OpenAI(base_url=f"{cloud.rest_url}/v1", api_key=api_key or "x", max_retries=0) as bad:
                with pytest.raises(openai.AuthenticationError):
                    bad.audio.transcriptions.create(model="whisper-1", file=clip.path)
        no_header = httpx.get(f"{cloud.rest_url}/v1/models")
        _error(no_header, 401, "invalid_api_key")
        with OpenAI(base_url=f"{cloud.rest_url}/v1", api_key=key, max_retries=0, timeout=120) as good:
            assert (
                wer([clip.text], [good.audio.transcriptions.create(model="whisper-1", file=clip.path).text])
                < 0.15
            )
        assert httpx.get(f"{cloud.rest_url}/health").status_code == 200
        metrics = httpx.get(f"{cloud.rest_url}/metrics").text
        assert key not in metrics
        assert 'status="401"' in metrics
    finally:
        cloud.stop()
    assert key not in caplog.text


def test_decompression_bomb_is_refused_without_decoding_it(cloud: ThreadedCloud) -> None:
    # An hour of 8 kHz silence: 90 kB of FLAC, 115 MB as 16 kHz samples (the test server's limit is 120 s).
    bomb = silence_flac(3600)
    message = _error(_post(cloud, {"file": ("long.flac", bomb, "audio/flac")}), 400, "invalid_audio")
    assert message == "audio is too long (3600.0 s by the file's header); the limit is 120 s"
    # A header with no length (as streaming encoders write it) or a false one: decoding stops at the limit.
    for declared in (0, 10 * 8000):
        lying = with_flac_total_samples(bomb, declared)
        message = _error(_post(cloud, {"file": ("long.flac", lying, "audio/flac")}), 400, "invalid_audio")
        assert message == "audio is too long: decoding passed the limit of 120 s"
    assert httpx.get(f"{cloud.rest_url}/health", timeout=5).json() == {"status": "ok"}
    assert cloud.metric("cloud_queue_depth") == 0


def test_non_finite_samples_and_odd_bit_depths_are_refused(cloud: ThreadedCloud, clip: Clip) -> None:
    speech = clip.samples().astype("<f4")
    speech[16000] = np.nan
    message = _error(
        _post(cloud, {"file": ("nan.wav", wav(speech.tobytes(), 32, format_tag=3), "audio/wav")}),
        400,
        "invalid_audio",
    )
    assert message == "the audio holds non-finite samples (NaN or infinity), the first at 1.00 s"
    seven_bit = (np.clip(clip.samples(), -1, 1) * 63 + 64).astype(np.uint8).tobytes()
    message = _error(
        _post(cloud, {"file": ("seven.wav", wav(seven_bit, 7), "audio/wav")}), 400, "invalid_audio"
    )
    assert message.startswith("unsupported sample format: 7-bit integer PCM; send PCM WAV/AIFF with 8-, 16-")
    assert "FLAC, MP3" in message


@pytest.mark.parametrize(
    "field", ["model", "response_format", "temperature", "language", "timestamp_granularities[]"]
)
def test_empty_form_values_are_refused(cloud: ThreadedCloud, field: str) -> None:
    form = {"model": "whisper-1", field: ""}
    response = _post(cloud, {"file": ("a.wav", _silence_wav(), "audio/wav")}, **form)
    message = _error(response, 400, "invalid_value")
    assert message == f"{field} is empty; leave it out for the default"
    assert response.json()["error"]["param"] == field


def test_client_disconnect_cancels_its_queued_transcription(
    cloud: ThreadedCloud, long_clip: Clip, clip: Clip
) -> None:
    pool = cloud.runtime.pool
    route = {"interface": "rest", "route": "/v1/audio/transcriptions", "status": "499"}
    transcribed = cloud.metric("cloud_inference_seconds_count", {"operation": "transcribe"})
    dropped = cloud.metric("cloud_cancelled_requests_total", {"stage": "queued"})
    closed = cloud.metric("cloud_requests_total", route)
    assert pool.pending == 0
    with ThreadPoolExecutor(1) as background:
        # The test server has one worker: the long clip holds it while the second request waits.
        busy = background.submit(
            _post, cloud, {"file": ("long.wav", long_clip.path.read_bytes(), "audio/wav")}, language="en"
        )
        assert wait_until(lambda: pool.pending == 1, timeout=30)
        queued = httpx.Request(
            "POST",
            f"{cloud.rest_url}/v1/audio/transcriptions",
            files={"file": ("a.wav", clip.path.read_bytes(), "audio/wav")},
            data={"model": "whisper-1"},
        )
        connection = http.client.HTTPConnection("127.0.0.1", cloud.server.rest_port, timeout=30)
        connection.request("POST", queued.url.raw_path.decode(), body=queued.read(), headers=queued.headers)
        assert wait_until(lambda: pool.pending == 2, timeout=30)
        connection.close()  # the client goes away without reading the answer
        # The queued job leaves the queue at once, while the long clip still runs.
        assert wait_until(lambda: pool.pending == 1, timeout=30)
        assert not busy.done()
        assert busy.result().status_code == 200
    assert wait_until(lambda: cloud.metric("cloud_requests_total", route) == closed + 1, timeout=10)
    assert cloud.metric("cloud_cancelled_requests_total", {"stage": "queued"}) == dropped + 1
    # Only the long clip reached the model.
    assert cloud.metric("cloud_inference_seconds_count", {"operation": "transcribe"}) == transcribed + 1
    assert pool.pending == 0
