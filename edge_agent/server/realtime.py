"""``/v1/realtime``: OpenAI Realtime API transcription sessions, served by the edge's own sessions.

A client of OpenAI's Realtime API (``client.realtime.connect(...)`` with ``websocket_base_url`` pointing
here) gets the same pipeline as ``/v1/stream``: VAD turns, pilots, offramps, escalation. The protocol
differs only at the edges, so this is a :class:`StreamConnection` that reads the API's client events
and writes the API's server events (shapes in ``realtime_protocol``):

* ``session.update`` sets the format (``audio/pcm`` 24 kHz, ``audio/pcmu``, ``audio/pcma``), turn
  detection (``server_vad``, ``semantic_vad``, or null for commits only), and transcription options;
  ``keywords`` and the phrases of ``prompt`` are the session's hotwords. Changes apply from the next
  audio: the running session is finished first, its transcripts still delivered.
* ``input_audio_buffer.append`` / ``commit`` / ``clear``; server events ``speech_started``,
  ``speech_stopped``, ``committed``, ``cleared``; transcription ``delta`` (from pilots, words two pilots
  agree on) and ``completed`` (the final, with an ``edge`` object: confidence, source, escalation,
  latency); a cloud answer that arrives after ``completed`` is the extension event
  ``edge.transcription.correction``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
from typing import Any

from fastapi import WebSocket

from edge_agent.recognizer import Recognizer
from edge_agent.server import realtime_protocol as rp
from edge_agent.server.app import StreamConnection, quote
from edge_agent.session import Session
from edge_agent.settings import EdgeSettings

# The API allows appends up to 15 MiB; the WebSocket layer's ceiling is 16 MiB.
MAX_EVENT_CHARS = 15 * 1024 * 1024
_SERVER_ERRORS = {"internal", "decode_failed", "final_failed"}
CORRECTION = "edge.transcription.correction"


class RealtimeConnection(StreamConnection):
    """One Realtime API client around one edge Session (replaced when the session is reconfigured)."""

    def __init__(self, ws: WebSocket, rec: Recognizer, settings: EdgeSettings) -> None:
        super().__init__(ws, rec, settings)
        self.max_text_chars = MAX_EVENT_CHARS
        self.config = rp.TranscriptionConfig()
        self._applied: rp.TranscriptionConfig | None = None
        self._items: dict[str, rp.ItemText] = {}
        self._last_item: str | None = None
        self._client_event: str | None = None

    @staticmethod
    def error_event(code: str, message: str) -> dict[str, Any]:
        kind = "server_error" if code in _SERVER_ERRORS else "invalid_request_error"
        return rp.error(code, message, kind=kind)

    async def run(self) -> None:
        self._open()
        self._send({"type": "session.created", "session": self._session_object()})
        await super().run()

    # -- client events ---------------------------------------------------------------------

    async def _on_audio(self, data: bytes) -> None:
        """Binary frames: not part of the API (audio comes base64 in ``input_audio_buffer.append``)."""
        self._error(
            "invalid_binary", "binary frames are not part of this API; send input_audio_buffer.append"
        )

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        client_id = msg.get("event_id")
        self._client_event = client_id if isinstance(client_id, str) else None
        if kind == "session.update":
            self._update(msg.get("session"))
        elif kind == "transcription_session.update":  # the beta API's name and shape
            self._update(msg.get("session"), beta=True)
        elif kind == "input_audio_buffer.append":
            await self._append(msg.get("audio"))
        elif kind == "input_audio_buffer.commit":
            await self._commit()
        elif kind == "input_audio_buffer.clear":
            session = await self._current()
            session.clear()
            self._send({"type": "input_audio_buffer.cleared"})
        else:
            self._fail(
                "invalid_value",
                f"Invalid value for 'type': {quote(kind)}. This server accepts session.update (or the beta "
                "transcription_session.update), input_audio_buffer.append, input_audio_buffer.commit and "
                "input_audio_buffer.clear.",
                "type",
            )

    def _update(self, session: object, beta: bool = False) -> None:
        try:
            self.config = (rp.apply_beta_update if beta else rp.apply_update)(self.config, session)
        except rp.ConfigError as exc:
            self._fail("invalid_value", str(exc), exc.param)
            return
        if beta:
            shown = rp.beta_session(
                self.config, self.rec.settings.min_silence_ms, self.rec.settings.vad_threshold
            )
            self._send({"type": "transcription_session.updated", "session": shown})
        else:
            self._send({"type": "session.updated", "session": self._session_object()})

    async def _append(self, audio: object) -> None:
        if not isinstance(audio, str):
            self._fail("invalid_value", "Invalid type for 'audio': expected a base64 string.", "audio")
            return
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            self._fail("invalid_value", "Invalid 'audio': not valid base64.", "audio")
            return
        await self._current()
        if self.config.format != "audio/pcm":
            data = rp.g711_to_pcm16(data, self.config.format)
        if len(data) % 2:
            self._fail("invalid_value", "Invalid 'audio': 16-bit PCM needs an even number of bytes.", "audio")
            return
        # The base class's per-frame path: limits, byte count, feed. Chunks keep each step short.
        step = self.settings.max_frame_bytes - self.settings.max_frame_bytes % 2
        for offset in range(0, len(data), step):
            await super()._on_audio(data[offset : offset + step])
            if self.closing:
                return
            await asyncio.sleep(0)

    async def _commit(self) -> None:
        session = await self._current()
        if session.commit() is None:
            self._fail(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: no speech in the buffer since the last commit.",
                None,
            )

    # -- sessions --------------------------------------------------------------------------

    def _open(self) -> None:
        config = self.config
        session = Session(
            self.rec,
            config.rate,
            "pcm_s16le",
            turn_detection=config.turn_detection,
            vad_events=True,
            min_silence_ms=config.silence_ms,
            hotwords=config.hotwords,
        )
        self.session, self._applied = session, config
        self.rec.sessions[session.id] = session
        self._pump_task = asyncio.create_task(self._pump(session), name="realtime-pump")

    async def _current(self) -> Session:
        """The session for new audio: reconfigured ones are finished (their transcripts delivered) and
        replaced."""
        assert self.session is not None
        if self._session_fields(self.config) == self._session_fields(self._applied):
            return self.session
        old, pump = self.session, self._pump_task
        await old.finish()
        await asyncio.sleep(0)  # let the pump move the last events to the send queue
        while not old.events.empty():
            self._put(old.events.get_nowait())
        if pump is not None:
            pump.cancel()
        self.rec.sessions.pop(old.id, None)
        await old.close()
        self._open()
        return self.session

    @staticmethod
    def _session_fields(config: rp.TranscriptionConfig | None) -> object:
        """What a Session is built from (the rest applies without a new one)."""
        if config is None:
            return None
        return (config.rate, config.turn_detection, config.silence_ms, config.hotwords)

    def _session_object(self) -> dict[str, Any]:
        return self.config.session(self.rec.settings.min_silence_ms, self.rec.settings.vad_threshold)

    # -- server events ---------------------------------------------------------------------

    def _send(self, event: dict[str, Any]) -> None:
        StreamConnection._put(self, {"event_id": rp.event_id(), **event})

    def _fail(self, code: str, message: str, param: str | None) -> None:
        self.rec.metrics.errors.labels("realtime_" + code).inc()
        StreamConnection._put(self, rp.error(code, message, param=param, client_event_id=self._client_event))

    def _put(self, event: dict[str, Any]) -> None:
        """Events of the edge's protocol (``edge_agent.events``), said in the API's terms."""
        kind = event.get("type")
        if kind == "error":
            if "error" not in event:  # the session's own error events
                event = self.error_event(str(event.get("code")), str(event.get("message")))
            StreamConnection._put(self, event)
        elif kind == "speech_started":
            if self.config.turn_detection:
                item = self._item_id(event["utterance_id"])
                self._send({"type": "input_audio_buffer.speech_started", "item_id": item,
                            "audio_start_ms": round(1000 * event["start"])})  # fmt: skip
        elif kind == "speech_stopped":
            item = self._item_id(event["utterance_id"])
            if self.config.turn_detection and event["reason"] != "commit":
                self._send({"type": "input_audio_buffer.speech_stopped", "item_id": item,
                            "audio_end_ms": round(1000 * event["end"])})  # fmt: skip
            self._send(
                {"type": "input_audio_buffer.committed", "item_id": item, "previous_item_id": self._last_item}
            )
            self._last_item = item
        elif kind == "partial":
            item = self._item_id(event["utterance_id"])
            delta = rp.pilot_delta(self._items.setdefault(item, rp.ItemText()), event["text"])
            if delta:
                self._send(self._delta(item, delta))
        elif kind == "final":
            self._completed(event)
        elif kind == "correction":
            self._send({"type": CORRECTION, "item_id": self._item_id(event["utterance_id"]),
                        "transcript": event["text"], "source": event["source"],
                        "confidence": event["confidence"]})  # fmt: skip
        # ``ready`` and ``end`` have no counterpart in the API.

    def _completed(self, final: dict[str, Any]) -> None:
        item = self._item_id(final["utterance_id"])
        text = final["text"]
        rest = rp.final_delta(self._items.pop(item, rp.ItemText()), text)
        if rest:
            self._send(self._delta(item, rest))
        event: dict[str, Any] = {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": item,
            "content_index": 0,
            "transcript": text,
            "usage": {"type": "duration", "seconds": round(final["end"] - final["start"], 3)},
            "edge": {
                key: final[key]
                for key in ("confidence", "source", "escalated", "reason", "cloud_pending", "latency_ms")
            },
        }
        if self.config.include_logprobs:
            event["logprobs"] = [_logprob(w["word"], w["confidence"]) for w in final["words"]]
        self._send(event)

    def _delta(self, item: str, text: str) -> dict[str, Any]:
        return {"type": "conversation.item.input_audio_transcription.delta", "item_id": item,
                "content_index": 0, "delta": text}  # fmt: skip

    @staticmethod
    def _item_id(utterance_id: str) -> str:
        return f"item_{utterance_id}"


def _logprob(word: str, confidence: float) -> dict[str, Any]:
    """A word's confidence as the API's logprob entry (per word: the edge has no byte-level tokens)."""
    return {"token": word, "logprob": math.log(max(confidence, 1e-6)), "bytes": list(word.encode())}
