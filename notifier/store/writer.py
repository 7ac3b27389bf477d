"""The SQLite writer thread: every write, committed in batches (group commit).

It drains whatever jobs have queued up and runs them in one transaction (a failing
job is rolled back alone); then it resolves the callers' futures on their event
loop. Concurrent requests so share one fsync, and no write ever runs on the event
loop.
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

from notifier.errors import StoreError

T = TypeVar("T")

MAX_BATCH = 512


class Job:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any]):
        self.fn = fn
        self.future = future


class Writer(threading.Thread):
    """Owns the only writing connection; commits whatever has queued up as one batch."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop, busy_timeout: float) -> None:
        super().__init__(name="notifier-sqlite-writer", daemon=True)
        self._path = path
        self._loop = loop
        self._busy_timeout = busy_timeout
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        #: Why the last commit failed; cleared by the next one that succeeds.
        self.failure: str | None = None

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(Job(fn, future))
        return future

    def stop(self) -> None:
        self._queue.put(None)
        self.join()

    def run(self) -> None:
        connection = connect(self._path, self._busy_timeout)
        try:
            while (batch := self._next_batch()) is not None:
                results, self.failure = commit(connection, batch)
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


def commit(connection: sqlite3.Connection, batch: list[Job]) -> tuple[list[Result], str | None]:
    """Run every job in one transaction; a failing job is rolled back alone.

    The batch first runs as plain statements. Only if a job fails is the transaction
    rolled back and the batch run again with a savepoint around each job: savepoints
    double the statements, and every statement hands the GIL to the event loop and
    back, which is what a batch's time goes on while requests keep the loop busy.
    Jobs are pure functions of the database, so running one twice is safe.

    Returns each job's result and, if the commit itself failed, why.
    """
    try:
        try:
            results = _run(connection, batch, isolated=False)
        except _JobFailed:
            connection.execute("ROLLBACK")
            results = _run(connection, batch, isolated=True)
        connection.execute("COMMIT")
    except sqlite3.Error as exc:
        with suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        error = StoreError(f"database commit failed: {exc}")
        return [(job, None, error) for job in batch], str(exc)
    return results, None


class _JobFailed(Exception):
    """A job raised while its batch ran without savepoints."""


def _run(connection: sqlite3.Connection, batch: list[Job], *, isolated: bool) -> list[Result]:
    connection.execute("BEGIN IMMEDIATE")
    results: list[Result] = []
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
