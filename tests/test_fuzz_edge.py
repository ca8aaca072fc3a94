"""Fuzzing the edge's WebSocket protocol (README "WebSocket protocol") with hypothesis: random JSON values
and objects (wrong types for ``type``, ``sample_rate``, ``encoding``), random binary frames (odd lengths,
NaN and huge f32 samples), messages out of order (audio before start, start twice, stop before start,
frames after stop) and frames over the size limit, against a real edge (Moonshine base, no cloud).

The property, message by message: the client gets what the README says, a ``ready``, nothing (audio), or
exactly one ``error`` event with the documented code (partials and finals may come at any time); closing
errors and ``stop`` end with ``end`` and the documented close code, never 1011 and never a connection
dropped without a close frame; every wait is bounded (a hang fails); after each session the connection
is released and ``/health`` stays ok. Each message is followed by a probe (a message of an unknown type),
so the events a message earned are exactly those before the probe's ``unknown_type`` error.

Slow and non-reading clients are tests/test_edge_guards.py's; frames past 16 MiB too.
Counts go to ``.cache/fuzz/edge-*.json``.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soxr
from hypothesis import example, given
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.fuzz import Tally, fuzz_settings, pick
from tests.servers import ThreadedEdge, edge_settings, wait_until
from tests.speech import Clip

pytestmark = pytest.mark.model

MAX_FRAME = 8192  # the fuzzed edge's EDGE_MAX_FRAME_BYTES: frames just over it are cheap to send
MAX_SESSION_BYTES = 10_000  # small, so some audio sessions reach session_limit
RECV_S = 30.0  # an answer slower than this is a hang (finals included, on a loaded 2-core machine)
EVENT_TYPES = frozenset({"ready", "partial", "final", "correction", "end", "error"})
# README: errors that leave the session going, and those that close it.
ERROR_CODES = frozenset(
    {
        "not_started",
        "bad_start",
        "bad_json",
        "bad_message",
        "unknown_type",
        "already_started",
        "bad_audio",
        "frame_too_large",
        "session_limit",
        "session_timeout",
        "start_timeout",
        "idle_timeout",
        "busy",
    }
)
ENCODINGS: dict[str, np.dtype[Any]] = {"pcm_s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
VALID_RATES = [8000, 11025, 16000, 22050, 44100, 48000]


@dataclass(frozen=True)
class Msg:
    data: str | bytes
    label: str
    """What kind of message it is, for the counts."""


@dataclass(frozen=True)
class Expect:
    error: str | None = None
    """The one error event the message earns (None: no error)."""
    ready: bool = False
    close: int | None = None
    """The close code the message ends the session with, after ``end``."""


class Protocol:
    """What README's protocol section says the edge answers, message by message."""

    def __init__(self, max_frame_bytes: int, max_session_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.max_session_bytes = max_session_bytes
        self.encoding: str | None = None
        self.bytes_in = 0

    def expect(self, msg: Msg) -> Expect:
        return self._audio(msg.data) if isinstance(msg.data, bytes) else self._text(msg.data)

    def _text(self, text: str) -> Expect:
        if len(text) > self.max_frame_bytes:
            return Expect("frame_too_large", close=1009)
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return Expect("bad_json")
        if not isinstance(value, dict) or not isinstance(value.get("type"), str):
            return Expect("bad_message")
        if value["type"] == "start":
            if self.encoding is not None:
                return Expect("already_started")
            rate = value.get("sample_rate", 16000)
            encoding = value.get("encoding", "pcm_s16le")
            valid_rate = type(rate) is int and 8000 <= rate <= 48000
            if not valid_rate or not isinstance(encoding, str) or encoding not in ENCODINGS:
                return Expect("bad_start")
            self.encoding = encoding
            return Expect(ready=True)
        if value["type"] == "stop":
            return Expect("not_started") if self.encoding is None else Expect(close=1000)
        return Expect("unknown_type")

    def _audio(self, data: bytes) -> Expect:
        if self.encoding is None:
            return Expect("not_started")  # checked first: even an oversized frame before start
        if len(data) > self.max_frame_bytes:
            return Expect("frame_too_large", close=1009)
        self.bytes_in += len(data)
        if self.bytes_in > self.max_session_bytes:
            return Expect("session_limit", close=1008)
        dtype = ENCODINGS[self.encoding]
        if len(data) % dtype.itemsize:
            return Expect("bad_audio")
        if dtype.kind == "f" and not np.isfinite(np.frombuffer(data, dtype=dtype)).all():
            return Expect("bad_audio")
        return Expect()


# -- strategies -------------------------------------------------------------------------------------

# Any code point, lone surrogates included (json.dumps escapes them, the server's json.loads restores them).
_CHARS = st.characters(exclude_categories=())
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(_CHARS, max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(_CHARS, max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
TYPES = st.sampled_from(["start", "stop", "ready", "START", "", "audio", "end"]) | JSON_VALUES
RATES = st.sampled_from([*VALID_RATES, 7999, 48001, 0, -16000]) | st.integers(-(2**64), 2**64) | JSON_VALUES
ENCODING_NAMES = st.sampled_from([*ENCODINGS, "PCM_S16LE", "s16le", "f64le", "", " f32le"]) | JSON_VALUES
OBJECTS = st.fixed_dictionaries(
    {"type": TYPES}, optional={"sample_rate": RATES, "encoding": ENCODING_NAMES, "x": JSON_VALUES}
)
STARTS = st.fixed_dictionaries(
    {"type": st.just("start")}, optional={"sample_rate": RATES, "encoding": ENCODING_NAMES}
)


def _text(strategy: st.SearchStrategy[Any], label: str) -> st.SearchStrategy[Msg]:
    return strategy.map(lambda value: Msg(json.dumps(value), label))


FUZZED_START = _text(STARTS, "start-fuzzed")
VALID_START = st.builds(
    lambda rate, encoding: Msg(
        json.dumps({"type": "start", "sample_rate": rate, "encoding": encoding}), "start"
    ),
    st.sampled_from(VALID_RATES),
    st.sampled_from(sorted(ENCODINGS)),
)
STOP = st.just(Msg(json.dumps({"type": "stop"}), "stop"))
TEXT_MESSAGES = pick(
    VALID_START,
    STOP,
    FUZZED_START,
    _text(OBJECTS, "object"),
    _text(JSON_VALUES, "json"),
    st.text(max_size=200).map(lambda text: Msg(text, "text")),
    st.integers(1, 3000).map(
        lambda k: Msg(json.dumps({"type": "stop", "pad": "x" * (MAX_FRAME + k)}), "text-big")
    ),
)


def _f32(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def _odd(data: bytes) -> bytes:
    return data if len(data) % 2 else data + b"\x01"


def _rarely(
    common: st.SearchStrategy[Msg], rare: st.SearchStrategy[Msg], one_in: int
) -> st.SearchStrategy[Msg]:
    # sampled_from draws its elements about evenly (integers() favours its bounds).
    return st.sampled_from([False] * (one_in - 1) + [True]).flatmap(
        lambda is_rare: rare if is_rare else common
    )


OVERSIZED = st.integers(1, 4096).map(lambda k: Msg(b"\x01" * (MAX_FRAME + k), "binary-big"))
AUDIO_FRAMES = _rarely(
    pick(
        st.binary(max_size=4000).map(lambda data: Msg(data, "binary")),
        st.binary(max_size=3000).map(lambda data: Msg(_odd(data), "binary-odd")),
        st.integers(1, 2000).map(lambda n: Msg(b"\x00\x00" * n, "silence")),
        st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=600).map(
            lambda values: Msg(_f32(values), "f32")
        ),
        st.lists(st.floats(-1, 1, width=32), min_size=1, max_size=600).map(
            lambda values: Msg(_f32(values), "f32-ok")
        ),
        # Finite, so valid on the wire, but far outside [-1, 1]: what reaches the VAD and the model.
        st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=600).map(
            lambda values: Msg(_f32(values), "f32-loud")
        ),
    ),
    OVERSIZED,
    one_in=12,
)
SEQUENCES = st.tuples(
    st.sampled_from([None, VALID_START, FUZZED_START]),
    st.lists(pick(TEXT_MESSAGES, AUDIO_FRAMES), min_size=1, max_size=10),
).flatmap(lambda t: t[0].map(lambda first: [first, *t[1]]) if t[0] is not None else st.just(t[1]))
# Up to 12 kB of silence first (hypothesis keeps lists short), so some sessions pass MAX_SESSION_BYTES.
AUDIO_SESSIONS = st.tuples(
    VALID_START,
    st.integers(0, 6).map(lambda n: [Msg(b"\x00" * 2000, "silence")] * n),
    st.lists(AUDIO_FRAMES, min_size=1, max_size=20),
).map(lambda t: (t[0], [*t[1], *t[2]]))


@dataclass(frozen=True)
class SpeechPlan:
    rate: int
    encoding: str
    frame_samples: int
    inserts: list[tuple[float, Msg]]
    """Fuzzed frames and where in the speech they go (0..1)."""
    tail_s: float
    """Silence after the speech, before stop."""


SPEECH_PLANS = st.builds(
    SpeechPlan,
    rate=st.sampled_from(VALID_RATES),
    encoding=st.sampled_from(sorted(ENCODINGS)),
    frame_samples=st.integers(160, 2048),
    inserts=st.lists(st.tuples(st.floats(0, 1), AUDIO_FRAMES), max_size=6),
    tail_s=st.sampled_from([0.0, 0.3, 0.8]),
)


def _json(value: Any) -> Msg:
    return Msg(json.dumps(value), "object")


def _start(encoding: str = "pcm_s16le", rate: int = 16000) -> Msg:
    return Msg(json.dumps({"type": "start", "sample_rate": rate, "encoding": encoding}), "start")


def _silence(samples: int) -> Msg:
    return Msg(b"\x00\x00" * samples, "silence")


# -- the session driver -----------------------------------------------------------------------------


class ProtocolBroken(AssertionError):
    """The edge answered against the protocol (or dropped the connection)."""


def _recv(ws: ClientConnection) -> dict[str, Any]:
    raw = ws.recv(timeout=RECV_S)  # TimeoutError: a hang
    if not isinstance(raw, str):
        raise ProtocolBroken(f"a binary frame from the server: {raw[:40]!r}")
    event: dict[str, Any] = json.loads(raw)
    if event.get("type") not in EVENT_TYPES:
        raise ProtocolBroken(f"an undocumented event: {event}")
    if event["type"] == "error" and event.get("code") not in ERROR_CODES:
        raise ProtocolBroken(f"an undocumented error code: {event}")
    return event


def _until_probe(ws: ClientConnection, probe: str) -> list[dict[str, Any]]:
    """The events up to the probe's own ``unknown_type`` error (left out)."""
    events: list[dict[str, Any]] = []
    while True:
        try:
            event = _recv(ws)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            raise ProtocolBroken(f"the server closed mid-session (code {code}) after {events}") from exc
        if event["type"] == "error" and event["code"] == "unknown_type" and f"'{probe}'" in event["message"]:
            return events
        events.append(event)


def _until_closed(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
    events: list[dict[str, Any]] = []
    try:
        while True:
            events.append(_recv(ws))
    except ConnectionClosed as exc:
        return events, exc.rcvd.code if exc.rcvd else None


def _send(ws: ClientConnection, msg: Msg) -> None:
    ws.send(msg.data)


class Session:
    """One fuzzed WebSocket session: sends the messages, checks each answer, counts."""

    def __init__(self, edge: ThreadedEdge, tally: Tally) -> None:
        self.edge = edge
        self.tally = tally
        self.protocol = Protocol(edge.settings.max_frame_bytes, edge.settings.max_session_bytes)
        self.finals = 0

    def run(self, messages: list[Msg]) -> None:
        with connect(self.edge.url, open_timeout=RECV_S, close_timeout=RECV_S, max_size=2**22) as ws:
            for index, msg in enumerate(messages):
                expect = self.protocol.expect(msg)
                self.tally.extra[f"sent:{msg.label}"] += 1
                _send(ws, msg)
                if expect.close is not None:
                    if msg.label == "stop":  # frames after stop: never read, never answered
                        for late in messages[index + 1 : index + 4]:
                            self.tally.extra[f"sent-after-stop:{late.label}"] += 1
                            try:
                                _send(ws, late)
                            except ConnectionClosed:
                                break
                    self._closing(ws, expect)
                    return
                probe = f"fuzz-probe-{index}"
                ws.send(json.dumps({"type": probe}))
                self._check(_until_probe(ws, probe), expect)
            if self.protocol.encoding is None:
                ws.close()  # never started: the client just leaves
                self.tally.outcomes["client-closed"] += 1
            else:
                _send(ws, Msg(json.dumps({"type": "stop"}), "stop"))
                self._closing(ws, Expect(close=1000))

    def _check(self, events: list[dict[str, Any]], expect: Expect) -> None:
        errors = [e["code"] for e in events if e["type"] == "error"]
        readies = [e for e in events if e["type"] == "ready"]
        self.finals += sum(e["type"] == "final" for e in events)
        for e in events:
            self.tally.outcomes[f"error:{e['code']}" if e["type"] == "error" else e["type"]] += 1
        wanted = [expect.error] if expect.error else []
        if errors != wanted or len(readies) != int(expect.ready) or any(e["type"] == "end" for e in events):
            raise ProtocolBroken(f"expected {expect}, got {events}")

    def _closing(self, ws: ClientConnection, expect: Expect) -> None:
        events, code = _until_closed(ws)
        self.tally.outcomes[f"close:{code}"] += 1
        if code is None or code == 1011:
            raise ProtocolBroken(f"closed with {code} (expected {expect.close}) after {events}")
        if not events or events[-1]["type"] != "end":
            raise ProtocolBroken(f"no end event before the close: {events}")
        self._check(events[:-1], Expect(expect.error, expect.ready))
        self.tally.outcomes["end"] += 1
        if events[-1]["utterances"] != self.finals:
            raise ProtocolBroken(f"{self.finals} finals but end says {events[-1]}")
        if code != expect.close:
            raise ProtocolBroken(f"close code {code}, expected {expect.close}")


def _health(edge: ThreadedEdge) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{edge.http}/health", timeout=10).json()
    return body


def _fuzz_one(edge: ThreadedEdge, tally: Tally, messages: list[Msg]) -> None:
    tally.tried += 1
    tally.extra["messages"] += len(messages)
    try:
        with tally.timed():
            Session(edge, tally).run(messages)
    except TimeoutError:
        tally.hangs += 1
        raise
    except ProtocolBroken:
        tally.crashes += 1
        raise
    except ConnectionClosed as exc:  # on send: the server went away where the protocol says it stays
        tally.crashes += 1
        raise ProtocolBroken(f"connection closed under the client: {exc}") from exc
    if not wait_until(lambda: _health(edge)["connections"] == 0, timeout=RECV_S):
        tally.hangs += 1
        raise AssertionError(f"the connection was not released: {_health(edge)}")


@pytest.fixture(scope="module")
def fuzzed_edge(edge_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedEdge]:
    tmp: Path = tmp_path_factory.mktemp("fuzz-edge")
    settings = edge_settings(tmp, None, max_frame_bytes=MAX_FRAME, max_session_bytes=MAX_SESSION_BYTES)
    edge = ThreadedEdge(settings, edge_model).start()
    yield edge
    edge.stop()


@pytest.fixture(scope="module")
def speech_edge(edge_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedEdge]:
    """The same limits on frames, none that matters on session bytes: room for a spoken sentence."""
    tmp: Path = tmp_path_factory.mktemp("fuzz-speech")
    edge = ThreadedEdge(edge_settings(tmp, None, max_frame_bytes=MAX_FRAME), edge_model).start()
    yield edge
    edge.stop()


@pytest.fixture(scope="module")
def speech(real_clips: list[Clip]) -> np.ndarray:
    """A short real sentence ("seven of clubs"-like, 1.4-2.5 s) at 16 kHz."""
    clip = next(c for c in real_clips if c.kind == "cards" and 1.4 < c.duration < 2.5)
    return clip.samples()


def _speech_frames(speech: np.ndarray, plan: SpeechPlan) -> list[Msg]:
    """The sentence at the plan's rate and encoding, after 0.3 s of silence, cut into frames, with the
    fuzzed frames put in between."""
    audio = soxr.resample(speech, 16000, plan.rate) if plan.rate != 16000 else speech
    silence = np.zeros(int(0.3 * plan.rate), dtype=np.float32)
    tail = np.zeros(int(plan.tail_s * plan.rate), dtype=np.float32)
    audio = np.concatenate([silence, audio, tail])
    if plan.encoding == "f32le":
        data = audio.astype("<f4").tobytes()
    else:
        data = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = plan.frame_samples * ENCODINGS[plan.encoding].itemsize
    frames = [Msg(data[i : i + step], "speech") for i in range(0, len(data), step)]
    for position, msg in sorted(plan.inserts, key=lambda insert: insert[0], reverse=True):
        frames.insert(round(position * len(frames)), msg)
    start = {"type": "start", "sample_rate": plan.rate, "encoding": plan.encoding}
    return [Msg(json.dumps(start), "start"), *frames]


def _after(edge: ThreadedEdge, tally: Tally) -> None:
    tally.write()
    health = _health(edge)
    assert health["status"] == "ok"
    assert (health["connections"], health["sessions"]) == (0, 0)
    assert tally.clean(), tally.summary()
    assert tally.tried > 0


def test_random_message_sequences_get_documented_answers(fuzzed_edge: ThreadedEdge) -> None:
    tally = Tally("edge-protocol", "websocket sessions")

    @fuzz_settings(80)
    @given(messages=SEQUENCES)
    # The named cases run every time, before the drawn ones.
    @example([_silence(100)])  # audio before start
    @example([_json({"type": "stop"})])  # stop before start
    @example([_start(), _start()])  # start twice
    @example(
        [_start(), _json({"type": "stop"}), _silence(100), _start(), _json({"type": "stop"})]
    )  # after stop
    @example([_start("f32le"), Msg(_f32([0.0, math.nan, 0.0]), "f32")])  # NaN samples
    @example([_start("f32le"), Msg(_f32([0.0, 3e38, -3e38]), "f32-loud")])  # finite, far out of range
    @example([_start(), Msg(b"\x00" * 101, "binary-odd")])  # half a sample
    @example([_start(), Msg(b"\x00" * (MAX_FRAME + 2), "binary-big")])
    @example([Msg("x" * (MAX_FRAME + 1), "text-big")])
    @example(
        [_json({"type": 5}), _json({"type": "audio"}), _json(["start"]), Msg("{", "text"), Msg("", "text")]
    )
    @example(
        [_json({"type": "start", "sample_rate": "16000"}), _json({"type": "start", "sample_rate": 16000.0})]
    )
    @example([_json({"type": "start", "sample_rate": True}), _json({"type": "start", "encoding": ["f32le"]})])
    @example([_json({"type": "start", "sample_rate": 2**64}), _json({"type": "start", "encoding": "f64le"})])
    def session(messages: list[Msg]) -> None:
        _fuzz_one(fuzzed_edge, tally, messages)

    try:
        session()
    finally:
        _after(fuzzed_edge, tally)
    # The fuzz reached the documented answers, not only the easy ones.
    codes = {
        "bad_json",
        "bad_message",
        "bad_start",
        "not_started",
        "already_started",
        "bad_audio",
        "unknown_type",
    }
    assert {f"error:{code}" for code in codes} | {"ready", "close:1000", "close:1009"} <= set(tally.outcomes)


def test_random_audio_frames_in_started_sessions(fuzzed_edge: ThreadedEdge) -> None:
    tally = Tally("edge-audio", "websocket sessions")

    @fuzz_settings(40)
    @given(session=AUDIO_SESSIONS)
    @example((_start(), [_silence(1000)] * 6))  # past MAX_SESSION_BYTES
    @example((_start("f32le", 48000), [Msg(_f32([math.inf] * 4), "f32"), Msg(b"\x00" * 6, "binary-odd")]))
    def stream(session: tuple[Msg, list[Msg]]) -> None:
        start, frames = session
        _fuzz_one(fuzzed_edge, tally, [start, *frames])

    try:
        stream()
    finally:
        _after(fuzzed_edge, tally)
    assert {"error:bad_audio", "error:session_limit", "close:1000", "close:1008"} <= set(tally.outcomes)


def test_speech_with_fuzzed_frames_in_between(speech_edge: ThreadedEdge, speech: np.ndarray) -> None:
    """A real sentence at any supported rate and encoding, with malformed, oversized and random frames
    among its frames: the bad ones are refused one by one, the utterance still gets its final."""
    tally = Tally("edge-speech", "websocket sessions")

    @fuzz_settings(12)
    @given(plan=SPEECH_PLANS)
    def stream(plan: SpeechPlan) -> None:
        _fuzz_one(speech_edge, tally, _speech_frames(speech, plan))

    try:
        stream()
    finally:
        _after(speech_edge, tally)
    assert tally.outcomes["final"] > 0
