"""Is the relay usable? The breaker's view, else a cached connect-and-greet probe."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from notifier.dispatch.breaker import RelayBreaker
from notifier.dispatch.smtp import SMTPTransport
from notifier.errors import DeliveryError


class RelayMonitor:
    """Answers readiness checks without touching the relay more than once an interval."""

    def __init__(
        self,
        transport: SMTPTransport,
        breaker: RelayBreaker,
        *,
        interval: float,
        clock: Callable[[], float],
    ) -> None:
        self._transport = transport
        self._breaker = breaker
        self._interval = interval
        self._clock = clock
        self._checked_at = float("-inf")
        self._last: str | None = None
        self._lock = asyncio.Lock()

    async def problem(self) -> str | None:
        """What is wrong with the relay, or ``None`` when it answers."""
        if (tripped := self._breaker.problem()) is not None:
            return tripped
        async with self._lock:
            if self._clock() - self._checked_at >= self._interval:
                self._last = await self._probe()
                self._checked_at = self._clock()
            return self._last

    async def _probe(self) -> str | None:
        try:
            await self._transport.probe()
        except DeliveryError as exc:
            return f"probe failed: {exc}"
        return None
