"""Group commit: one transaction per batch, a failing job rolled back alone, and a
batch's plain inserts run as one statement."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from notifier.errors import StoreError
from notifier.store.writer import Job, commit, connect, settle


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

    results, failure = commit(connection, batch)
    settle(results)

    assert failure is None
    assert [await job.future for job in batch] == [1, 2]
    assert keys(connection) == {"a", "b", "c"}


async def test_a_failing_job_is_rolled_back_alone_and_the_others_commit(
    connection: sqlite3.Connection,
) -> None:
    batch = jobs(insert("a"), fails_after_writing, insert("a"), insert("b"))

    results, failure = commit(connection, batch)
    settle(results)

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

    results, failure = commit(connection, batch, BULK_INSERT)
    settle(results)

    assert failure is None
    assert seen == ["INSERT"]
    assert [await job.future for job in batch] == [None, None, None]
    assert keys(connection) == {"a", "b", "c"}


async def test_plain_inserts_share_one_statement_inside_a_mixed_batch(
    connection: sqlite3.Connection,
) -> None:
    batch = [*row_jobs("a", "b"), *jobs(insert("c")), *row_jobs("d")]
    seen = statements(connection)

    results, failure = commit(connection, batch, BULK_INSERT)
    settle(results)

    assert failure is None
    assert seen == ["BEGIN", "INSERT", "INSERT", "COMMIT"]
    assert await batch[2].future == 1
    assert keys(connection) == {"a", "b", "c", "d"}


async def test_a_failing_plain_insert_is_rolled_back_alone(
    connection: sqlite3.Connection,
) -> None:
    connection.execute("INSERT INTO t (k) VALUES ('taken')")
    batch = row_jobs("a", "taken", "b")

    results, failure = commit(connection, batch, BULK_INSERT)
    settle(results)

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

    results, failure = commit(connection, batch, BULK_INSERT if bulk else None)
    settle(results)

    assert failure is not None
    for job in batch:
        with pytest.raises(StoreError):
            await job.future
    connection.execute("PRAGMA query_only = 0")
    assert keys(connection) == set()
