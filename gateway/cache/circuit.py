"""A circuit breaker for an optional dependency (the Redis tier): closed, open, half-open.

Closed: calls go through; `failures_to_open` consecutive failures open the circuit.
Open: calls are skipped until the backoff has passed, then the circuit is half-open.
Half-open: exactly one call (the probe) goes through; success closes the circuit and resets the
backoff, failure opens it again with the backoff doubled (capped), so a dead dependency costs
one probe per backoff period and a recovered one is used again without a restart.
The pattern is Nygard's ("Release It!", 2007); the doubling backoff is the usual capped
exponential backoff.

What must always hold: at most one probe is outstanding while half-open; time comes only from
the injected clock; the breaker never awaits and never raises.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum


class CircuitState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        clock: Callable[[], float],
        *,
        failures_to_open: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        if failures_to_open < 1:
            raise ValueError(f"failures_to_open must be >= 1, got {failures_to_open}")
        if not 0 < backoff_s <= max_backoff_s:
            raise ValueError(f"need 0 < backoff_s <= max_backoff_s, got {backoff_s}, {max_backoff_s}")
        self._clock = clock
        self._failures_to_open = failures_to_open
        self._base_backoff = backoff_s
        self._max_backoff = max_backoff_s
        self._backoff = backoff_s
        self._failures = 0
        self._open_until = 0.0
        self._state = CircuitState.CLOSED
        self._probe_out = False
        self.opened_total = 0

    @property
    def state(self) -> CircuitState:
        if self._state is CircuitState.OPEN and self._clock() >= self._open_until:
            return CircuitState.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May a call go through now? In half-open this hands out the single probe."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.OPEN or self._probe_out:
            return False
        self._state = CircuitState.HALF_OPEN
        self._probe_out = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._backoff = self._base_backoff
        self._probe_out = False
        self._state = CircuitState.CLOSED

    def record_failure(self) -> None:
        if self._state is CircuitState.HALF_OPEN:
            # The probe failed: back off longer before the next one.
            self._backoff = min(self._backoff * 2.0, self._max_backoff)
            self._open()
            return
        if self._state is CircuitState.OPEN:
            return  # a call let through before the circuit opened; the backoff already runs
        self._failures += 1
        if self._failures >= self._failures_to_open:
            self._open()

    def release_probe(self) -> None:
        """The probe ended with neither success nor failure (e.g. it was cancelled): allow another."""
        self._probe_out = False

    def _open(self) -> None:
        self._state = CircuitState.OPEN
        self._open_until = self._clock() + self._backoff
        self._probe_out = False
        self._failures = 0
        self.opened_total += 1
