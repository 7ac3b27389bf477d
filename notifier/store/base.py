"""What every store backend provides; the dispatcher and the API see only this."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from notifier.domain import IdempotencyRecord, Notification, NotificationStatus, Priority


@dataclass(frozen=True)
class PageFilter:
    """What a page of the list is narrowed to; ``None`` narrows nothing."""

    owner: str | None = None
    status: NotificationStatus | None = None
    priority: Priority | None = None
    #: Epoch seconds, exclusive.
    created_after: float | None = None
    created_before: float | None = None
    #: An address among to, cc and bcc, in any case.
    recipient: str | None = None


#: No narrowing: every notification (the default of :meth:`Store.page`).
EVERYTHING = PageFilter()


class Store(Protocol):
    #: Whether this process is the only one sending from the database: then no lease
    #: taken before it started belongs to a live sender, and start-up releases them all.
    exclusive: bool

    async def open(self) -> None:
        """Create or migrate the schema and take ownership of the database."""

    async def close(self) -> None: ...

    def listen(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when another process commits new due work, as far as the
        backend can tell; a process's own work wakes its dispatcher directly."""

    async def ping(self) -> None:
        """Raise ``StoreError`` unless a query round-trips."""

    def write_failure(self) -> str | None:
        """Why the last write failed, until a write that changed rows commits again;
        ``None`` when healthy. A write that changes nothing proves nothing: it commits
        even on a full disk."""

    async def check_writable(self) -> None:
        """Commit a small write that changes a row; raise ``StoreError`` if it cannot.

        Clears :meth:`write_failure` when it succeeds, so readiness can find out by
        itself that the store recovered, whether or not anything else writes.
        """

    async def add(
        self, notification: Notification, idempotency: IdempotencyRecord | None = None
    ) -> IdempotencyRecord | None:
        """Commit a new notification (and its idempotency key, and its attachments'
        parts) once it is durable.

        If the key is already taken, nothing is stored and the existing record is returned.
        """

    async def add_many(
        self, notifications: Sequence[Notification], idempotency: IdempotencyRecord | None = None
    ) -> IdempotencyRecord | None:
        """Commit new notifications together, in one transaction, as :meth:`add` does one:
        all of them or none; nothing if the key is taken (the existing record is returned)."""

    async def attachment_parts(self, notification_id: str) -> list[bytes]:
        """The MIME parts of a notification's attachments, in order (none for one without,
        or one purged)."""

    async def find_idempotency(self, owner: str, key: str) -> IdempotencyRecord | None: ...

    async def purge_idempotency(self, *, now: float, limit: int) -> int:
        """Forget up to ``limit`` keys past their expiry; returns how many."""

    async def purge_finished(self, *, before: float, limit: int) -> int:
        """Delete up to ``limit`` finished, fully acknowledged notifications last changed
        before ``before``; returns how many."""

    async def cancel(self, notification_id: str, *, now: float) -> tuple[bool, Notification | None]:
        """Cancel if still queued or deferred; returns (cancelled, the notification as it is)."""

    async def requeue(
        self, notification_id: str, *, now: float, expires_at: float
    ) -> tuple[bool, Notification | None]:
        """Queue a failed or expired notification again; returns (requeued, the notification)."""

    async def count_pending(self) -> int:
        """Notifications not yet in a terminal state."""

    async def oldest_due(self) -> float | None:
        """When the longest-waiting notification that is not being sent became due."""

    async def get(self, notification_id: str) -> Notification | None: ...

    async def page(
        self, *, limit: int, before_id: str | None, filters: PageFilter = EVERYTHING
    ) -> list[Notification]:
        """Newest first, ids strictly below ``before_id``, narrowed by ``filters``."""

    async def claim(
        self,
        *,
        owner: str,
        now: float,
        lease_until: float,
        limit: int,
        can_wait: bool = False,
        oldest_first: int = 0,
    ) -> list[Notification]:
        """Lease up to ``limit`` due notifications to ``owner`` and mark them sending.

        Highest priority first, then longest due; but ``oldest_first`` of the ``limit``
        go to the longest due whatever their priority, so that low priority work moves
        while high priority work keeps coming.

        A notification found still ``sending`` under an expired lease gets an
        ``interrupted`` attempt appended before it is leased again. ``can_wait`` when
        the caller has work in hand meanwhile: the store may then batch the write.
        """

    async def finish_attempt(self, notification: Notification, *, lease_owner: str) -> bool:
        """Record the outcome of an attempt, fenced on the lease.

        Writes status, recipients, attempts, next attempt and last error only if the
        row is still leased to ``lease_owner`` for this ``attempt_count``; returns
        whether it was.
        """

    async def extend_leases(self, *, owner: str, ids: Sequence[str], until: float) -> None:
        """Push back the lease on notifications ``owner`` is still sending."""

    async def unclaim(self, *, owner: str, ids: Sequence[str]) -> int:
        """Give back claims of ``owner`` that never reached the relay: each is due again,
        ``queued`` or ``deferred`` as before, with no attempt counted; returns how many."""

    async def release_leases(self, *, now: float, owner: str | None = None) -> int:
        """Make ``sending`` notifications due now: ``owner``'s, or all (no sender alive)."""

    async def mark_acknowledged(self, *, accepted: Sequence[str], final: Sequence[str]) -> None:
        """Note that the acknowledgment lines of these notifications are on disk."""

    async def unacknowledged(self, *, limit: int, before: float) -> list[Notification]:
        """Notifications missing an acknowledgment line that is not queued for this run:
        the accepted line of one created before ``before``, or the final line of one that
        ended before ``before``."""
