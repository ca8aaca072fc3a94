"""Real servers on ephemeral loopback ports, each on its own event-loop thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from cloud_server.service import CloudServer
from cloud_server.settings import CloudSettings

T = TypeVar("T")


class ThreadedCloud:
    """A CloudServer (REST + gRPC) served from a background thread so tests can use blocking clients."""

    def __init__(self, settings: CloudSettings) -> None:
        self.server = CloudServer(settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cloud-loop", daemon=True)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 180) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self, load: bool = True) -> ThreadedCloud:
        self._thread.start()
        self.call(self.server.start(load=False))
        if load:
            self.call(self.server.load())
        return self

    def stop(self) -> None:
        try:
            self.call(self.server.stop(), timeout=60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    @property
    def runtime(self) -> Any:
        return self.server.runtime

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.server.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"


def cloud_settings(cache_dir: str, **overrides: Any) -> CloudSettings:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "grpc_host": "127.0.0.1",
        "grpc_port": 0,
        "model_cache_dir": cache_dir,
        "grace_s": 1.0,
    }
    base.update(overrides)
    return CloudSettings(**base)
