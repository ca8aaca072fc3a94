"""The inference pool reports each request its caller gave up on, by where it was."""

from __future__ import annotations

import asyncio
import threading

from cloud_server.engine import RequestCancelledError
from cloud_server.pool import InferencePool
from tests.servers import wait_until


def test_cancelled_requests_are_reported_as_queued_or_running() -> None:
    stages: list[str] = []
    ran: list[str] = []

    async def scenario() -> None:
        pool = InferencePool(workers=1, max_pending=4, retry_after_s=1, on_cancelled=stages.append)
        started = threading.Event()

        def running(cancel: threading.Event) -> str:
            started.set()
            if not cancel.wait(30):
                return "never cancelled"
            ran.append("running stopped")
            raise RequestCancelledError("request cancelled")

        try:
            first = asyncio.ensure_future(pool.run(running))
            assert await asyncio.to_thread(started.wait, 30)
            queued = asyncio.ensure_future(pool.run(lambda cancel: ran.append("queued ran")))
            assert await asyncio.to_thread(wait_until, lambda: pool.pending == 2, 30)
            queued.cancel()
            await asyncio.wait((queued,))
            assert stages == ["queued"]
            assert pool.pending == 1  # its slot is free at once; the worker is still busy
            first.cancel()
            await asyncio.wait((first,))
            assert stages == ["queued", "running"]
            assert await asyncio.to_thread(wait_until, lambda: pool.pending == 0, 30)
            finished = asyncio.ensure_future(pool.run(lambda cancel: "done"))
            assert await finished == "done"
            finished.cancel()  # too late: nothing to report
            assert stages == ["queued", "running"]
        finally:
            pool.shutdown()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert ran == ["running stopped"]
