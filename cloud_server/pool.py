"""A bounded pool for blocking inference: the event loop only awaits futures.

Admission is counted from submission until the worker thread is really done, so
work abandoned by a caller that went away still occupies its slot until it stops;
past ``max_pending`` new work is refused at once instead of queued without bound.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class OverloadedError(Exception):
    """The pool is full; the caller should retry after ``retry_after_s``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"server busy: too many requests in flight, retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class InferencePool:
    def __init__(self, workers: int, max_pending: int, retry_after_s: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
        self._max_pending = max_pending
        self._retry_after_s = retry_after_s
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Requests admitted and not finished (running plus waiting)."""
        return self._pending

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
            raise

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
