"""The dispatcher: claims due notifications under a lease and sends them, concurrently.

Owned by the app's lifespan. It owns concurrency, retries and recovery; the store
owns the truth, so nothing it holds in memory is ever the only copy.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import suppress

from notifier.dispatch.ack import AckWriter
from notifier.dispatch.outcome import expire, open_recipients, settle
from notifier.dispatch.policy import RetryPolicy
from notifier.dispatch.transport import SMTPTransport
from notifier.domain import Notification
from notifier.errors import DeliveryError, PermanentDeliveryError, StoreError
from notifier.message import render
from notifier.store import Store

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        store: Store,
        transport: SMTPTransport,
        ack: AckWriter,
        policy: RetryPolicy,
        *,
        concurrency: int,
        lease_seconds: float,
        poll_interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._transport = transport
        self._ack = ack
        self._policy = policy
        self._concurrency = concurrency
        self._lease_seconds = lease_seconds
        self._poll_interval = poll_interval
        self._clock = clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        #: Send tasks and the notification each one holds the lease on.
        self._in_flight: dict[asyncio.Task[None], str] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self) -> None:
        """Look for due work now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="notifier-dispatcher"),
            asyncio.create_task(self._renew_leases(), name="notifier-lease-renewal"),
        ]

    async def stop(self) -> None:
        """Stop claiming, then abandon sends in flight; recovery resends them at the next start."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        in_flight = list(self._in_flight)
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            free = self._concurrency - len(self._in_flight)
            claimed = await self._claim(free) if free > 0 else []
            for notification in claimed:
                self._spawn(notification)
            if free > 0 and len(claimed) == free:
                continue
            timeout = self._poll_interval if free > len(claimed) else None
            # Not asyncio.wait_for: on 3.11 it can swallow a cancellation that races the wake.
            with suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _claim(self, limit: int) -> list[Notification]:
        now = self._clock()
        try:
            return await self._store.claim(
                owner=self.owner, now=now, lease_until=now + self._lease_seconds, limit=limit
            )
        except StoreError as exc:
            log.error("claiming due notifications failed: %s", exc)
            return []

    async def _renew_leases(self) -> None:
        """Keep leases ahead of long SMTP transactions, so no one reclaims a live send."""
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            if not self._in_flight:
                continue
            until = self._clock() + self._lease_seconds
            try:
                ids = list(self._in_flight.values())
                await self._store.extend_leases(owner=self.owner, ids=ids, until=until)
            except StoreError as exc:
                log.error("renewing leases failed: %s", exc)

    def _spawn(self, notification: Notification) -> None:
        task = asyncio.create_task(self._deliver(notification), name=f"send-{notification.id}")
        self._in_flight[task] = notification.id
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._wake.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("delivery task %s crashed", task.get_name(), exc_info=exc)

    async def _deliver(self, n: Notification) -> None:
        started_at = self._clock()
        if started_at >= n.expires_at:
            expire(n, started_at=started_at, now=started_at)
        else:
            await self._attempt(n, started_at)
        try:
            recorded = await self._store.finish_attempt(n, lease_owner=self.owner)
        except StoreError as exc:
            log.error("recording attempt %d of %s failed: %s", n.attempt_count, n.id, exc)
            return
        if not recorded:
            log.warning("lost the lease on %s; its outcome was not recorded", n.id)
            return
        log.info(
            "notification %s attempt %d: %s",
            n.id,
            n.attempt_count,
            n.status.value,
        )
        if n.status.terminal:
            self._ack.finished(n)

    async def _attempt(self, n: Notification, started_at: float) -> None:
        recipients = [r.address for r in open_recipients(n)]
        try:
            message = _render(n)
            report = await self._transport.send(n.content.sender.address, recipients, message)
        except DeliveryError as error:
            settle(n, started_at=started_at, now=self._clock(), policy=self._policy, error=error)
        else:
            settle(n, started_at=started_at, now=self._clock(), policy=self._policy, report=report)


def _render(n: Notification) -> bytes:
    try:
        return render(n.content, message_id=n.message_id, created_at=n.created_at)
    except (ValueError, UnicodeError) as exc:
        raise PermanentDeliveryError(f"the message could not be built: {exc}") from exc
