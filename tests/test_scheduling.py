"""Priority, send_at and expires_at, through the API, on both stores."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import STORES, MakeSettings, notification, running_app, wait_for
from tests.smtp_server import ScriptedHandler

pytestmark = pytest.mark.parametrize("database_url", STORES, indirect=True)

BACKLOG = 300


def at(seconds_from_now: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds_from_now)).isoformat()


async def test_a_notification_with_send_at_is_scheduled_then_sent_when_due(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    async with running_app(make_settings()) as client:
        response = await client.post("/v1/notifications", json=notification(send_at=at(1.0)))
        assert response.status_code == 202, response.text
        notification_id = response.json()["id"]
        held = (await client.get(f"/v1/notifications/{notification_id}")).json()
        assert (held["status"], held["priority"]) == ("scheduled", "normal")
        send_at = datetime.fromisoformat(held["send_at"]).timestamp()
        doc = await wait_for(client, notification_id)

    assert doc["status"] == "sent"
    assert len(smtp_handler.received) == 1
    started = datetime.fromisoformat(doc["attempts"][0]["started_at"]).timestamp()
    assert started >= send_at


async def test_a_scheduled_notification_survives_a_restart_and_can_be_cancelled(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    settings = make_settings()
    async with running_app(settings) as client:
        kept = (await client.post("/v1/notifications", json=notification(send_at=at(1.5)))).json()
        dropped = (
            await client.post("/v1/notifications", json=notification(send_at=at(3600)))
        ).json()
    async with running_app(settings) as client:
        cancelled = await client.delete(f"/v1/notifications/{dropped['id']}")
        doc = await wait_for(client, kept["id"])

    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    assert doc["status"] == "sent"
    assert len(smtp_handler.received) == 1


async def test_nothing_is_delivered_after_expires_at(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    # The relay defers every try; the notification's own deadline ends it, long before
    # the message lifetime would.
    smtp_handler.rcpt_replies["ada@example.com"].extend(["451 4.2.1 Busy"] * 1000)
    deadline = at(1.0)
    async with running_app(make_settings(retry_max_attempts=1000)) as client:
        response = await client.post("/v1/notifications", json=notification(expires_at=deadline))
        assert response.status_code == 202, response.text
        doc = await wait_for(client, response.json()["id"])

    assert doc["status"] == "expired"
    assert smtp_handler.received == []
    expires_at = datetime.fromisoformat(doc["expires_at"])
    assert abs(expires_at - datetime.fromisoformat(deadline)) < timedelta(milliseconds=1)
    # Every try that reached the relay began before the deadline; the last is the expiry.
    tries = [a for a in doc["attempts"] if a["smtp_code"] is not None]
    assert tries
    assert all(datetime.fromisoformat(a["started_at"]) < expires_at for a in tries)
    assert doc["attempts"][-1]["outcome"] == "expired"


@pytest.mark.parametrize(
    ("fields", "code", "named"),
    [
        ({"send_at": "2030-01-01T09:00:00"}, "invalid_request", "timezone"),
        ({"send_at": at(40 * 24 * 3600)}, "invalid_schedule", "NOTIFIER_MAX_SCHEDULE_AHEAD"),
        ({"send_at": at(60), "expires_at": at(30)}, "invalid_schedule", "later than"),
        ({"expires_at": at(-5)}, "invalid_schedule", "later than"),
        ({"priority": "urgent"}, "invalid_request", "priority"),
    ],
    ids=["no-offset", "too-far", "expires-before-send", "expires-in-the-past", "priority"],
)
async def test_a_schedule_that_cannot_be_kept_is_refused_and_nothing_stored(
    make_settings: MakeSettings, fields: dict[str, str], code: str, named: str
) -> None:
    async with running_app(make_settings()) as client:
        response = await client.post("/v1/notifications", json=notification(**fields))
        listed = await client.get("/v1/notifications")

    assert (response.status_code, response.json()["code"]) == (422, code), response.text
    assert named in response.text
    assert listed.json()["items"] == []


async def test_high_priority_overtakes_a_backlog_of_low(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.stall()  # the backlog piles up: only what the dispatcher holds is claimed
    try:
        async with running_app(make_settings()) as client:
            for i in range(BACKLOG):
                await client.post(
                    "/v1/notifications", json=notification(subject=f"low-{i}", priority="low")
                )
            response = await client.post(
                "/v1/notifications", json=notification(subject="urgent", priority="high")
            )
            smtp_handler.release()
            await wait_for(client, response.json()["id"])
            metrics = (await client.get("/metrics")).text
    finally:
        smtp_handler.release()

    subjects = [r.message["Subject"] for r in smtp_handler.received]
    # Sent with the work claimed before it arrived (at most the dispatcher's 4 slots and
    # 64 ahead), not after the backlog of 300.
    assert subjects.index("urgent") < 4 + 64 + 16, subjects.index("urgent")
    assert 'notifier_notifications_accepted_total{priority="high"} 1.0' in metrics
    assert f'notifier_notifications_accepted_total{{priority="low"}} {BACKLOG}.0' in metrics


async def test_the_list_filters_by_priority_time_of_acceptance_and_recipient(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as client:
        low = (await client.post("/v1/notifications", json=notification(priority="low"))).json()
        middle = datetime.now(UTC).isoformat()
        time.sleep(0.01)
        high = (await client.post("/v1/notifications", json=notification(priority="high"))).json()

        async def ids(**params: str) -> list[str]:
            response = await client.get("/v1/notifications", params=params)
            assert response.status_code == 200, response.text
            return [doc["id"] for doc in response.json()["items"]]

        by_priority = await ids(priority="low")
        by_recipient = await ids(recipient="Ada@EXAMPLE.com")  # the domain is normalised
        bad_address = await client.get("/v1/notifications", params={"recipient": "nope"})
        after = await ids(created_after=middle)
        before = await ids(created_before=middle)
        naive = await client.get(
            "/v1/notifications", params={"created_after": "2030-01-01T00:00:00"}
        )

    assert (by_priority, after, before) == ([low["id"]], [high["id"]], [low["id"]])
    assert by_recipient == [high["id"], low["id"]]
    assert naive.status_code == 422
    assert (bad_address.status_code, bad_address.json()["code"]) == (422, "invalid_request")
