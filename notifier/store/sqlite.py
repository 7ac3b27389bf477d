"""The embedded store: one SQLite file in WAL mode.

Every write goes through one writer thread that drains its queue and commits each
batch as one transaction (group commit), so concurrent requests share an fsync and
the event loop never waits on the disk. Reads run on a small pool of reader threads
with their own connections. One process owns a database file at a time (a lock file).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import IO, TypeVar

import orjson

from notifier.domain import (
    AttemptOutcome,
    IdempotencyRecord,
    Notification,
    NotificationStatus,
)
from notifier.errors import StoreError, StoreLockedError
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
from notifier.store.writer import Row, Writer, connect

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    id TEXT PRIMARY KEY,
    owner TEXT,
    status TEXT NOT NULL,
    content TEXT NOT NULL,
    recipients TEXT NOT NULL,
    attempts TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL,
    message_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    visible_at REAL,
    next_attempt_at REAL,
    attempt_count INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    lease_owner TEXT,
    lease_started_at REAL,
    budget_from INTEGER NOT NULL DEFAULT 0,
    ack_accepted INTEGER NOT NULL DEFAULT 0,
    ack_final INTEGER
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    notification_id TEXT NOT NULL,
    response TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (owner, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys (expires_at);
CREATE INDEX IF NOT EXISTS notifications_due
    ON notifications (visible_at) WHERE visible_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS notifications_status ON notifications (status, id);
CREATE INDEX IF NOT EXISTS notifications_owner ON notifications (owner, id);
CREATE INDEX IF NOT EXISTS notifications_finished
    ON notifications (updated_at) WHERE visible_at IS NULL;
CREATE INDEX IF NOT EXISTS notifications_unacknowledged
    ON notifications (id) WHERE ack_accepted = 0 OR ack_final = 0;
CREATE TABLE IF NOT EXISTS heartbeat (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at REAL NOT NULL
);
"""

#: The schema's history: step ``i`` takes a database from version ``i`` to ``i + 1``.
#: A release that changes the schema appends a step; it never edits one.
#: Priority and scheduling (issue 16): priority as its rank (0 high, 1 normal, 2 low),
#: send_at when asked for later; due work by priority for claims.
PRIORITY_AND_SCHEDULE = """
ALTER TABLE notifications ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;
ALTER TABLE notifications ADD COLUMN send_at REAL;
CREATE INDEX IF NOT EXISTS notifications_due_by_priority
    ON notifications (priority, visible_at) WHERE visible_at IS NOT NULL;
"""

#: Attachments (issue 16): each notification's MIME parts, in order, apart from its
#: row so that claims and status look-ups never read them.
ATTACHMENTS = """
CREATE TABLE IF NOT EXISTS attachments (
    notification_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    part BLOB NOT NULL,
    PRIMARY KEY (notification_id, position)
);
"""

MIGRATIONS: tuple[str, ...] = (SCHEMA, PRIORITY_AND_SCHEDULE, ATTACHMENTS)
SCHEMA_VERSION = len(MIGRATIONS)

#: Leases due work: ``by_priority`` rows by priority then due time, and
#: ``oldest_first`` rows by due time alone (so low priority work is never starved);
#: a row still ``sending`` (its lease expired) gets an ``interrupted`` attempt first.
#: SET expressions read the row as it was.
CLAIM = """
UPDATE notifications SET
    attempts = CASE WHEN status = 'sending' THEN json_insert(attempts, '$[#]', json_object(
        'number', attempt_count, 'started_at', lease_started_at, 'finished_at', :now,
        'outcome', :interrupted_outcome, 'smtp_code', NULL, 'message', :interrupted,
        'relay_fault', json('false'), 'possible_duplicate', json('true')))
        ELSE attempts END,
    status = 'sending',
    lease_owner = :owner,
    lease_started_at = :now,
    visible_at = :lease_until,
    attempt_count = attempt_count + 1,
    updated_at = :now
WHERE id IN (
    SELECT id FROM (
        SELECT id FROM notifications WHERE visible_at <= :now
        ORDER BY priority, visible_at LIMIT :by_priority
    )
    UNION
    SELECT id FROM (
        SELECT id FROM notifications WHERE visible_at <= :now
        ORDER BY visible_at LIMIT :oldest_first
    )
)
RETURNING *
"""

#: A page's recipient filter: the address among the notification's recipients, in any
#: case (a scan of the rows the other filters leave, not an index).
RECIPIENT_CLAUSE = (
    "EXISTS (SELECT 1 FROM json_each(recipients) WHERE lower(value ->> 'address') = lower(?))"
)

#: Gives back a claim that never reached the relay: no attempt happened, so none is
#: counted, and the notification is due again as it was (queued or deferred).
UNCLAIM = """
UPDATE notifications SET
    status = CASE WHEN attempt_count - 1 > budget_from THEN 'deferred' ELSE 'queued' END,
    attempt_count = attempt_count - 1,
    lease_owner = NULL,
    lease_started_at = NULL,
    visible_at = COALESCE(next_attempt_at, created_at)
WHERE status = 'sending' AND lease_owner = :owner
    AND id IN (SELECT value FROM json_each(:ids))
"""

FINISH = """
UPDATE notifications SET
    status = :status, recipients = :recipients, attempts = :attempts,
    visible_at = :visible_at, next_attempt_at = :next_attempt_at,
    last_error = :last_error, updated_at = :updated_at,
    lease_owner = NULL, lease_started_at = NULL,
    ack_final = CASE WHEN :terminal THEN 0 ELSE NULL END
WHERE id = :id AND lease_owner = :lease_owner AND attempt_count = :attempt_count
"""

_COLUMNS = ", ".join(INSERT_COLUMNS)

INSERT = f"""
INSERT INTO notifications ({_COLUMNS})
VALUES ({", ".join(f":{column}" for column in INSERT_COLUMNS)})
"""  # noqa: S608 - the column names are constants

#: :data:`INSERT` for a whole batch in one statement: ``?`` is a JSON array of rows.
BULK_INSERT = f"""
INSERT INTO notifications ({_COLUMNS})
SELECT {", ".join(f"value ->> {i}" for i in range(len(INSERT_COLUMNS)))}
FROM json_each(?)
"""  # noqa: S608 - the column names are constants

INSERT_PART = "INSERT INTO attachments (notification_id, position, part) VALUES (?, ?, ?)"

INSERT_KEY = """
INSERT INTO idempotency_keys (owner, key, request_hash, notification_id, response, expires_at)
VALUES (:owner, :key, :request_hash, :notification_id, :response, :expires_at)
ON CONFLICT (owner, key) DO NOTHING
"""

#: Rewrites what a cancel or a manual retry changes, in the same transaction as the read.
REWRITE = """
UPDATE notifications SET
    status = :status, recipients = :recipients, visible_at = :visible_at,
    next_attempt_at = NULL, expires_at = :expires_at, last_error = :last_error,
    updated_at = :updated_at, budget_from = :budget_from,
    ack_final = CASE WHEN :terminal THEN 0 ELSE NULL END
WHERE id = :id
"""


class SQLiteStore:
    """The :class:`~notifier.store.base.Store` on one SQLite file."""

    #: One process serves one file (a lock file makes sure).
    exclusive = True

    def __init__(self, path: Path, *, readers: int = 2, busy_timeout: float = 5.0) -> None:
        self.path = path
        self._readers = readers
        self._busy_timeout = busy_timeout
        self._lock_file: IO[str] | None = None
        self._writer: Writer | None = None
        self._read_pool: ThreadPoolExecutor | None = None
        self._read_local = threading.local()
        self._read_connections: list[sqlite3.Connection] = []
        self._read_connections_lock = threading.Lock()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = _take_lock(self.path)
        loop = asyncio.get_running_loop()
        self._writer = Writer(self.path, loop, self._busy_timeout, BULK_INSERT)
        self._writer.start()
        await self._write(_migrate)
        self._read_pool = ThreadPoolExecutor(self._readers, thread_name_prefix="notifier-read")

    def listen(self, wake: Callable[[], None]) -> None:
        """Nothing to hear: one process serves the file, and wakes its own dispatcher."""

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.to_thread(self._writer.stop)
            self._writer = None
        if self._read_pool is not None:
            self._read_pool.shutdown(wait=True)
            self._read_pool = None
        with self._read_connections_lock:
            for connection in self._read_connections:
                connection.close()
            self._read_connections.clear()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    async def ping(self) -> None:
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    def write_failure(self) -> str | None:
        return None if self._writer is None else self._writer.failure

    async def check_writable(self) -> None:
        sql = (
            "INSERT INTO heartbeat (id, at) VALUES (1, ?) "
            "ON CONFLICT (id) DO UPDATE SET at = excluded.at"
        )
        now = time.time()
        await self._write(lambda c: c.execute(sql, (now,)))

    async def add(
        self, notification: Notification, idempotency: IdempotencyRecord | None = None
    ) -> IdempotencyRecord | None:
        if idempotency is not None or notification.attachment_parts:
            return await self.add_many([notification], idempotency)
        row = to_row(notification)

        def insert(c: sqlite3.Connection) -> None:
            c.execute(INSERT, row)

        await self._write(insert, tuple(row[column] for column in INSERT_COLUMNS))
        return None

    async def add_many(
        self, notifications: Sequence[Notification], idempotency: IdempotencyRecord | None = None
    ) -> IdempotencyRecord | None:
        rows = [to_row(n) for n in notifications]

        def insert(c: sqlite3.Connection) -> IdempotencyRecord | None:
            if idempotency is not None and c.execute(INSERT_KEY, asdict(idempotency)).rowcount == 0:
                return _find_key(c, idempotency.owner, idempotency.key)
            c.executemany(INSERT, rows)
            for n in notifications:
                _insert_parts(c, n)
            return None

        return await self._write(insert)

    async def find_idempotency(self, owner: str, key: str) -> IdempotencyRecord | None:
        return await self._read(lambda c: _find_key(c, owner, key))

    async def purge_idempotency(self, *, now: float, limit: int) -> int:
        sql = (
            "DELETE FROM idempotency_keys WHERE (owner, key) IN (SELECT owner, key "
            "FROM idempotency_keys WHERE expires_at < ? ORDER BY expires_at LIMIT ?)"
        )
        purged: int = await self._write(
            lambda c: c.execute(sql, (now, limit)).rowcount, can_wait=True
        )
        return purged

    async def purge_finished(self, *, before: float, limit: int) -> int:
        find = (
            "SELECT id FROM notifications WHERE visible_at IS NULL AND updated_at < ? "
            "AND ack_final = 1 ORDER BY updated_at LIMIT ?"
        )

        def purge(c: sqlite3.Connection) -> int:
            ids = dump([row[0] for row in c.execute(find, (before, limit))])
            c.execute(
                "DELETE FROM attachments WHERE notification_id IN (SELECT value FROM json_each(?))",
                (ids,),
            )
            deleted: int = c.execute(
                "DELETE FROM notifications WHERE id IN (SELECT value FROM json_each(?))", (ids,)
            ).rowcount
            return deleted

        purged: int = await self._write(purge, can_wait=True)
        return purged

    async def attachment_parts(self, notification_id: str) -> list[bytes]:
        sql = "SELECT part FROM attachments WHERE notification_id = ? ORDER BY position"
        rows = await self._read(lambda c: c.execute(sql, (notification_id,)).fetchall())
        return [row[0] for row in rows]

    async def cancel(self, notification_id: str, *, now: float) -> tuple[bool, Notification | None]:
        def change(n: Notification) -> bool:
            if not n.cancellable:
                return False
            n.status = NotificationStatus.CANCELLED
            n.last_error = "cancelled by request"
            n.updated_at = now
            return True

        return await self._write(lambda c: _rewrite(c, notification_id, change))

    async def requeue(
        self, notification_id: str, *, now: float, expires_at: float
    ) -> tuple[bool, Notification | None]:
        def change(n: Notification) -> bool:
            if not n.retryable:
                return False
            n.reopen(now=now, expires_at=expires_at)
            return True

        return await self._write(lambda c: _rewrite(c, notification_id, change))

    async def oldest_due(self) -> float | None:
        sql = (
            "SELECT visible_at FROM notifications WHERE visible_at IS NOT NULL "
            "AND status != 'sending' ORDER BY visible_at LIMIT 1"
        )
        row = await self._read(lambda c: c.execute(sql).fetchone())
        return None if row is None else float(row[0])

    async def count_pending(self) -> int:
        sql = "SELECT count(*) FROM notifications WHERE visible_at IS NOT NULL"
        count: int = await self._read(lambda c: c.execute(sql).fetchone()[0])
        return count

    async def get(self, notification_id: str) -> Notification | None:
        def query(c: sqlite3.Connection) -> sqlite3.Row | None:
            row: sqlite3.Row | None = c.execute(
                "SELECT * FROM notifications WHERE id = ?", (notification_id,)
            ).fetchone()
            return row

        row = await self._read(query)
        return None if row is None else from_row(row)

    async def page(
        self, *, limit: int, before_id: str | None, filters: PageFilter = EVERYTHING
    ) -> list[Notification]:
        where, params = page_filter("?", filters, before_id, recipient_clause=RECIPIENT_CLAUSE)
        sql = f"SELECT * FROM notifications {where} ORDER BY id DESC LIMIT ?"  # noqa: S608
        rows = await self._read(lambda c: c.execute(sql, (*params, limit)).fetchall())
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
            "lease_until": lease_until,
            "by_priority": limit - oldest_first,
            "oldest_first": oldest_first,
            "interrupted": INTERRUPTED,
            "interrupted_outcome": AttemptOutcome.INTERRUPTED.value,
        }
        rows = await self._write(lambda c: c.execute(CLAIM, params).fetchall(), can_wait=can_wait)
        claimed = [from_row(r) for r in rows]
        # RETURNING yields rows in no particular order.
        claimed.sort(key=claim_order)
        return claimed

    async def finish_attempt(self, notification: Notification, *, lease_owner: str) -> bool:
        n = notification
        terminal = n.status.terminal
        params = {
            "id": n.id,
            "status": n.status.value,
            "recipients": recipients_json(n.recipients),
            "attempts": attempts_json(n.attempts),
            "visible_at": None if terminal else n.next_attempt_at,
            "next_attempt_at": n.next_attempt_at,
            "last_error": n.last_error,
            "updated_at": n.updated_at,
            "terminal": terminal,
            "lease_owner": lease_owner,
            "attempt_count": n.attempt_count,
        }
        changed = await self._write(lambda c: c.execute(FINISH, params).rowcount, can_wait=True)
        return changed == 1

    async def extend_leases(self, *, owner: str, ids: Sequence[str], until: float) -> None:
        sql = (
            "UPDATE notifications SET visible_at = ? WHERE lease_owner = ? "
            "AND status = 'sending' AND id IN (SELECT value FROM json_each(?))"
        )
        await self._write(lambda c: c.execute(sql, (until, owner, dump(list(ids)))), can_wait=True)

    async def unclaim(self, *, owner: str, ids: Sequence[str]) -> int:
        changed: int = await self._write(
            lambda c: c.execute(UNCLAIM, {"owner": owner, "ids": dump(list(ids))}).rowcount
        )
        return changed

    async def release_leases(self, *, now: float, owner: str | None = None) -> int:
        sql = "UPDATE notifications SET visible_at = ? WHERE status = 'sending'"
        params: tuple[object, ...] = (now,)
        if owner is not None:
            sql += " AND lease_owner = ?"
            params = (now, owner)
        changed: int = await self._write(lambda c: c.execute(sql, params).rowcount)
        return changed

    async def mark_acknowledged(self, *, accepted: Sequence[str], final: Sequence[str]) -> None:
        def mark(c: sqlite3.Connection) -> None:
            # One statement each, not one per id: see the writer on statements.
            if accepted:
                c.execute(
                    "UPDATE notifications SET ack_accepted = 1 "
                    "WHERE id IN (SELECT value FROM json_each(?))",
                    (orjson.dumps(list(accepted)),),
                )
            if final:
                c.execute(
                    "UPDATE notifications SET ack_final = 1 "
                    "WHERE ack_final = 0 AND id IN (SELECT value FROM json_each(?))",
                    (orjson.dumps(list(final)),),
                )

        await self._write(mark, can_wait=True)

    async def unacknowledged(self, *, limit: int, before: float) -> list[Notification]:
        # The first condition is the partial index's, so the index serves the query.
        sql = (
            "SELECT * FROM notifications WHERE (ack_accepted = 0 OR ack_final = 0) "
            "AND ((ack_accepted = 0 AND created_at < ?) OR (ack_final = 0 AND updated_at < ?)) "
            "ORDER BY id LIMIT ?"
        )
        rows = await self._read(lambda c: c.execute(sql, (before, before, limit)).fetchall())
        return [from_row(r) for r in rows]

    async def _write(
        self,
        job: Callable[[sqlite3.Connection], T],
        row: Row | None = None,
        *,
        can_wait: bool = False,
    ) -> T:
        """Run ``job`` on the writer; ``can_wait`` for delivery's own writes (see the writer)."""
        if self._writer is None:
            raise StoreError("the store is closed")
        return await self._writer.submit(job, row, can_wait=can_wait)

    async def _read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        if self._read_pool is None:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._read_pool, self._run_read, job)
        except sqlite3.Error as exc:
            raise StoreError(f"database read failed: {exc}") from exc

    def _run_read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        connection: sqlite3.Connection | None = getattr(self._read_local, "connection", None)
        if connection is None:
            connection = connect(self.path, self._busy_timeout)
            connection.execute("PRAGMA query_only = ON")
            self._read_local.connection = connection
            with self._read_connections_lock:
                self._read_connections.append(connection)
        return job(connection)


def _insert_parts(c: sqlite3.Connection, n: Notification) -> None:
    for position, part in enumerate(n.attachment_parts):
        c.execute(INSERT_PART, (n.id, position, part))


def _find_key(c: sqlite3.Connection, owner: str, key: str) -> IdempotencyRecord | None:
    row = c.execute(
        "SELECT * FROM idempotency_keys WHERE owner = ? AND key = ?", (owner, key)
    ).fetchone()
    return None if row is None else IdempotencyRecord(**dict(row))


def _rewrite(
    c: sqlite3.Connection, notification_id: str, change: Callable[[Notification], bool]
) -> tuple[bool, Notification | None]:
    """Read, ``change`` and write back one notification inside the writer's transaction."""
    row = c.execute("SELECT * FROM notifications WHERE id = ?", (notification_id,)).fetchone()
    if row is None:
        return False, None
    n = from_row(row)
    if not change(n):
        return False, n
    terminal = n.status.terminal
    c.execute(
        REWRITE,
        {
            "id": n.id,
            "status": n.status.value,
            "recipients": recipients_json(n.recipients),
            "visible_at": None if terminal else n.updated_at,
            "expires_at": n.expires_at,
            "last_error": n.last_error,
            "updated_at": n.updated_at,
            "budget_from": n.budget_from,
            "terminal": terminal,
        },
    )
    return True, n


def _migrate(connection: sqlite3.Connection) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"database schema version {version} is newer than this notifier ({SCHEMA_VERSION})"
        )
    for step in MIGRATIONS[version:]:
        for statement in step.split(";"):
            if statement.strip():
                connection.execute(statement)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _take_lock(path: Path) -> IO[str]:
    lock_path = path.with_name(path.name + ".lock")
    handle = open(lock_path, "a+")  # noqa: SIM115 - held open for the store's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StoreLockedError(
            f"{path} is already served by another notifier process (pid {holder}); "
            "one process serves one SQLite database"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
