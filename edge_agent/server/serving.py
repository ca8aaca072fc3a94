"""How the edge's app is served: uvicorn's configuration, shared by the CLI and the tests.

Two guards uvicorn does not give by default:

* the request head (the WebSocket upgrade) must arrive within ``handshake_timeout_s``: a client that
  trickles its headers a byte at a time gets 408 and is closed, instead of holding a socket forever;
* WebSocket messages up to ``WS_MAX_MESSAGE`` reach the app, so a frame over ``max_frame_bytes`` gets
  the ``frame_too_large`` event before the close (1009); only frames past ``WS_MAX_MESSAGE`` are closed
  by the WebSocket library itself (also 1009, with its reason).
"""

from __future__ import annotations

import asyncio
import math

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from edge_agent.settings import EdgeSettings

WS_MAX_MESSAGE = 16 * 1024 * 1024
_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


def head_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections whose first request head is slower than ``seconds``."""

    class HeadTimeoutH11(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_timer = self.loop.call_later(seconds, self._head_too_slow)

        def handle_events(self) -> None:
            super().handle_events()
            # Past IDLE, h11 has the whole request head (or gave up on it): the timer's job is done.
            if self._head_timer is not None and self.conn.their_state is not h11.IDLE:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.write(_TIMEOUT_RESPONSE)
                self.transport.close()

    return HeadTimeoutH11


def server_config(
    app: FastAPI, settings: EdgeSettings, host: str | None = None, port: int | None = None
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host if host is None else host,
        port=settings.port if port is None else port,
        log_config=None,
        http=head_timeout_protocol(settings.handshake_timeout_s),
        ws_max_size=max(WS_MAX_MESSAGE, 2 * settings.max_frame_bytes),
        # Frames are processed as they arrive (VAD inline, decoding on the worker); while the loop is
        # busy, at most this many wait in the WebSocket layer before it stops reading the socket and
        # TCP flow control holds the client back.
        ws_max_queue=settings.session_queue_frames,
        # Keepalive: a peer that stops answering pings (gone without a FIN) is closed, not held forever.
        ws_ping_interval=settings.ping_interval_s,
        ws_ping_timeout=settings.ping_interval_s,
        # A connection stuck past this (a client that never reads) must not hold up a SIGTERM.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s),
    )
