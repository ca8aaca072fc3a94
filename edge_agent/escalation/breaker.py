"""A circuit breaker for calls to the cloud: after repeated failures the edge stops trying for a while.

Pure state machine (no I/O, no threads); the clock is injected so tests can drive it exactly.
Not thread-safe: it is meant to be used from the agent's event loop only.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    """Calls go through; consecutive failures are counted."""
    OPEN = "open"
    """Calls are refused without touching the network until ``reset_after_s`` has passed."""
    HALF_OPEN = "half_open"
    """One trial call at a time may go through; its outcome closes or re-opens the breaker."""


class CircuitBreaker:
    """Opens after ``failures_to_open`` consecutive failures; ``reset_after_s`` later, lets one trial through.

    Every call that ``allow()`` admitted must end in exactly one of ``record_success()``,
    ``record_failure()`` or ``release()`` (the call ended without telling anything about the cloud,
    e.g. it was cancelled by the edge). Otherwise a half-open breaker would wait for its trial forever.
    """

    def __init__(
        self, failures_to_open: int, reset_after_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failures_to_open < 1:
            raise ValueError("failures_to_open must be at least 1")
        if reset_after_s <= 0:
            raise ValueError("reset_after_s must be positive")
        self._failures_to_open = failures_to_open
        self._reset_after_s = reset_after_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose reset time has passed reports ``half_open``."""
        self._refresh()
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """May a call go to the cloud now? In half-open state this admits one trial at a time."""
        self._refresh()
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN or self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def retry_after(self) -> float:
        """Seconds until ``allow()`` may admit a call (0.0 when it may now). Does not admit anything.

        While a half-open trial is in flight the answer depends on that trial, so this returns
        ``reset_after_s`` as a conservative guess rather than 0 (which would invite polling)."""
        self._refresh()
        if self._state is BreakerState.CLOSED:
            return 0.0
        if self._state is BreakerState.OPEN:
            return max(0.0, self._opened_at + self._reset_after_s - self._clock())
        return self._reset_after_s if self._trial_in_flight else 0.0

    def record_success(self) -> None:
        """The cloud answered: close the breaker and forget past failures."""
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._trial_in_flight = False

    def record_failure(self) -> None:
        """The cloud failed (unreachable, timed out, overloaded)."""
        self._refresh()
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN:
            # The trial failed: back to open for another full period.
            self._open()
        elif self._state is BreakerState.CLOSED and self._failures >= self._failures_to_open:
            self._open()
        # Already open: a call admitted before the breaker opened failed late. The open period is
        # not extended, or slow stragglers could keep the breaker open long after the cloud recovered.

    def release(self) -> None:
        """An admitted call ended without an outcome (cancelled by the edge): free the trial slot."""
        self._trial_in_flight = False

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._trial_in_flight = False

    def _refresh(self) -> None:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._reset_after_s:
            self._state = BreakerState.HALF_OPEN
            self._trial_in_flight = False

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state.value}, failures={self._failures})"
