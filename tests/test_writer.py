"""Group commit: one transaction per batch, a failing job rolled back alone, a batch's
plain inserts run as one statement, and writes that can wait waiting for company."""

from __future__ import annotations

import asyncio
import queue
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from notifier.errors import StoreError
from notifier.store.writer import (
    LINGER_SLICES,
    MAX_BATCH,
    Job,
    Writer,
    commit,
    connect,
    resolve,
    take_batch,
)


@pytest.fixture
def connection(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = connect(tmp_path / "writer.db")
    c.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    yield c
    c.close()


def insert(*keys: str) -> Callable[[sqlite3.Connection], int]:
    def job(c: sqlite3.Connection) -> int:
        for key in keys:
            c.execute("INSERT INTO t (k) VALUES (?)", (key,))
        return len(keys)

    return job


def fails_after_writing(c: sqlite3.Connection) -> None:
    c.execute("INSERT INTO t (k) VALUES ('partial')")
    raise RuntimeError("job bug")


def keys(c: sqlite3.Connection) -> set[str]:
    return {row[0] for row in c.execute("SELECT k FROM t")}


def jobs(*fns: Callable[[sqlite3.Connection], Any]) -> list[Job]:
    loop = asyncio.get_running_loop()
    return [Job(fn, loop.create_future()) for fn in fns]


BULK_INSERT = "INSERT INTO t (k) SELECT value ->> 0 FROM json_each(?)"


def row_jobs(*keys: str) -> list[Job]:
    """Plain inserts, as the store submits them: the job and the row it inserts."""

    def insert_none(key: str) -> Callable[[sqlite3.Connection], None]:
        def job(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO t (k) VALUES (?)", (key,))

        return job

    loop = asyncio.get_running_loop()
    return [Job(insert_none(key), loop.create_future(), (key,)) for key in keys]


def statements(connection: sqlite3.Connection) -> list[str]:
    """Every statement the connection runs from now on."""
    seen: list[str] = []
    connection.set_trace_callback(lambda sql: seen.append(sql.split()[0].upper()))
    return seen


async def test_a_batch_commits_every_job_and_answers_each(
    connection: sqlite3.Connection,
) -> None:
    batch = jobs(insert("a"), insert("b", "c"))

    results, failure, _ = commit(connection, batch)
    resolve(results)

    assert failure is None
    assert [await job.future for job in batch] == [1, 2]
    assert keys(connection) == {"a", "b", "c"}


async def test_a_failing_job_is_rolled_back_alone_and_the_others_commit(
    connection: sqlite3.Connection,
) -> None:
    batch = jobs(insert("a"), fails_after_writing, insert("a"), insert("b"))

    results, failure, _ = commit(connection, batch)
    resolve(results)

    assert failure is None
    assert keys(connection) == {"a", "b"}
    assert await batch[0].future == 1
    with pytest.raises(RuntimeError, match="job bug"):
        await batch[1].future
    # A database error (here the duplicate key) reaches its caller as a StoreError.
    with pytest.raises(StoreError, match="UNIQUE"):
        await batch[2].future
    assert await batch[3].future == 1


async def test_a_batch_of_plain_inserts_is_one_statement_without_begin_or_commit(
    connection: sqlite3.Connection,
) -> None:
    batch = row_jobs("a", "b", "c")
    seen = statements(connection)

    results, failure, _ = commit(connection, batch, BULK_INSERT)
    resolve(results)

    assert failure is None
    assert seen == ["INSERT"]
    assert [await job.future for job in batch] == [None, None, None]
    assert keys(connection) == {"a", "b", "c"}


async def test_plain_inserts_share_one_statement_inside_a_mixed_batch(
    connection: sqlite3.Connection,
) -> None:
    batch = [*row_jobs("a", "b"), *jobs(insert("c")), *row_jobs("d")]
    seen = statements(connection)

    results, failure, _ = commit(connection, batch, BULK_INSERT)
    resolve(results)

    assert failure is None
    assert seen == ["BEGIN", "INSERT", "INSERT", "COMMIT"]
    assert await batch[2].future == 1
    assert keys(connection) == {"a", "b", "c", "d"}


async def test_a_failing_plain_insert_is_rolled_back_alone(
    connection: sqlite3.Connection,
) -> None:
    connection.execute("INSERT INTO t (k) VALUES ('taken')")
    batch = row_jobs("a", "taken", "b")

    results, failure, _ = commit(connection, batch, BULK_INSERT)
    resolve(results)

    assert failure is None
    assert await batch[0].future is None
    with pytest.raises(StoreError, match="UNIQUE"):
        await batch[1].future
    assert await batch[2].future is None
    assert keys(connection) == {"taken", "a", "b"}


@pytest.mark.parametrize("bulk", [False, True], ids=["jobs", "plain-inserts"])
async def test_a_failed_commit_fails_every_job_and_says_why(
    connection: sqlite3.Connection, bulk: bool
) -> None:
    connection.execute("PRAGMA query_only = 1")
    batch = row_jobs("a", "b") if bulk else jobs(insert("a"), insert("b"))

    results, failure, _ = commit(connection, batch, BULK_INSERT if bulk else None)
    resolve(results)

    assert failure is not None
    for job in batch:
        with pytest.raises(StoreError):
            await job.future
    connection.execute("PRAGMA query_only = 0")
    assert keys(connection) == set()


def disk_full(c: sqlite3.Connection) -> None:
    """No page may be added to the database: SQLite's own "database or disk is full"."""
    pages = c.execute("PRAGMA page_count").fetchone()[0]
    c.execute(f"PRAGMA max_page_count = {pages}")


def disk_freed(c: sqlite3.Connection) -> None:
    c.execute("PRAGMA max_page_count = 1073741823")


def insert_blob(c: sqlite3.Connection) -> None:
    c.execute("INSERT INTO t (k) VALUES (?)", ("x" * 100_000,))


def touch_nothing(c: sqlite3.Connection) -> None:
    c.execute("UPDATE t SET k = k WHERE k = 'no such row'")


async def test_the_failure_flag_is_cleared_only_by_a_write_that_changed_rows(
    tmp_path: Path,
) -> None:
    connect(tmp_path / "writer.db").execute(
        "CREATE TABLE t (k TEXT PRIMARY KEY)"
    ).connection.close()
    writer = Writer(tmp_path / "writer.db", asyncio.get_running_loop(), busy_timeout=1.0)
    writer.start()
    try:
        await writer.submit(disk_full)
        with pytest.raises(StoreError, match="full"):
            await writer.submit(insert_blob)
        full = writer.failure
        await writer.submit(touch_nothing)  # commits, like an idle claim on a full disk
        still_full = writer.failure
        await writer.submit(disk_freed)
        await writer.submit(insert("a"))
    finally:
        await asyncio.to_thread(writer.stop)

    assert full is not None
    assert "full" in full
    assert still_full == full
    assert writer.failure is None


async def test_a_write_the_disk_refuses_fails_its_batch_with_the_reason(
    connection: sqlite3.Connection,
) -> None:
    disk_full(connection)
    batch = jobs(insert("a"), insert_blob)

    results, failure, wrote = commit(connection, batch)
    resolve(results)

    # SQLite rolls back the whole transaction on SQLITE_FULL: no job's write survives.
    assert failure is not None
    assert "full" in failure
    assert not wrote
    for job in batch:
        with pytest.raises(StoreError, match="full"):
            await job.future
    assert keys(connection) == set()


async def test_a_refused_row_is_not_a_store_failure(connection: sqlite3.Connection) -> None:
    connection.execute("INSERT INTO t (k) VALUES ('taken')")
    batch = jobs(insert("taken"), insert("b"))

    results, failure, wrote = commit(connection, batch)
    resolve(results)

    assert failure is None
    assert wrote


DELAY = 0.004
SLICE = DELAY / LINGER_SLICES


class Queued:
    """A writer's queue, and a stand-in for its sleep that can queue jobs meanwhile."""

    def __init__(self, *jobs: Job | None) -> None:
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        for job in jobs:
            self.jobs.put(job)
        self.slept: list[float] = []
        #: Jobs to queue during each sleep, in turn.
        self.arriving: list[list[Job]] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        for job in self.arriving.pop(0) if self.arriving else []:
            self.jobs.put(job)

    def take(self) -> list[Job] | None:
        return take_batch(self.jobs, DELAY, self.sleep)


def job(*, can_wait: bool) -> Job:
    return Job(insert("x"), asyncio.get_running_loop().create_future(), can_wait=can_wait)


async def test_writes_that_can_wait_wait_the_commit_delay_for_company() -> None:
    first, second, third = (job(can_wait=True) for _ in range(3))
    queued = Queued(first)
    queued.arriving = [[second], [], [third]]

    assert queued.take() == [first, second, third]
    assert queued.slept == [SLICE] * LINGER_SLICES


async def test_a_write_someone_awaits_ends_the_wait_within_one_slice() -> None:
    waiting, awaited, later = job(can_wait=True), job(can_wait=False), job(can_wait=True)
    queued = Queued(waiting)
    queued.arriving = [[], [awaited], [later]]

    assert queued.take() == [waiting, awaited]
    assert queued.slept == [SLICE, SLICE]


async def test_a_batch_that_starts_with_a_write_someone_awaits_does_not_wait() -> None:
    awaited, queued_behind = job(can_wait=False), job(can_wait=True)
    queued = Queued(awaited, queued_behind)

    assert queued.take() == [awaited, queued_behind]
    assert queued.slept == []


async def test_the_stop_signal_ends_the_wait_and_stays_queued_for_the_next_take() -> None:
    waiting = job(can_wait=True)
    queued = Queued(waiting, None)

    assert queued.take() == [waiting]
    assert queued.slept == []
    assert queued.take() is None


async def test_a_full_batch_does_not_wait() -> None:
    many = [job(can_wait=True) for _ in range(MAX_BATCH + 1)]
    queued = Queued(*many)

    assert queued.take() == many[:MAX_BATCH]
    assert queued.slept == []
    assert queued.take() == many[MAX_BATCH:]
