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
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from functools import partial

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_base

from notifier.attachments import with_attachments
from notifier.dispatch.ack import AckWriter
from notifier.dispatch.backoff import exponential, retried
from notifier.dispatch.breaker import RelayBreaker
from notifier.dispatch.outcome import end_reason, expire, open_recipients, settle
from notifier.dispatch.policy import RetryPolicy
from notifier.dispatch.smtp import SMTPTransport
from notifier.domain import Attempt, AttemptOutcome, Notification
from notifier.errors import DeliveryError, PermanentDeliveryError, StoreError
from notifier.logs import report_crash
from notifier.message import render
from notifier.metrics import Metrics
from notifier.store import Store

log = logging.getLogger(__name__)

#: Most notifications claimed at once. Each new send renders its message on the event
#: loop before its first await; claiming in small batches, with an await between
#: them, keeps every burst of that work to milliseconds however high the concurrency.
CLAIM_BATCH = 16
#: How many notifications are claimed ahead of the free connections. A claim waits for
#: a commit, which the store may put off for company (``store/writer.py``); this many
#: in hand keep every connection busy meanwhile (``benchmarks/LEVERS.md``).
CLAIM_AHEAD = 64
#: One claimed place in this many goes to the longest due notification whatever its
#: priority: low priority work keeps moving, at an eighth of the pace at least, while
#: high priority work keeps arriving.
OLDEST_SHARE = 8
#: How an outcome write the store refused is retried, unless told otherwise.
RECORD_RETRY_INITIAL = 0.5
RECORD_RETRY_MAX = 30.0


class Dispatcher:
    def __init__(
        self,
        store: Store,
        transport: SMTPTransport,
        ack: AckWriter,
        policy: RetryPolicy,
        breaker: RelayBreaker,
        metrics: Metrics,
        *,
        concurrency: int,
        lease_seconds: float,
        poll_interval: float,
        clock: Callable[[], float] = time.time,
        record_wait: wait_base | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._transport = transport
        self._ack = ack
        self._policy = policy
        self.breaker = breaker
        self._metrics = metrics
        self._concurrency = concurrency
        self._lease_seconds = lease_seconds
        self._poll_interval = poll_interval
        self._clock = clock
        self._record_wait = record_wait or exponential(RECORD_RETRY_INITIAL, RECORD_RETRY_MAX)
        self._sleep = sleep
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        #: Send tasks and the notification each one holds the lease on.
        self._in_flight: dict[asyncio.Task[None], str] = {}
        #: How many of them have not finished their SMTP exchange (or are waiting for it).
        self._unsent = 0
        self._oldest = OldestShare(OLDEST_SHARE)
        #: Notifications whose SMTP transaction has begun: the relay may have them.
        self._on_relay: set[str] = set()
        #: One per SMTP transaction allowed at once.
        self._slots = asyncio.Semaphore(concurrency)
        #: Shutting down: nothing new is claimed or handed to the relay.
        self._stopping = False
        self._claiming: asyncio.Task[None] | None = None
        self._renewing: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Look for due work now rather than at the next poll."""
        self._wake.set()

    def failure(self) -> str | None:
        """Why delivery has stopped for good (a loop of its ended by a bug), or ``None``.

        Nothing restarts the loops within the process: the process must be restarted.
        """
        for task in (self._claiming, self._renewing):
            if task is not None and task.done() and not self._stopping:
                exc = None if task.cancelled() else task.exception()
                return f"{task.get_name()} stopped: {exc!r}"
        return None

    def changed(self, n: Notification) -> None:
        """``n`` changed outside delivery (a cancel, a manual retry): count and acknowledge
        its end, or look for it now."""
        if n.status.terminal:
            self._ended(n)
        else:
            self.wake()

    def _ended(self, n: Notification) -> None:
        self._metrics.ended(n, end_reason(n), now=self._clock())
        self._ack.finished(n)

    async def start(self) -> None:
        self._claiming = asyncio.create_task(self._run(), name="notifier-dispatcher")
        self._renewing = asyncio.create_task(self._renew_leases(), name="notifier-leases")
        for task in (self._claiming, self._renewing):
            task.add_done_callback(report_crash)

    def stop_claiming(self) -> None:
        """Take no new work; sends in flight go on.

        A claim being committed runs to its end (cancelling it could lose what it
        claimed), and what it claimed is given back.
        """
        self._stopping = True
        self._wake.set()

    async def stop(self, grace: float) -> None:
        """Let sends in flight finish within ``grace`` seconds, then abandon the rest.

        Claims that never reached the relay are given back at once, with no attempt
        counted. Abandoned sends have their leases released, so the next process (or
        start) takes them over at once and records them as interrupted.
        """
        self.stop_claiming()
        if self._claiming is not None:
            await asyncio.gather(self._claiming, return_exceptions=True)
        waiting = {t: n for t, n in self._in_flight.items() if n not in self._on_relay}
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await self._unclaim(list(waiting.values()))
        pending: set[asyncio.Task[None]] = set()
        if self._in_flight:
            _, pending = await asyncio.wait(list(self._in_flight), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._renewing is not None:
            self._renewing.cancel()
            await asyncio.gather(self._renewing, return_exceptions=True)
        if pending:
            try:
                released = await self._store.release_leases(now=self._clock(), owner=self.owner)
            except StoreError as exc:
                log.error("shutdown: releasing unfinished sends failed: %s", exc)
            else:
                log.warning("shutdown grace over: released %d unfinished send(s)", released)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            # More is claimed than there are slots, so a slot that frees up starts its
            # next send at once instead of waiting for a claim to commit.
            free = min(
                self._concurrency + CLAIM_AHEAD - self._unsent,
                self._concurrency * 2 + CLAIM_AHEAD - len(self._in_flight),
                CLAIM_BATCH,
            )
            allowed = self.breaker.allowance(free)
            claimed = await self._claim(allowed) if allowed > 0 else []
            if self._stopping:
                await self._unclaim([n.id for n in claimed])
                return
            self.breaker.claimed(len(claimed))
            for notification in claimed:
                self._spawn(notification)
            if allowed > 0 and len(claimed) == allowed and allowed == free:
                continue
            with suppress(TimeoutError):
                # Not asyncio.wait_for: on 3.11 it can swallow a cancellation that races the wake.
                async with asyncio.timeout(self._idle_timeout(free)):
                    await self._wake.wait()

    async def _unclaim(self, ids: Sequence[str]) -> None:
        """Give back claims that never reached the relay: not a possible duplicate."""
        if not ids:
            return
        try:
            await self._store.unclaim(owner=self.owner, ids=ids)
        except StoreError as exc:
            # Their leases run out instead; the take-over then flags them, needlessly.
            log.error("giving back %d unsent claim(s) failed: %s", len(ids), exc)

    def _idle_timeout(self, free: int) -> float | None:
        """How long to sleep unless woken: until a slot frees, the breaker's probe, or a poll."""
        until_probe = self.breaker.seconds_until_probe()
        if until_probe is not None:
            return until_probe
        return self._poll_interval if free > 0 else None

    async def _claim(self, limit: int) -> list[Notification]:
        now = self._clock()
        try:
            return await self._store.claim(
                owner=self.owner,
                now=now,
                lease_until=now + self._lease_seconds,
                limit=limit,
                # With a connection idle, the claim is urgent; with more in hand, not.
                can_wait=self._unsent >= self._concurrency,
                oldest_first=self._oldest.of(limit),
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
        if (interrupted := _interrupted_by_claim(notification)) is not None:
            self._metrics.attempted(interrupted)
        task = asyncio.create_task(self._deliver(notification), name=f"send-{notification.id}")
        self._in_flight[task] = notification.id
        self._unsent += 1
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._on_relay.discard(self._in_flight.pop(task, ""))
        self._wake.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("delivery task %s crashed", task.get_name(), exc_info=exc)

    async def _deliver(self, n: Notification) -> None:
        """Send, then record the outcome; the slot is free for the next send meanwhile.

        Recording waits for a commit, while the SMTP connection is already back in the
        pool: holding the slot through it left the relay idle for that long each time.
        """
        try:
            started_at = self._clock()
            if started_at >= n.expires_at:
                self.breaker.probe_abandoned()
                expire(n, started_at=started_at, now=started_at)
            elif not await self._attempt(n):
                await self._unclaim([n.id])
                return
        finally:
            self._unsent -= 1
            self._wake.set()
        try:
            recorded = await self._record(n)
        except asyncio.CancelledError:
            log.error(
                "stopped before attempt %d of %s (%s) was recorded; the next start sends it "
                "again as a possible duplicate",
                n.attempt_count,
                n.id,
                n.status.value,
            )
            raise
        if not recorded:
            log.warning("lost the lease on %s; its outcome was not recorded", n.id)
            return
        attempt = n.attempts[-1]
        self._metrics.attempted(attempt)
        log.info(
            "notification %s attempt %d: %s",
            n.id,
            n.attempt_count,
            n.status.value,
            extra={
                "notification_id": n.id,
                "attempt": n.attempt_count,
                "status": n.status.value,
                "smtp_code": attempt.smtp_code,
                "relay_fault": attempt.relay_fault,
                "possible_duplicate": attempt.possible_duplicate,
            },
        )
        if n.status.terminal:
            self._ended(n)

    async def _record(self, n: Notification) -> bool:
        """Write the attempt's outcome, fenced on the lease; whether the lease still held.

        The relay has answered, so its answer must not be dropped: a store that refuses
        the write is retried with backoff until it takes it or shutdown ends the wait.
        The lease is renewed meanwhile, so a store back within it sends nothing twice.
        """
        return await retried(
            lambda: self._store.finish_attempt(n, lease_owner=self.owner),
            lambda: AsyncRetrying(
                retry=retry_if_exception_type(StoreError),
                wait=self._record_wait,
                sleep=self._sleep,
                before_sleep=partial(_record_failed, n),
            ),
        )

    async def _attempt(self, n: Notification) -> bool:
        """One SMTP transaction, settled into ``n``; ``False`` if shutdown came first.

        The attempt starts when its transaction does, once a connection is free, so its
        duration is the relay's time, not the wait for a slot.
        """
        recipients = [r.address for r in open_recipients(n)]
        started_at = self._clock()
        try:
            rendered = _render(n)
            message: bytes | list[bytes] = rendered
            async with self._slots:
                if n.content.attachments:
                    # Read in the slot: only sends under way hold their attachments.
                    parts = await self._attachment_parts(n)
                    if parts is None:
                        return False
                    message = _attached(n, rendered, parts)
                if self._stopping:
                    return False
                self._on_relay.add(n.id)
                started_at = self._clock()
                self._metrics.in_flight.inc()
                try:
                    with self._metrics.send_seconds.time():
                        report = await self._transport.send(
                            n.content.sender.address,
                            recipients,
                            message,
                            smtputf8=n.content.needs_smtputf8
                            or not all(map(str.isascii, recipients)),
                        )
                finally:
                    self._metrics.in_flight.dec()
        except DeliveryError as error:
            if error.relay:
                self.breaker.relay_failed(error)
                log.warning("relay fault, backing off: %s", error)
            else:
                self.breaker.relay_answered()
            settle(n, started_at=started_at, now=self._clock(), policy=self._policy, error=error)
        else:
            self.breaker.relay_answered()
            settle(n, started_at=started_at, now=self._clock(), policy=self._policy, report=report)
        return True

    async def _attachment_parts(self, n: Notification) -> list[bytes] | None:
        """The parts of ``n``'s attachments, read just before it is sent so that claims
        never hold them; ``None`` if shutdown came while the store could not answer."""
        try:
            return await retried(
                lambda: self._store.attachment_parts(n.id),
                lambda: AsyncRetrying(
                    retry=retry_if_exception_type(StoreError),
                    wait=self._record_wait,
                    sleep=self._sleep,
                    stop=lambda _: self._stopping,
                    reraise=True,
                ),
            )
        except StoreError:
            return None


def _attached(n: Notification, message: bytes, parts: list[bytes]) -> list[bytes]:
    if len(parts) != len(n.content.attachments):
        raise PermanentDeliveryError(
            f"{len(n.content.attachments)} attachments were accepted but the store holds "
            f"{len(parts)}"
        )
    return with_attachments(message, parts, seed=n.message_id)


def _record_failed(n: Notification, state: RetryCallState) -> None:
    failure = state.outcome.exception() if state.outcome else None
    log.error(
        "recording attempt %d of %s failed (try %d), retrying: %s",
        n.attempt_count,
        n.id,
        state.attempt_number,
        failure,
    )


def _interrupted_by_claim(n: Notification) -> Attempt | None:
    """The ``interrupted`` attempt the claim that handed us ``n`` has just recorded."""
    last = n.attempts[-1] if n.attempts else None
    if (
        last is not None
        and last.outcome is AttemptOutcome.INTERRUPTED
        and last.number == n.attempt_count - 1
    ):
        return last
    return None


def _render(n: Notification) -> bytes:
    try:
        return render(n.content, message_id=n.message_id, created_at=n.created_at)
    except (ValueError, UnicodeError) as exc:
        raise PermanentDeliveryError(f"the message could not be built: {exc}") from exc


class OldestShare:
    """How many places of each claim go to the longest due work, so that over any run of
    claims one in ``share`` does, however small each claim is (often one place)."""

    def __init__(self, share: int) -> None:
        self._share = share
        self._credit = 0.0

    def of(self, limit: int) -> int:
        self._credit += limit / self._share
        places = min(limit, int(self._credit))
        self._credit -= places
        return places
