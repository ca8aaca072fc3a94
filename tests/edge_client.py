"""A blocking WebSocket client for the edge tests (real sockets, real protocol)."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

RATE = 16000


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def with_silence(audio: np.ndarray, before: float = 0.6, after: float = 1.2) -> np.ndarray:
    """``audio`` (16 kHz) between silences, as a speaker between pauses."""
    return np.concatenate(
        [np.zeros(int(before * RATE), np.float32), audio, np.zeros(int(after * RATE), np.float32)]
    )


def close_code(ws: ClientConnection, timeout: float = 10) -> int | None:
    """Read until the server closes; the close code it sent (None: no close frame)."""
    try:
        while True:
            ws.recv(timeout=timeout)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


class EdgeClient:
    def __init__(self, url: str) -> None:
        self._context = connect(url, max_size=2**22, open_timeout=10)
        self.ws: ClientConnection = self._context.__enter__()
        self.events: list[tuple[float, dict[str, Any]]] = []

    def start(self, sample_rate: int = 16000, encoding: str = "pcm_s16le") -> dict[str, Any]:
        self.send_json({"type": "start", "sample_rate": sample_rate, "encoding": encoding})
        return self.next_event()

    def send_json(self, message: Any) -> None:
        self.ws.send(json.dumps(message))

    def send_audio(self, data: bytes, frame_bytes: int = 3200, realtime_rate: float = 0.0) -> None:
        """Send in frames; with ``realtime_rate`` (bytes per second), pace like a live source."""
        started = time.monotonic()
        for i, offset in enumerate(range(0, len(data), frame_bytes)):
            if realtime_rate > 0:
                delay = started + offset / realtime_rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self.ws.send(data[offset : offset + frame_bytes])
            if i % 20 == 0:
                self._drain()

    def _drain(self) -> None:
        while True:
            try:
                message = self.ws.recv(timeout=0)
            except (TimeoutError, ConnectionClosed):
                return
            self.events.append((time.monotonic(), json.loads(message)))

    def next_event(self, timeout: float = 30) -> dict[str, Any]:
        message = self.ws.recv(timeout=timeout)
        event: dict[str, Any] = json.loads(message)
        self.events.append((time.monotonic(), event))
        return event

    def wait_for(self, kind: str, count: int = 1, timeout: float = 120) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.of(kind)) < count:
            self.next_event(timeout=max(0.01, deadline - time.monotonic()))
        return self.of(kind)

    def stop(self, timeout: float = 120) -> list[dict[str, Any]]:
        self.send_json({"type": "stop"})
        self.wait_for("end", timeout=timeout)
        return [e for _, e in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e.get("type") == kind]

    def close(self) -> None:
        self._context.__exit__(None, None, None)
