"""A bounded pool for blocking inference: the event loop only awaits futures.

Admission is counted from submission until the worker thread is really done, so
work abandoned by a caller that went away still occupies its slot until it stops;
past ``max_pending`` new work is refused at once instead of queued without bound.

Background work (the cloud's pilots) starts only on an idle pool, is not counted as a
request (it never makes the pool refuse one), and every request admitted while it runs
sets its cancel event, so it stops at its next check and the request takes the worker.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class OverloadedError(Exception):
    """The pool is full; the caller should retry after ``retry_after_s``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"server busy: too many requests in flight, retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class BackgroundJob(Generic[T]):
    """Work started by ``InferencePool.try_background``."""

    def __init__(self, future: Future[T], cancel: threading.Event) -> None:
        self._future = future
        self._cancel = cancel

    async def result(self) -> T:
        """The work's result; raises what the work raised (a cancelled job raises its own error)."""
        return await asyncio.wrap_future(self._future)

    def cancel(self) -> None:
        """Stop the work at its next check; work that has not started never runs."""
        self._cancel.set()
        self._future.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


class InferencePool:
    def __init__(
        self,
        workers: int,
        max_pending: int,
        retry_after_s: int,
        on_cancelled: Callable[[str], None] | None = None,
    ) -> None:
        """``on_cancelled(stage)`` hears of each request whose caller went away: ``"queued"`` (it never
        ran) or ``"running"`` (it stops at its next check)."""
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
        self._workers = workers
        self._max_pending = max_pending
        self._retry_after_s = retry_after_s
        self._on_cancelled = on_cancelled
        self._pending = 0
        self._background: set[threading.Event] = set()
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Requests admitted and not finished (running plus waiting); background work is not counted."""
        return self._pending

    @property
    def background(self) -> int:
        """Background jobs submitted and not finished."""
        return len(self._background)

    def _release(self, _: Future[T]) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, fn: Callable[[threading.Event], T]) -> T:
        """Run ``fn(cancel_event)`` on a worker. If the awaiting task is cancelled, the event is set
        (the work stops at its next check) and work that has not started never runs."""
        with self._lock:
            if self._pending >= self._max_pending:
                raise OverloadedError(self._retry_after_s)
            self._pending += 1
            # A request outranks background work: what runs stops at its next check.
            for event in self._background:
                event.set()
        cancel = threading.Event()
        try:
            future = self._executor.submit(fn, cancel)
        except BaseException:
            with self._lock:
                self._pending -= 1
            raise
        future.add_done_callback(self._release)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            cancel.set()
            future.cancel()
            # Cancelling succeeds only while no worker has taken the job; one that finished meanwhile
            # was not cancelled at all.
            if self._on_cancelled is not None and not (future.done() and not future.cancelled()):
                self._on_cancelled("queued" if future.cancelled() else "running")
            raise

    def try_background(self, fn: Callable[[threading.Event], T]) -> BackgroundJob[T] | None:
        """Start ``fn(cancel_event)`` only when no request is admitted and a worker has no other
        background work; ``None`` when the pool is busy. ``fn`` must check the event between steps."""
        cancel = threading.Event()
        with self._lock:
            if self._pending or len(self._background) >= self._workers:
                return None
            self._background.add(cancel)
        try:
            future = self._executor.submit(fn, cancel)
        except BaseException:
            self._drop_background(cancel)
            raise
        future.add_done_callback(lambda _: self._drop_background(cancel))
        return BackgroundJob(future, cancel)

    def _drop_background(self, cancel: threading.Event) -> None:
        with self._lock:
            self._background.discard(cancel)

    def shutdown(self) -> None:
        with self._lock:
            for event in self._background:
                event.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
