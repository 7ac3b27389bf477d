"""Delivery over a real SMTP server: every classification path of one transaction."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import STORES, MakeSettings, post, running_app, wait_for, wait_until_in_data
from tests.smtp_server import DROP, DROP_AFTER_ACCEPT, ScriptedHandler

#: Each end-to-end path here runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.parametrize("database_url", STORES, indirect=True)


async def test_notification_is_delivered_and_recorded(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    notification_id = await post(client, to=["ada@example.com"], cc=["bob@example.com"])

    doc = await wait_for(client, notification_id)

    assert doc["status"] == "sent"
    assert [r["status"] for r in doc["recipients"]] == ["sent", "sent"]
    assert [a["outcome"] for a in doc["attempts"]] == ["sent"]
    assert doc["attempts"][0]["smtp_code"] == 250
    (received,) = smtp_handler.received
    assert received.mail_from == "notifier@example.com"
    assert received.rcpt_tos == ["ada@example.com", "bob@example.com"]
    assert received.message_id == doc["message_id"]
    assert received.message["Subject"] == "Hello"
    assert received.message.get_content().strip() == "Hi Ada"


async def test_bcc_is_in_the_envelope_but_not_the_headers(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    notification_id = await post(client, bcc=["secret@example.com"])

    await wait_for(client, notification_id)

    (received,) = smtp_handler.received
    assert "secret@example.com" in received.rcpt_tos
    assert b"secret@example.com" not in received.data


async def test_transient_data_reply_is_retried_under_the_same_message_id(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.data_replies.extend(["451 4.3.0 Try again later", "452 4.3.1 Full"])

    doc = await wait_for(client, await post(client))

    assert doc["status"] == "sent"
    assert [a["outcome"] for a in doc["attempts"]] == ["deferred", "deferred", "sent"]
    assert [a["smtp_code"] for a in doc["attempts"]] == [451, 452, 250]
    assert smtp_handler.data_commands == 3
    (received,) = smtp_handler.received
    assert received.message_id == doc["message_id"]


async def test_permanent_data_reply_fails_at_once(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.data_replies.append("554 5.6.0 Message rejected")

    doc = await wait_for(client, await post(client))

    assert doc["status"] == "failed"
    assert len(doc["attempts"]) == 1
    assert doc["attempts"][0]["smtp_code"] == 554
    assert doc["recipients"][0]["status"] == "failed"
    assert doc["recipients"][0]["smtp_code"] == 554
    assert "554" in doc["last_error"]
    assert smtp_handler.received == []


async def test_permanent_sender_refusal_fails_at_once(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.mail_replies.append("550 5.7.1 Sender not allowed")

    doc = await wait_for(client, await post(client))

    assert doc["status"] == "failed"
    assert doc["attempts"][0]["smtp_code"] == 550
    assert smtp_handler.data_commands == 0


async def test_transient_sender_refusal_is_retried(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.mail_replies.append("451 4.7.1 Greylisted")

    doc = await wait_for(client, await post(client))

    assert doc["status"] == "sent"
    assert [a["smtp_code"] for a in doc["attempts"]] == [451, 250]
    assert len(smtp_handler.received) == 1


async def test_partial_refusal_sends_to_the_accepted_and_fails_the_refused(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.rcpt_replies["gone@example.com"].append("550 5.1.1 No such user")

    doc = await wait_for(client, await post(client, to=["ada@example.com", "gone@example.com"]))

    assert doc["status"] == "partially_sent"
    by_address = {r["address"]: r for r in doc["recipients"]}
    assert by_address["ada@example.com"]["status"] == "sent"
    assert by_address["gone@example.com"]["status"] == "failed"
    assert by_address["gone@example.com"]["smtp_code"] == 550
    (received,) = smtp_handler.received
    assert received.rcpt_tos == ["ada@example.com"]


async def test_deferred_recipient_alone_is_retried_and_accepted_one_never_resent(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.rcpt_replies["busy@example.com"].append("452 4.2.2 Mailbox full")

    doc = await wait_for(client, await post(client, to=["ada@example.com", "busy@example.com"]))

    assert doc["status"] == "sent"
    assert [r["status"] for r in doc["recipients"]] == ["sent", "sent"]
    assert [a["outcome"] for a in doc["attempts"]] == ["deferred", "sent"]
    assert [r.rcpt_tos for r in smtp_handler.received] == [
        ["ada@example.com"],
        ["busy@example.com"],
    ]
    assert len({r.message_id for r in smtp_handler.received}) == 1


async def test_every_recipient_refused_permanently_fails_without_data(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.rcpt_replies["ada@example.com"].append("550 5.1.1 Unknown")
    smtp_handler.rcpt_replies["bob@example.com"].append("553 5.1.3 Bad address")

    doc = await wait_for(client, await post(client, to=["ada@example.com", "bob@example.com"]))

    assert doc["status"] == "failed"
    assert [r["smtp_code"] for r in doc["recipients"]] == [550, 553]
    assert smtp_handler.data_commands == 0


async def test_too_many_recipients_reply_is_transient(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.rcpt_replies["ada@example.com"].append("552 5.5.3 Too many recipients")

    doc = await wait_for(client, await post(client))

    assert doc["status"] == "sent"
    assert [a["outcome"] for a in doc["attempts"]] == ["deferred", "sent"]


async def test_dropped_connection_is_retried_on_a_new_connection(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.rcpt_replies["ada@example.com"].append(DROP)

    doc = await wait_for(client, await post(client))

    assert doc["status"] == "sent"
    assert doc["attempts"][0]["outcome"] == "deferred"
    assert doc["attempts"][0]["possible_duplicate"] is False
    assert "connection lost" in doc["attempts"][0]["message"]
    assert len(smtp_handler.received) == 1
    assert smtp_handler.sessions == 2


async def test_attempts_spent_end_failed_with_the_last_error(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.data_replies.extend(["451 4.3.0 Busy"] * 5)

    doc = await wait_for(client, await post(client))

    assert doc["status"] == "failed"
    assert len(doc["attempts"]) == 5
    assert "5 attempts spent" in doc["recipients"][0]["smtp_message"]
    assert "451" in doc["last_error"]
    assert smtp_handler.received == []


async def test_connections_are_reused_across_messages(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    ids = [await post(client, subject=f"message {i}") for i in range(12)]

    for notification_id in ids:
        assert (await wait_for(client, notification_id))["status"] == "sent"

    assert len(smtp_handler.received) == 12
    # At most one connection per concurrent sender (send_concurrency=4), not one per message.
    assert smtp_handler.sessions <= 4


async def test_no_more_smtp_transactions_than_send_concurrency_while_more_are_claimed(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.stall()
    ids = [await post(client, subject=f"message {i}") for i in range(10)]
    await wait_until_in_data(smtp_handler, 4)
    # All ten are claimed (some wait for a free connection), yet only four are at DATA.
    for notification_id in ids:
        await wait_for(client, notification_id, until=lambda doc: doc["status"] == "sending")
    assert smtp_handler.data_commands == 4
    metrics = (await client.get("/metrics")).text
    assert "notifier_sends_in_flight 4.0" in metrics

    smtp_handler.release()
    for notification_id in ids:
        assert (await wait_for(client, notification_id))["status"] == "sent"
    assert smtp_handler.sessions <= 4


async def test_send_longer_than_the_lease_is_not_sent_twice(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.stall()
    async with running_app(make_settings(lease_seconds=0.2)) as client:
        notification_id = await post(client)
        await wait_until_in_data(smtp_handler, 1)
        # Stall for several lease periods: only renewal keeps the lease alive.
        renewals_due = time.monotonic() + 1.0
        while time.monotonic() < renewals_due:
            doc = (await client.get(f"/v1/notifications/{notification_id}")).json()
            assert doc["status"] == "sending"
            await asyncio.sleep(0.05)
        smtp_handler.release()
        doc = await wait_for(client, notification_id)

    assert doc["status"] == "sent"
    assert [a["outcome"] for a in doc["attempts"]] == ["sent"]
    assert smtp_handler.data_commands == 1
    assert len(smtp_handler.received) == 1


async def test_connection_lost_during_data_is_an_unknown_outcome_resent_with_the_same_id(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.data_replies.append(DROP_AFTER_ACCEPT)

    doc = await wait_for(client, await post(client))

    assert doc["status"] == "sent"
    first, second = doc["attempts"]
    assert first["outcome"] == "deferred"
    assert first["possible_duplicate"] is True
    assert "outcome unknown" in first["message"]
    assert second["possible_duplicate"] is False
    # The relay kept the first copy: the duplicate shares the Message-ID.
    assert [r.message_id for r in smtp_handler.received] == [doc["message_id"]] * 2


async def test_final_reply_slower_than_the_data_timeout_is_an_unknown_outcome(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.stall()
    async with running_app(make_settings(smtp_data_timeout=0.2)) as client:
        notification_id = await post(client)
        await wait_for(client, notification_id, lambda d: len(d["attempts"]) >= 1)
        smtp_handler.release()
        doc = await wait_for(client, notification_id)

    assert doc["status"] == "sent"
    assert doc["attempts"][0]["possible_duplicate"] is True
    assert "timed out" in doc["attempts"][0]["message"].lower()
    assert {r.message_id for r in smtp_handler.received} == {doc["message_id"]}


async def test_an_attempt_starts_when_its_transaction_does_not_while_it_waits_for_a_slot(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.stall()
    async with running_app(make_settings(send_concurrency=1)) as client:
        first, second = await post(client), await post(client)
        await wait_until_in_data(smtp_handler, 1)
        await wait_for(client, second, lambda d: d["status"] == "sending")
        smtp_handler.release()
        done = [await wait_for(client, n) for n in (first, second)]

    (ahead,), (behind,) = (doc["attempts"] for doc in done)
    assert behind["started_at"] >= ahead["finished_at"]
