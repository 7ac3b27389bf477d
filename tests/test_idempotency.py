"""Idempotency-Key: one notification per key and caller, however often the request comes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from notifier.api.idempotency import IdempotencyGuard
from notifier.retention import Retention
from notifier.store import store_for
from tests.conftest import STORES, MakeSettings, notification, running_app, wait_for
from tests.smtp_server import ScriptedHandler

#: Each end-to-end path here runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.parametrize("database_url", STORES, indirect=True)


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


async def test_same_key_and_body_replays_the_original_answer(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    first = await client.post("/v1/notifications", json=notification(), headers=keyed("k-1"))
    await wait_for(client, first.json()["id"])
    again = await client.post("/v1/notifications", json=notification(), headers=keyed("k-1"))

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    listed = (await client.get("/v1/notifications")).json()["items"]
    assert [item["id"] for item in listed] == [first.json()["id"]]
    assert len(smtp_handler.received) == 1


async def test_same_key_with_another_body_is_422(client: httpx.AsyncClient) -> None:
    await client.post("/v1/notifications", json=notification(), headers=keyed("k-2"))

    other = await client.post(
        "/v1/notifications", json=notification(subject="Different"), headers=keyed("k-2")
    )

    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    assert len((await client.get("/v1/notifications")).json()["items"]) == 1


async def test_twenty_concurrent_identical_requests_make_one_notification(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    responses = await asyncio.gather(
        *(
            client.post("/v1/notifications", json=notification(), headers=keyed("burst"))
            for _ in range(20)
        )
    )

    statuses = {r.status_code for r in responses}
    assert statuses <= {202, 409}
    ids = {r.json()["id"] for r in responses if r.status_code == 202}
    assert len(ids) == 1
    for conflict in (r for r in responses if r.status_code == 409):
        assert conflict.headers["retry-after"] == "1"
        assert conflict.json()["code"] == "idempotency_key_in_use"
    (notification_id,) = ids
    await wait_for(client, notification_id)
    assert len((await client.get("/v1/notifications")).json()["items"]) == 1
    assert len(smtp_handler.received) == 1


async def test_request_that_fails_validation_stores_no_key(client: httpx.AsyncClient) -> None:
    bad = await client.post(
        "/v1/notifications", json=notification(to=["not-an-address"]), headers=keyed("k-3")
    )
    fixed = await client.post("/v1/notifications", json=notification(), headers=keyed("k-3"))

    assert bad.status_code == 422
    assert fixed.status_code == 202
    assert "idempotent-replayed" not in fixed.headers


async def test_keys_are_scoped_per_api_key(make_settings: MakeSettings) -> None:
    settings = make_settings(api_keys=["alpha", "beta"], auth_disabled=False)
    async with running_app(settings) as client:
        as_alpha = await client.post(
            "/v1/notifications",
            json=notification(),
            headers={**keyed("shared"), "Authorization": "Bearer alpha"},
        )
        as_beta = await client.post(
            "/v1/notifications",
            json=notification(),
            headers={**keyed("shared"), "Authorization": "Bearer beta"},
        )

    assert as_alpha.status_code == as_beta.status_code == 202
    assert as_alpha.json()["id"] != as_beta.json()["id"]
    assert "idempotent-replayed" not in as_beta.headers


async def test_malformed_key_is_400(client: httpx.AsyncClient) -> None:
    for key in (b"", b"x" * 256, b"tab\there", "é".encode()):
        response = await client.post(
            "/v1/notifications", json=notification(), headers={b"Idempotency-Key": key}
        )
        assert response.status_code == 400, key
        assert response.json()["code"] == "invalid_idempotency_key"
    assert (await client.get("/v1/notifications")).json()["items"] == []


async def test_keys_survive_a_restart(make_settings: MakeSettings) -> None:
    settings = make_settings()
    async with running_app(settings) as client:
        first = await client.post("/v1/notifications", json=notification(), headers=keyed("k-4"))
    async with running_app(settings) as client:
        again = await client.post("/v1/notifications", json=notification(), headers=keyed("k-4"))

    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"


async def test_a_replay_answers_what_was_stored_even_if_the_request_would_be_refused_now(
    make_settings: MakeSettings,
) -> None:
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    body = notification(send_at=later)
    async with running_app(make_settings()) as client:
        first = await client.post("/v1/notifications", json=body, headers=keyed("k-6"))
    # Restarted with a shorter horizon: the request alone would now be 422.
    async with running_app(make_settings(max_schedule_ahead=3600)) as client:
        again = await client.post("/v1/notifications", json=body, headers=keyed("k-6"))
        fresh = await client.post("/v1/notifications", json=body)

    assert first.status_code == 202
    assert (again.status_code, again.json()["id"]) == (202, first.json()["id"])
    assert again.headers["idempotent-replayed"] == "true"
    assert (fresh.status_code, fresh.json()["code"]) == (422, "invalid_schedule")


async def test_keys_are_forgotten_after_their_window(make_settings: MakeSettings) -> None:
    settings = make_settings(message_lifetime=1.0)
    async with running_app(settings) as client:
        first = await client.post("/v1/notifications", json=notification(), headers=keyed("k-5"))
    store = store_for(settings)
    await store.open()
    try:
        window = settings.idempotency_window
        (_, kept) = await Retention(store, keep=1e12, clock=lambda: 0.0).purge_once()
        later = Retention(store, keep=1e12, clock=lambda: 2e9 + window)
        (_, purged) = await later.purge_once()
        remaining = await store.find_idempotency("", "k-5")
    finally:
        await store.close()

    assert first.status_code == 202
    assert (kept, purged, remaining) == (0, 1, None)


async def test_the_store_decides_between_concurrent_requests_the_guard_did_not_see(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = running_app(make_settings())
    async with runner as client:
        # This process's in-progress set switched off, as if each request came to
        # another replica: the store's unique key is all that stands between them.
        guard: IdempotencyGuard = runner.app.state.services.idempotency
        monkeypatch.setattr(guard, "claim", lambda owner, key: None)
        responses = await asyncio.gather(
            *(
                client.post("/v1/notifications", json=notification(), headers=keyed("race"))
                for _ in range(20)
            )
        )
        different = await client.post(
            "/v1/notifications", json=notification(subject="Other"), headers=keyed("race")
        )
        ids = {r.json()["id"] for r in responses}
        await wait_for(client, next(iter(ids)))
        listed = (await client.get("/v1/notifications")).json()["items"]

    assert {r.status_code for r in responses} == {202}
    assert len(ids) == 1
    assert sum("idempotent-replayed" in r.headers for r in responses) == 19
    assert different.status_code == 422
    assert different.json()["code"] == "idempotency_key_reused"
    assert [item["id"] for item in listed] == list(ids)
    assert len(smtp_handler.received) == 1
