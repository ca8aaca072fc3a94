"""The edge agent's HTTP + WebSocket server: ``/v1/stream``, ``/health``, ``/metrics``, ``/``."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.websockets import WebSocketState

from edge_agent import __version__, events
from edge_agent.asr.hotwords import validate_hotwords
from edge_agent.audio.convert import AudioFormatError
from edge_agent.recognizer import Recognizer
from edge_agent.server import page
from edge_agent.session import Session
from edge_agent.settings import EdgeSettings

log = logging.getLogger(__name__)

# WebSocket close codes (RFC 6455 and the registered 4xxx-free ones we use).
NORMAL, POLICY, TOO_BIG, TRY_AGAIN, UNSUPPORTED = 1000, 1008, 1009, 1013, 1003
_EVENT_QUEUE = 1000
# Error messages quote what the client sent; never more than this of it (a 100 kB "type" must not come
# back in every error event).
_QUOTE_CHARS = 60
_MESSAGE_CHARS = 300


def create_app(settings: EdgeSettings | None = None, recognizer: Recognizer | None = None) -> FastAPI:
    """Build the app. Without ``recognizer`` the lifespan loads one (and the cloud link) itself."""
    settings = settings or (recognizer.settings if recognizer else EdgeSettings())
    owns = recognizer is None
    state: dict[str, Recognizer] = {}
    if recognizer is not None:
        state["rec"] = recognizer
    # Connections, not started sessions, count against the limit: ten clients that connect first and
    # start later must not all get in.
    connections = [0]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owns:
            from edge_agent.escalation.manager import build_escalator

            rec = await asyncio.to_thread(Recognizer, settings)
            rec.escalator = build_escalator(settings, rec)
            await rec.start()
            state["rec"] = rec
        try:
            yield
        finally:
            if owns:
                await state["rec"].stop()

    app = FastAPI(title="edge-cloud-asr edge agent", version=__version__, lifespan=lifespan)
    app.include_router(page.router)

    @app.get("/health")
    async def health() -> JSONResponse:
        rec = state.get("rec")
        if rec is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        escalator = rec.escalator
        return JSONResponse(
            {
                "status": "ok",
                "model": rec.model.name,
                "sessions": len(rec.sessions),
                "connections": connections[0],
                "cloud": escalator.status() if escalator is not None else "disabled",
                "queued_escalations": int(escalator.queue_depth) if escalator is not None else 0,
                "escalation_threshold": rec.policy.threshold,
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        rec = state.get("rec")
        if rec is None:
            return Response("loading\n", status_code=503)
        return Response(generate_latest(rec.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def serve(ws: WebSocket, connection: type[StreamConnection]) -> None:
        """Admit a WebSocket client (token, model loaded, connection limit), then serve it."""
        rec = state.get("rec")
        await ws.accept()
        if not _token_ok(ws, settings):
            await _refuse(ws, connection, "unauthorized", "missing or invalid token", POLICY)
            return
        if rec is None:
            await _refuse(ws, connection, "loading", "the model is still loading", TRY_AGAIN)
            return
        if connections[0] >= settings.max_sessions:
            rec.metrics.errors.labels("busy").inc()
            limit = f"too many sessions (limit {settings.max_sessions})"
            await _refuse(ws, connection, "busy", limit, TRY_AGAIN)
            return
        connections[0] += 1
        try:
            await connection(ws, rec, settings).run()
        finally:
            connections[0] -= 1

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        await serve(ws, StreamConnection)

    @app.websocket("/v1/realtime")
    async def realtime(ws: WebSocket) -> None:
        from edge_agent.server.realtime import RealtimeConnection

        await serve(ws, RealtimeConnection)

    return app


def _token_ok(ws: WebSocket, settings: EdgeSettings) -> bool:
    """The optional WebSocket token, from ``Authorization: Bearer`` or ``?token=`` (browsers cannot set
    headers on WebSockets). Compared in constant time; never logged."""
    if settings.ws_token is None:
        return True
    header = ws.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    offered = value.strip() if scheme.lower() == "bearer" else ws.query_params.get("token", "")
    return hmac.compare_digest(offered.encode(), settings.ws_token.get_secret_value().encode())


def quote(value: object) -> str:
    """``repr`` of something a client sent, cut to a bounded length."""
    text = repr(value)
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 3] + "..."


async def _refuse(
    ws: WebSocket, connection: type[StreamConnection], code: str, message: str, close_code: int
) -> None:
    with contextlib.suppress(Exception):
        await ws.send_json(connection.error_event(code, message))
        await ws.close(close_code, message[:120])


class StreamConnection:
    """One WebSocket client: a receiving loop and a sending task around one Session (STYLE 7)."""

    def __init__(self, ws: WebSocket, rec: Recognizer, settings: EdgeSettings) -> None:
        self.ws = ws
        self.rec = rec
        self.settings = settings
        self.session: Session | None = None
        self.out: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=_EVENT_QUEUE)
        self.bytes_in = 0
        self.started = time.monotonic()
        self.closing = False
        self._pump_task: asyncio.Task[None] | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._close_args = (NORMAL, "bye")
        self._abandoned = False
        self.max_text_chars = settings.max_frame_bytes

    @staticmethod
    def error_event(code: str, message: str) -> dict[str, Any]:
        """The protocol's error event (a subclass speaking another protocol shapes its own)."""
        return events.error(code, message)

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop(), name="ws-send")
        receiver = self._receiver = asyncio.create_task(self._receive_loop(), name="ws-receive")
        try:
            done, _ = await asyncio.wait({receiver}, timeout=self.settings.max_session_s)
            if not done:
                self._error("session_timeout", f"session longer than {self.settings.max_session_s:g} s")
                receiver.cancel()
                await self._finish_and_close(POLICY, "session time limit")
            elif receiver.cancelled():
                pass  # a client that stopped reading (see _abandon): nothing more can reach it
            elif (exc := receiver.exception()) is not None and not isinstance(exc, WebSocketDisconnect):
                log.error("session failed", exc_info=exc)
                self._error("internal", "internal error; the session is closed")
                await self._close(1011, "internal error")
        finally:
            receiver.cancel()
            if self._pump_task is not None:
                self._pump_task.cancel()
            if self.session is not None:
                self.rec.sessions.pop(self.session.id, None)
                await self.session.close()
            # Never wait on a full queue: a client that does not read would hold this task forever.
            with contextlib.suppress(asyncio.QueueFull):
                self.out.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(sender, timeout=self.settings.send_timeout_s)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    async def _receive_loop(self) -> None:
        while not self.closing:
            started = self.session is not None
            wait_s = self.settings.idle_timeout_s if started else self.settings.start_timeout_s
            try:
                message = await asyncio.wait_for(self.ws.receive(), timeout=wait_s)
            except TimeoutError:
                if started:
                    self._error("idle_timeout", f"nothing received for {wait_s:g} s")
                else:
                    self._error("start_timeout", f"no start message within {wait_s:g} s")
                await self._finish_and_close(POLICY, "idle timeout" if started else "start timeout")
                return
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            if message.get("bytes") is not None:
                await self._on_audio(message["bytes"])
            elif message.get("text") is not None:
                await self._on_text(message["text"])

    async def _on_text(self, text: str) -> None:
        msg = await self._parse(text)
        if msg is not None:
            await self._dispatch(msg)

    async def _parse(self, text: str) -> dict[str, Any] | None:
        """A client's text frame as a JSON object with a string ``type``; None (the client told) if not."""
        if len(text) > self.max_text_chars:
            self._error(
                "frame_too_large", f"text frame of {len(text)} characters; limit {self.max_text_chars}"
            )
            await self._finish_and_close(TOO_BIG, "frame too large")
            return None
        try:
            msg = json.loads(text)
        except json.JSONDecodeError as exc:
            self._error("bad_json", f"text frames must be JSON: {exc.msg}")
            return None
        except RecursionError:
            self._error("bad_json", "text frames must be JSON of reasonable depth: too deeply nested")
            return None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            self._error("bad_message", 'messages are JSON objects with a "type"')
            return None
        return msg

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "start":
            self._start(msg)
        elif kind == "stop":
            if self.session is None:
                self._error("not_started", "stop before start")
                return
            await self._finish_and_close(NORMAL, "done")
        else:
            self._error("unknown_type", f"unknown message type {quote(kind)}; expected start or stop")

    def _start(self, msg: dict[str, Any]) -> None:
        if self.session is not None:
            self._error("already_started", "this session has started already")
            return
        rate = msg.get("sample_rate", 16000)
        encoding = msg.get("encoding", "pcm_s16le")
        if not isinstance(rate, int) or isinstance(rate, bool):
            self._error("bad_start", "sample_rate must be an integer (8000-48000)")
            return
        if not isinstance(encoding, str):
            self._error("bad_start", "encoding must be pcm_s16le or f32le")
            return
        try:
            hotwords = validate_hotwords(msg.get("hotwords", []))
        except ValueError as exc:
            self._error("bad_start", str(exc))
            return
        try:
            self.session = Session(self.rec, rate, encoding, hotwords=hotwords)
        except AudioFormatError as exc:
            self._error("bad_start", str(exc))
            return
        self.rec.sessions[self.session.id] = self.session
        self._pump_task = asyncio.create_task(self._pump(self.session), name="ws-pump")
        self._put(events.ready(self.session.id, rate, encoding))

    async def _pump(self, session: Session) -> None:
        while True:
            event = await session.events.get()
            self._put(event)

    async def _on_audio(self, data: bytes) -> None:
        if self.session is None:
            self._error("not_started", f"{len(data)} bytes of audio before start were dropped")
            return
        if len(data) > self.settings.max_frame_bytes:
            self._error(
                "frame_too_large", f"frame of {len(data)} bytes; limit {self.settings.max_frame_bytes}"
            )
            await self._finish_and_close(TOO_BIG, "frame too large")
            return
        self.bytes_in += len(data)
        if self.bytes_in > self.settings.max_session_bytes:
            self._error("session_limit", f"more than {self.settings.max_session_bytes} bytes of audio")
            await self._finish_and_close(POLICY, "session byte limit")
            return
        try:
            self.session.feed(data)
        except AudioFormatError as exc:
            self._error("bad_audio", f"frame dropped: {exc}")

    async def _finish_and_close(self, code: int, reason: str) -> None:
        self.closing = True
        count = 0
        if self.session is not None:
            count = await self.session.finish()
            await asyncio.sleep(0)  # let the pump move the last finals to the send queue
            while not self.session.events.empty():
                self._put(self.session.events.get_nowait())
        self._put(events.end(count))
        await self._close(code, reason)

    async def _close(self, code: int, reason: str) -> None:
        self.closing = True
        self._close_args = (code, reason)
        try:
            self.out.put_nowait(None)  # the sender closes after draining
        except asyncio.QueueFull:
            self._abandon("its event queue is full")

    def _error(self, code: str, message: str) -> None:
        self.rec.metrics.errors.labels(code).inc()
        if len(message) > _MESSAGE_CHARS:
            message = message[: _MESSAGE_CHARS - 3] + "..."
        self._put(self.error_event(code, message))

    def _put(self, event: dict[str, Any]) -> None:
        try:
            self.out.put_nowait(event)
        except asyncio.QueueFull:
            self._abandon("its event queue is full")

    def _abandon(self, why: str) -> None:
        """A client that does not read its events is not served further: stop reading from it, so the
        handler ends and the connection is closed under it."""
        # Counted once per client, also while closing: a client that stops reading during a close (after
        # a timeout, say) is as much a client that does not read.
        if not self._abandoned:
            self._abandoned = True
            log.warning("client is not reading events (%s); closing", why)
            self.rec.metrics.errors.labels("not_reading").inc()
        self.closing = True
        if self._receiver is not None:
            self._receiver.cancel()

    async def _send_loop(self) -> None:
        while True:
            event = await self.out.get()
            if event is None:
                break
            try:
                await asyncio.wait_for(self.ws.send_json(event), timeout=self.settings.send_timeout_s)
            except TimeoutError:
                self._abandon(f"one event took over {self.settings.send_timeout_s:g} s to send")
                return
            except Exception:
                return
        code, reason = self._close_args
        if self.ws.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):
                await self.ws.close(code, reason)
