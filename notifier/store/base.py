"""What every store backend provides; the dispatcher and the API see only this."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from notifier.domain import Notification, NotificationStatus


class Store(Protocol):
    async def open(self) -> None:
        """Create or migrate the schema and take ownership of the database."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise ``StoreError`` unless a query round-trips."""

    async def add(self, notification: Notification) -> None:
        """Commit a new notification; returns only once it is durable."""

    async def get(self, notification_id: str) -> Notification | None: ...

    async def page(
        self, *, status: NotificationStatus | None, limit: int, before_id: str | None
    ) -> list[Notification]:
        """Newest first, ids strictly below ``before_id`` when given."""

    async def claim(
        self, *, owner: str, now: float, lease_until: float, limit: int
    ) -> list[Notification]:
        """Lease up to ``limit`` due notifications to ``owner`` and mark them sending.

        A notification found still ``sending`` under an expired lease gets an
        ``interrupted`` attempt appended before it is leased again.
        """

    async def finish_attempt(self, notification: Notification, *, lease_owner: str) -> bool:
        """Record the outcome of an attempt, fenced on the lease.

        Writes status, recipients, attempts, next attempt and last error only if the
        row is still leased to ``lease_owner`` for this ``attempt_count``; returns
        whether it was.
        """

    async def extend_leases(self, *, owner: str, ids: Sequence[str], until: float) -> None:
        """Push back the lease on notifications ``owner`` is still sending."""

    async def release_leases(self, *, now: float) -> int:
        """Make every ``sending`` notification due now; used when no sender can be alive."""

    async def mark_acknowledged(self, *, accepted: Sequence[str], final: Sequence[str]) -> None:
        """Note that the acknowledgment lines of these notifications are on disk."""

    async def unacknowledged(self, *, limit: int) -> list[Notification]:
        """Notifications whose accepted or terminal acknowledgment line is missing."""
