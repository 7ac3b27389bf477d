"""Hostile input gets a clear 4xx, and nothing is stored or sent."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import MakeSettings, notification, post, running_app, wait_for
from tests.smtp_server import ScriptedHandler, SMTPServer

JSON = {"content-type": "application/json"}

INJECTIONS = [
    pytest.param(notification(subject="Hi\r\nBcc: victim@example.com"), id="crlf-in-subject"),
    pytest.param(notification(subject="Hi\x00there"), id="nul-in-subject"),
    pytest.param(notification(subject="Hi\x7f"), id="del-in-subject"),
    pytest.param(notification(subject="Hi\u2028there"), id="line-separator-in-subject"),
    pytest.param(notification(headers={"X-Trace": "ok\x1b[31m"}), id="escape-in-header"),
    pytest.param(notification(headers={"X-A\r\nBcc": "x"}), id="crlf-in-header-name"),
    pytest.param(notification(to=[{"address": "a@example.com", "name": "A\nB"}]), id="lf-in-name"),
    pytest.param(notification(to=["a@example.com\r\nRCPT TO:<b@example.com>"]), id="smtp-in-to"),
    pytest.param(notification(to=["a@b.org> NOTIFY=SUCCESS"]), id="esmtp-param-in-to"),
    pytest.param(notification(to=["a@b.org)<c@d.org>"]), id="parser-trick"),
    pytest.param(notification(to=["a@example.com, b@example.com"]), id="two-in-one"),
    pytest.param(notification(to=["Ada <a@example.com>"]), id="display-name-string"),
    pytest.param(notification(to=["x" * 65 + "@example.com"]), id="long-local-part"),
    pytest.param(notification(to=["a@" + "d" * 64 + ".com"]), id="long-label"),
    pytest.param(notification(text="a\x00b"), id="nul-in-body"),
    pytest.param(notification(extra="field"), id="unknown-field"),
]


@pytest.mark.parametrize("body", INJECTIONS)
async def test_injection_is_refused_and_nothing_is_stored(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler, body: dict[str, object]
) -> None:
    response = await client.post("/v1/notifications", json=body)

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_request"
    assert (await client.get("/v1/notifications")).json()["items"] == []
    assert smtp_handler.sessions == 0


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b'{"to": ["a@example.com"], "subject": "\\ud800", "text": "x"}', id="lone-surrogate"
        ),
        pytest.param(b'{"to": ["a@example.com"], "text": "\\udfff"}', id="surrogate-in-body"),
    ],
)
async def test_lone_surrogates_are_refused(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post("/v1/notifications", content=raw, headers=JSON)

    assert response.status_code == 422
    assert (await client.get("/v1/notifications")).json()["items"] == []


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        pytest.param(b"[" * 50_000 + b"]" * 50_000, 400, id="deep-json"),
        pytest.param(b'{"to": ["a@example.com"], "text": "\xff\xfe"}', 400, id="invalid-utf8"),
        pytest.param(b'{"to": ["a@example.com"], "text": "x"', 422, id="truncated-json"),
        pytest.param(
            b'{"to": ["a@example.com"], "text": "x", "metadata": {"n": NaN}}', 422, id="nan"
        ),
        pytest.param(
            b'{"to": ["a@example.com"], "text": "x", "metadata": {"n": 1' + b"0" * 30 + b"}}",
            422,
            id="integer-beyond-64-bits",
        ),
    ],
)
async def test_malformed_json_is_refused(
    client: httpx.AsyncClient, raw: bytes, status: int
) -> None:
    response = await client.post("/v1/notifications", content=raw, headers=JSON)

    assert response.status_code == status
    assert response.json()["detail"]
    assert (await client.get("/v1/notifications")).json()["items"] == []


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
async def test_wrong_content_type_is_415(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    body = b'{"to": ["a@example.com"], "text": "x"}'

    response = await client.post("/v1/notifications", content=body, headers=headers)

    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


async def test_internationalised_domain_is_sent_in_idna(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    doc = await wait_for(client, await post(client, to=["anna@bücher.example"]))

    assert doc["status"] == "sent"
    assert doc["recipients"][0]["address"] == "anna@xn--bcher-kva.example"
    assert smtp_handler.received[0].rcpt_tos == ["anna@xn--bcher-kva.example"]


async def test_non_ascii_local_part_fails_clearly_at_a_relay_without_smtputf8(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    doc = await wait_for(client, await post(client, to=["jörg@example.com"]))

    assert doc["status"] == "failed"
    assert len(doc["attempts"]) == 1
    assert "SMTPUTF8" in doc["last_error"]
    assert smtp_handler.received == []


async def test_non_ascii_local_part_is_sent_with_smtputf8(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    relay = SMTPServer(smtputf8=True)
    relay.start()
    try:
        settings = make_settings(smtp_port=relay.port)
        async with running_app(settings) as client:
            recipient = {"address": "jörg@bücher.example", "name": "Jörg"}
            doc = await wait_for(client, await post(client, to=[recipient], cc=["ada@example.com"]))
    finally:
        relay.stop()

    assert doc["status"] == "sent"
    (received,) = relay.handler.received
    assert received.rcpt_tos == ["jörg@xn--bcher-kva.example", "ada@example.com"]
    assert "SMTPUTF8" in received.mail_options
    assert "Jörg <jörg@xn--bcher-kva.example>".encode() in received.data
