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

A commit is the writer's dearest step: it appends every page the batch dirtied to the
WAL and fsyncs it, at many times the CPU of an outcome's ``UPDATE``
(``benchmarks/LEVERS.md``). Delivery's own writes (outcomes, acknowledgment marks, lease
renewals, and claims while every connection is busy) therefore wait up to
:data:`COMMIT_DELAY` for company, so that many share one commit; the dispatcher claims far
enough ahead not to notice. A write a caller awaits (an insert behind a ``202``, a
cancel, a claim for an idle connection) ends the wait at once.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson

from notifier.errors import StoreError

T = TypeVar("T")

MAX_BATCH = 512
#: Seconds a batch of jobs that can wait (``Job.can_wait``) waits for more to share its
#: commit: long enough to share commits under load, short enough not to delay claims
#: (the delays tried are in ``benchmarks/LEVERS.md``).
COMMIT_DELAY = 0.001
#: The delay is slept in this many slices, the queue drained after each.
LINGER_SLICES = 4


Row = tuple[Any, ...]


class Job:
    """A write; with a ``row``, a plain insert that may run together with the others.

    ``fn`` must insert that same row: it is what runs when the batch has to be
    retried job by job.
    """

    __slots__ = ("can_wait", "fn", "future", "row")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        future: asyncio.Future[Any],
        row: Row | None = None,
        *,
        can_wait: bool = False,
    ):
        self.fn = fn
        self.future = future
        self.row = row
        #: No caller is held up until it commits, so it may wait for company.
        self.can_wait = can_wait


class Writer(threading.Thread):
    """Owns the only writing connection; commits whatever has queued up as one batch."""

    def __init__(
        self,
        path: Path,
        loop: asyncio.AbstractEventLoop,
        busy_timeout: float,
        bulk_insert: str | None = None,
        *,
        commit_delay: float = COMMIT_DELAY,
    ) -> None:
        """``bulk_insert`` inserts the rows of a batch's jobs, given as one JSON array."""
        super().__init__(name="notifier-sqlite-writer", daemon=True)
        self._path = path
        self._loop = loop
        self._busy_timeout = busy_timeout
        self._bulk_insert = bulk_insert
        self._commit_delay = commit_delay
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        #: Why the last write failed; cleared only by a later one that changed rows, since
        #: a batch that writes nothing (an idle claim) commits even on a full disk.
        self.failure: str | None = None

    def submit(
        self,
        fn: Callable[[sqlite3.Connection], T],
        row: Row | None = None,
        *,
        can_wait: bool = False,
    ) -> asyncio.Future[T]:
        """Queue ``fn``; ``can_wait`` when no caller is held up until it commits."""
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(Job(fn, future, row if self._bulk_insert else None, can_wait=can_wait))
        return future

    def stop(self) -> None:
        self._queue.put(None)
        self.join()

    def run(self) -> None:
        connection = connect(self._path, self._busy_timeout)
        try:
            while (batch := take_batch(self._queue, self._commit_delay)) is not None:
                done = commit(connection, batch, self._bulk_insert)
                if done.failure is not None:
                    self.failure = done.failure
                elif done.wrote:
                    self.failure = None
                self._loop.call_soon_threadsafe(resolve, done.results)
        finally:
            connection.close()


def take_batch(
    jobs: queue.SimpleQueue[Job | None],
    delay: float,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Job] | None:
    """The next batch: whatever has queued, and while all of it can wait, up to ``delay`` more.

    ``None`` once the stop signal (a queued ``None``) comes first. The delay is slept in
    slices, the queue drained after each: waking for every job would take the GIL
    from the event loop each time, and a job someone awaits that arrives meanwhile
    waits one slice at most.
    """
    first = jobs.get()
    if first is None:
        return None
    batch = [first]
    urgent = _drain(jobs, batch) or not first.can_wait
    for _ in range(LINGER_SLICES if delay > 0 else 0):
        if urgent or len(batch) >= MAX_BATCH:
            break
        sleep(delay / LINGER_SLICES)
        urgent = _drain(jobs, batch)
    return batch


def _drain(jobs: queue.SimpleQueue[Job | None], batch: list[Job]) -> bool:
    """Move what has queued into ``batch``; whether any of it must not wait."""
    urgent = False
    while len(batch) < MAX_BATCH:
        try:
            job = jobs.get_nowait()
        except queue.Empty:
            break
        if job is None:
            jobs.put(None)  # stop after this batch
            return True
        batch.append(job)
        urgent = urgent or not job.can_wait
    return urgent


Result = tuple[Job, Any, BaseException | None]


class Committed(NamedTuple):
    #: Each job with its value or its error.
    results: list[Result]
    #: Why the store failed this batch (its commit, or a job's write), if it did.
    failure: str | None
    #: Rows changed and committed: the disk took a write.
    wrote: bool


def commit(
    connection: sqlite3.Connection, batch: list[Job], bulk_insert: str | None = None
) -> Committed:
    """Run every job in one transaction; a failing job is rolled back alone.

    The batch first runs as plain statements, its rows inserted by ``bulk_insert`` in
    one. Only if that fails is the transaction rolled back and the batch run again
    job by job, with a savepoint around each: savepoints double the statements, and
    statements are what a batch's time goes on (see the module's docstring). Jobs are
    pure functions of the database, so running one twice is safe.
    """
    if bulk_insert is not None and all(job.row is not None for job in batch):
        try:
            connection.execute(bulk_insert, (_rows(batch),))
        except sqlite3.Error:
            pass  # The statement changed nothing; the general path finds the culprit.
        else:
            return Committed([(job, None, None) for job in batch], None, wrote=True)
    try:
        try:
            ran = _run(connection, batch, isolated=False, bulk_insert=bulk_insert)
        except _JobFailed:
            if connection.in_transaction:  # SQLite ends it itself on a full disk or I/O error
                connection.execute("ROLLBACK")
            ran = _run(connection, batch, isolated=True, bulk_insert=None)
        connection.execute("COMMIT")
    except sqlite3.Error as exc:
        with suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        error = StoreError(f"database commit failed: {exc}")
        return Committed([(job, None, error) for job in batch], str(exc), wrote=False)
    return ran


class _JobFailed(Exception):
    """A job raised while its batch ran without savepoints."""


def _run(
    connection: sqlite3.Connection, batch: list[Job], *, isolated: bool, bulk_insert: str | None
) -> Committed:
    """Each job's result, the store's own failure among them (not a refused row), and
    whether the jobs that succeeded changed rows; committed by the caller."""
    connection.execute("BEGIN IMMEDIATE")
    results: list[Result] = []
    failure: str | None = None
    changed = 0
    if bulk_insert is not None and any(job.row is not None for job in batch):
        # New rows go first: no other job can depend on them, as their callers have
        # not been answered yet.
        try:
            changed += connection.execute(bulk_insert, (_rows(batch),)).rowcount
        except sqlite3.Error as exc:
            raise _JobFailed from exc
        results = [(job, None, None) for job in batch if job.row is not None]
        batch = [job for job in batch if job.row is None]
    for job in batch:
        if isolated:
            connection.execute("SAVEPOINT job")
        before = connection.total_changes
        try:
            value = job.fn(connection)
        except Exception as exc:
            if not isolated:
                raise _JobFailed from exc
            if not connection.in_transaction:
                raise  # SQLite rolled back the whole batch: it fails as one
            connection.execute("ROLLBACK TO job")
            if isinstance(exc, sqlite3.Error):
                if not isinstance(exc, sqlite3.IntegrityError):
                    failure = str(exc)
                exc = StoreError(f"database write failed: {exc}")
            results.append((job, None, exc))
        else:
            results.append((job, value, None))
            changed += connection.total_changes - before
        if isolated:
            connection.execute("RELEASE job")
    return Committed(results, failure, wrote=changed > 0)


def _rows(batch: list[Job]) -> bytes:
    return orjson.dumps([job.row for job in batch if job.row is not None])


def resolve(results: list[Result]) -> None:
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
