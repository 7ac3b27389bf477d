"""The SQLite writer thread: every write, committed in batches (group commit).

It drains whatever jobs have queued up and runs them in one transaction (a failing
job is rolled back alone); then it resolves the callers' futures on their event
loop. Concurrent requests so share one fsync, and no write ever runs on the event
loop.

Every statement releases the GIL while SQLite works and must win it back from a busy
event loop, which can take a switch interval (5 ms). So the writer's time goes on
statements, not rows: plain inserts (jobs that carry a ``row``) run as one
statement per batch, and a batch of nothing else runs as that one statement alone,
with no ``BEGIN`` and ``COMMIT`` around it (a single statement is its own transaction).
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import orjson

from notifier.errors import StoreError

T = TypeVar("T")

MAX_BATCH = 512


Row = tuple[Any, ...]


class Job:
    """A write; with a ``row``, a plain insert that may run together with the others.

    ``fn`` must insert that same row: it is what runs when the batch has to be
    retried job by job.
    """

    __slots__ = ("fn", "future", "row")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        future: asyncio.Future[Any],
        row: Row | None = None,
    ):
        self.fn = fn
        self.future = future
        self.row = row


class Writer(threading.Thread):
    """Owns the only writing connection; commits whatever has queued up as one batch."""

    def __init__(
        self,
        path: Path,
        loop: asyncio.AbstractEventLoop,
        busy_timeout: float,
        bulk_insert: str | None = None,
    ) -> None:
        """``bulk_insert`` inserts the rows of a batch's jobs, given as one JSON array."""
        super().__init__(name="notifier-sqlite-writer", daemon=True)
        self._path = path
        self._loop = loop
        self._busy_timeout = busy_timeout
        self._bulk_insert = bulk_insert
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        #: Why the last commit failed; cleared by the next one that succeeds.
        self.failure: str | None = None

    def submit(
        self, fn: Callable[[sqlite3.Connection], T], row: Row | None = None
    ) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(Job(fn, future, row if self._bulk_insert else None))
        return future

    def stop(self) -> None:
        self._queue.put(None)
        self.join()

    def run(self) -> None:
        connection = connect(self._path, self._busy_timeout)
        try:
            while (batch := self._next_batch()) is not None:
                results, self.failure = commit(connection, batch, self._bulk_insert)
                self._loop.call_soon_threadsafe(settle, results)
        finally:
            connection.close()

    def _next_batch(self) -> list[Job] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < MAX_BATCH:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)
                break
            batch.append(job)
        return batch


Result = tuple[Job, Any, BaseException | None]


def commit(
    connection: sqlite3.Connection, batch: list[Job], bulk_insert: str | None = None
) -> tuple[list[Result], str | None]:
    """Run every job in one transaction; a failing job is rolled back alone.

    The batch first runs as plain statements, its rows inserted by ``bulk_insert`` in
    one. Only if that fails is the transaction rolled back and the batch run again
    job by job, with a savepoint around each: savepoints double the statements, and
    statements are what a batch's time goes on (see the module's docstring). Jobs are
    pure functions of the database, so running one twice is safe.

    Returns each job's result and, if the commit itself failed, why.
    """
    if bulk_insert is not None and all(job.row is not None for job in batch):
        try:
            connection.execute(bulk_insert, (_rows(batch),))
        except sqlite3.Error:
            pass  # The statement changed nothing; the general path finds the culprit.
        else:
            return [(job, None, None) for job in batch], None
    try:
        try:
            results = _run(connection, batch, isolated=False, bulk_insert=bulk_insert)
        except _JobFailed:
            connection.execute("ROLLBACK")
            results = _run(connection, batch, isolated=True, bulk_insert=None)
        connection.execute("COMMIT")
    except sqlite3.Error as exc:
        with suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        error = StoreError(f"database commit failed: {exc}")
        return [(job, None, error) for job in batch], str(exc)
    return results, None


class _JobFailed(Exception):
    """A job raised while its batch ran without savepoints."""


def _run(
    connection: sqlite3.Connection, batch: list[Job], *, isolated: bool, bulk_insert: str | None
) -> list[Result]:
    connection.execute("BEGIN IMMEDIATE")
    results: list[Result] = []
    if bulk_insert is not None and any(job.row is not None for job in batch):
        # New rows go first: no other job can depend on them, as their callers have
        # not been answered yet.
        try:
            connection.execute(bulk_insert, (_rows(batch),))
        except sqlite3.Error as exc:
            raise _JobFailed from exc
        results = [(job, None, None) for job in batch if job.row is not None]
        batch = [job for job in batch if job.row is None]
    for job in batch:
        if isolated:
            connection.execute("SAVEPOINT job")
        try:
            value = job.fn(connection)
        except Exception as exc:
            if not isolated:
                raise _JobFailed from exc
            connection.execute("ROLLBACK TO job")
            if isinstance(exc, sqlite3.Error):
                exc = StoreError(f"database write failed: {exc}")
            results.append((job, None, exc))
        else:
            results.append((job, value, None))
        if isolated:
            connection.execute("RELEASE job")
    return results


def _rows(batch: list[Job]) -> bytes:
    return orjson.dumps([job.row for job in batch if job.row is not None])


def settle(results: list[Result]) -> None:
    for job, value, error in results:
        if job.future.done():
            continue
        if error is None:
            job.future.set_result(value)
        else:
            job.future.set_exception(error)


def connect(path: Path, busy_timeout: float = 5.0) -> sqlite3.Connection:
    connection = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
    )
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    return connection
