"""Operator control: cancel what is not yet sent, retry what failed or expired."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import STORES, MakeSettings, post, running_app, wait_for
from tests.smtp_server import ScriptedHandler

#: Each end-to-end path here runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.parametrize("database_url", STORES, indirect=True)

UNKNOWN_ID = "01a1fde9-a2eb-74e1-86b5-597eb64cdee6"


async def test_deferred_notification_is_cancelled_and_never_sent(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.data_replies.append("451 4.3.0 Try later")
    # Retries far apart, so the notification waits deferred while we cancel it.
    settings = make_settings(retry_initial_delay=60.0, retry_max_delay=60.0)
    async with running_app(settings) as client:
        notification_id = await post(client)
        await wait_for(client, notification_id, lambda d: d["status"] == "deferred")

        waiting = await queue_depth(client)
        response = await client.delete(f"/v1/notifications/{notification_id}")
        doc = await wait_for(client, notification_id, lambda d: d["status"] == "cancelled")
        left = await queue_depth(client)
        # Another notification goes through a claim: a cancelled one left due, due
        # earlier, would be claimed with it or before it.
        later = await post(client, subject="Later")
        await wait_for(client, later)
        after = (await client.get(f"/v1/notifications/{notification_id}")).json()

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert doc["next_attempt_at"] is None
    assert (waiting, left) == (1, 0)
    assert (after["status"], len(after["attempts"])) == ("cancelled", 1)
    assert [m.message["Subject"] for m in smtp_handler.received] == ["Later"]
    lines = [json.loads(line) for line in settings.ack_file.read_text().splitlines()]
    assert [line["event"] for line in lines if line["id"] == notification_id][-1] == "cancelled"


async def queue_depth(client: httpx.AsyncClient) -> float:
    """``notifier_queue_depth``: notifications the dispatcher still has to finish."""
    for family in text_string_to_metric_families((await client.get("/metrics")).text):
        if family.name == "notifier_queue_depth":
            return family.samples[0].value
    raise AssertionError("no notifier_queue_depth in /metrics")


async def test_sent_notification_cannot_be_cancelled(client: httpx.AsyncClient) -> None:
    notification_id = await post(client)
    await wait_for(client, notification_id)

    response = await client.delete(f"/v1/notifications/{notification_id}")

    assert response.status_code == 409
    assert response.json()["code"] == "not_cancellable"
    assert (await client.get(f"/v1/notifications/{notification_id}")).json()["status"] == "sent"


async def test_cancelling_an_unknown_id_is_404(client: httpx.AsyncClient) -> None:
    response = await client.delete(f"/v1/notifications/{UNKNOWN_ID}")

    assert response.status_code == 404


async def test_failed_notification_is_retried_with_a_fresh_budget(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.data_replies.extend(["451 4.3.0 Busy"] * 2)
    async with running_app(make_settings(retry_max_attempts=2)) as client:
        notification_id = await post(client)
        failed = await wait_for(client, notification_id)
        assert failed["status"] == "failed"

        response = await client.post(f"/v1/notifications/{notification_id}/retry")
        doc = await wait_for(client, notification_id, lambda d: d["status"] == "sent")

    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert response.headers["location"] == f"/v1/notifications/{notification_id}"
    assert [a["outcome"] for a in doc["attempts"]] == ["deferred", "failed", "sent"]
    assert doc["recipients"][0]["status"] == "sent"
    assert len(smtp_handler.received) == 1


async def test_retry_resends_only_to_recipients_not_reached(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.rcpt_replies["gone@example.com"].append("550 5.1.1 No such user")
    async with running_app(make_settings()) as client:
        notification_id = await post(client, to=["ada@example.com", "gone@example.com"])
        partial = await wait_for(client, notification_id)
        assert partial["status"] == "partially_sent"
        # Only failed and expired notifications may be retried.
        refused = await client.post(f"/v1/notifications/{notification_id}/retry")

    assert refused.status_code == 409
    assert refused.json()["code"] == "not_retryable"
    assert [r.rcpt_tos for r in smtp_handler.received] == [["ada@example.com"]]


async def test_expired_notification_is_retried_with_a_fresh_lifetime(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.rcpt_replies["ada@example.com"].append("452 4.2.2 Mailbox full")
    # The lifetime ends before the second attempt could be due.
    settings = make_settings(message_lifetime=0.5, retry_initial_delay=5, retry_max_delay=5)
    async with running_app(settings) as client:
        notification_id = await post(client)
        ended = await wait_for(client, notification_id)
        retried = await client.post(f"/v1/notifications/{notification_id}/retry")
        doc = await wait_for(client, notification_id, lambda d: d["status"] == "sent")

    assert ended["status"] == "expired"
    assert "452" in ended["last_error"]
    assert retried.status_code == 202
    assert retried.json()["expires_at"] > ended["expires_at"]
    assert [a["outcome"] for a in doc["attempts"]] == ["expired", "sent"]
    assert len(smtp_handler.received) == 1


async def test_retrying_an_unknown_id_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post(f"/v1/notifications/{UNKNOWN_ID}/retry")

    assert response.status_code == 404
