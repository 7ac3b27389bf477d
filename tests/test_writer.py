"""Group commit: one transaction per batch, and a failing job rolled back alone."""

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


async def test_a_failed_commit_fails_every_job_and_says_why(
    connection: sqlite3.Connection,
) -> None:
    connection.execute("PRAGMA query_only = 1")
    batch = jobs(insert("a"), insert("b"))

    results, failure = commit(connection, batch)
    settle(results)

    assert failure is not None
    for job in batch:
        with pytest.raises(StoreError):
            await job.future
    connection.execute("PRAGMA query_only = 0")
    assert keys(connection) == set()
