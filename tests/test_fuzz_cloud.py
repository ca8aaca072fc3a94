"""Fuzzing the cloud's interfaces against the real server (Whisper base, the session's ``cloud``).

* REST, by schemathesis from the server's own ``/openapi.json`` (schema-valid and schema-violating
  requests): no 5xx, and every answer conforms to the schema (status, content type, body, headers).
* REST uploads, by hypothesis: corrupt, truncated and mislabelled audio, random bytes, wrong content types
  and file names, oversized bodies, odd form values. Each answer is 200 or the 4xx (with OpenAI's error
  body and code) the README documents for the first thing wrong with the request; never 5xx, never a hang.
* gRPC, by hypothesis: random ``RecognizeRequest`` fields (random bytes as audio, odd byte counts, wrong
  sample rates, huge n-best and beams, unknown languages, random edge hypotheses), bytes that are not a
  protobuf message at all, and ``StreamingRecognize`` sequences in any order. Each call ends with OK when
  the request is valid and INVALID_ARGUMENT (the README's reasons) when not; never UNKNOWN or INTERNAL,
  never past its deadline.

Most fuzzed requests are refused before inference; valid audio is at most 0.5 s (silence or random
samples), so the whole file stays within a few minutes on a loaded 2-core machine. Counts go to
``.cache/fuzz/cloud-*.json``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import requests
import schemathesis
import soundfile as sf
from google.protobuf.message import DecodeError
from hypothesis import example, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from asr_common.protos import speech_pb2, speech_pb2_grpc
from cloud_server.rest.app import AUDIO_EXTENSIONS
from tests.audio_files import vbr_mp3, wav
from tests.fuzz import Tally, fuzz_settings, pick
from tests.servers import ThreadedCloud

pytestmark = pytest.mark.model

CALL_S = 60.0  # an answer slower than this is a hang (one utterance of <= 0.5 s takes ~2 s here)
RATE = 16000

# -- REST against the OpenAPI schema ----------------------------------------------------------------

# positive_data_acceptance is left out on purpose: the schema can say "a file", not "a decodable audio
# file of a served model", so schema-valid requests with random bytes are rightly refused with 400.
SCHEMA_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]


def _schemathesis_run(schema: Any, mode: GenerationMode, tally: Tally) -> None:
    @fuzz_settings(60)
    @given(case=schema.as_strategy(mode))
    def request(case: schemathesis.Case) -> None:
        tally.tried += 1
        try:
            with tally.timed():
                response = case.call(timeout=CALL_S)
        except requests.Timeout:
            tally.hangs += 1
            raise
        tally.outcomes[f"{mode.value} {case.method} {case.path} {response.status_code}"] += 1
        if response.status_code >= 500:
            tally.server_errors += 1
        try:
            case.validate_response(response, checks=SCHEMA_CHECKS)
        except FailureGroup:
            tally.crashes += 1
            raise

    request()


def test_rest_against_its_openapi_schema(cloud: ThreadedCloud) -> None:
    schema = schemathesis.openapi.from_url(f"{cloud.rest_url}/openapi.json")
    tally = Tally("cloud-rest-schema", "requests")
    try:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _schemathesis_run(schema, mode, tally)
    finally:
        tally.write()
    assert tally.clean(), tally.summary()
    # Both kinds of data reached the upload route, and schema-violating ones were refused with 400.
    assert any(k.startswith("negative POST /v1/audio/transcriptions 400") for k in tally.outcomes)
    assert any(k.startswith("positive POST /v1/audio/transcriptions") for k in tally.outcomes)


# -- REST uploads -----------------------------------------------------------------------------------

UPLOAD_LIMIT = 5 * 1024 * 1024  # the `cloud` fixture's CLOUD_MAX_UPLOAD_MB
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
ERROR_CODES = {
    400: {"empty_file", "invalid_audio", "invalid_value", "invalid_request", "model_not_found"},
    413: {"file_too_large"},
    415: {"unsupported_media_type"},
}


def _silence_wav(seconds: float = 0.3) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * RATE), dtype=np.float32), RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _silence_flac(seconds: float = 0.3) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * RATE), dtype=np.float32), RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


WAV = _silence_wav()
FLAC = _silence_flac()
MP3 = vbr_mp3(np.zeros(int(0.3 * RATE), dtype=np.float32), xing=True)
GOOD_FILES = {"wav": WAV, "flac": FLAC, "mp3": MP3}


@dataclass(frozen=True)
class Payload:
    data: bytes
    kind: str
    decodable: bool | None
    """True: real audio (200 unless a field is wrong); False: never audio; None: the decoder decides."""


def _truncate(name_cut: tuple[str, float]) -> Payload:
    name, cut = name_cut
    data = GOOD_FILES[name]
    return Payload(data[: max(1, int(len(data) * cut))], f"truncated-{name}", None)


def _corrupt(args: tuple[str, list[tuple[float, int]]]) -> Payload:
    """Bytes overwritten: in a WAV's header (its samples are any bytes), anywhere in FLAC and MP3 frames."""
    name, edits = args
    data = bytearray(GOOD_FILES[name])
    span = 44 if name == "wav" else len(data)
    for where, value in edits:
        data[min(span - 1, int(where * span))] = value
    return Payload(bytes(data), f"corrupt-{name}", None)


PAYLOADS = pick(
    st.sampled_from(sorted(GOOD_FILES)).map(lambda name: Payload(GOOD_FILES[name], f"valid-{name}", True)),
    # 1-10 ms: under one encoder frame, where word alignment used to fail.
    st.integers(1, 160).map(lambda n: Payload(_silence_wav(n / RATE), "valid-tiny", True)),
    st.tuples(st.sampled_from(sorted(GOOD_FILES)), st.floats(0, 0.99)).map(_truncate),
    st.tuples(
        st.sampled_from(sorted(GOOD_FILES)),
        st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8),
    ).map(_corrupt),
    st.binary(min_size=1, max_size=4096).map(lambda data: Payload(data, "random", None)),
    st.just(Payload(b"", "empty", False)),
    st.sampled_from([7, 12, 20]).map(lambda bits: Payload(wav(b"\x00" * 960, bits), f"wav-{bits}bit", False)),
    # Over the limit: by a little (read, then refused) or by more than 1 MiB (refused by its length).
    st.sampled_from([UPLOAD_LIMIT + 1, UPLOAD_LIMIT + (3 << 20)]).map(
        lambda size: Payload(WAV + b"\x00" * (size - len(WAV)), f"oversized-{size >> 20}MiB", None)
    ),
)
_HEADER_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E)  # printable ASCII


def _mostly(good: list[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One of ``good`` two times in three, else something from ``bad``: most requests have something
    wrong (refused before inference), and some pass every check to reach the decoder."""
    return st.sampled_from([False, False, True]).flatmap(
        lambda wrong: bad if wrong else st.sampled_from(good)
    )


FILENAMES = _mostly(
    ["a.wav", "a.mp3", "a.flac", "A.WAV", "blob", "../../x.wav", ".wav"],
    st.sampled_from(["a.txt", "a.png", "a.wav.exe"]) | st.text(_HEADER_CHARS, min_size=1, max_size=24),
)
CONTENT_TYPES = _mostly(
    ["audio/wav", "audio/mpeg", "audio/flac", "application/octet-stream", "application/ogg", "video/webm"],
    st.sampled_from(["audio/x-wav; codecs=1", "AUDIO/WAV", "text/plain", "image/png", "multipart/form-data"])
    | st.text(_HEADER_CHARS, min_size=1, max_size=24),
)
_ABSENT = None
FORM_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "model": _mostly(
        [_ABSENT, "whisper-1", "base", "whisper-base"], st.sampled_from(["", "gpt-9", "whisper-2"])
    ),
    "response_format": _mostly([_ABSENT, *FORMATS], st.sampled_from(["", "docx", "JSON"])),
    # Non-zero temperatures make Whisper sample on silence (long hallucinations): only 0 is valid here.
    "temperature": _mostly(
        [_ABSENT, "0", "0.0"], st.sampled_from(["", "-1", "2", "nan", "inf", "warm", "0x1"])
    ),
    "language": _mostly([_ABSENT, "en", "de"], st.sampled_from(["", "xx", "EN", "english"])),
    "timestamp_granularities[]": _mostly(
        [_ABSENT],
        st.sampled_from([["segment"], ["word"], ["word", "segment"], [""], ["bogus"], ["word", "bogus"]]),
    ),
}


@dataclass(frozen=True)
class Upload:
    payload: Payload
    filename: str
    content_type: str
    form: dict[str, Any] = field(default_factory=dict)

    def expected(self) -> tuple[int, str] | None:
        """The README's answer to the first thing wrong with the request, in the order the server checks;
        None when the decoder decides (200, or 400 invalid_audio)."""
        size = len(self.payload.data)
        if size > UPLOAD_LIMIT + (1 << 20):
            return 413, "file_too_large"  # by Content-Length, before the body is read
        temperature = self.form.get("temperature")
        if temperature not in (None, ""):
            try:
                valid = 0 <= float(temperature) <= 1
            except ValueError:
                valid = False
            if not valid:
                return 400, "invalid_request"
        for name in ("model", "language", "response_format", "temperature", "timestamp_granularities[]"):
            value = self.form.get(name)
            if value == "" or (isinstance(value, list) and "" in value):
                return 400, "invalid_value"
        if self.form.get("model", "whisper-1") not in ("whisper-1", "base", "whisper-base"):
            return 400, "model_not_found"
        response_format = self.form.get("response_format", "json")
        if response_format not in FORMATS:
            return 400, "invalid_value"
        granularities = self.form.get("timestamp_granularities[]")
        if granularities is not None and not set(granularities) <= {"word", "segment"}:
            return 400, "invalid_value"
        if granularities is not None and response_format != "verbose_json":
            return 400, "invalid_value"
        if self.form.get("language") not in (None, "en", "de"):
            return 400, "invalid_value"
        suffix = PurePath(self.filename).suffix.lower().lstrip(".")
        if suffix and suffix not in AUDIO_EXTENSIONS:
            return 415, "unsupported_media_type"
        media = self.content_type.split(";")[0].strip().lower()
        if media and not (
            media.startswith(("audio/", "video/")) or media in ("application/octet-stream", "application/ogg")
        ):
            return 415, "unsupported_media_type"
        if size > UPLOAD_LIMIT:
            return 413, "file_too_large"
        if size == 0:
            return 400, "empty_file"
        if self.payload.decodable is False:
            return 400, "invalid_audio"
        return None


UPLOADS = st.builds(
    Upload,
    payload=PAYLOADS,
    filename=FILENAMES,
    content_type=CONTENT_TYPES,
    form=st.fixed_dictionaries({}, optional=FORM_VALUES).map(
        lambda form: {k: v for k, v in form.items() if v is not _ABSENT}
    ),
)


def _check_success(upload: Upload, response: httpx.Response) -> None:
    response_format = upload.form.get("response_format", "json")
    if response_format in ("json", "verbose_json"):
        body = response.json()
        assert isinstance(body["text"], str)
        if response_format == "verbose_json":
            granularities = upload.form.get("timestamp_granularities[]", ["segment"])
            assert body["duration"] > 0
            assert ("segments" in body) == ("segment" in granularities)
            assert ("words" in body) == ("word" in granularities)
    elif response_format == "vtt":
        assert response.text.startswith("WEBVTT")
    else:
        assert response.headers["content-type"].startswith("text/plain")


def test_uploads_get_200_or_a_documented_4xx(cloud: ThreadedCloud) -> None:
    tally = Tally("cloud-rest-uploads", "uploads")
    url = f"{cloud.rest_url}/v1/audio/transcriptions"

    @fuzz_settings(50)
    @given(upload=UPLOADS)
    # The named cases run every time, before the drawn ones.
    @example(Upload(Payload(WAV, "mislabelled-wav", True), "speech.mp3", "audio/mpeg"))
    @example(Upload(Payload(FLAC, "mislabelled-flac", True), "speech.wav", "audio/wav"))
    @example(Upload(Payload(FLAC[: len(FLAC) // 2], "truncated-flac", None), "speech.flac", "audio/flac"))
    @example(Upload(Payload(bytes(range(256)) * 8, "random", None), "speech.wav", "audio/wav"))
    @example(Upload(Payload(WAV, "valid-wav", True), "speech.wav", "text/plain"))
    @example(Upload(Payload(WAV, "valid-wav", True), "notes.txt", "audio/wav"))
    @example(Upload(Payload(b"", "empty", False), "speech.wav", "audio/wav"))
    @example(Upload(Payload(WAV + bytes(UPLOAD_LIMIT), "oversized-5MiB", None), "speech.wav", "audio/wav"))
    @example(
        Upload(Payload(WAV + bytes(UPLOAD_LIMIT + (2 << 20)), "oversized-7MiB", None), "a.wav", "audio/wav")
    )
    @example(
        Upload(
            Payload(_silence_wav(0.004), "valid-tiny", True),
            "tiny.wav",
            "audio/wav",
            {"response_format": "verbose_json", "timestamp_granularities[]": ["word"]},
        )
    )
    def send(upload: Upload) -> None:
        tally.tried += 1
        tally.extra[f"payload:{upload.payload.kind.split('-')[0]}"] += 1
        try:
            with tally.timed():
                response = httpx.post(
                    url,
                    files={"file": (upload.filename, upload.payload.data, upload.content_type)},
                    data=upload.form,
                    timeout=CALL_S,
                )
        except httpx.TimeoutException:
            tally.hangs += 1
            raise
        status = response.status_code
        if status >= 500:
            tally.outcomes[str(status)] += 1
            tally.server_errors += 1
            raise AssertionError(f"{status} for {upload}: {response.text[:300]}")
        try:
            code = response.json()["error"]["code"] if status >= 400 else None
            tally.outcomes[f"{status} {code}" if code else str(status)] += 1
            expected = upload.expected()
            if expected is not None:
                assert (status, code) == expected, response.text[:300]
            elif upload.payload.decodable:
                assert status == 200, response.text[:300]
            else:
                assert (status, code) in ((200, None), (400, "invalid_audio")), response.text[:300]
            if status == 200:
                _check_success(upload, response)
            else:
                body = response.json()
                assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
                assert body["error"]["code"] in ERROR_CODES[status] and body["error"]["message"]
        except (AssertionError, ValueError, KeyError):
            tally.crashes += 1
            raise

    try:
        send()
    finally:
        tally.write()
    assert tally.clean(), tally.summary()
    assert httpx.get(f"{cloud.rest_url}/health", timeout=10).json() == {"status": "ok"}
    assert cloud.metric("cloud_queue_depth") == 0
    assert {"200", "400 invalid_audio", "413 file_too_large", "415 unsupported_media_type"} <= set(
        tally.outcomes
    )


# -- gRPC -------------------------------------------------------------------------------------------

MAX_N_BEST = 5  # CLOUD_MAX_N_BEST's default
LANGUAGES = st.sampled_from(["", "en", "de"])
BAD_LANGUAGES = st.sampled_from(["xx", "EN", "<|en|>", "english"]) | st.text(min_size=1, max_size=12).filter(
    lambda code: code not in ("en", "de") and len(code) != 2
)
_UINT32 = st.integers(0, 2**32 - 1)
TEXTS = st.text(max_size=60)  # any code point but lone surrogates (protobuf strings are UTF-8)
FLOATS = st.floats(width=32)  # NaN and infinities included


@st.composite
def configs(draw: st.DrawFn, valid: bool) -> speech_pb2.RecognitionConfig:
    """A RecognitionConfig; when not ``valid``, with at least one thing the server must refuse."""
    defects = (
        set() if valid else draw(st.sets(st.sampled_from(["rate", "n_best", "beam", "language"]), min_size=1))
    )
    return speech_pb2.RecognitionConfig(
        language=draw(BAD_LANGUAGES if "language" in defects else LANGUAGES),
        beam_size=draw(st.integers(17, 2**32 - 1) if "beam" in defects else st.sampled_from([0, 1, 2, 5])),
        n_best=draw(
            st.integers(MAX_N_BEST + 1, 2**32 - 1) if "n_best" in defects else st.integers(0, MAX_N_BEST)
        ),
        word_timestamps=draw(st.booleans()),
        sample_rate_hz=draw(
            _UINT32.filter(lambda r: r not in (0, RATE)) if "rate" in defects else st.sampled_from([0, RATE])
        ),
        # Random prompts can send Whisper into repetition up to its length limit: one request in four.
        prompt=draw(_mostly([""], st.text(max_size=20))),
    )


EDGE_CONTEXTS = st.builds(
    speech_pb2.EdgeContext,
    utterance_id=TEXTS,
    n_best=st.lists(
        st.builds(speech_pb2.EdgeHypothesis, text=TEXTS, confidence=FLOATS, log_prob=FLOATS), max_size=4
    ),
    confidence=FLOATS,
    reason=st.integers(-(2**31), 2**31 - 1),  # proto3 enums are open: any int32 arrives
    reason_detail=TEXTS,
    edge_model=TEXTS,
    is_final=st.booleans(),
)
# Audio: random bytes (loud noise) or silence, at most 0.5 s; odd counts and emptiness are defects.
VALID_AUDIO = pick(
    st.binary(min_size=2, max_size=RATE).map(lambda data: data[: len(data) & ~1]).filter(bool),
    st.integers(1, RATE // 2).map(lambda n: b"\x00\x00" * n),
)
BAD_AUDIO = st.just(b"") | st.binary(min_size=1, max_size=4001).map(
    lambda data: data if len(data) % 2 else data[:-1]
)


def _audio_valid(audio: bytes) -> bool:
    return bool(audio) and len(audio) % 2 == 0


def _config_valid(config: speech_pb2.RecognitionConfig) -> bool:
    return (
        config.sample_rate_hz in (0, RATE)
        and config.n_best <= MAX_N_BEST
        and config.beam_size <= 16
        and config.language in ("", "en", "de")
        and all(code in ("en", "de") for code in config.languages)  # README: codes the model knows
    )


@st.composite
def recognize_requests(draw: st.DrawFn) -> speech_pb2.RecognizeRequest:
    """About a quarter valid (they cost a decode); the others wrong in the config, the audio or both."""
    valid = draw(st.sampled_from([False, False, False, True]))
    bad_audio = not valid and draw(st.booleans())
    config_ok = valid or (bad_audio and draw(st.booleans()))
    return speech_pb2.RecognizeRequest(
        config=draw(configs(config_ok)),
        audio=draw(BAD_AUDIO if bad_audio else VALID_AUDIO),
        context=draw(EDGE_CONTEXTS),
    )


GARBAGE = st.binary(min_size=1, max_size=200)


def _request(audio: bytes = b"\x00\x00" * 4000, **config: Any) -> speech_pb2.RecognizeRequest:
    """A request with one thing set (0.25 s of silence, the edge's hypothesis to rank)."""
    return speech_pb2.RecognizeRequest(
        config=speech_pb2.RecognitionConfig(**config),
        audio=audio,
        context=speech_pb2.EdgeContext(
            utterance_id="u1", n_best=[speech_pb2.EdgeHypothesis(text="hello there", log_prob=-2.0)]
        ),
    )


RecognizeCall = speech_pb2.RecognizeRequest | bytes


def _parsed(message: RecognizeCall) -> speech_pb2.RecognizeRequest | None:
    if isinstance(message, speech_pb2.RecognizeRequest):
        return message
    try:
        return speech_pb2.RecognizeRequest.FromString(message)
    except DecodeError:
        return None


@pytest.fixture(scope="module")
def channel(cloud: ThreadedCloud) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(cloud.grpc_target) as ch:
        yield ch


def _grpc_outcome(tally: Tally, call: Any) -> tuple[grpc.StatusCode, Any]:
    """Run ``call()``; its status and answer (None on error), counting hangs and server errors."""
    try:
        with tally.timed():
            return grpc.StatusCode.OK, call()
    except grpc.RpcError as exc:
        status: grpc.StatusCode = exc.code()
        tally.outcomes[f"{status.name}"] += 1
        if status is grpc.StatusCode.DEADLINE_EXCEEDED:
            tally.hangs += 1
            raise
        if status in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE):
            tally.server_errors += 1
            raise
        return status, None


def test_grpc_recognize_with_random_and_malformed_requests(
    cloud: ThreadedCloud, channel: grpc.Channel
) -> None:
    tally = Tally("cloud-grpc-recognize", "calls")
    stub = speech_pb2_grpc.CloudRecognizerStub(channel)
    raw: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        "/speech.v1.CloudRecognizer/Recognize"  # bytes in, bytes out
    )

    @fuzz_settings(50)
    @given(message=pick(recognize_requests(), recognize_requests(), recognize_requests(), GARBAGE))
    @example(_request(n_best=2**32 - 1))
    @example(_request(beam_size=1000))
    @example(_request(sample_rate_hz=8000))
    @example(_request(language="xx"))  # was UNKNOWN: the tokenizer's ValueError
    @example(_request(audio=b"\x01\x02\x03"))
    @example(_request(audio=b""))
    @example(_request(audio=b"\x00\x00" * 50, word_timestamps=True, n_best=3))  # was UNKNOWN: 3 ms aligned
    @example(_request())
    @example(b"\xff\xff\xff")  # was UNKNOWN: the DecodeError before the handler
    def call(message: RecognizeCall) -> None:
        tally.tried += 1
        request = _parsed(message)
        tally.extra["garbage" if isinstance(message, bytes) else "messages"] += 1
        if isinstance(message, bytes):
            status, answer = _grpc_outcome(tally, lambda: raw(message, timeout=CALL_S))
            response = speech_pb2.RecognizeResponse.FromString(answer) if answer is not None else None
        else:
            status, response = _grpc_outcome(tally, lambda: stub.Recognize(message, timeout=CALL_S))
        valid = request is not None and _audio_valid(request.audio) and _config_valid(request.config)
        try:
            if not valid:
                assert status is grpc.StatusCode.INVALID_ARGUMENT, (status, request)
                return
            assert status is grpc.StatusCode.OK and response is not None, (status, request)
            tally.outcomes["OK"] += 1
            assert request is not None
            assert response.utterance_id == request.context.utterance_id
            assert 1 <= len(response.hypotheses) <= max(1, request.config.n_best)
            assert response.audio_seconds == pytest.approx(len(request.audio) / 2 / RATE, abs=1e-3)
            assert all(0 <= h.confidence <= 1 and not math.isnan(h.avg_logprob) for h in response.hypotheses)
        except AssertionError:
            tally.crashes += 1
            raise

    try:
        call()
    finally:
        tally.write()
    assert tally.clean(), tally.summary()
    assert tally.outcomes["OK"] > 0 and tally.outcomes["INVALID_ARGUMENT"] > 0


@dataclass(frozen=True)
class StreamMessage:
    kind: str
    """config, audio, context or garbage."""
    message: speech_pb2.StreamingRecognizeRequest | bytes


def _config_message(valid: bool) -> st.SearchStrategy[StreamMessage]:
    return st.builds(
        lambda c, ctx: StreamMessage(
            "config",
            speech_pb2.StreamingRecognizeRequest(
                streaming_config=speech_pb2.StreamingConfig(config=c, context=ctx)
            ),
        ),
        configs(valid),
        EDGE_CONTEXTS,
    )


def _audio_message(audio: st.SearchStrategy[bytes]) -> st.SearchStrategy[StreamMessage]:
    return audio.map(
        lambda data: StreamMessage("audio", speech_pb2.StreamingRecognizeRequest(audio=data[: RATE // 4]))
    )


_CONTEXT_MESSAGE = EDGE_CONTEXTS.map(
    lambda ctx: StreamMessage("context", speech_pb2.StreamingRecognizeRequest(context=ctx))
)
_GARBAGE_MESSAGE = GARBAGE.map(lambda data: StreamMessage("garbage", data))


def _then(
    first: st.SearchStrategy[list[StreamMessage]], *rest: st.SearchStrategy[list[StreamMessage]]
) -> Any:
    return st.tuples(first, *rest).map(lambda parts: [m for part in parts for m in part])


def _stream_messages(valid_stream: bool) -> st.SearchStrategy[list[StreamMessage]]:
    good_config, bad_config = _config_message(True), _config_message(False)
    good_audio, any_audio = _audio_message(VALID_AUDIO), _audio_message(VALID_AUDIO | BAD_AUDIO)
    if valid_stream:  # config first, then whole-sample audio (<= 0.5 s in all) and contexts
        return _then(
            good_config.map(lambda m: [m]),
            st.lists(st.one_of(good_audio, _CONTEXT_MESSAGE), min_size=1, max_size=2),
        )
    anything = st.one_of(good_config, bad_config, any_audio, _CONTEXT_MESSAGE, _GARBAGE_MESSAGE)
    return pick(
        # config not first
        _then(st.builds(lambda m: [m], any_audio | _CONTEXT_MESSAGE), st.lists(anything, max_size=4)),
        # config twice
        _then(
            good_config.map(lambda m: [m]),
            st.lists(good_audio, max_size=2),
            st.builds(lambda m: [m], good_config | bad_config),
            st.lists(anything, max_size=2),
        ),
        # a wrong rate, n_best, beam or language
        _then(bad_config.map(lambda m: [m]), st.lists(good_audio, max_size=2)),
        # no audio, or an odd byte count
        _then(good_config.map(lambda m: [m]), st.lists(_audio_message(BAD_AUDIO), min_size=1, max_size=2)),
        # anything at all, garbage bytes included
        st.lists(anything, max_size=6),
    )


SILENCE = b"\x00\x00" * 4000


def _config(**config: Any) -> StreamMessage:
    streaming = speech_pb2.StreamingConfig(config=speech_pb2.RecognitionConfig(**config))
    return StreamMessage("config", speech_pb2.StreamingRecognizeRequest(streaming_config=streaming))


def _chunk(audio: bytes) -> StreamMessage:
    return StreamMessage("audio", speech_pb2.StreamingRecognizeRequest(audio=audio))


@dataclass
class StreamOracle:
    """What the server answers to a StreamingRecognize sequence (README, gRPC)."""

    messages: list[StreamMessage]

    def valid(self) -> bool:
        config: speech_pb2.RecognitionConfig | None = None
        audio = b""
        for item in self.messages:
            message = item.message
            if isinstance(message, bytes):
                try:
                    message = speech_pb2.StreamingRecognizeRequest.FromString(message)
                except DecodeError:
                    return False
            kind = message.WhichOneof("request")
            if config is None and kind != "streaming_config":
                return False
            if kind == "streaming_config":
                if config is not None or message.streaming_config.config.sample_rate_hz not in (0, RATE):
                    return False
                config = message.streaming_config.config
            elif kind == "audio":
                audio += message.audio
        return config is not None and _config_valid(config) and _audio_valid(audio)


def test_grpc_streaming_sequences_in_any_order(cloud: ThreadedCloud, channel: grpc.Channel) -> None:
    tally = Tally("cloud-grpc-streaming", "streams")
    raw: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
        "/speech.v1.CloudRecognizer/StreamingRecognize"  # bytes in, bytes out
    )

    def encoded(messages: list[StreamMessage]) -> Iterator[bytes]:
        for item in messages:
            message = item.message
            yield message if isinstance(message, bytes) else message.SerializeToString()

    @fuzz_settings(40)
    @given(messages=st.sampled_from([False, False, False, True]).flatmap(_stream_messages))
    @example([])
    @example([_chunk(SILENCE)])
    @example([_chunk(SILENCE), _config()])  # config not first
    @example([_config(), _chunk(SILENCE), _config()])  # config twice
    @example([_config(n_best=2**32 - 1), _chunk(SILENCE)])
    @example([_config(sample_rate_hz=44100), _chunk(SILENCE)])
    @example([_config(), _chunk(b"\x00")])  # an odd byte count in all
    @example([_config(), _chunk(b"\x00"), _chunk(b"\x00\x00\x00")])  # odd chunks, whole samples in all
    @example([_config(), _chunk(SILENCE), StreamMessage("garbage", b"\xff\xff")])
    def stream(messages: list[StreamMessage]) -> None:
        tally.tried += 1
        for item in messages:
            tally.extra[item.kind] += 1
        status, answers = _grpc_outcome(tally, lambda: list(raw(encoded(messages), timeout=CALL_S)))
        valid = StreamOracle(messages).valid()
        try:
            if not valid:
                assert status is grpc.StatusCode.INVALID_ARGUMENT, (status, messages)
                return
            assert status is grpc.StatusCode.OK and answers is not None and len(answers) == 1, (
                status,
                messages,
            )
            tally.outcomes["OK"] += 1
            result = speech_pb2.StreamingRecognizeResponse.FromString(answers[0]).result
            audio = sum(
                len(m.message.audio)
                for m in messages
                if isinstance(m.message, speech_pb2.StreamingRecognizeRequest)
            )
            assert result.audio_seconds == pytest.approx(audio / 2 / RATE, abs=1e-3)
            assert len(result.hypotheses) >= 1
        except AssertionError:
            tally.crashes += 1
            raise

    try:
        stream()
    finally:
        tally.write()
    assert tally.clean(), tally.summary()
    assert tally.outcomes["OK"] > 0 and tally.outcomes["INVALID_ARGUMENT"] > 0
    assert cloud.metric("cloud_queue_depth") == 0
