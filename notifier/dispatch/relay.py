"""What state the relay is in, for ``/readyz``: the breaker's view while it is open, else
the last probe (connect, EHLO, STARTTLS and AUTH as configured, QUIT).

A probe runs in the background, at most once an interval, and is never cut short: a
relay that delays a refused login (Dovecot waits 2 s) still has its answer recorded, so
the checks that follow reuse it instead of logging in, and failing, again. Only the
caller's wait for a probe in progress is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress

from notifier.dispatch.breaker import RelayBreaker
from notifier.dispatch.smtp import SMTPTransport
from notifier.errors import DeliveryError


class RelayMonitor:
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
        #: What the last probe found: ``None`` when the relay answered.
        self._last: str | None = None
        self._checked = False
        self._probing: asyncio.Task[None] | None = None

    async def problem(self, wait: float) -> str | None:
        """What is wrong with the relay, or ``None``; waits at most ``wait`` seconds."""
        if (tripped := self._breaker.problem()) is not None:
            return tripped
        if self._probing is None and self._clock() - self._checked_at >= self._interval:
            self._probing = asyncio.create_task(self._probe(), name="notifier-relay-probe")
        if self._probing is not None:
            with suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._probing), wait)
        if not self._checked:
            return f"not known yet: the first probe is still waiting for the relay after {wait} s"
        return self._last

    async def close(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
            await asyncio.gather(self._probing, return_exceptions=True)

    async def _probe(self) -> None:
        try:
            await self._transport.probe()
        except DeliveryError as exc:
            self._last = f"probe failed: {exc}"
        else:
            self._last = None
        self._checked, self._checked_at = True, self._clock()
        self._probing = None
