"""The store or the acknowledgment file failing under a running service: a full disk
(a real tmpfs, filled) and a database whose write lock another process holds."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time

import httpx
import pytest

from tests.conftest import (
    DEADLINE_SECONDS,
    MakeSettings,
    notification,
    post,
    running_app,
    wait_for,
    wait_until_in_data,
)
from tests.disk import SmallDisk, small_disk  # noqa: F401 - the fixture
from tests.smtp_server import ScriptedHandler

RECORDING_FAILED = "recording attempt"


async def wait_for_log(caplog: pytest.LogCaptureFixture, text: str) -> None:
    give_up = time.monotonic() + DEADLINE_SECONDS
    while not any(text in record.getMessage() for record in caplog.records):
        assert time.monotonic() < give_up, f"never logged {text!r}"
        await asyncio.sleep(0.01)


async def refused(client: httpx.AsyncClient) -> httpx.Response:
    response = await client.post("/v1/notifications", json=notification())
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "store_unavailable"
    return response


async def test_an_outcome_a_locked_store_refused_is_recorded_once_it_commits_and_sent_once(
    make_settings: MakeSettings,
    smtp_handler: ScriptedHandler,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="notifier.dispatch.dispatcher")
    settings = make_settings(store_busy_timeout=0.1)
    smtp_handler.stall()
    async with running_app(settings) as client:
        notification_id = await post(client)
        await wait_until_in_data(smtp_handler, 1)
        blocker = sqlite3.connect(settings.sqlite_path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # every write waits, then fails
            smtp_handler.release()  # the relay accepts the message
            await wait_for_log(caplog, RECORDING_FAILED)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        doc = await wait_for(client, notification_id)

    assert doc["status"] == "sent"
    assert [a["outcome"] for a in doc["attempts"]] == ["sent"]
    assert len(smtp_handler.received) == 1


async def test_an_outcome_a_full_disk_refused_is_recorded_once_space_is_freed_and_sent_once(
    make_settings: MakeSettings,
    smtp_handler: ScriptedHandler,
    small_disk: SmallDisk,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="notifier.dispatch.dispatcher")
    settings = make_settings(database_url=f"sqlite:///{small_disk.path / 'notifier.db'}")
    smtp_handler.stall()
    async with running_app(settings) as client:
        notification_id = await post(client)
        await wait_until_in_data(smtp_handler, 1)
        small_disk.fill()
        smtp_handler.release()
        await wait_for_log(caplog, RECORDING_FAILED)
        small_disk.free()
        doc = await wait_for(client, notification_id)

    assert doc["status"] == "sent"
    assert [a["outcome"] for a in doc["attempts"]] == ["sent"]
    assert len(smtp_handler.received) == 1


async def test_readyz_stays_red_while_a_full_disk_refuses_notifications_and_recovers_alone(
    make_settings: MakeSettings,
    small_disk: SmallDisk,  # noqa: F811
) -> None:
    settings = make_settings(database_url=f"sqlite:///{small_disk.path / 'notifier.db'}")
    async with running_app(settings) as client:
        sent = await post(client)
        await wait_for(client, sent, lambda d: d["status"] == "sent" and d["acknowledged"])
        small_disk.fill()
        await refused(client)
        red = await client.get("/readyz")
        # A write that changes nothing commits even on a full disk (an idle claim does
        # the same); it proves nothing about the next POST.
        not_retryable = await client.post(f"/v1/notifications/{sent}/retry")
        still_red = await client.get("/readyz")
        await refused(client)

        small_disk.free()
        give_up = time.monotonic() + DEADLINE_SECONDS
        while (green := await client.get("/readyz")).status_code != 200:
            assert time.monotonic() < give_up, green.text
            await asyncio.sleep(0.01)
        accepted = await post(client)
        doc = await wait_for(client, accepted)

    assert red.status_code == 503
    assert "cannot commit" in red.json()["checks"]["store"]
    assert not_retryable.status_code == 409
    assert still_red.status_code == 503
    assert "full" in still_red.json()["checks"]["store"]
    assert doc["status"] == "sent"


async def test_acknowledgment_lines_on_a_full_disk_arrive_whole_once_space_is_freed(
    make_settings: MakeSettings,
    small_disk: SmallDisk,  # noqa: F811
) -> None:
    ack_file = small_disk.path / "acks.jsonl"
    settings = make_settings(ack_file=ack_file)
    async with running_app(settings) as client:
        # Lines already there leave part of a page free: the next append fits only partly.
        first = [await post(client, metadata={"pad": "x" * 300}) for _ in range(5)]
        for notification_id in first:
            await wait_for(client, notification_id, lambda d: d["acknowledged"])
            await wait_for(client, notification_id)
        small_disk.fill()
        later = [await post(client, metadata={"pad": "y" * 300}) for _ in range(20)]
        for notification_id in later:
            await wait_for(client, notification_id)
        unwritten = await client.get(f"/v1/notifications/{later[-1]}")
        small_disk.free()
        for notification_id in later:
            await wait_for(
                client,
                notification_id,
                lambda d: d["acknowledged"],
            )
        # The final lines come after the accepted ones; wait for the last of them too.
        give_up = time.monotonic() + DEADLINE_SECONDS
        while len(ack_file.read_bytes().splitlines()) < 2 * (len(first) + len(later)):
            assert time.monotonic() < give_up, "final lines never written"
            await asyncio.sleep(0.01)

    assert unwritten.json()["acknowledged"] is False
    lines = [json.loads(raw) for raw in ack_file.read_bytes().splitlines()]
    events = [(line["id"], line["event"]) for line in lines]
    for notification_id in first + later:
        assert events.count((notification_id, "accepted")) == 1
        assert events.count((notification_id, "sent")) == 1
    assert len(lines) == 2 * (len(first) + len(later))


def test_the_small_disk_really_fills(small_disk: SmallDisk) -> None:  # noqa: F811
    small_disk.fill()
    with pytest.raises(OSError, match="No space left"):
        (small_disk.path / "more").write_bytes(b"x" * 8192)
    small_disk.free()
    (small_disk.path / "more").write_bytes(b"x" * 8192)
