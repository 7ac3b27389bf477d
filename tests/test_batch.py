"""``POST /v1/notifications/batch``: per-item results, one commit, one key, every recipient
counted; and ``notifier send --batch``."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    DEADLINE_SECONDS,
    STORES,
    MakeSettings,
    notification,
    running_app,
    wait_for,
)
from tests.service import ServiceProcess, spawn
from tests.smtp_server import ScriptedHandler

pytestmark = pytest.mark.parametrize("database_url", STORES, indirect=True)

BATCH = "/v1/notifications/batch"


async def stored(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/v1/notifications", params={"limit": 200})
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_each_item_is_answered_in_order_and_only_the_valid_ones_are_sent(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    items = [
        notification(to=["ada@example.com"], subject="one"),
        notification(to=["not an address"]),
        "not an object",
        notification(to=["bob@example.com"], subject="two", priority="high"),
        notification(template="no-such-template", subject=None, text=None),
        notification(**{"from": "eve@evil.example"}),
        notification(
            to=["cy@example.com"],
            subject="three",
            attachments=[
                {
                    "filename": "a.txt",
                    "content_type": "text/plain",
                    "content": base64.b64encode(b"attached").decode(),
                }
            ],
        ),
    ]
    items[4] = {"to": ["ada@example.com"], "template": "no-such-template"}
    async with running_app(make_settings()) as client:
        response = await client.post(BATCH, json={"notifications": items})
        assert response.status_code == 200, response.text
        results = response.json()["items"]
        for result in results:
            if result["status"] == 202:
                await wait_for(client, result["id"])
        kept = await stored(client)

    assert [r["status"] for r in results] == [202, 422, 422, 202, 422, 403, 202]
    assert results[1]["error"]["code"] == "invalid_request"
    assert results[1]["error"]["errors"][0]["loc"] == "body.to.0"
    assert results[4]["error"]["code"] == "unknown_template"
    assert results[5]["error"]["code"] == "sender_not_allowed"
    accepted = {r["id"] for r in results if r["status"] == 202}
    assert {n["id"] for n in kept} == accepted
    assert {n["status"] for n in kept} == {"sent"}
    by_subject = {r.message["Subject"]: r for r in smtp_handler.received}
    assert sorted(by_subject) == ["one", "three", "two"]
    (attached,) = by_subject["three"].message.iter_attachments()
    assert attached.get_payload(decode=True) == b"attached"


async def test_items_to_special_use_domains_follow_the_setting(
    make_settings: MakeSettings,
) -> None:
    batch = {"notifications": [notification(to=["user@corp.local"])]}
    async with running_app(make_settings()) as client:
        refused = (await client.post(BATCH, json=batch)).json()["items"][0]
    async with running_app(make_settings(allow_special_use_domains=True)) as client:
        accepted = (await client.post(BATCH, json=batch)).json()["items"][0]

    assert refused["status"] == 422
    assert "NOTIFIER_ALLOW_SPECIAL_USE_DOMAINS" in refused["error"]["detail"]
    assert accepted["status"] == 202


async def test_a_batch_over_the_limit_or_empty_is_refused_whole(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as client:
        too_many = await client.post(BATCH, json={"notifications": [notification()] * 501})
        empty = await client.post(BATCH, json={"notifications": []})
        not_a_list = await client.post(BATCH, json={"notifications": {"to": "x"}})
        kept = await stored(client)

    assert too_many.status_code == 422
    assert too_many.json()["code"] == "batch_too_large"
    assert "NOTIFIER_MAX_BATCH" in too_many.json()["detail"]
    assert (empty.status_code, not_a_list.status_code) == (422, 422)
    assert kept == []


async def test_an_idempotency_key_covers_the_whole_batch(make_settings: MakeSettings) -> None:
    batch = {"notifications": [notification(subject="a"), notification(subject="b")]}
    key = {"Idempotency-Key": "batch-1"}
    async with running_app(make_settings()) as client:
        first = await client.post(BATCH, json=batch, headers=key)
        # The same batch, its fields in another order: the same request.
        reordered = {"notifications": [dict(reversed(n.items())) for n in batch["notifications"]]}
        again = await client.post(BATCH, json=reordered, headers=key)
        other = await client.post(
            BATCH, json={"notifications": [notification(subject="c")]}, headers=key
        )
        single = await client.post("/v1/notifications", json=notification(), headers=key)
        kept = await stored(client)

    assert first.status_code == 200, first.text
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")
    assert (single.status_code, single.json()["code"]) == (422, "idempotency_key_reused")
    assert sorted(n["id"] for n in kept) == sorted(r["id"] for r in first.json()["items"])


async def test_a_replay_answers_what_was_stored_even_if_an_item_would_be_refused_now(
    make_settings: MakeSettings,
) -> None:
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    batch = {"notifications": [notification(send_at=later)]}
    key = {"Idempotency-Key": "batch-2"}
    async with running_app(make_settings()) as client:
        first = await client.post(BATCH, json=batch, headers=key)
    # Restarted with a shorter horizon: the item alone would now be 422 invalid_schedule.
    async with running_app(make_settings(max_schedule_ahead=3600)) as client:
        again = await client.post(BATCH, json=batch, headers=key)
        fresh = await client.post(BATCH, json=batch)

    assert first.json()["items"][0]["status"] == 202
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json() == first.json()
    assert fresh.json()["items"][0]["error"]["code"] == "invalid_schedule"


async def test_a_keyed_batch_of_unusual_json_is_answered_per_item(
    make_settings: MakeSettings,
) -> None:
    huge = notification(metadata={"n": 2**70})  # beyond 64 bits: not storable JSON
    async with running_app(make_settings()) as client:
        response = await client.post(
            BATCH, json={"notifications": [huge]}, headers={"Idempotency-Key": "odd"}
        )

    assert response.status_code == 200
    assert response.json()["items"][0]["status"] == 422


async def test_rate_limits_count_every_items_recipients(make_settings: MakeSettings) -> None:
    settings = make_settings(rate_limit_recipients_per_minute=10)
    three = notification(to=["a@example.com", "b@example.com"], cc=["c@example.com"])
    async with running_app(settings) as client:
        first = await client.post(BATCH, json={"notifications": [three, three]})
        second = await client.post(BATCH, json={"notifications": [three, three]})
        too_big = await client.post(BATCH, json={"notifications": [three] * 4})
        kept = await stored(client)

    assert first.status_code == 200
    assert second.status_code == 429  # 6 of 10 taken; 6 more do not fit
    assert (too_big.status_code, too_big.json()["code"]) == (422, "too_many_recipients")
    assert len(kept) == 2


@pytest.mark.slow
def test_send_batch_posts_json_lines_and_prints_a_result_per_line(
    service_env: dict[str, str], tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    service = spawn(processes, service_env, tmp_path)
    lines = tmp_path / "batch.jsonl"
    lines.write_text(
        json.dumps(notification(subject="one", text="a \u2028 line separator"), ensure_ascii=False)
        + "\n\n"
        + json.dumps(notification(to=["nobody"]))
        + "\n"
        + json.dumps(notification(subject="three"))
        + "\n"
    )

    sent = service.run_cli("send", "--batch", str(lines), "--batch-size", "2")

    assert sent.returncode == 1, sent.stderr  # one line was refused
    results = [json.loads(line) for line in sent.stdout.splitlines()]
    assert [(r["line"], r["status"]) for r in results] == [(1, 202), (3, 422), (4, 202)]
    for result in (results[0], results[2]):
        doc = httpx.get(f"{service.url}/v1/notifications/{result['id']}", timeout=DEADLINE_SECONDS)
        assert doc.status_code == 200
    # The same file again (after a failure, say): replayed, nothing sent twice.
    again = service.run_cli("send", "--batch", str(lines), "--batch-size", "2")
    assert [json.loads(line) for line in again.stdout.splitlines()] == results
    listed = httpx.get(f"{service.url}/v1/notifications", timeout=DEADLINE_SECONDS).json()
    assert len(listed["items"]) == 2
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"to": ["a@example.com"]}\n{oops\n')
    refused = service.run_cli("send", "--batch", str(broken))
    assert refused.returncode == 2
    assert "line 2: not JSON" in refused.stderr
