"""The one notification every benchmark sends, and ways to put many of them in a store.

Notifications are built the way ``POST /v1/notifications`` builds them (the same
request model, content, recipients and Message-ID), so seeded rows are what the
service itself would have stored.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psycopg

from notifier.domain import (
    Address,
    Attempt,
    AttemptOutcome,
    Notification,
    RecipientStatus,
)
from notifier.message import message_id_for, render
from notifier.schemas import NotificationRequest
from notifier.store import SQLiteStore, Store
from notifier.store.postgres import PostgresStore

SENDER = "bench@example.com"
LIFETIME = 3 * 24 * 3600.0

#: A typical transactional notification: one recipient, a subject, a short text body.
BODY: dict[str, Any] = {
    "to": [{"address": "ada.lovelace@example.com", "name": "Ada Lovelace"}],
    "subject": "Your monthly report is ready",
    "text": (
        "Hello Ada,\n\n"
        "your report for March is ready. It covers 42 projects, 17 of them new this month,\n"
        "and 3 that need your attention before Friday. Open the dashboard to read it:\n"
        "https://reports.example.com/r/2026-03/ada\n\n"
        "-- \nThe reports team\n"
    ),
    "metadata": {"report_id": 4217, "tenant": "acme"},
}
BODY_BYTES = json.dumps(BODY, separators=(",", ":")).encode()


def request(**changes: Any) -> NotificationRequest:
    """The benchmark notification's request, with ``changes`` to its fields."""
    return NotificationRequest.model_validate({**BODY, **changes})


def notification(now: float, body: NotificationRequest | None = None) -> Notification:
    """A new ``queued`` notification, as the POST route makes it."""
    return (body or request()).to_notification(Address(SENDER), now=now, lifetime=LIFETIME)


def envelope() -> tuple[str, list[str]]:
    """MAIL FROM and RCPT TO of the benchmark notification."""
    return SENDER, [r.address for r in request().recipients()]


def rendered(n: Notification) -> bytes:
    """The wire bytes notifier's dispatcher would send for ``n``."""
    return render(n.content, message_id=n.message_id, created_at=n.created_at)


def seed_queued(db: Path, count: int, *, priority: str = "normal") -> list[str]:
    """Add ``count`` queued notifications through notifier's own store; returns their ids.

    The "accepted" acknowledgment is marked as written, as it would be by the time a
    backlog is delivered, so the start-up catch-up does not compete with delivery.
    """
    ids = asyncio.run(_seed_queued(SQLiteStore(db), count, priority))
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE notifications SET ack_accepted = 1 WHERE ack_accepted = 0")
    connection.close()
    return ids


def seed_queued_postgres(url: str, count: int, *, priority: str = "normal") -> list[str]:
    """:func:`seed_queued` into the PostgreSQL database at ``url``."""
    ids = asyncio.run(_seed_queued(PostgresStore(url), count, priority))
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("UPDATE notifications SET ack_accepted = true WHERE NOT ack_accepted")
    return ids


async def _seed_queued(store: Store, count: int, priority: str) -> list[str]:
    await store.open()
    body = request(priority=priority)
    ids: list[str] = []
    try:
        for start in range(0, count, 1000):
            now = time.time()
            batch = [notification(now, body) for _ in range(min(1000, count - start))]
            await asyncio.gather(*(store.add(n) for n in batch))
            ids += [n.id for n in batch]
    finally:
        await store.close()
    return ids


def create_schema(db: Path) -> None:
    """The schema exactly as notifier creates it (its store runs the migration)."""

    async def migrate() -> None:
        store = SQLiteStore(db)
        await store.open()
        await store.close()

    asyncio.run(migrate())


def seed_terminal(db: Path, count: int) -> None:
    """Insert ``count`` ``sent`` rows (no longer due, both acknowledgments written).

    Bulk-inserted with executemany, oldest first, ids sorting by creation time like
    notifier's UUIDv7s; each row carries the content, recipients and attempt a real
    delivered notification has.
    """
    create_schema(db)
    body = request()
    end = time.time() - 3600.0
    step = 0.25
    template = notification(end, body)
    for recipient in template.recipients:
        recipient.status = RecipientStatus.SENT
        recipient.smtp_code = 250
        recipient.smtp_message = "OK"
    content = _dump(asdict(template.content))
    recipients = _dump([asdict(r) for r in template.recipients])
    metadata = _dump(template.metadata)
    sql = (
        "INSERT INTO notifications (id, owner, status, content, recipients, attempts, metadata,"
        " message_id, created_at, updated_at, expires_at, visible_at, next_attempt_at,"
        " attempt_count, ack_accepted, ack_final)"
        " VALUES (?, NULL, 'sent', ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, 1, 1, 1)"
    )

    def rows(first: int, last: int) -> list[tuple[object, ...]]:
        out: list[tuple[object, ...]] = []
        for i in range(first, last):
            created = end - (count - i) * step
            notification_id = _uuid7(created)
            attempt = Attempt(1, created + 0.002, created + 0.006, AttemptOutcome.SENT, 250, "OK")
            out.append(
                (
                    notification_id,
                    content,
                    recipients,
                    _dump([asdict(attempt)]),
                    metadata,
                    message_id_for(notification_id, SENDER),
                    created,
                    created + 0.006,
                    created + LIFETIME,
                )
            )
        return out

    connection = sqlite3.connect(db, isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous = OFF")
        chunk = 50_000
        for first in range(0, count, chunk):
            connection.execute("BEGIN")
            connection.executemany(sql, rows(first, min(count, first + chunk)))
            connection.execute("COMMIT")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()


def pending_count(db: Path) -> int:
    """Undelivered notifications, counted the way notifier's back-pressure counts them."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = connection.execute(
            "SELECT count(*) FROM notifications WHERE visible_at IS NOT NULL"
        ).fetchone()
        return int(row[0])
    finally:
        connection.close()


def statuses(db: Path, ids: list[str] | None = None) -> dict[str, tuple[str, float]]:
    """Status and ``updated_at`` of each notification (or of ``ids``), read-only."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = connection.execute("SELECT id, status, updated_at FROM notifications").fetchall()
    finally:
        connection.close()
    found = {str(r[0]): (str(r[1]), float(r[2])) for r in rows}
    if ids is None:
        return found
    return {i: found[i] for i in ids if i in found}


def count_status(db: Path, status: str) -> int:
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = connection.execute(
            "SELECT count(*) FROM notifications WHERE status = ?", (status,)
        ).fetchone()
        return int(row[0])
    finally:
        connection.close()


def _dump(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _uuid7(at: float) -> str:
    """A UUIDv7 for time ``at``, laid out as :func:`notifier.domain.new_id` lays it out."""
    nanos_total = int(at * 1e9)
    millis, nanos = divmod(nanos_total, 1_000_000)
    fraction = nanos * 4096 // 1_000_000
    random_bits = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (millis << 80) | (0x7 << 76) | (fraction << 64) | (0b10 << 62) | random_bits
    return str(uuid.UUID(int=value))
