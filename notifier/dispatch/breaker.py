"""The relay circuit breaker: when the relay itself fails, the dispatcher backs off as a whole.

A relay fault (refused connection, AUTH or TLS failure, greeting refused) opens the
breaker; while open nothing is claimed. When its backoff ends, one probe goes out:
a probe that reaches the relay closes the breaker, another relay fault re-opens it
for longer. Notifications wait ``deferred`` meanwhile; none is failed for it.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from notifier.dispatch.backoff import delay, exponential
from notifier.errors import DeliveryError


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class RelayBreaker:
    def __init__(
        self, *, initial_delay: float, max_delay: float, clock: Callable[[], float]
    ) -> None:
        self._wait = exponential(initial_delay, max_delay)
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        self.last_error: str | None = None

    @property
    def state(self) -> BreakerState:
        if self._failures == 0:
            return BreakerState.CLOSED
        if self._clock() < self._open_until:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def allowance(self, free: int) -> int:
        """How many notifications may be claimed now, out of ``free`` slots."""
        state = self.state
        if state is BreakerState.CLOSED:
            return free
        if state is BreakerState.HALF_OPEN and not self._probing:
            return min(free, 1)
        return 0

    def claimed(self, count: int) -> None:
        if count and self.state is BreakerState.HALF_OPEN:
            self._probing = True

    def probe_abandoned(self) -> None:
        """The claimed probe never reached the relay (it expired first): allow another."""
        self._probing = False

    def seconds_until_probe(self) -> float | None:
        """When the open breaker lets a probe through; ``None`` if it is not open."""
        if self.state is not BreakerState.OPEN:
            return None
        return max(0.0, self._open_until - self._clock())

    def relay_failed(self, error: DeliveryError) -> None:
        now = self._clock()
        self._failures += 1
        self._probing = False
        self.last_error = str(error)
        self._open_until = now + delay(self._wait, self._failures)

    def relay_answered(self) -> None:
        """The relay took part in a transaction, whatever it said about the message."""
        self._failures = 0
        self._probing = False
        self.last_error = None

    def problem(self) -> str | None:
        if self._failures == 0:
            return None
        return f"{self._failures} relay fault(s) in a row; last: {self.last_error}"
