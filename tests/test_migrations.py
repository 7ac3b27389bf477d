"""Upgrades: a database written by an earlier release opens, migrates and keeps
everything; one written by a later release is refused."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from notifier.domain import NotificationStatus, Priority
from notifier.errors import StoreError
from notifier.store import SQLiteStore
from notifier.store.sqlite import SCHEMA_VERSION

FIXTURES = Path(__file__).parent / "fixtures"
QUEUED = "01a00000-0000-7000-8000-000000000001"
SENT = "01a00000-0000-7000-8000-000000000002"


def database_from(dump: str, path: Path) -> Path:
    connection = sqlite3.connect(path)
    try:
        connection.executescript((FIXTURES / dump).read_text())
    finally:
        connection.close()
    return path


@pytest.mark.parametrize("dump", ["sqlite-schema-1.sql"])
async def test_a_database_of_an_earlier_schema_opens_with_nothing_lost(
    dump: str, tmp_path: Path
) -> None:
    path = database_from(dump, tmp_path / "notifier.db")
    store = SQLiteStore(path)
    await store.open()
    try:
        queued, sent = await store.get(QUEUED), await store.get(SENT)
        key = await store.find_idempotency("owner-1", "key-1")
        now = time.time()
        claimed = await store.claim(owner="b", now=now, lease_until=now + 60, limit=10)
        parts = await store.attachment_parts(QUEUED)
    finally:
        await store.close()
    with sqlite3.connect(path) as connection:
        version = connection.execute("PRAGMA user_version").fetchone()[0]

    assert version == SCHEMA_VERSION
    assert queued is not None
    assert sent is not None
    assert (queued.status, queued.acknowledged) == (NotificationStatus.QUEUED, True)
    # Columns added since: every earlier notification is normal priority, unscheduled.
    assert (queued.priority, queued.send_at) == (Priority.NORMAL, None)
    assert (queued.content.attachments, parts) == ((), [])
    assert (sent.status, sent.acknowledged) == (NotificationStatus.SENT, True)
    assert key is not None
    assert key.notification_id == SENT
    assert [n.id for n in claimed] == [QUEUED]  # still due, and the sent one is not


async def test_a_database_of_a_later_schema_is_refused(tmp_path: Path) -> None:
    path = database_from("sqlite-schema-1.sql", tmp_path / "notifier.db")
    with sqlite3.connect(path) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    store = SQLiteStore(path)
    with pytest.raises(StoreError, match="newer than this notifier"):
        await store.open()
    await store.close()
