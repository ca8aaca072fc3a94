"""The circuit breaker's state machine, driven by a fake clock."""

from __future__ import annotations

import pytest

from edge_agent.escalation.breaker import BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


def test_opens_after_consecutive_failures_only(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failures_to_open=3, reset_after_s=10.0, clock=clock)
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the count: failures must be consecutive
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.consecutive_failures == 3


def test_open_refuses_until_reset_then_one_trial_at_a_time(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failures_to_open=1, reset_after_s=10.0, clock=clock)
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.retry_after() == pytest.approx(10.0)
    clock.now += 9.999
    assert not breaker.allow()
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == pytest.approx(0.001)
    clock.now += 0.001
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.retry_after() == 0.0
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # nobody else while it runs
    assert not breaker.allow()
    assert breaker.retry_after() == 10.0  # unknown: depends on the trial; never 0 (no polling)
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0
    assert all(breaker.allow() for _ in range(5))


def test_failed_trial_reopens_for_a_full_period(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failures_to_open=2, reset_after_s=5.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 7.0
    assert breaker.allow()
    clock.now += 1.0  # the trial took a second
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == pytest.approx(5.0)  # from the trial's failure, not the first opening
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()
    assert not breaker.allow()


def test_released_trial_lets_the_next_one_through(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failures_to_open=1, reset_after_s=1.0, clock=clock)
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow()
    breaker.release()  # e.g. the trial was cancelled by the edge: no verdict
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()


def test_late_failures_do_not_extend_the_open_period(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failures_to_open=1, reset_after_s=10.0, clock=clock)
    breaker.record_failure()
    clock.now += 8.0
    breaker.record_failure()  # a call admitted before the breaker opened fails late
    assert breaker.state is BreakerState.OPEN
    clock.now += 2.0
    assert breaker.state is BreakerState.HALF_OPEN


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="failures_to_open"):
        CircuitBreaker(0, 1.0)
    with pytest.raises(ValueError, match="reset_after_s"):
        CircuitBreaker(1, 0.0)
