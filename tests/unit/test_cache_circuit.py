"""gateway.cache.circuit: open after failures, one probe when the backoff passes, doubling backoff."""

from __future__ import annotations

from gateway.cache.circuit import CircuitBreaker, CircuitState


def state(cb: CircuitBreaker) -> CircuitState:
    """Read afresh each time (the state moves with the clock)."""
    return cb.state


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    cb = CircuitBreaker(FakeClock(), failures_to_open=3, backoff_s=1.0)
    cb.record_failure()
    cb.record_failure()
    cb.record_success()  # resets the run
    cb.record_failure()
    cb.record_failure()
    assert state(cb) is CircuitState.CLOSED and cb.allow()
    cb.record_failure()
    assert state(cb) is CircuitState.OPEN and not cb.allow()


def test_single_probe_then_close_on_success() -> None:
    clock = FakeClock()
    cb = CircuitBreaker(clock, failures_to_open=1, backoff_s=1.0)
    cb.record_failure()
    clock.now = 0.999
    assert not cb.allow()
    clock.now = 1.0
    assert state(cb) is CircuitState.HALF_OPEN
    assert cb.allow()  # the probe
    assert not cb.allow()  # nobody else while it is out
    cb.record_success()
    assert state(cb) is CircuitState.CLOSED and cb.allow()


def test_failed_probes_double_the_backoff_up_to_the_cap() -> None:
    clock = FakeClock()
    cb = CircuitBreaker(clock, failures_to_open=1, backoff_s=1.0, max_backoff_s=3.0)
    cb.record_failure()
    waits = []
    for _ in range(4):
        opened_at = clock.now
        while not cb.allow():
            clock.now += 0.25
        waits.append(clock.now - opened_at)
        cb.record_failure()
    assert waits == [1.0, 2.0, 3.0, 3.0]
    clock.now += 3.0
    assert cb.allow()
    cb.record_success()
    cb.record_failure()
    clock.now += 1.0  # backoff reset to the base after a success
    assert cb.allow()


def test_released_probe_lets_another_through() -> None:
    clock = FakeClock()
    cb = CircuitBreaker(clock, failures_to_open=1, backoff_s=1.0)
    cb.record_failure()
    clock.now = 2.0
    assert cb.allow()
    cb.release_probe()
    assert cb.allow()
