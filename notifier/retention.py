"""Retention: forget, in small batches and in the background, what is past its keeping time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from notifier.errors import StoreError
from notifier.store import Store

log = logging.getLogger(__name__)

BATCH = 500
INTERVAL_SECONDS = 60.0


class Retention:
    """Purges idempotency keys past their window (the message lifetime plus a day)."""

    def __init__(
        self, store: Store, *, clock: Callable[[], float], interval: float = INTERVAL_SECONDS
    ) -> None:
        self._store = store
        self._clock = clock
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notifier-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def purge_once(self) -> int:
        """Purge until nothing is due; small batches keep each write transaction short."""
        total = 0
        while (purged := await self._store.purge_idempotency(now=self._clock(), limit=BATCH)) > 0:
            total += purged
            if purged < BATCH:
                break
        return total

    async def _run(self) -> None:
        while True:
            try:
                if purged := await self.purge_once():
                    log.info("forgot %d expired idempotency keys", purged)
            except StoreError as exc:
                log.error("retention pass failed: %s", exc)
            await asyncio.sleep(self._interval)
