"""Back-pressure, store faults, relay faults and shutdown: clear answers, nothing lost."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from notifier.app import begin_shutdown
from tests.conftest import (
    MakeSettings,
    notification,
    post,
    running_app,
    wait_for,
    wait_until_in_data,
)
from tests.raw_smtp import RawSMTPServer
from tests.smtp_server import ScriptedHandler, free_port


async def test_too_many_undelivered_notifications_get_503_with_retry_after(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.stall()
    async with running_app(make_settings(max_pending=3)) as client:
        accepted = [await post(client) for _ in range(3)]
        refused = await client.post("/v1/notifications", json=notification())
        assert refused.status_code == 503
        assert refused.json()["code"] == "too_many_pending"
        assert refused.headers["retry-after"]

        smtp_handler.release()
        for notification_id in accepted:
            await wait_for(client, notification_id)
        give_up = time.monotonic() + 10
        while (
            again := await client.post("/v1/notifications", json=notification())
        ).status_code == 503:
            assert time.monotonic() < give_up, "back-pressure never lifted"
            await asyncio.sleep(0.05)

    assert again.status_code == 202
    assert len(smtp_handler.received) >= len(accepted)


async def test_store_that_cannot_commit_answers_503_and_readyz_goes_red(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(store_busy_timeout=0.2)
    async with running_app(settings) as client:
        blocker = sqlite3.connect(settings.sqlite_path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # holds the write lock past the busy timeout
            refused = await client.post("/v1/notifications", json=notification())
            ready = await client.get("/readyz")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        accepted = await client.post("/v1/notifications", json=notification())
        await wait_for(client, accepted.json()["id"])
        recovered = await client.get("/readyz")
        listed = (await client.get("/v1/notifications")).json()["items"]

    assert refused.status_code == 503
    assert refused.json()["code"] == "store_unavailable"
    assert refused.headers["retry-after"]
    assert ready.status_code == 503
    assert "cannot commit" in ready.json()["checks"]["store"]
    assert accepted.status_code == 202
    assert recovered.status_code == 200
    assert [item["id"] for item in listed] == [accepted.json()["id"]]


async def test_relay_down_keeps_notifications_deferred_and_the_instance_ready(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    dead_port = free_port()
    async with running_app(make_settings(smtp_port=dead_port)) as client:
        notification_id = await post(client)
        doc = await wait_for(
            client, notification_id, lambda d: len(d["attempts"]) >= 3, deadline=15
        )
        ready = await client.get("/readyz")
        still_accepting = await client.post("/v1/notifications", json=notification())

    assert doc["status"] in {"deferred", "sending"}
    assert all(a["relay_fault"] for a in doc["attempts"][:3])
    # A relay outage must not take the instance out of a load balancer.
    assert ready.status_code == 200
    assert "relay fault" in ready.json()["checks"]["relay"]
    assert ready.json()["checks"]["store"] == "ok"
    assert still_accepting.status_code == 202


def circuit_open(metrics: str) -> float:
    (line,) = [x for x in metrics.splitlines() if x.startswith("notifier_relay_circuit_open ")]
    return float(line.split()[1])


async def test_relay_recovery_closes_the_breaker_and_delivers(
    make_settings: MakeSettings,
) -> None:
    relay = RawSMTPServer()  # refuses connections until it starts: a relay fault
    try:
        settings = make_settings(smtp_host=relay.host, smtp_port=relay.port)
        async with running_app(settings) as client:
            notification_id = await post(client)
            await wait_for(client, notification_id, lambda d: len(d["attempts"]) >= 1)
            tripped = (await client.get("/metrics")).text
            relay.start()
            doc = await wait_for(client, notification_id)
            closed = (await client.get("/metrics")).text
            ready = await client.get("/readyz")
    finally:
        relay.stop()

    assert circuit_open(tripped) == 1
    assert doc["status"] == "sent"
    assert doc["attempts"][0]["relay_fault"] is True
    assert circuit_open(closed) == 0
    assert ready.json()["checks"]["relay"] == "ok"


async def test_shutdown_refuses_new_notifications_and_lets_sends_in_flight_finish(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.stall()
    runner = running_app(make_settings(shutdown_grace=10))
    async with runner as client:
        in_flight = await post(client)
        await wait_until_in_data(smtp_handler, 1)
        begin_shutdown(runner.app)
        refused = await client.post("/v1/notifications", json=notification())
        ready = await client.get("/readyz")
        smtp_handler.release()
        doc = await wait_for(client, in_flight)

    assert refused.status_code == 503
    assert refused.json()["code"] == "shutting_down"
    assert refused.headers["retry-after"]
    assert ready.status_code == 503
    assert doc["status"] == "sent"
    assert [a["outcome"] for a in doc["attempts"]] == ["sent"]


async def test_sends_past_the_shutdown_grace_are_released_and_resumed_at_start(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.stall()
    settings = make_settings(shutdown_grace=0.1)
    async with running_app(settings) as client:
        notification_id = await post(client)
        await wait_until_in_data(smtp_handler, 1)
    smtp_handler.release()
    async with running_app(settings) as client:
        doc = await wait_for(client, notification_id)

    assert doc["status"] == "sent"
    outcomes = [a["outcome"] for a in doc["attempts"]]
    assert outcomes[0] == "interrupted"
    assert doc["attempts"][0]["possible_duplicate"] is True
    assert outcomes[-1] == "sent"
    assert {r.message_id for r in smtp_handler.received} == {doc["message_id"]}


async def test_claims_that_never_reached_the_relay_are_given_back_at_shutdown_unflagged(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.stall()
    settings = make_settings(send_concurrency=1, shutdown_grace=0.1)
    async with running_app(settings) as client:
        ids = [await post(client) for _ in range(4)]
        await wait_until_in_data(smtp_handler, 1)
        for notification_id in ids:  # one at the relay, the rest claimed ahead of a slot
            await wait_for(client, notification_id, lambda d: d["status"] == "sending")
    smtp_handler.release()
    async with running_app(settings) as client:
        docs = [await wait_for(client, notification_id) for notification_id in ids]

    outcomes = [[a["outcome"] for a in doc["attempts"]] for doc in docs]
    assert sorted(outcomes) == [["interrupted", "sent"]] + [["sent"]] * 3
    flagged = [a for doc in docs for a in doc["attempts"] if a["possible_duplicate"]]
    assert len(flagged) == 1
