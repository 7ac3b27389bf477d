"""Retention: forget, in small batches and in the background, what is past its keeping time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from notifier.errors import StoreError
from notifier.store import Store

log = logging.getLogger(__name__)

BATCH = 500
INTERVAL_SECONDS = 60.0


class Retention:
    """Purges finished notifications older than ``keep`` seconds (once their final
    acknowledgment line is written) and idempotency keys past their window."""

    def __init__(
        self,
        store: Store,
        *,
        keep: float,
        clock: Callable[[], float],
        interval: float = INTERVAL_SECONDS,
    ) -> None:
        self._store = store
        self._keep = keep
        self._clock = clock
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notifier-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def purge_once(self) -> tuple[int, int]:
        """Purge until nothing is due: (notifications, keys) removed.

        Small batches keep each write transaction, and so each pause of other
        writers, short.
        """
        before = self._clock() - self._keep
        notifications = await _drain(lambda: self._store.purge_finished(before=before, limit=BATCH))
        keys = await _drain(lambda: self._store.purge_idempotency(now=self._clock(), limit=BATCH))
        return notifications, keys

    async def _run(self) -> None:
        while True:
            try:
                notifications, keys = await self.purge_once()
                if notifications or keys:
                    log.info("purged %d notifications and %d keys", notifications, keys)
            except StoreError as exc:
                log.error("retention pass failed: %s", exc)
            await asyncio.sleep(self._interval)


async def _drain(purge: Callable[[], Awaitable[int]]) -> int:
    total = 0
    while (purged := await purge()) > 0:
        total += purged
        if purged < BATCH:
            break
    return total
