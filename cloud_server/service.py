"""Run REST (uvicorn) and gRPC (grpc.aio) in one event loop around one shared runtime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterator

import grpc
import uvicorn
from grpc_health.v1.health import aio as health_aio

from cloud_server.grpc_service import create_grpc_server, set_serving
from cloud_server.rest.app import create_app
from cloud_server.runtime import CloudRuntime
from cloud_server.settings import CloudSettings

log = logging.getLogger(__name__)


class SignalFreeServer(uvicorn.Server):
    # The process owns signal handling (it must stop gRPC too), not uvicorn.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class CloudServer:
    """Both interfaces of the cloud. ``start()`` binds the ports at once and loads the model in
    the background: REST ``/ready`` and gRPC health turn to ready/SERVING when it is loaded."""

    def __init__(self, settings: CloudSettings) -> None:
        self.settings = settings
        self.runtime = CloudRuntime(settings)
        self.rest_port = 0
        self.grpc_port = 0
        self._uvicorn: SignalFreeServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._grpc: grpc.aio.Server | None = None
        self._health: health_aio.HealthServicer | None = None

    async def start(self, load: bool = True) -> None:
        """Bind both ports and serve. With ``load`` the model loads in the background,
        otherwise the caller calls ``load()``."""
        # Resolving first turns a missing model into a clear error before any port is opened.
        await asyncio.to_thread(self.runtime.resolve)
        s = self.settings
        server, self.grpc_port, health = create_grpc_server(self.runtime, f"{s.grpc_host}:{s.grpc_port}")
        self._grpc, self._health = server, health
        await set_serving(health, False)
        await server.start()
        config = uvicorn.Config(
            create_app(s, self.runtime),
            host=s.host,
            port=s.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(s.grace_s),
            ssl_certfile=str(s.tls_cert_file) if s.tls_cert_file else None,
            ssl_keyfile=str(s.tls_key_file) if s.tls_key_file else None,
            ssl_ca_certs=str(s.tls_client_ca_file) if s.tls_client_ca_file else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if s.tls_client_ca_file else ssl.CERT_NONE,
        )
        self._uvicorn = SignalFreeServer(config)
        # Binding here (not inside serve()) makes a taken port fail start() and tells us port 0's pick.
        sock = config.bind_socket()
        sock.listen(config.backlog)  # accept (queue) connections from now on, before serve() runs
        self.rest_port = sock.getsockname()[1]
        self._tasks.append(asyncio.create_task(self._uvicorn.serve(sockets=[sock]), name="rest"))
        log.info(
            "REST on %s:%d, gRPC on %s:%d; loading model %s",
            s.host,
            self.rest_port,
            s.grpc_host,
            self.grpc_port,
            self.runtime.model_name,
        )
        if load:
            self._tasks.append(asyncio.create_task(self.load(), name="load-model"))

    async def load(self) -> None:
        """Load the model, then report ready/SERVING."""
        await self.runtime.start()
        if self._health is not None:
            await set_serving(self._health, True)
        log.info("model %s ready", self.runtime.model_name)

    async def stop(self) -> None:
        """Stop taking new work, let in-flight requests finish within the grace period, then close."""
        grace = self.settings.grace_s
        if self._health is not None:
            await set_serving(self._health, False)
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._grpc is not None:
            await self._grpc.stop(grace)
        with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), grace + 1)
        self.runtime.close()
