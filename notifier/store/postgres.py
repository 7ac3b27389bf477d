"""The scale-out store: one PostgreSQL database shared by any number of replicas.

PostgreSQL is the coordinator; replicas never talk to each other. A claim locks the
rows it takes (``FOR UPDATE SKIP LOCKED`` in a materialised CTE, so two replicas never
take the same row and the ``LIMIT`` holds) and marks them in the same statement. Every
write after a claim is fenced on (id, lease owner, attempt), as in SQLite.

Leases and due times are judged by the database's clock, never a replica's: a replica
hands over durations (a lease's length, a retry's delay) and the database adds them to
its own ``now``, so clock skew between machines cannot steal a lease or hold a retry
back. Times a replica records for people to read (``created_at``, an attempt's
``started_at``) stay on its clock.

Inserts without an ``Idempotency-Key`` that arrive together share one statement and one
commit, and so do attempts' outcomes (:class:`_Batches`), as SQLite's writer thread
does. psycopg 3 rather than
asyncpg: claims cost the same with both, and psycopg works behind PgBouncer in
transaction mode with no settings (``docs/scaling.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, Generic, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from notifier.domain import (
    AttemptOutcome,
    IdempotencyRecord,
    Notification,
    NotificationStatus,
)
from notifier.errors import StoreError
from notifier.settings import redacted_url
from notifier.store.base import EVERYTHING, PageFilter
from notifier.store.rows import (
    INSERT_COLUMNS,
    INTERRUPTED,
    attempts_json,
    claim_order,
    dump,
    from_row,
    page_filter,
    recipients_json,
    to_row,
)

T = TypeVar("T")
Item = TypeVar("Item")
Result = TypeVar("Result")

log = logging.getLogger(__name__)

#: The channel a commit of new due work is announced on: one NOTIFY per transaction.
CHANNEL = "notifier_due"
NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"
#: Seconds between attempts to listen again after the listening connection was lost.
RELISTEN_INITIAL = 0.5
RELISTEN_MAX = 30.0
#: libpq's TCP keepalives on the listening connection, which otherwise only reads: a
#: connection that died without a word is noticed within about a minute.
KEEPALIVE_IDLE = 30
KEEPALIVE_INTERVAL = 10

#: 1: the first schema. 2: priority and send_at. 3: attachments (both issue 16).
SCHEMA_VERSION = 3
#: ``pg_advisory_xact_lock`` key that serialises schema changes of replicas starting at once.
MIGRATION_LOCK = 0x6E6F7469  # "noti"
#: The database's clock, in the epoch seconds every time column holds.
NOW = "extract(epoch FROM statement_timestamp())"

SCHEMA = """
CREATE TABLE IF NOT EXISTS notifier_schema (
    id integer PRIMARY KEY CHECK (id = 1),
    version integer NOT NULL
);
CREATE TABLE IF NOT EXISTS notifications (
    id text PRIMARY KEY,
    owner text,
    status text NOT NULL,
    content text NOT NULL,
    recipients text NOT NULL,
    attempts jsonb NOT NULL DEFAULT '[]',
    metadata text NOT NULL,
    message_id text NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    visible_at double precision,
    next_attempt_at double precision,
    attempt_count integer NOT NULL DEFAULT 0,
    last_error text,
    lease_owner text,
    lease_started_at double precision,
    budget_from integer NOT NULL DEFAULT 0,
    ack_accepted boolean NOT NULL DEFAULT false,
    ack_final boolean
) WITH (fillfactor = 80);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    owner text NOT NULL,
    key text NOT NULL,
    request_hash text NOT NULL,
    notification_id text NOT NULL,
    response text NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys (expires_at);
CREATE INDEX IF NOT EXISTS notifications_due
    ON notifications (visible_at) WHERE visible_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS notifications_status ON notifications (status, id);
CREATE INDEX IF NOT EXISTS notifications_owner ON notifications (owner, id);
CREATE INDEX IF NOT EXISTS notifications_finished
    ON notifications (updated_at) WHERE visible_at IS NULL;
CREATE INDEX IF NOT EXISTS notifications_unacknowledged
    ON notifications (id) WHERE NOT ack_accepted OR NOT ack_final;
CREATE TABLE IF NOT EXISTS heartbeat (
    id integer PRIMARY KEY CHECK (id = 1),
    at double precision NOT NULL
);
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS priority smallint NOT NULL DEFAULT 1;
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS send_at double precision;
CREATE INDEX IF NOT EXISTS notifications_due_by_priority
    ON notifications (priority, visible_at) WHERE visible_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS attachments (
    notification_id text NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    position integer NOT NULL,
    part bytea NOT NULL,
    PRIMARY KEY (notification_id, position)
);
"""

_COLUMNS = ", ".join(INSERT_COLUMNS)
_TYPES = {
    "created_at": "double precision",
    "updated_at": "double precision",
    "expires_at": "double precision",
    "visible_at": "double precision",
    "send_at": "double precision",
    "priority": "smallint",
}
#: Due from the database's ``now``, or at the ``send_at`` asked for.
_DUE = f"COALESCE(send_at, {NOW})"
#: A batch of new notifications in one statement: ``%s`` is a JSON array of row objects.
_SELECTED = ", ".join(_DUE if c == "visible_at" else c for c in INSERT_COLUMNS)
_RECORD = ", ".join(f"{c} {_TYPES.get(c, 'text')}" for c in INSERT_COLUMNS)
BULK_INSERT = f"""
WITH inserted AS (
    INSERT INTO notifications ({_COLUMNS})
    SELECT {_SELECTED} FROM jsonb_to_recordset(%s::jsonb) AS r({_RECORD})
    RETURNING 1
)
SELECT count(*) AS inserted, pg_notify('{CHANNEL}', '') FROM inserted
"""  # noqa: S608 - the column names are constants


#: ``%b``: the part goes to the server as binary, not as twice as long hex text.
INSERT_PART = "INSERT INTO attachments (notification_id, position, part) VALUES (%s, %s, %b)"

INSERT_KEY = """
INSERT INTO idempotency_keys (owner, key, request_hash, notification_id, response, expires_at)
VALUES (%(owner)s, %(key)s, %(request_hash)s, %(notification_id)s, %(response)s, %(expires_at)s)
ON CONFLICT (owner, key) DO NOTHING
"""

#: Leases due work: ``by_priority`` rows by priority then due time, ``oldest_first`` by
#: due time alone (so low priority work is never starved); a row still ``sending`` (its
#: lease ran out) gets an ``interrupted`` attempt first. The CTEs are materialised so
#: that their LIMITs hold.
CLAIM = f"""
WITH by_priority AS MATERIALIZED (
    SELECT id FROM notifications
    WHERE visible_at <= {NOW}
    ORDER BY priority, visible_at
    LIMIT %(by_priority)s
    FOR UPDATE SKIP LOCKED
), oldest AS MATERIALIZED (
    -- Rows this statement locked above are not skipped by SKIP LOCKED: left out by hand.
    SELECT id FROM notifications
    WHERE visible_at <= {NOW} AND id NOT IN (SELECT id FROM by_priority)
    ORDER BY visible_at
    LIMIT %(oldest_first)s
    FOR UPDATE SKIP LOCKED
), due AS (
    SELECT id FROM by_priority UNION ALL SELECT id FROM oldest
)
UPDATE notifications AS n SET
    attempts = CASE WHEN n.status = 'sending' THEN n.attempts || jsonb_build_array(
        jsonb_build_object(
            'number', n.attempt_count, 'started_at', n.lease_started_at,
            'finished_at', %(now)s, 'outcome', %(interrupted_outcome)s::text,
            'smtp_code', NULL, 'message', %(interrupted)s::text,
            'relay_fault', false, 'possible_duplicate', true))
        ELSE n.attempts END,
    status = 'sending',
    lease_owner = %(owner)s,
    lease_started_at = %(now)s,
    visible_at = {NOW} + %(lease)s,
    attempt_count = n.attempt_count + 1,
    updated_at = %(now)s
FROM due
WHERE n.id = due.id
RETURNING n.*
"""  # noqa: S608 - NOW is a constant

UNCLAIM = f"""
UPDATE notifications SET
    status = CASE WHEN attempt_count - 1 > budget_from THEN 'deferred' ELSE 'queued' END,
    attempt_count = attempt_count - 1,
    lease_owner = NULL,
    lease_started_at = NULL,
    visible_at = {NOW}
WHERE status = 'sending' AND lease_owner = %(owner)s AND id = ANY(%(ids)s)
"""  # noqa: S608 - NOW is a constant

#: Attempts' outcomes, a batch in one statement: ``%s`` is a JSON array of objects, one
#: per outcome. Each is written only if its lease still holds (same owner, same attempt);
#: the ordinals (``i``) returned are those of the outcomes written. A retry's
#: ``visible_at`` is the database's ``now`` plus the retry's delay.
FINISH_BATCH = f"""
UPDATE notifications AS n SET
    status = b.status, recipients = b.recipients, attempts = b.attempts::jsonb,
    visible_at = CASE WHEN b.terminal THEN NULL ELSE {NOW} + b.delay END,
    next_attempt_at = b.next_attempt_at,
    last_error = b.last_error, updated_at = b.updated_at,
    lease_owner = NULL, lease_started_at = NULL,
    ack_final = CASE WHEN b.terminal THEN false ELSE NULL END
FROM jsonb_to_recordset(%s::jsonb) AS b(
    id text, status text, recipients text, attempts text, terminal boolean,
    delay double precision, next_attempt_at double precision, last_error text,
    updated_at double precision, lease_owner text, attempt_count integer, i integer)
WHERE n.id = b.id AND n.lease_owner = b.lease_owner AND n.attempt_count = b.attempt_count
RETURNING b.i
"""  # noqa: S608 - NOW is a constant

REWRITE = f"""
UPDATE notifications SET
    status = %(status)s, recipients = %(recipients)s,
    visible_at = CASE WHEN %(terminal)s THEN NULL ELSE {NOW} END,
    next_attempt_at = NULL, expires_at = %(expires_at)s, last_error = %(last_error)s,
    updated_at = %(updated_at)s, budget_from = %(budget_from)s,
    ack_final = CASE WHEN %(terminal)s THEN false ELSE NULL END
WHERE id = %(id)s
"""  # noqa: S608 - NOW is a constant

#: A page's recipient filter: the address among the notification's recipients, in any
#: case (a scan of the rows the other filters leave, not an index).
RECIPIENT_CLAUSE = (
    "EXISTS (SELECT 1 FROM jsonb_array_elements(recipients::jsonb) AS r "
    "WHERE lower(r ->> 'address') = lower(%s::text))"
)

#: Rows one batched statement takes at most.
MAX_BATCH = 512
#: Batched statements of one kind in flight at once, each on its own pooled connection.
MAX_BATCHES_IN_FLIGHT = 4


def connection_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` URLs as libpq takes them."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


class PostgresStore:
    """The :class:`~notifier.store.base.Store` on PostgreSQL, shared by replicas."""

    #: Other replicas may be sending: leases are left to run out, never released by start-up.
    exclusive = False

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        timeout: float = 5.0,
        prepared_statements: bool = True,
    ) -> None:
        self._url = connection_url(url)
        self._pool_size = pool_size
        # psycopg prepares a statement on a connection once it has run it five times;
        # None never does, as a PgBouncer in transaction mode may require.
        self._prepare_threshold: int | None = 5 if prepared_statements else None
        self._timeout = timeout
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]] | None = None
        self._failure: str | None = None
        self._inserts: _Batches[dict[str, Any], None] = _Batches(self._insert_batch)
        self._outcomes: _Batches[dict[str, Any], bool] = _Batches(self._finish_batch)
        self._listener: asyncio.Task[None] | None = None

    async def open(self) -> None:
        pool: AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]] = AsyncConnectionPool(
            self._url,
            min_size=1,
            max_size=self._pool_size,
            open=False,
            timeout=self._timeout,
            kwargs={
                "row_factory": dict_row,
                "connect_timeout": max(1, round(self._timeout)),
                "prepare_threshold": self._prepare_threshold,
                # A statement alone is its own transaction: no BEGIN and COMMIT round
                # trips around it. Jobs of several statements ask for a transaction.
                "autocommit": True,
            },
            connection_class=psycopg.AsyncConnection[dict[str, Any]],
            name="notifier",
        )
        try:
            await pool.open(wait=True, timeout=self._timeout)
        except (PoolTimeout, psycopg.Error) as exc:
            await pool.close()
            raise StoreError(f"cannot connect to PostgreSQL: {_reason(exc)}") from None
        self._pool = pool
        try:
            await self._run(_migrate, atomic=True)
        except BaseException:
            await self.close()
            raise

    def listen(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever any replica commits new due work, and after each
        reconnect of the listening connection (what was committed meanwhile was missed).

        A hint only: a notification can be lost with its connection, so the dispatcher
        keeps polling as well.
        """
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(wake), name="notifier-listen")

    async def _listen(self, wake: Callable[[], None]) -> None:
        delay = RELISTEN_INITIAL
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(
                    self._url,
                    autocommit=True,
                    connect_timeout=max(1, round(self._timeout)),
                    keepalives=1,
                    keepalives_idle=KEEPALIVE_IDLE,
                    keepalives_interval=KEEPALIVE_INTERVAL,
                )
                async with connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    delay = RELISTEN_INITIAL
                    wake()
                    async for _ in connection.notifies():
                        wake()
            except psycopg.Error as exc:
                log.warning(
                    "listening for new work stopped (%s); polling meanwhile, again in %.1f s",
                    _reason(exc),
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RELISTEN_MAX)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self._inserts.drain()
        await self._outcomes.drain()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1"))

    def write_failure(self) -> str | None:
        return self._failure

    async def check_writable(self) -> None:
        sql = (
            f"INSERT INTO heartbeat (id, at) VALUES (1, {NOW}) "  # noqa: S608 - constant
            "ON CONFLICT (id) DO UPDATE SET at = excluded.at"
        )
        await self._write(lambda c: c.execute(sql))

    async def add(
        self, notification: Notification, idempotency: IdempotencyRecord | None = None
    ) -> IdempotencyRecord | None:
        if idempotency is None and not notification.attachment_parts:
            await self._inserts.add(to_row(notification))
            return None
        return await self.add_many([notification], idempotency)

    async def add_many(
        self, notifications: Sequence[Notification], idempotency: IdempotencyRecord | None = None
    ) -> IdempotencyRecord | None:
        rows = [to_row(n) for n in notifications]
        payload = dump([{c: row[c] for c in INSERT_COLUMNS} for row in rows])

        async def insert(c: psycopg.AsyncConnection[dict[str, Any]]) -> IdempotencyRecord | None:
            if idempotency is not None:
                # A concurrent insert of the same key (another replica's) waits here for
                # that transaction, then finds the key taken: the unique key decides.
                taken = (await c.execute(INSERT_KEY, asdict(idempotency))).rowcount == 0
                if taken:
                    return await _find_key(c, idempotency.owner, idempotency.key)
            await c.execute(BULK_INSERT, (payload,))  # announces them too
            for n in notifications:
                await _insert_parts(c, n)
            return None

        return await self._write(insert, atomic=True)

    async def find_idempotency(self, owner: str, key: str) -> IdempotencyRecord | None:
        return await self._run(lambda c: _find_key(c, owner, key))

    async def purge_idempotency(self, *, now: float, limit: int) -> int:
        sql = (
            "DELETE FROM idempotency_keys WHERE (owner, key) IN (SELECT owner, key "
            "FROM idempotency_keys WHERE expires_at < %s ORDER BY expires_at LIMIT %s "
            "FOR UPDATE SKIP LOCKED)"
        )
        return await self._write(_rowcount(sql, (now, limit)))

    async def purge_finished(self, *, before: float, limit: int) -> int:
        sql = (
            "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications "
            "WHERE visible_at IS NULL AND updated_at < %s AND ack_final "
            "ORDER BY updated_at LIMIT %s FOR UPDATE SKIP LOCKED)"
        )
        return await self._write(_rowcount(sql, (before, limit)))

    async def attachment_parts(self, notification_id: str) -> list[bytes]:
        sql = "SELECT part FROM attachments WHERE notification_id = %s ORDER BY position"

        async def fetch(c: psycopg.AsyncConnection[dict[str, Any]]) -> list[bytes]:
            # Binary results: bytea as text would arrive as hex, twice its size.
            async with c.cursor(binary=True) as cursor:
                await cursor.execute(sql, (notification_id,))
                return [bytes(row["part"]) for row in await cursor.fetchall()]

        return await self._run(fetch)

    async def cancel(self, notification_id: str, *, now: float) -> tuple[bool, Notification | None]:
        def change(n: Notification) -> bool:
            if not n.cancellable:
                return False
            n.status = NotificationStatus.CANCELLED
            n.last_error = "cancelled by request"
            n.updated_at = now
            return True

        return await self._write(lambda c: _rewrite(c, notification_id, change), atomic=True)

    async def requeue(
        self, notification_id: str, *, now: float, expires_at: float
    ) -> tuple[bool, Notification | None]:
        def change(n: Notification) -> bool:
            if not n.retryable:
                return False
            n.reopen(now=now, expires_at=expires_at)
            return True

        async def requeue(
            c: psycopg.AsyncConnection[dict[str, Any]],
        ) -> tuple[bool, Notification | None]:
            result = await _rewrite(c, notification_id, change)
            if result[0]:
                await c.execute(NOTIFY)
            return result

        return await self._write(requeue, atomic=True)

    async def oldest_due(self) -> float | None:
        sql = (
            "SELECT visible_at FROM notifications WHERE visible_at IS NOT NULL "
            "AND status != 'sending' ORDER BY visible_at LIMIT 1"
        )
        row = await self._fetch_one(sql)
        return None if row is None else float(row["visible_at"])

    async def count_pending(self) -> int:
        row = await self._fetch_one(
            "SELECT count(*) AS n FROM notifications WHERE visible_at IS NOT NULL"
        )
        assert row is not None
        return int(row["n"])

    async def get(self, notification_id: str) -> Notification | None:
        row = await self._fetch_one("SELECT * FROM notifications WHERE id = %s", (notification_id,))
        return None if row is None else from_row(row)

    async def page(
        self, *, limit: int, before_id: str | None, filters: PageFilter = EVERYTHING
    ) -> list[Notification]:
        where, params = page_filter("%s", filters, before_id, recipient_clause=RECIPIENT_CLAUSE)
        sql = f"SELECT * FROM notifications {where} ORDER BY id DESC LIMIT %s"  # noqa: S608
        rows = await self._fetch_all(sql, (*params, limit))
        return [from_row(r) for r in rows]

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
        params = {
            "owner": owner,
            "now": now,
            "lease": lease_until - now,
            "by_priority": limit - oldest_first,
            "oldest_first": oldest_first,
            "interrupted": INTERRUPTED,
            "interrupted_outcome": AttemptOutcome.INTERRUPTED.value,
        }

        async def claim(c: psycopg.AsyncConnection[dict[str, Any]]) -> list[dict[str, Any]]:
            return await (await c.execute(CLAIM, params)).fetchall()

        rows = await self._write(claim)
        claimed = [from_row(r) for r in rows]
        claimed.sort(key=claim_order)
        return claimed

    async def finish_attempt(self, notification: Notification, *, lease_owner: str) -> bool:
        n = notification
        return await self._outcomes.add(
            {
                "id": n.id,
                "status": n.status.value,
                "recipients": recipients_json(n.recipients),
                "attempts": attempts_json(n.attempts),
                "terminal": n.status.terminal,
                # The retry's delay, from the moment the outcome was judged (on this
                # replica's clock): the database adds it to its own now.
                "delay": max(0.0, (n.next_attempt_at or n.updated_at) - n.updated_at),
                "next_attempt_at": n.next_attempt_at,
                "last_error": n.last_error,
                "updated_at": n.updated_at,
                "lease_owner": lease_owner,
                "attempt_count": n.attempt_count,
            }
        )

    async def extend_leases(self, *, owner: str, ids: Sequence[str], until: float) -> None:
        sql = (
            f"UPDATE notifications SET visible_at = {NOW} + %s WHERE lease_owner = %s "  # noqa: S608
            "AND status = 'sending' AND id = ANY(%s)"
        )
        await self._write(_rowcount(sql, (until - time.time(), owner, list(ids))))

    async def unclaim(self, *, owner: str, ids: Sequence[str]) -> int:
        return await self._write(
            _rowcount(UNCLAIM, {"owner": owner, "ids": list(ids)}, announce=True)
        )

    async def release_leases(self, *, now: float, owner: str | None = None) -> int:
        sql = f"UPDATE notifications SET visible_at = {NOW} WHERE status = 'sending'"  # noqa: S608
        params: tuple[object, ...] = ()
        if owner is not None:
            sql += " AND lease_owner = %s"
            params = (owner,)
        return await self._write(_rowcount(sql, params, announce=True))

    async def mark_acknowledged(self, *, accepted: Sequence[str], final: Sequence[str]) -> None:
        async def mark(c: psycopg.AsyncConnection[dict[str, Any]]) -> int:
            changed = 0
            if accepted:
                changed += (
                    await c.execute(
                        "UPDATE notifications SET ack_accepted = true WHERE id = ANY(%s)",
                        (list(accepted),),
                    )
                ).rowcount
            if final:
                changed += (
                    await c.execute(
                        "UPDATE notifications SET ack_final = true "
                        "WHERE ack_final = false AND id = ANY(%s)",
                        (list(final),),
                    )
                ).rowcount
            return changed

        await self._write(mark)

    async def unacknowledged(self, *, limit: int, before: float) -> list[Notification]:
        sql = (
            "SELECT * FROM notifications WHERE (NOT ack_accepted OR NOT ack_final) "
            "AND ((NOT ack_accepted AND created_at < %s) OR (NOT ack_final AND updated_at < %s)) "
            "ORDER BY id LIMIT %s"
        )
        rows = await self._fetch_all(sql, (before, before, limit))
        return [from_row(r) for r in rows]

    async def _insert_batch(self, rows: Sequence[dict[str, Any]]) -> list[None]:
        """New notifications in one statement and one commit, announced once."""
        payload = dump([{c: row[c] for c in INSERT_COLUMNS} for row in rows])

        async def insert(c: psycopg.AsyncConnection[dict[str, Any]]) -> int:
            row = await (await c.execute(BULK_INSERT, (payload,))).fetchone()
            assert row is not None
            return int(row["inserted"])

        await self._write(insert)
        return [None] * len(rows)

    async def _finish_batch(self, outcomes: Sequence[dict[str, Any]]) -> list[bool]:
        """Outcomes in one statement and one commit; for each, whether its lease held.
        Retries that became due are not announced: they are due after a delay, and
        polling finds them then."""

        # Numbered: two outcomes for one notification (a stale one and the current one)
        # may share a batch, and only the one whose lease holds is written.
        payload = dump([{**outcome, "i": i} for i, outcome in enumerate(outcomes)])

        async def finish(c: psycopg.AsyncConnection[dict[str, Any]]) -> set[int]:
            rows = await (await c.execute(FINISH_BATCH, (payload,))).fetchall()
            return {row["i"] for row in rows}

        written = await self._write(finish)
        return [i in written for i in range(len(outcomes))]

    async def _fetch_one(self, sql: str, params: Sequence[object] = ()) -> dict[str, Any] | None:
        async def fetch(c: psycopg.AsyncConnection[dict[str, Any]]) -> dict[str, Any] | None:
            return await (await c.execute(sql, params)).fetchone()

        return await self._run(fetch)

    async def _fetch_all(self, sql: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
        async def fetch(c: psycopg.AsyncConnection[dict[str, Any]]) -> list[dict[str, Any]]:
            return await (await c.execute(sql, params)).fetchall()

        return await self._run(fetch)

    async def _write(
        self,
        job: Callable[[psycopg.AsyncConnection[dict[str, Any]]], Awaitable[T]],
        *,
        atomic: bool = False,
    ) -> T:
        """:meth:`_run` for a write: a failure is kept for readiness until one that
        changed rows commits (a write that changes nothing proves nothing)."""
        try:
            result = await self._run(job, atomic=atomic)
        except StoreError as exc:
            self._failure = str(exc)
            raise
        if self._failure is not None and _wrote(result):
            self._failure = None
        return result

    async def _run(
        self,
        job: Callable[[psycopg.AsyncConnection[dict[str, Any]]], Awaitable[T]],
        *,
        atomic: bool = False,
    ) -> T:
        """``job`` on a pooled connection: each statement its own transaction, or with
        ``atomic`` all of them one, committed when it returns."""
        if self._pool is None:
            raise StoreError("the store is closed")
        try:
            async with self._pool.connection() as connection:
                if atomic:
                    async with connection.transaction():
                        result = await job(connection)
                else:
                    result = await job(connection)
            _raise_lost_cancellation()
            return result
        except PoolTimeout:
            raise StoreError(
                f"no database connection within {self._timeout:g} s "
                "(PostgreSQL unreachable, or every pooled connection busy)"
            ) from None
        except psycopg.Error as exc:
            _raise_lost_cancellation()
            raise StoreError(f"database error: {_reason(exc)}") from exc


def _raise_lost_cancellation() -> None:
    """Raise the cancellation of this task if a wait inside psycopg_pool lost it.

    The pool waits for a connection with ``asyncio.wait_for``, which before Python 3.12
    can return the connection and drop a cancellation that arrived at the same moment.
    The task went on as if never cancelled: a writer being stopped at start-up read on,
    then waited for its queue for ever. ``Task.cancelling()`` still counts the request.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _Batches(Generic[Item, Result]):
    """Calls that arrive together go in one statement and one commit.

    ``run`` takes a batch and gives one result per item, in order. A caller waits for the
    commit of the batch its item went into; a few batches may be in flight at once, each
    on its own connection, so a slow commit does not hold up every other caller.
    """

    def __init__(self, run: Callable[[list[Item]], Awaitable[Sequence[Result]]]) -> None:
        self._run = run
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._in_flight: set[asyncio.Task[None]] = set()

    async def add(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if len(self._in_flight) < MAX_BATCHES_IN_FLIGHT:
            self._start()
        return await future

    async def drain(self) -> None:
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    def _start(self) -> None:
        task = asyncio.create_task(self._run_batch())
        self._in_flight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._waiting and len(self._in_flight) < MAX_BATCHES_IN_FLIGHT:
            self._start()

    async def _run_batch(self) -> None:
        batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        if not batch:
            return
        try:
            results = await self._run([item for item, _ in batch])
        except Exception as exc:  # noqa: BLE001 - every waiting caller gets the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def _rowcount(
    sql: str, params: Sequence[object] | Mapping[str, object], *, announce: bool = False
) -> Callable[[psycopg.AsyncConnection[dict[str, Any]]], Awaitable[int]]:
    """A job running ``sql``, returning how many rows it changed; with ``announce``, rows
    it made due are announced to the listening replicas."""

    async def run(c: psycopg.AsyncConnection[dict[str, Any]]) -> int:
        changed = (await c.execute(sql, params)).rowcount
        if announce and changed:
            await c.execute(NOTIFY)
        return changed

    return run


def _wrote(result: object) -> bool:
    """Whether a write's result says it changed rows (a count, rows, or a change flag)."""
    if isinstance(result, bool):
        return result
    if isinstance(result, int):
        return result > 0
    if isinstance(result, tuple):  # (changed, notification)
        return bool(result and result[0])
    if isinstance(result, list):  # claimed rows
        return bool(result)
    return not isinstance(result, IdempotencyRecord)  # a taken key stored nothing


async def _insert_parts(c: psycopg.AsyncConnection[dict[str, Any]], n: Notification) -> None:
    for position, part in enumerate(n.attachment_parts):
        await c.execute(INSERT_PART, (n.id, position, part))


async def _find_key(
    c: psycopg.AsyncConnection[dict[str, Any]], owner: str, key: str
) -> IdempotencyRecord | None:
    cursor = await c.execute(
        "SELECT * FROM idempotency_keys WHERE owner = %s AND key = %s", (owner, key)
    )
    row = await cursor.fetchone()
    return None if row is None else IdempotencyRecord(**row)


async def _rewrite(
    c: psycopg.AsyncConnection[dict[str, Any]],
    notification_id: str,
    change: Callable[[Notification], bool],
) -> tuple[bool, Notification | None]:
    """Read (locked), ``change`` and write back one notification in one transaction."""
    cursor = await c.execute(
        "SELECT * FROM notifications WHERE id = %s FOR UPDATE", (notification_id,)
    )
    row = await cursor.fetchone()
    if row is None:
        return False, None
    n = from_row(row)
    if not change(n):
        return False, n
    await c.execute(
        REWRITE,
        {
            "id": n.id,
            "status": n.status.value,
            "recipients": recipients_json(n.recipients),
            "terminal": n.status.terminal,
            "expires_at": n.expires_at,
            "last_error": n.last_error,
            "updated_at": n.updated_at,
            "budget_from": n.budget_from,
        },
    )
    return True, n


async def _migrate(c: psycopg.AsyncConnection[dict[str, Any]]) -> None:
    """Create or upgrade the schema; replicas starting together take turns.

    A schema already up to date is left alone: its DDL (``ALTER TABLE``) would take the
    table's exclusive lock at every start, behind the other replicas' transactions and
    ahead of their next statements, which deadlocked.
    """
    await c.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    found = await (
        await c.execute("SELECT to_regclass('notifier_schema') IS NOT NULL AS present")
    ).fetchone()
    version = 0
    if found is not None and found["present"]:
        row = await (await c.execute("SELECT version FROM notifier_schema WHERE id = 1")).fetchone()
        version = 0 if row is None else int(row["version"])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database's schema version {version} is newer than this notifier's "
            f"({SCHEMA_VERSION}): run the newer notifier, or restore a backup"
        )
    if version == SCHEMA_VERSION:
        return
    await c.execute(SCHEMA)
    await c.execute(
        "INSERT INTO notifier_schema (id, version) VALUES (1, %s) "
        "ON CONFLICT (id) DO UPDATE SET version = excluded.version",
        (SCHEMA_VERSION,),
    )


def _reason(exc: BaseException) -> str:
    """An error's first line, with any connection URL's password masked."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redacted_url(text)
