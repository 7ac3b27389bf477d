"""The acknowledgment file: written after acceptance and at the end, retried when it fails."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_fixed

from notifier.dispatch.ack import AckWriter, append_lines
from notifier.dispatch.backoff import retried
from notifier.store import SQLiteStore
from tests.conftest import DEADLINE_SECONDS, MakeSettings, post, running_app, wait_for
from tests.test_store import make_notification


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def test_accepted_and_terminal_lines_are_written_without_the_body(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    settings = make_settings()
    async with running_app(settings) as client:
        notification_id = await post(client, text="secret body text", subject="secret subject")
        doc = await wait_for(client, notification_id, lambda d: d["acknowledged"])
        await wait_for(client, notification_id)

    lines = read_lines(settings.ack_file)
    assert [(line["id"], line["event"]) for line in lines] == [
        (notification_id, "accepted"),
        (notification_id, "sent"),
    ]
    assert lines[0]["recipients"] == [
        {"address": "ada@example.com", "kind": "to", "status": "pending"}
    ]
    assert lines[1]["recipients"][0]["status"] == "sent"
    assert lines[1]["message_id"] == doc["message_id"]
    assert "secret" not in settings.ack_file.read_text()


async def test_lines_are_utf8_json_lines_with_a_zoned_time(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    settings = make_settings()
    metadata = {"team": "Équipe ünïcode", "emoji": "\N{ENVELOPE}"}
    async with running_app(settings) as client:
        notification_id = await post(client, metadata=metadata)
        await wait_for(client, notification_id, lambda d: d["acknowledged"])
        await wait_for(client, notification_id)

    raw = settings.ack_file.read_bytes()
    assert raw.endswith(b"\n")
    lines = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    assert [line["metadata"] for line in lines] == [metadata, metadata]
    for line in lines:
        assert datetime.fromisoformat(line["at"]).tzinfo is not None


async def test_unwritable_ack_file_delays_acknowledgment_but_not_delivery(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    blocker = tmp_path / "acks"
    settings = make_settings(ack_file=blocker / "acks.jsonl")
    async with running_app(settings) as client:
        # After start-up, which refuses an ack file that cannot be created.
        blocker.write_text("a file where the directory should be")
        notification_id = await post(client)
        doc = await wait_for(client, notification_id)
        assert doc["status"] == "sent"
        assert doc["acknowledged"] is False

        blocker.unlink()
        await wait_for(client, notification_id, lambda d: d["acknowledged"])

    events = [line["event"] for line in read_lines(settings.ack_file)]
    assert events == ["accepted", "sent"]


async def test_lines_missing_after_a_crash_are_written_at_start(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings()
    store = SQLiteStore(settings.sqlite_path)
    await store.open()
    orphan = make_notification(created_at=1.0, expires_at=1.0)
    await store.add(orphan)
    await store.close()

    async with running_app(settings) as client:
        doc = await wait_for(client, orphan.id, lambda d: d["acknowledged"])
        await wait_for(client, orphan.id)

    assert doc["acknowledged"] is True
    events = [(line["id"], line["event"]) for line in read_lines(settings.ack_file)]
    assert (orphan.id, "accepted") in events
    assert (orphan.id, "expired") in events


class Flaky:
    """A write that fails ``failures`` times with ``error``, then succeeds."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error


def retrying_on_oserror(slept: list[float], failed: list[int]) -> AsyncRetrying:
    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    def before_sleep(state: RetryCallState) -> None:
        failed.append(state.attempt_number)

    return AsyncRetrying(
        retry=retry_if_exception_type(OSError),
        wait=wait_fixed(2),
        sleep=sleep,
        before_sleep=before_sleep,
    )


async def test_a_write_that_succeeds_at_once_never_sets_up_retries() -> None:
    write = Flaky(0, OSError("unused"))

    def no_retries() -> AsyncRetrying:
        raise AssertionError("retries were set up for a write that succeeded")

    await retried(write, no_retries)

    assert write.calls == 1


async def test_a_failing_write_is_retried_on_tenacitys_schedule_from_its_first_failure() -> None:
    write = Flaky(2, OSError("disk full"))
    slept: list[float] = []
    failed: list[int] = []

    await retried(write, lambda: retrying_on_oserror(slept, failed))

    assert write.calls == 3
    assert failed == [1, 2]
    assert slept == [2, 2]


async def test_a_failure_tenacity_does_not_retry_is_raised_after_one_call() -> None:
    write = Flaky(1, ValueError("bug"))
    slept: list[float] = []
    failed: list[int] = []

    with pytest.raises(ValueError, match="bug"):
        await retried(write, lambda: retrying_on_oserror(slept, failed))

    assert write.calls == 1
    assert failed == []


def line(number: int) -> bytes:
    return json.dumps({"n": number, "pad": "x" * 40}).encode() + b"\n"


class FullAfter:
    """``os.write`` on a disk with ``room`` bytes left: a short write, then ``ENOSPC``."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __call__(self, fd: int, data: memoryview) -> int:
        if self.room == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        written = os.write(fd, data[: self.room])
        self.room -= written
        return written


def test_an_append_the_disk_cut_short_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "acks.jsonl"
    append_lines(path, line(1))
    before = path.read_bytes()

    with pytest.raises(OSError, match="No space left"):
        append_lines(path, line(2) + line(3), write=FullAfter(room=len(line(2)) + 7))
    assert path.read_bytes() == before

    append_lines(path, line(2) + line(3))
    assert [json.loads(raw)["n"] for raw in path.read_bytes().splitlines()] == [1, 2, 3]


def test_a_fragment_a_crash_left_spoils_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "acks.jsonl"
    path.write_bytes(line(1) + line(2)[:9])

    append_lines(path, line(3))

    first, fragment, last = path.read_bytes().splitlines()
    assert json.loads(first)["n"] == 1
    assert fragment == line(2)[:9]
    assert json.loads(last)["n"] == 3


async def test_a_notification_accepted_during_the_start_up_catch_up_gets_each_line_once(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "notifier.db")
    await store.open()
    try:
        left_over = [make_notification(created_at=1.0) for _ in range(3)]
        for n in left_over:
            await store.add(n)
        # A file where the directory should be: the catch-up's first write fails.
        blocker = tmp_path / "acks"
        blocker.write_text("not a directory")
        failed = asyncio.Event()
        ack = AckWriter(
            blocker / "acks.jsonl",
            store,
            clock=time.time,
            retry_initial=0.01,
            retry_max=0.05,
            on_failure=failed.set,
        )
        await ack.start()
        await asyncio.wait_for(failed.wait(), DEADLINE_SECONDS)

        # Accepted and cancelled while the catch-up is still at work, as the API would.
        fresh = make_notification(created_at=time.time())
        await store.add(fresh)
        ack.accepted(fresh)
        cancelled, ended = await store.cancel(fresh.id, now=time.time())
        assert cancelled
        assert ended is not None
        ack.finished(ended)
        blocker.unlink()

        give_up = time.monotonic() + DEADLINE_SECONDS
        while await store.unacknowledged(limit=10, before=float("inf")):
            assert time.monotonic() < give_up, "acknowledgments never caught up"
            await asyncio.sleep(0.01)
        await ack.stop()
    finally:
        await store.close()

    events = [(entry["id"], entry["event"]) for entry in read_lines(blocker / "acks.jsonl")]
    assert [event for notification_id, event in events if notification_id == fresh.id] == [
        "accepted",
        "cancelled",
    ]
    for n in left_over:
        assert [event for notification_id, event in events if notification_id == n.id] == [
            "accepted"
        ]
