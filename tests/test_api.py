"""The HTTP contract: status codes, bodies, validation, limits and authentication."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import (
    STORES,
    MakeSettings,
    notification,
    post,
    running_app,
    wait_for,
    wait_until_in_data,
)
from tests.smtp_server import ScriptedHandler

#: Each end-to-end path here runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.parametrize("database_url", STORES, indirect=True)

UNKNOWN_ID = "01a1fde9-a2eb-74e1-86b5-597eb64cdee6"


async def test_accepted_notification_answers_202_with_id_and_location(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/notifications", json=notification(metadata={"order": 7, "tags": ["a"]})
    )

    assert response.status_code == 202
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "queued"
    assert response.headers["location"] == f"/v1/notifications/{body['id']}"
    assert body["links"]["self"] == response.headers["location"]
    assert body["metadata"] == {"order": 7, "tags": ["a"]}
    assert body["created_at"].endswith("+00:00")


async def test_status_document_has_the_pinned_fields(client: httpx.AsyncClient) -> None:
    doc = await wait_for(client, await post(client, metadata={"k": "v"}))

    for key in (
        "id",
        "status",
        "recipients",
        "attempts",
        "next_attempt_at",
        "message_id",
        "acknowledged",
        "created_at",
        "updated_at",
        "metadata",
    ):
        assert key in doc
    assert set(doc["recipients"][0]) >= {"address", "status", "smtp_code", "smtp_message"}
    assert set(doc["attempts"][0]) >= {"number", "started_at", "outcome", "smtp_code", "message"}
    assert doc["metadata"] == {"k": "v"}


async def test_unknown_id_is_404_with_a_json_error(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/v1/notifications/{UNKNOWN_ID}")

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert UNKNOWN_ID in response.json()["detail"]


async def test_invalid_request_is_422_and_nothing_is_stored(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    bad_bodies = [
        notification(to=[]),
        notification(to=["Ada <ada@example.com>"]),
        notification(to=["a@b.org)<c@d.org>"]),
        notification(subject="Hi\r\nBcc: victim@example.com"),
        notification(headers={"X-Trace": "a\nInjected: yes"}),
        notification(headers={"Bcc": "victim@example.com"}),
        notification(text=None),
        notification(unexpected="field"),
    ]
    for body in bad_bodies:
        response = await client.post("/v1/notifications", json=body)
        assert response.status_code == 422, body
        assert response.json()["code"] == "invalid_request"
        assert response.json()["detail"]

    listed = await client.get("/v1/notifications")
    assert listed.json()["items"] == []
    assert smtp_handler.sessions == 0


async def test_special_use_domain_is_422_naming_the_setting_and_delivered_once_allowed(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    body = notification(to=["user@corp.local"])
    async with running_app(make_settings()) as client:
        refused = await client.post("/v1/notifications", json=body)
        filtered = await client.get("/v1/notifications", params={"recipient": "user@corp.local"})
    async with running_app(make_settings(allow_special_use_domains=True)) as client:
        accepted = await client.post("/v1/notifications", json=body)
        assert accepted.status_code == 202, accepted.text
        doc = await wait_for(client, accepted.json()["id"])
        found = await client.get("/v1/notifications", params={"recipient": "user@corp.local"})

    assert refused.status_code == 422
    assert refused.json()["code"] == "invalid_request"
    assert [e["loc"] for e in refused.json()["errors"]] == ["body.to.0"]
    assert "NOTIFIER_ALLOW_SPECIAL_USE_DOMAINS=true" in refused.json()["detail"]
    assert filtered.status_code == 422
    assert "NOTIFIER_ALLOW_SPECIAL_USE_DOMAINS=true" in filtered.json()["detail"]
    assert doc["status"] == "sent"
    assert [r["address"] for r in doc["recipients"]] == ["user@corp.local"]
    assert [item["id"] for item in found.json()["items"]] == [doc["id"]]
    (received,) = smtp_handler.received
    assert received.rcpt_tos == ["user@corp.local"]
    assert received.message["To"] == "user@corp.local"


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/notifications", content=b'{"to": [', headers={"content-type": "application/json"}
    )

    assert response.status_code == 422


async def test_empty_body_is_422_naming_the_body(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/notifications", content=b"", headers={"content-type": "application/json"}
    )

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == "body"


async def test_validation_errors_locate_the_field_in_the_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/notifications", json=notification(to=["nobody"]))

    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["errors"]] == ["body.to.0"]


async def test_too_many_recipients_is_422(make_settings: MakeSettings) -> None:
    async with running_app(make_settings(max_recipients=2)) as client:
        response = await client.post(
            "/v1/notifications",
            json=notification(to=["a@example.com", "b@example.com"], cc=["c@example.com"]),
        )

    assert response.status_code == 422
    assert response.json()["code"] == "too_many_recipients"


async def test_oversized_body_is_413_and_nothing_is_stored(make_settings: MakeSettings) -> None:
    async with running_app(make_settings(max_request_bytes=2048, max_attachment_bytes=0)) as client:
        response = await client.post("/v1/notifications", json=notification(text="x" * 4096))
        listed = await client.get("/v1/notifications")

    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert listed.json()["items"] == []


async def test_oversized_body_without_content_length_is_413(make_settings: MakeSettings) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"to": ["a@example.com"], "text": "'
        for _ in range(10):
            yield b"x" * 512
        yield b'"}'

    async with running_app(make_settings(max_request_bytes=2048, max_attachment_bytes=0)) as client:
        response = await client.post(
            "/v1/notifications", content=chunks(), headers={"content-type": "application/json"}
        )

    assert response.status_code == 413


async def test_sender_outside_the_allowed_list_is_403(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/notifications", json=notification(**{"from": "x@evil.org"}))

    assert response.status_code == 403
    assert response.json()["code"] == "sender_not_allowed"


async def test_allowed_sender_domain_is_used_as_from(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    settings = make_settings(allowed_senders=["@billing.example.com"])
    async with running_app(settings) as client:
        sender = {"address": "invoices@billing.example.com", "name": "Billing"}
        doc = await wait_for(client, await post(client, **{"from": sender}))

    assert doc["status"] == "sent"
    (received,) = smtp_handler.received
    assert received.mail_from == "invoices@billing.example.com"
    assert received.message["From"] == "Billing <invoices@billing.example.com>"


async def test_api_keys_are_required_when_configured(make_settings: MakeSettings) -> None:
    settings = make_settings(api_keys=["k-one", "k-two"], auth_disabled=False)
    async with running_app(settings) as client:
        missing = await client.post("/v1/notifications", json=notification())
        wrong = await client.post(
            "/v1/notifications", json=notification(), headers={"authorization": "Bearer nope"}
        )
        right = await client.post(
            "/v1/notifications", json=notification(), headers={"authorization": "Bearer k-two"}
        )
        health = await client.get("/healthz")
        # The key is checked before the body is parsed.
        unparsable = await client.post(
            "/v1/notifications", content=b"[" * 10_000, headers={"content-type": "application/json"}
        )

    assert missing.status_code == 401
    assert wrong.status_code == 401
    assert unparsable.status_code == 401
    assert missing.json()["code"] == "unauthorized"
    assert right.status_code == 202
    assert health.status_code == 200


async def test_list_pages_newest_first_until_next_cursor_is_null(
    client: httpx.AsyncClient,
) -> None:
    ids = [await post(client, subject=f"n{i}") for i in range(5)]

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/notifications", params=params)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == list(reversed(ids))


async def test_list_filters_by_status(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.data_replies.append("554 5.7.1 Rejected")
    failed = await post(client)
    await wait_for(client, failed)
    sent = await post(client)
    await wait_for(client, sent)

    page = (await client.get("/v1/notifications", params={"status": "failed"})).json()

    assert [item["id"] for item in page["items"]] == [failed]


async def test_bad_list_parameters_are_422(client: httpx.AsyncClient) -> None:
    for params in ({"status": "lost"}, {"limit": 0}, {"limit": 1000}, {"cursor": "x' OR 1=1"}):
        response = await client.get("/v1/notifications", params=params)
        assert response.status_code == 422, params


async def test_readyz_reports_the_store(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")

    assert response.status_code == 200
    assert response.json()["checks"]["store"] == "ok"


async def test_healthz_answers_while_every_send_is_stalled(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.stall()
    async with running_app(make_settings(send_concurrency=4)) as client:
        ids = [await post(client) for _ in range(8)]
        await wait_until_in_data(smtp_handler, 4)

        health = await asyncio.wait_for(client.get("/healthz"), timeout=5)
        status = await asyncio.wait_for(client.get(f"/v1/notifications/{ids[0]}"), timeout=5)
        assert health.status_code == 200
        assert status.json()["status"] in {"queued", "sending"}

        smtp_handler.release()
        for notification_id in ids:
            assert (await wait_for(client, notification_id))["status"] == "sent"
    assert len(smtp_handler.received) == 8


async def test_openapi_documents_every_route(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()

    assert set(schema["paths"]) >= {
        "/v1/notifications",
        "/v1/notifications/{notification_id}",
        "/healthz",
        "/readyz",
    }
    post_op = schema["paths"]["/v1/notifications"]["post"]
    assert {"202", "403", "413", "422", "503"} <= set(post_op["responses"])
    body = post_op["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/NotificationRequest")
    assert post_op["requestBody"]["required"] is True
    headers = [p["name"] for p in post_op["parameters"] if p["in"] == "header"]
    assert headers == ["Idempotency-Key"]


async def test_every_route_has_a_summary_and_every_error_a_documented_body(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()

    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary"), f"{method} {path}"
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    body = response["content"]["application/json"]["schema"]
                    assert body["$ref"].endswith(
                        ("/ErrorBody", "/ReadinessBody", "/LivenessBody")
                    ), f"{method} {path} {status}"
    v1 = [
        operation
        for path, operations in schema["paths"].items()
        if path.startswith("/v1/")
        for operation in operations.values()
    ]
    for operation in v1:
        assert {"401", "422", "429"} <= set(operation["responses"])
