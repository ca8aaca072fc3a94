"""One inference thread shared by every session, scheduled for PASU's pilot inference.

Finals run first, in arrival order. A pilot runs only when no final waits, each session has at most
one pilot pending (a newer offer replaces one still *waiting*, so pilots never queue behind each other),
and a running pilot is asked to get out of the way as soon as a final arrives (``final_waiting``). The
choice of the next job is a pure function.

A pilot job is one ``AsrStream.advance()``, which reads the stream's position when it runs, so a
replaced offer loses nothing: the newer one advances at least as far. Giving way is cooperative and the
stream chooses its unit: a stateless re-decode (Moonshine) abandons its pilot after the current decoder
step, a stateful stream (a cache-aware conformer) finishes the chunk it is encoding and keeps its caches
consistent. A running job is never cut off from outside, and a pilot dropped at the end of an utterance
costs nothing, because ``finalize()`` covers all the audio itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class Job(Generic[T]):
    fn: Callable[[], T]
    future: asyncio.Future[T]
    kind: str  # "final" | "pilot"
    key: Hashable | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def pick_next(finals: deque[Job[Any]], pilots: OrderedDict[Hashable, Job[Any]]) -> Job[Any] | None:
    """Finals first (FIFO); otherwise the pilot offered longest ago (fair across sessions)."""
    while finals:
        job = finals.popleft()
        if not job.future.cancelled():
            return job
    while pilots:
        _, job = pilots.popitem(last=False)
        if not job.future.cancelled():
            return job
    return None


class InferenceWorker:
    def __init__(self, on_job: Callable[[str, float], None] | None = None) -> None:
        self._on_job = on_job
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-inference")
        self._finals: deque[Job[Any]] = deque()
        self._pilots: OrderedDict[Hashable, Job[Any]] = OrderedDict()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.busy = False
        self.pilot_runs = 0
        self.pilots_preempted = 0

    @property
    def final_waiting(self) -> bool:
        """Read from the inference thread by a running pilot to get out of a final's way."""
        return bool(self._finals)

    @property
    def pending(self) -> int:
        return len(self._finals) + len(self._pilots)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="edge-inference")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in [*self._finals, *self._pilots.values()]:
            job.future.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def run_final(self, fn: Callable[[], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._finals.append(Job(fn, future, "final"))
        self._wake.set()
        return await future

    def offer_pilot(self, key: Hashable, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue a pilot for ``key``, replacing one still waiting. The future may be cancelled."""
        old = self._pilots.pop(key, None)
        if old is not None:
            old.future.cancel()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pilots[key] = Job(fn, future, "pilot", key)
        self._wake.set()
        return future

    def has_pilot(self, key: Hashable) -> bool:
        return key in self._pilots

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = pick_next(self._finals, self._pilots)
            if job is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            self.busy = True
            started = time.perf_counter()
            try:
                result = await loop.run_in_executor(self._executor, job.fn)
            except Exception as exc:  # delivered to the waiter, which decides what it means
                if not job.future.done():
                    job.future.set_exception(exc)
            else:
                if not job.future.done():
                    job.future.set_result(result)
            finally:
                self.busy = False
                if self._on_job is not None:
                    self._on_job(job.kind, time.perf_counter() - started)
            if job.kind == "pilot":
                self.pilot_runs += 1
