"""``/v1/realtime`` driven by the real ``openai`` client, unmodified, against the real edge model.

The client connects as it would to OpenAI (``websocket_base_url`` pointing at the agent), configures a
transcription session, streams speech in real time as a microphone would (then silence, never
committing), and receives text deltas before the speech is over and the completed transcript.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr  # type: ignore[import-untyped, unused-ignore]
from openai import OpenAI
from websockets.sync.client import connect

from tests.servers import ThreadedEdge, edge_settings
from tests.speech import Clip, wer

pytestmark = pytest.mark.model
RATE = 24000
CHUNK_S = 0.1
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"


@pytest.fixture()
def edge(edge_model: Any, tmp_path: Path) -> Iterator[ThreadedEdge]:
    server = ThreadedEdge(edge_settings(tmp_path, None), edge_model).start()
    yield server
    server.stop()


def _client(edge: ThreadedEdge) -> OpenAI:
    return OpenAI(api_key="unused", websocket_base_url=f"ws://127.0.0.1:{edge.port}/v1", max_retries=0)


def _pcm24k(clip: Clip) -> np.ndarray:
    return np.asarray(soxr.resample(clip.samples(), 16000, RATE), np.float32)


def _b64(audio: np.ndarray) -> str:
    return base64.b64encode((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()).decode()


def _transcription_session(**audio_input: Any) -> dict[str, Any]:
    return {"type": "transcription", "audio": {"input": audio_input}}


def _until(conn: Any, kind: str, seen: list[tuple[float, Any]], timeout: float = 120) -> Any:
    """Receive events (kept in ``seen`` with their arrival times) until one of ``kind``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = conn.recv()
        seen.append((time.monotonic(), event))
        if event.type == kind:
            return event
    raise AssertionError(f"no {kind} within {timeout} s; got {[e.type for _, e in seen]}")


def test_the_openai_client_gets_deltas_during_speech_then_the_transcript(
    edge: ThreadedEdge, tts_clips: list[Clip]
) -> None:
    clip = max(tts_clips, key=lambda c: c.duration)  # the longest sentence: room for pilots
    audio = _pcm24k(clip)
    step = int(RATE * CHUNK_S)
    speech_over = threading.Event()
    speech_over_at: list[float] = []
    done = threading.Event()
    seen: list[tuple[float, Any]] = []
    with _client(edge).realtime.connect(model="edge") as conn:
        assert conn.recv().type == "session.created"
        conn.session.update(
            session=_transcription_session(
                format={"type": "audio/pcm", "rate": RATE},
                turn_detection={"type": "server_vad", "silence_duration_ms": 500},
                transcription={"model": "edge", "language": "en"},
            )
        )
        updated = conn.recv()
        assert updated.type == "session.updated"
        assert updated.session.audio.input.turn_detection.silence_duration_ms == 500

        def microphone() -> None:
            # Real-time pacing: the speech, then silence (an open microphone) until the transcript is in.
            started, sent = time.monotonic(), 0
            for i in range(0, len(audio), step):
                conn.input_audio_buffer.append(audio=_b64(audio[i : i + step]))
                sent += 1
                time.sleep(max(0.0, started + sent * CHUNK_S - time.monotonic()))
            speech_over_at.append(time.monotonic())
            speech_over.set()
            silence = np.zeros(step, np.float32)
            for _ in range(600):  # a minute at most
                if done.is_set():
                    return
                conn.input_audio_buffer.append(audio=_b64(silence))
                time.sleep(CHUNK_S)

        sender = threading.Thread(target=microphone, daemon=True)
        sender.start()
        try:
            completed = _until(conn, COMPLETED, seen)
        finally:
            done.set()
            sender.join(10)
    kinds = [e.type for _, e in seen]
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("input_audio_buffer.speech_stopped")
    assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index("input_audio_buffer.committed")
    committed = seen[kinds.index("input_audio_buffer.committed")][1]
    assert committed.item_id == completed.item_id
    assert wer([clip.text], [completed.transcript]) <= 0.15, completed.transcript
    assert completed.usage.type == "duration"
    assert 2.0 < completed.usage.seconds < clip.duration + 1.0
    deltas = [(at, e.delta) for at, e in seen if e.type == DELTA]
    # Pilots made text arrive while the speaker was still talking...
    assert speech_over.is_set() and deltas and deltas[0][0] < speech_over_at[0], kinds
    # ... and deltas only append: together they are the transcript (or its start, if a pilot's words
    # were revised by the final).
    joined = "".join(text for _, text in deltas)
    assert completed.transcript.startswith(joined), (joined, completed.transcript)
    assert wer([clip.text], [joined]) <= 0.15


def test_commits_without_turn_detection_and_logprobs(edge: ThreadedEdge, tts_clips: list[Clip]) -> None:
    clips = tts_clips[:2]
    with _client(edge).realtime.connect(model="edge") as conn:
        assert conn.recv().type == "session.created"
        conn.session.update(
            session={
                **_transcription_session(turn_detection=None),
                "include": ["item.input_audio_transcription.logprobs"],
            }
        )
        assert conn.recv().session.audio.input.turn_detection is None
        transcripts = []
        for clip in clips:  # appended at once, faster than real time, each then committed
            conn.input_audio_buffer.append(audio=_b64(_pcm24k(clip)))
            conn.input_audio_buffer.commit()
            seen: list[tuple[float, Any]] = []
            completed = _until(conn, COMPLETED, seen)
            kinds = [e.type for _, e in seen]
            assert "input_audio_buffer.committed" in kinds
            assert "input_audio_buffer.speech_started" not in kinds  # no server VAD events when off
            assert completed.logprobs and all(p.logprob <= 0 for p in completed.logprobs)
            transcripts.append(completed.transcript)
        assert wer([c.text for c in clips], transcripts) <= 0.15, transcripts


def test_bad_events_get_the_apis_errors_and_the_session_goes_on(
    edge: ThreadedEdge, tts_clips: list[Clip]
) -> None:
    with _client(edge).realtime.connect(model="edge") as conn:
        assert conn.recv().type == "session.created"
        conn.send({"type": "response.create", "event_id": "evt_1"})  # type: ignore[typeddict-item]
        error = conn.recv()
        assert (error.type, error.error.type, error.error.code, error.error.event_id) == (
            "error",
            "invalid_request_error",
            "invalid_value",
            "evt_1",
        )
        conn.session.update(session=_transcription_session(format={"type": "audio/wav"}))  # type: ignore[typeddict-item]
        error = conn.recv()
        assert error.error.param == "session.audio.input.format.type"
        conn.input_audio_buffer.append(audio="not base64!")
        assert conn.recv().error.param == "audio"
        conn.send_raw("{not json")  # type: ignore[attr-defined]
        assert conn.recv().error.code == "bad_json"
        conn.input_audio_buffer.commit()
        assert conn.recv().error.code == "input_audio_buffer_commit_empty"
        # Speech appended and then cleared is gone: no transcript, and nothing left to commit.
        conn.input_audio_buffer.append(audio=_b64(_pcm24k(tts_clips[0])[: RATE * 2]))
        conn.input_audio_buffer.clear()
        seen: list[tuple[float, Any]] = []
        _until(conn, "input_audio_buffer.cleared", seen, timeout=30)
        conn.input_audio_buffer.commit()
        error = _until(conn, "error", seen, timeout=30)
        assert error.error.code == "input_audio_buffer_commit_empty"
        assert COMPLETED not in [e.type for _, e in seen]
        # After all that, the session still transcribes.
        conn.session.update(session=_transcription_session(turn_detection=None))
        conn.input_audio_buffer.append(audio=_b64(_pcm24k(tts_clips[1])))
        conn.input_audio_buffer.commit()
        completed = _until(conn, COMPLETED, seen)
        assert wer([tts_clips[1].text], [completed.transcript]) <= 0.15


def test_binary_frames_and_g711_audio_in_the_beta_dialect(edge: ThreadedEdge, tts_clips: list[Clip]) -> None:
    clip = tts_clips[2]
    with connect(f"ws://127.0.0.1:{edge.port}/v1/realtime", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        ws.send(b"\x00\x01")
        error = json.loads(ws.recv(timeout=10))
        assert (error["type"], error["error"]["code"]) == ("error", "invalid_binary")
        # The beta API's dialect, as older Realtime clients speak it.
        update = {"input_audio_format": "g711_ulaw", "turn_detection": None}
        ws.send(json.dumps({"type": "transcription_session.update", "session": update}))
        updated = json.loads(ws.recv(timeout=10))
        assert updated["type"] == "transcription_session.updated"
        assert (updated["session"]["input_audio_format"], updated["session"]["turn_detection"]) == (
            "g711_ulaw",
            None,
        )
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": _ulaw_b64(clip.samples())}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        while (event := json.loads(ws.recv(timeout=120)))["type"] != COMPLETED:
            pass
        assert wer([clip.text], [event["transcript"]]) <= 0.2, event["transcript"]


def _ulaw_b64(audio16k: np.ndarray) -> str:
    """8 kHz G.711 mu-law, encoded here by the standard's formula (the server decodes it)."""
    x = np.clip(np.asarray(soxr.resample(audio16k, 16000, 8000)) * 32767, -32635, 32635).astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.abs(x) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return base64.b64encode((~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()).decode()
