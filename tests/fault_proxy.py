"""A TCP proxy on loopback that injects network faults between the edge and the cloud.

Modes: ``pass`` forwards both ways (after ``delay_s`` per chunk: a slow link); ``blackhole`` keeps
connections open but forwards nothing (a link that drops every packet: callers see deadlines pass);
``refuse`` resets new connections at once. ``cut()`` resets every live connection (a link that
breaks mid-stream). Runs its own event loop on a thread, so blocking tests can drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import Literal

Mode = Literal["pass", "blackhole", "refuse"]


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode: Mode = "pass"
        self.delay_s = 0.0
        self.connections = 0
        """Connections accepted so far."""
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    def start(self) -> FaultProxy:
        self._thread.start()
        self.port = self._call(self._listen())
        return self

    def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def set(self, mode: Mode, delay_s: float = 0.0) -> None:
        self.mode, self.delay_s = mode, delay_s

    def cut(self) -> None:
        """Reset every live connection (RST, as a broken link or a crashed peer)."""

        async def cut_all() -> None:
            for writer in list(self._writers):
                _reset(writer)
            self._writers.clear()

        self._call(cut_all())

    def _call(self, coro: object) -> int:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "refuse":
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            _reset(writer)
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.mode == "blackhole":
                    continue  # swallowed: the other side hears nothing
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            # SO_LINGER 0: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.transport.abort()
