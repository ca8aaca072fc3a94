"""Delivers queued escalations once the cloud is reachable again.

One asyncio task sends due items one at a time (the cloud is the bottleneck, and one at a time keeps a
backlog from flooding it after an outage). Between items it waits on an event (``wake()``) or the next
due time; it never polls. Queue calls go through ``asyncio.to_thread`` (see ``queue.py``: they fsync).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from google.protobuf.message import DecodeError

from asr_common.protos import speech_pb2
from edge_agent.escalation.client import CloudClient, CloudResult, CloudUnavailable
from edge_agent.escalation.queue import EscalationQueue, QueuedEscalation

log = logging.getLogger(__name__)

# Expired items are purged at most this often, and the worker wakes at least this often to do it.
PURGE_INTERVAL_S = 60.0


def backoff_delay(attempts: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Delay after a failed try of an item that had failed ``attempts`` times before: ``initial_s *
    2**attempts`` capped at ``max_s``, with "equal jitter" (uniform in [d/2, d]) so that items queued
    together do not retry in lockstep."""
    exponent = min(max(attempts, 0), 62)  # 2.0**1024 would overflow a float
    delay = min(max_s, initial_s * 2.0**exponent)
    return delay * rng.uniform(0.5, 1.0)


class RetryWorker:
    """Sends queued escalations to the cloud with per-item exponential backoff.

    Answered items are deleted (with their audio) before ``on_result`` is called, so a result is handed
    over at most once. Items the cloud rejects for good (``retryable=False``) are dropped with a warning.
    """

    def __init__(
        self,
        queue: EscalationQueue,
        client: CloudClient,
        on_result: Callable[[QueuedEscalation, CloudResult], Awaitable[None]],
        initial_s: float,
        max_s: float,
        *,
        deadline_s: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``deadline_s``: per attempt (default: the client's). Nobody waits for a queued item, so it
        may be longer than the live deadline, which would otherwise time out long utterances forever."""
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError("need 0 < initial_s <= max_s")
        self._queue = queue
        self._client = client
        self._on_result = on_result
        self._initial_s = initial_s
        self._max_s = max_s
        self._deadline_s = deadline_s
        self._rng = rng or random.Random()
        self._event: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_purge: float | None = None

    def start(self) -> None:
        """Start the task in the running loop (items left from a previous run are sent too)."""
        if self._task is not None:
            raise RuntimeError("the retry worker is already running")
        self._event = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="escalation-retry")
        self._task.add_done_callback(self._log_crash)

    def wake(self) -> None:
        """Look at the queue now (call after ``put`` returned). From the event loop's thread only."""
        if self._event is not None:
            self._event.set()

    async def stop(self) -> None:
        """Stop the task. An item being sent stays queued, unchanged, for the next run."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        assert self._event is not None
        loop = asyncio.get_running_loop()
        while True:
            self._event.clear()
            if self._last_purge is None or loop.time() - self._last_purge >= PURGE_INTERVAL_S:
                self._last_purge = loop.time()
                await asyncio.to_thread(self._queue.purge_expired)
            # While the breaker is open every send would be refused without a call: wait it out
            # instead of rescheduling (and rewriting) every queued item on each pass.
            pause = self._client.breaker.retry_after()
            if pause <= 0:
                item = await asyncio.to_thread(self._queue.next_due, self._queue.now())
                if item is not None:
                    pause = await self._send(item)
                    if pause <= 0:
                        continue
            if pause > 0:
                timeout = pause
            else:
                due = await asyncio.to_thread(self._queue.next_due_time)
                timeout = PURGE_INTERVAL_S if due is None else max(0.0, due - self._queue.now())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout=min(timeout, PURGE_INTERVAL_S))

    async def _send(self, item: QueuedEscalation) -> float:
        """Try one item; returns how long to pause when the breaker refused it, else 0."""
        try:
            context = speech_pb2.EdgeContext.FromString(item.context)
        except DecodeError as exc:
            # A poison row must not stop the worker (and every other item) on each start.
            log.warning(
                "dropping queued escalation %s (utterance %s): bad context: %s",
                item.id,
                item.utterance_id,
                exc,
            )
            await asyncio.to_thread(self._queue.delete, item.id)
            return 0.0
        if context.reason != speech_pb2.RETRY:
            original = speech_pb2.EscalationReason.Name(context.reason)
            context.reason_detail = f"queued ({original}) {context.reason_detail}".strip()
        context.reason = speech_pb2.RETRY
        try:
            result = await self._client.recognize(item.audio, context, self._deadline_s)
        except CloudUnavailable as exc:
            if exc.code is None:
                # Refused by the breaker, no call made: not an attempt of this item.
                return max(self._client.breaker.retry_after(), self._initial_s)
            if not exc.retryable:
                log.warning(
                    "dropping queued escalation %s (utterance %s) after %d attempts: %s",
                    item.id,
                    item.utterance_id,
                    item.attempts + 1,
                    exc.reason,
                )
                await asyncio.to_thread(self._queue.delete, item.id)
                return 0.0
            delay = backoff_delay(item.attempts, self._initial_s, self._max_s, self._rng)
            log.info(
                "queued escalation %s (utterance %s) failed (%s); retry %d in %.1f s",
                item.id,
                item.utterance_id,
                exc.reason,
                item.attempts + 1,
                delay,
            )
            await asyncio.to_thread(self._queue.reschedule, item.id, self._queue.now() + delay)
            return 0.0
        await asyncio.to_thread(self._queue.delete, item.id)
        try:
            await self._on_result(item, result)
        except Exception:
            # The callback is the agent's (e.g. a correction to a session that is gone); its failure
            # must not stop delivery of the other items. Logged with the traceback, not swallowed.
            log.exception(
                "on_result failed for queued escalation %s (utterance %s)", item.id, item.utterance_id
            )
        return 0.0

    @staticmethod
    def _log_crash(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("escalation retry worker stopped", exc_info=exc)
