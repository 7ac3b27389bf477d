"""Admission control: refuse new notifications while too many are undelivered."""

from __future__ import annotations

import asyncio
import time

from notifier.store import Store

#: How stale the pending count may be; between refreshes, local accepts are added on.
REFRESH_SECONDS = 0.5


class Backpressure:
    """Counts undelivered notifications cheaply: one indexed count per refresh period."""

    def __init__(self, store: Store, limit: int) -> None:
        self._store = store
        self.limit = limit
        self._count = 0
        self._counted_at = float("-inf")
        self._lock = asyncio.Lock()

    async def admits(self) -> bool:
        """Whether one more notification fits under the limit."""
        if time.monotonic() - self._counted_at > REFRESH_SECONDS and not self._lock.locked():
            async with self._lock:
                self._count = await self._store.count_pending()
                self._counted_at = time.monotonic()
        return self._count < self.limit

    def accepted(self) -> None:
        self._count += 1
