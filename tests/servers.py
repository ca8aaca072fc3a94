"""Real servers on ephemeral loopback ports, each on its own event-loop thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from cloud_server.service import CloudServer, SignalFreeServer
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
        """Stop the server and its loop; a second call (a test's ``finally`` after a kill) does nothing."""
        if not self._loop.is_running():
            return
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

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample of the server's Prometheus registry (0 when it was never recorded)."""
        value = self.server.runtime.metrics.registry.get_sample_value(name, labels or {})
        return float(value or 0.0)


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


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


class ThreadedEdge:
    """An edge agent (WebSocket + HTTP) on its own event-loop thread, sharing an already loaded model."""

    def __init__(self, settings: Any, model: Any) -> None:
        from edge_agent.escalation.manager import build_escalator
        from edge_agent.recognizer import Recognizer

        self.settings = settings
        self.rec = Recognizer(settings, model=model)
        self.rec.escalator = build_escalator(settings, self.rec)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="edge-loop", daemon=True)
        self._server: Any = None
        self._task: Any = None
        self.port = 0

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> ThreadedEdge:
        from edge_agent.server.app import create_app
        from edge_agent.server.serving import server_config

        self._thread.start()

        async def boot() -> None:
            await self.rec.start()
            config = server_config(create_app(self.settings, self.rec), self.settings, "127.0.0.1", 0)
            self._server = SignalFreeServer(config)
            sock = config.bind_socket()
            sock.listen(config.backlog)
            self.port = sock.getsockname()[1]
            self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
            # The socket listens already: connections queue until serve() accepts them.

        self.call(boot())
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            self._server.should_exit = True
            await asyncio.wait_for(self._task, 30)
            await self.rec.stop()

        try:
            self.call(shutdown(), timeout=60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def edge_settings(tmp: Any, cloud_target: str | None = None, **overrides: Any) -> Any:
    from edge_agent.settings import EdgeSettings

    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "cloud_target": cloud_target or "",
        "queue_path": str(tmp / "queue.sqlite3"),
        "model_cache_dir": str(_ROOT / ".cache" / "edge-models"),
        "retry_initial_s": 0.2,
        "retry_max_s": 1.0,
        "breaker_reset_s": 1.0,
    }
    base.update(overrides)
    return EdgeSettings(**base)


_ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
