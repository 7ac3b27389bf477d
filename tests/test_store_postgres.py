"""What only the PostgreSQL store has to hold: the database's clock, replicas opening
one database together, its schema version, and a password that never shows."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import psycopg
import pytest

from notifier.dispatch.ack import AckWriter
from notifier.domain import NotificationStatus, Priority
from notifier.errors import StoreError
from notifier.settings import Settings
from notifier.store.postgres import PostgresStore
from notifier.store.rows import INSERT_COLUMNS, to_row
from tests.conftest import DEADLINE_SECONDS, MakeSettings, notification, post, running_app, wait_for
from tests.smtp_server import ScriptedHandler
from tests.test_store import LEASE, make_notification

HOUR = 3600.0


async def test_a_replica_with_a_fast_clock_cannot_steal_a_lease(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        await store.add(make_notification())
        now = time.time()
        (leased,) = await store.claim(owner="a", now=now, lease_until=now + LEASE, limit=1)
        # An hour ahead, its own lease long over by its clock: not by the database's.
        ahead = now + HOUR
        stolen = await store.claim(owner="b", now=ahead, lease_until=ahead + LEASE, limit=1)
    finally:
        await store.close()

    assert leased.lease_owner == "a"
    assert stolen == []


async def test_a_retry_delay_counts_from_the_databases_clock(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        await store.add(make_notification())
        now = time.time()
        (claimed,) = await store.claim(owner="a", now=now, lease_until=now + LEASE, limit=1)
        # A replica whose clock is an hour behind defers for 60 s by its clock.
        claimed.status = NotificationStatus.DEFERRED
        claimed.updated_at = now - HOUR
        claimed.next_attempt_at = now - HOUR + 60
        await store.finish_attempt(claimed, lease_owner="a")
        early = await store.claim(owner="a", now=now, lease_until=now + LEASE, limit=1)
    finally:
        await store.close()

    assert early == []  # due in 60 s, not an hour ago


async def test_replicas_opening_a_new_database_together_make_one_schema(
    postgres_url: str,
) -> None:
    stores = [PostgresStore(postgres_url) for _ in range(4)]

    await asyncio.gather(*(s.open() for s in stores))
    try:
        await stores[0].add(make_notification())
        counts = [await s.count_pending() for s in stores]
    finally:
        await asyncio.gather(*(s.close() for s in stores))

    assert counts == [1, 1, 1, 1]


async def test_a_schema_newer_than_this_notifier_is_refused(postgres_url: str) -> None:
    first = PostgresStore(postgres_url)
    await first.open()
    await first.close()
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("UPDATE notifier_schema SET version = version + 1")

    with pytest.raises(StoreError, match="schema version 4 is newer than this notifier"):
        await PostgresStore(postgres_url).open()


async def test_a_database_of_the_first_schema_gains_priority_send_at_and_attachments(
    postgres_url: str,
) -> None:
    # Version 1 as the first release wrote it: without the columns of version 2 and the
    # table of version 3.
    first = PostgresStore(postgres_url)
    await first.open()
    await first.close()
    old = make_notification()
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("DROP TABLE attachments")
        connection.execute("DROP INDEX notifications_due_by_priority")
        connection.execute("ALTER TABLE notifications DROP COLUMN priority, DROP COLUMN send_at")
        connection.execute("UPDATE notifier_schema SET version = 1")
        columns = [c for c in INSERT_COLUMNS if c not in ("priority", "send_at", "visible_at")]
        row = to_row(old)
        connection.execute(
            f"INSERT INTO notifications ({', '.join(columns)}, visible_at) "
            f"VALUES ({', '.join(['%s'] * len(columns))}, 0)",
            [row[c] for c in columns],
        )

    store = PostgresStore(postgres_url)
    await store.open()
    try:
        kept = await store.get(old.id)
        now = time.time()
        claimed = await store.claim(owner="a", now=now, lease_until=now + LEASE, limit=5)
        parts = await store.attachment_parts(old.id)
    finally:
        await store.close()
    with psycopg.connect(postgres_url) as connection:
        version = connection.execute("SELECT version FROM notifier_schema").fetchone()

    assert version == (3,)
    assert parts == []
    assert kept is not None
    assert (kept.priority, kept.send_at, kept.content) == (Priority.NORMAL, None, old.content)
    assert [n.id for n in claimed] == [old.id]


async def test_an_unreachable_database_is_a_store_error_that_never_shows_the_password(
    postgres_url: str,
) -> None:
    where = postgres_url.split("@", 1)[1]  # host:port/database
    wrong = f"postgresql://nobody:s3cret-pw@{where}"
    unreachable = "postgresql://nobody:s3cret-pw@127.0.0.1:1/notifier"

    for url in (wrong, unreachable):
        with pytest.raises(StoreError) as refused:
            await PostgresStore(url, timeout=1.0).open()
        assert "s3cret-pw" not in str(refused.value)


def test_check_config_masks_the_database_password() -> None:
    settings = Settings(database_url="postgres://notifier:s3cret-pw@db.example:5432/notifier")

    shown = settings.masked()["NOTIFIER_DATABASE_URL"]

    assert shown == "postgres://notifier:********@db.example:5432/notifier"
    assert settings.database_kind == "postgresql"


async def test_a_notification_goes_through_the_service_on_postgresql(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler, postgres_url: str
) -> None:
    settings = make_settings(database_url=postgres_url)
    async with running_app(settings) as client:
        notification_id = await post(client)
        doc = await wait_for(client, notification_id)
        keyed = {"Idempotency-Key": "pg-1"}
        first = await client.post("/v1/notifications", json=notification(), headers=keyed)
        again = await client.post("/v1/notifications", json=notification(), headers=keyed)
        ready = await client.get("/readyz")

    assert doc["status"] == "sent"
    assert len(smtp_handler.received) >= 1
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert ready.status_code == 200


class Wakes:
    """Counts wake-ups; ``await wakes.after(n)`` returns once there have been more than n."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self._changed.set()

    async def after(self, seen: int) -> int:
        async with asyncio.timeout(DEADLINE_SECONDS):
            while self.count <= seen:
                self._changed.clear()
                await self._changed.wait()
        return self.count


async def test_new_work_another_replica_commits_wakes_a_listening_replica(
    postgres_url: str,
) -> None:
    accepting, listening = PostgresStore(postgres_url), PostgresStore(postgres_url)
    await accepting.open()
    await listening.open()
    wakes = Wakes()
    try:
        listening.listen(wakes)
        listened = await wakes.after(0)  # once listening: a re-poll for what came before
        await asyncio.gather(*(accepting.add(make_notification()) for _ in range(50)))
        woken = await wakes.after(listened)
        # The listening connection dies: the replica listens again, and re-polls.
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%%' AND datname = current_database()"
            )
        relistened = await wakes.after(woken)
        await accepting.add(make_notification())
        await wakes.after(relistened)
    finally:
        await accepting.close()
        await listening.close()

    # Fifty inserts that arrived together were announced in far fewer notifications.
    assert woken - listened < 50


async def test_lines_a_dead_replica_never_wrote_are_written_by_a_live_one(
    postgres_url: str, tmp_path: Path
) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    writer = AckWriter(tmp_path / "acks.jsonl", store, clock=time.time, sweep=(0.05, 0.5))
    try:
        await writer.start()
        # Accepted and finished by a replica that was killed before writing either line.
        orphan = make_notification()
        await store.add(orphan)
        now = time.time()
        (claimed,) = await store.claim(owner="dead", now=now, lease_until=now + LEASE, limit=1)
        claimed.status, claimed.updated_at = NotificationStatus.SENT, now
        await store.finish_attempt(claimed, lease_owner="dead")
        give_up = time.monotonic() + DEADLINE_SECONDS
        while await store.unacknowledged(limit=10, before=time.time()):
            assert time.monotonic() < give_up, "the live replica never wrote the lines"
            await asyncio.sleep(0.05)
    finally:
        await writer.stop()
        await store.close()

    lines = [json.loads(line) for line in (tmp_path / "acks.jsonl").read_text().splitlines()]
    assert [(line["id"], line["event"]) for line in lines] == [
        (orphan.id, "accepted"),
        (orphan.id, "sent"),
    ]


async def test_each_replica_enforces_a_keys_rate_limit_on_its_own(
    make_settings: MakeSettings, postgres_url: str
) -> None:
    # Documented in docs/scaling.md: with N replicas a key may make N times the limit.
    settings = make_settings(database_url=postgres_url, rate_limit_requests_per_minute=2)
    async with running_app(settings) as first, running_app(settings) as second:
        answers = [
            (await replica.get("/v1/notifications")).status_code
            for replica in (first, second)
            for _ in range(3)
        ]

    assert answers == [200, 200, 429, 200, 200, 429]


@pytest.mark.parametrize("prepared", [True, False])
async def test_prepared_statements_can_be_turned_off_for_pgbouncer(
    postgres_url: str, prepared: bool
) -> None:
    # Sequential calls, so the pool's one connection serves them all; prepared statements
    # are that session's own.
    store = PostgresStore(postgres_url, pool_size=2, prepared_statements=prepared)
    await store.open()
    try:
        n = make_notification()
        await store.add(n)
        for _ in range(10):
            assert await store.get(n.id) is not None
        row = await store._fetch_one("SELECT count(*) AS n FROM pg_prepared_statements")
    finally:
        await store.close()

    assert row is not None
    assert (row["n"] > 0) is prepared


async def test_a_replica_starting_on_an_up_to_date_schema_takes_no_table_lock(
    postgres_url: str,
) -> None:
    # Another replica's transaction holds a lock on the table (as cancel's SELECT ...
    # FOR UPDATE does before its UPDATE). Start-up DDL would queue behind it, and the
    # other replica's next statement behind the DDL: a deadlock. Up to date, none runs.
    first = PostgresStore(postgres_url)
    await first.open()
    await first.close()
    async with await psycopg.AsyncConnection.connect(postgres_url) as other:
        await other.execute("SELECT id FROM notifications FOR UPDATE")
        second = PostgresStore(postgres_url)
        await asyncio.wait_for(second.open(), DEADLINE_SECONDS)
        try:
            assert await second.count_pending() == 0
        finally:
            await second.close()
        await other.rollback()
