"""The edge's WebSocket server against hostile or broken clients: each case first reproduced, then held.

Real sockets on loopback, the real edge model; no cloud (none of these reach it).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.edge_client import close_code
from tests.servers import ThreadedEdge, edge_settings, wait_until

pytestmark = pytest.mark.model
START = json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le"})


@pytest.fixture()
def guarded(edge_model: Any, tmp_path: Path) -> Iterator[ThreadedEdge]:
    settings = edge_settings(
        tmp_path,
        None,
        max_sessions=3,
        handshake_timeout_s=1.0,
        send_timeout_s=1.0,
        shutdown_timeout_s=2.0,
    )
    server = ThreadedEdge(settings, edge_model).start()
    yield server
    server.stop()


def _next(ws: ClientConnection, kind: str, timeout: float = 10) -> dict[str, Any]:
    while True:
        event: dict[str, Any] = json.loads(ws.recv(timeout=timeout))
        if event["type"] == kind:
            return event


def _connections(edge: ThreadedEdge) -> int:
    return int(httpx.get(f"{edge.http}/health", timeout=10).json()["connections"])


def test_error_messages_do_not_echo_unbounded_input(guarded: ThreadedEdge) -> None:
    with connect(guarded.url, open_timeout=10, max_size=2**22) as ws:
        ws.send(json.dumps({"type": "A" * 100_000}))
        event = _next(ws, "error")
        assert event["code"] == "unknown_type"
        assert len(event["message"]) < 200
        assert "'AAAAAAAAAA" in event["message"] and "..." in event["message"]
        ws.send(START)  # the session goes on
        assert _next(ws, "ready")["sample_rate"] == 16000


def test_deeply_nested_json_is_bad_json_and_the_session_goes_on(guarded: ThreadedEdge) -> None:
    with connect(guarded.url, open_timeout=10, max_size=2**22) as ws:
        ws.send("[" * 100_000 + "]" * 100_000)
        event = _next(ws, "error")
        assert event["code"] == "bad_json"
        assert "nested" in event["message"]
        ws.send(START)
        assert _next(ws, "ready")["encoding"] == "pcm_s16le"


@pytest.mark.parametrize(
    ("started", "frame"),
    [(True, b"\x00" * (1 << 20)), (False, "x" * (1 << 20)), (True, b"\x00" * (8 << 20))],
    ids=["binary-1MiB", "text-1MiB", "binary-8MiB"],
)
def test_frames_of_any_size_over_the_limit_get_frame_too_large(
    guarded: ThreadedEdge, started: bool, frame: bytes | str
) -> None:
    with connect(guarded.url, open_timeout=10, max_size=2**22) as ws:
        if started:
            ws.send(START)
            _next(ws, "ready")
        ws.send(frame)
        event = _next(ws, "error")
        assert event["code"] == "frame_too_large"
        assert str(guarded.settings.max_frame_bytes) in event["message"]
        assert close_code(ws) == 1009


def test_frames_past_the_servers_message_ceiling_close_with_1009(guarded: ThreadedEdge) -> None:
    from edge_agent.server.serving import WS_MAX_MESSAGE

    with connect(guarded.url, open_timeout=10, max_size=2**22) as ws:
        ws.send(START)
        _next(ws, "ready")
        ws.send(b"\x00" * (WS_MAX_MESSAGE + 2))
        assert close_code(ws) == 1009


def test_the_limit_counts_connections_not_started_sessions(guarded: ThreadedEdge) -> None:
    limit = guarded.settings.max_sessions
    with contextlib.ExitStack() as stack:
        opened = [stack.enter_context(connect(guarded.url, open_timeout=10)) for _ in range(limit)]
        assert wait_until(lambda: _connections(guarded) == limit, timeout=10)
        with connect(guarded.url, open_timeout=10) as extra:
            assert _next(extra, "error")["code"] == "busy"
            assert close_code(extra) == 1013
        for ws in opened:  # the ones let in can all start
            ws.send(START)
            assert _next(ws, "ready")["type"] == "ready"
        opened[0].close()
        assert wait_until(lambda: _connections(guarded) == limit - 1, timeout=10)
        with connect(guarded.url, open_timeout=10) as late:
            late.send(START)
            assert _next(late, "ready")["type"] == "ready"


def test_idle_websocket_is_told_and_closed(edge_model: Any, tmp_path: Path) -> None:
    edge = ThreadedEdge(edge_settings(tmp_path, None, idle_timeout_s=1.5), edge_model).start()
    try:
        with connect(edge.url, open_timeout=10) as ws:
            ws.send(START)
            _next(ws, "ready")
            event = _next(ws, "error", timeout=10)
            assert event["code"] == "idle_timeout"
            assert _next(ws, "end", timeout=10) == {"type": "end", "utterances": 0}
            assert close_code(ws) == 1008
    finally:
        edge.stop()


def test_a_connection_that_never_starts_is_told_and_closed(edge_model: Any, tmp_path: Path) -> None:
    edge = ThreadedEdge(edge_settings(tmp_path, None, start_timeout_s=1.0), edge_model).start()
    try:
        with connect(edge.url, open_timeout=10) as ws:
            event = _next(ws, "error", timeout=10)
            assert event["code"] == "start_timeout"
            assert close_code(ws) == 1008
        assert wait_until(lambda: _connections(edge) == 0, timeout=10)
    finally:
        edge.stop()


def _read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One unmasked server frame: (opcode, payload)."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    first, second = exactly(2)
    size = second & 0x7F
    if size == 126:
        size = struct.unpack(">H", exactly(2))[0]
    elif size == 127:
        size = struct.unpack(">Q", exactly(8))[0]
    return first & 0x0F, exactly(size)


def test_a_client_that_stops_answering_pings_is_closed(edge_model: Any, tmp_path: Path) -> None:
    edge = ThreadedEdge(edge_settings(tmp_path, None, ping_interval_s=2.0), edge_model).start()
    try:
        sock = _raw_websocket(edge.port)
        with contextlib.closing(sock):
            sock.sendall(_text_frame(START.encode()))
            frames = []
            with contextlib.suppress(ConnectionError):
                while not frames or frames[-1][0] != 0x8:  # until the close frame
                    frames.append(_read_frame(sock))
            opcodes = [opcode for opcode, _ in frames]
            assert opcodes[0] == 0x1 and json.loads(frames[0][1])["type"] == "ready"
            assert 0x9 in opcodes  # the ping it never answered
            assert opcodes[-1] == 0x8 and struct.unpack(">H", frames[-1][1][:2])[0] == 1011
        assert wait_until(lambda: _connections(edge) == 0, timeout=10)
        # A client that answers pings (the websockets client does) is kept past several intervals.
        with connect(edge.url, open_timeout=10) as ws:
            ws.send(START)
            _next(ws, "ready")
            time.sleep(5)
            assert _connections(edge) == 1
            ws.send(json.dumps({"type": "stop"}))
            assert _next(ws, "end") == {"type": "end", "utterances": 0}
    finally:
        edge.stop()


def test_slow_request_head_gets_408_and_is_closed(guarded: ThreadedEdge) -> None:
    head = f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{guarded.port}\r\nUpgrade: websocket\r\n".encode()
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        started = time.monotonic()
        answer = b""
        for byte in head:  # a byte every 0.2 s: the head would take ~14 s
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.2)
            sock.setblocking(False)
            try:
                chunk = sock.recv(4096)
            except BlockingIOError:
                chunk = None
            except ConnectionResetError:
                # A byte sent after the agent closed earns a reset: the connection is over (the answer,
                # read on an earlier turn, is asserted below).
                break
            finally:
                sock.setblocking(True)
            if chunk is not None:
                answer += chunk
                if not chunk:
                    break
        assert answer.startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < 8  # closed at ~1 s, long before the head was done


def _raw_websocket(port: int) -> socket.socket:
    """A WebSocket opened by hand, so the test decides what is read (here: nothing). The receive buffer
    keeps the kernel's own sizing: a small fixed one (4 KiB, even 256 KiB) below what loopback segments
    need makes Linux drop the agent's packets whole, ACKs included, and the client's sending then stalls
    in retransmission backoff for minutes while the agent, reading, waits for data that never comes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def _error_counts(edge: ThreadedEdge) -> dict[str, float]:
    """Every client error the agent counted, by code (a failure then says what happened instead)."""
    return {
        sample.labels["code"]: sample.value
        for metric in edge.rec.metrics.registry.collect()
        for sample in metric.samples
        if sample.name == "edge_client_errors_total"
    }


def _text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    size = len(payload)
    header = bytes([0x81]) + (
        bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + struct.pack(">H", size)
    )
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _flood_until_abandoned(sock: socket.socket, edge: ThreadedEdge, frame: bytes) -> int:
    """Send ``frame`` over and over, reading nothing, until the agent stops reading from us and no longer
    counts the connection. A send that blocks only means the agent is slow (a busy machine): keep going,
    resuming a partly sent frame, so that only the agent decides when it gives up. Returns frames sent."""
    sock.settimeout(0.5)
    sent, pending = 0, b""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        pending = pending or frame
        try:
            pending = pending[sock.send(pending) :]
        except TimeoutError:
            if _connections(edge) == 0:
                return sent
            continue
        if not pending:
            sent += 1
    raise AssertionError(f"the agent still serves a client that read nothing after {sent} frames")


def test_client_that_never_reads_is_closed_and_shutdown_still_finishes(
    edge_model: Any, tmp_path: Path
) -> None:
    # Keepalive pings go unanswered by this client too, and it never sends `start`: neither timeout is what
    # is tested here, and on a loaded machine either could close the connection before the send path gives
    # up (a start timeout did, with 111 frames read), so both are put out of reach.
    settings = edge_settings(
        tmp_path,
        None,
        send_timeout_s=1.0,
        shutdown_timeout_s=2.0,
        ping_interval_s=600.0,
        start_timeout_s=600.0,
    )
    edge = ThreadedEdge(settings, edge_model).start()
    stopped = False
    sock = _raw_websocket(edge.port)
    try:
        # Each frame earns an error event the client never reads.
        sent = _flood_until_abandoned(sock, edge, _text_frame(json.dumps({"type": "B" * 2000}).encode()))
        assert sent > 1000
        # The handler gave up on the client: its connection no longer counts, new clients get in.
        assert _connections(edge) == 0
        counted = _error_counts(edge)
        assert counted.get("not_reading") == pytest.approx(1.0), counted
        with connect(edge.url, open_timeout=10) as ws:
            ws.send(START)
            assert _next(ws, "ready")["type"] == "ready"
        # SIGTERM's path with the non-reading client still connected: it must finish.
        started = time.monotonic()
        edge.stop()
        stopped = True
        assert time.monotonic() - started < 25
    finally:
        sock.close()
        if not stopped:
            edge.stop()


def test_the_server_config_carries_the_settings() -> None:
    from fastapi import FastAPI

    from edge_agent.server.serving import WS_MAX_MESSAGE, server_config
    from edge_agent.settings import EdgeSettings

    settings = EdgeSettings(
        session_queue_frames=5, max_frame_bytes=64 * 1024, shutdown_timeout_s=2.5, ping_interval_s=7.0
    )
    config = server_config(FastAPI(), settings, "127.0.0.1", 0)
    assert (config.ws_max_queue, config.ws_max_size, config.timeout_graceful_shutdown) == (
        5,
        WS_MAX_MESSAGE,
        3,
    )
    assert (config.ws_ping_interval, config.ws_ping_timeout) == (7.0, 7.0)
    big = server_config(FastAPI(), EdgeSettings(max_frame_bytes=WS_MAX_MESSAGE), "127.0.0.1", 0)
    assert big.ws_max_size == 2 * WS_MAX_MESSAGE
