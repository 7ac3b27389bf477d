"""Attachments: checked at accept, stored as MIME parts, sent byte for byte on every attempt."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import os
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from notifier.attachments import (
    checked_content_type,
    decoded_base64,
    encoded_part,
    sanitised_filename,
    with_attachments,
)
from notifier.dispatch.smtp.transport import data_block, data_pieces
from notifier.domain import Address, Attachment, Content
from notifier.message import render
from notifier.store import SQLiteStore
from tests.conftest import (
    STORES,
    MakeSettings,
    notification,
    post,
    running_app,
    wait_for,
    wait_until_in_data,
)
from tests.smtp_server import DROP_AFTER_ACCEPT, OK, ScriptedHandler

MESSAGE_ID = "<01a1fde9-a2eb-74e1-86b5-597eb64cdee6@example.com>"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def parsed(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def files_of(message: EmailMessage) -> list[tuple[str | None, str, bytes]]:
    files = []
    for part in message.iter_attachments():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        files.append((part.get_filename(), part.get_content_type(), payload))
    return files


# Pure: names, types, base64


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("/abs/path/Rechnung März.pdf", "Rechnung März.pdf"),
        ("evil\r\nBcc: eve@evil.example.txt", "evilBcc: eve@evil.example.txt"),
        ("  spaced.txt  ", "spaced.txt"),
        (".profile", ".profile"),
        ("gnp\u202eexe.png", "gnpexe.png"),  # a right-to-left override would hide .exe
        ("zero\u200bwidth.txt", "zerowidth.txt"),
    ],
)
def test_file_names_lose_their_folders_and_control_characters(given: str, kept: str) -> None:
    assert sanitised_filename(given) == kept


@pytest.mark.parametrize("given", ["", "..", "a/..", "dir/", "\x00\x01", "x" * 256])
def test_a_file_name_with_nothing_usable_left_is_refused(given: str) -> None:
    with pytest.raises(ValueError, match="file name"):
        sanitised_filename(given)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("application/pdf", "application/pdf"),
        ("Image/PNG", "image/png"),
        ("text/csv; charset=UTF-8", "text/csv; charset=utf-8"),
        ('text/plain;charset="utf-8"', "text/plain; charset=utf-8"),
        ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", None),
    ],
)
def test_media_types_are_kept_in_lower_case(given: str, kept: str | None) -> None:
    assert checked_content_type(given) == (kept or given)


@pytest.mark.parametrize(
    "given",
    ["pdf", "application/", "text/plain; name=x", "text/plain\r\nBcc: x", "multipart/mixed"],
)
def test_a_bad_or_composite_media_type_is_refused(given: str) -> None:
    with pytest.raises(ValueError, match=r"media type|cannot be attached"):
        checked_content_type(given)


def test_base64_may_come_in_lines_but_must_be_standard_and_whole() -> None:
    data = os.urandom(300)
    assert decoded_base64(base64.encodebytes(data).decode()) == data
    assert decoded_base64("") == b""
    for bad in ("abc", "YQ==YQ==", "Y!==", "☃☃☃☃"):
        with pytest.raises(ValueError, match="not valid base64"):
            decoded_base64(bad)
    with pytest.raises(ValueError, match="URL-safe"):
        decoded_base64(base64.urlsafe_b64encode(b"\xfb\xff\xfe").decode())


# Pure: the message with its parts

FILES = [
    ("Rechnung März 2026 - eine Übersicht aller Posten des Monats.pdf", "application/pdf"),
    ('a"quoted";name.csv', "text/csv; charset=utf-8"),
    ("empty.bin", "application/octet-stream"),
]


def attached(content: Content, payloads: list[bytes]) -> bytes:
    parts = [
        encoded_part(Attachment(name, kind, len(data)), data)
        for (name, kind), data in zip(FILES, payloads, strict=True)
    ]
    message = render(content, message_id=MESSAGE_ID, created_at=1.7e9)
    return b"".join(with_attachments(message, parts, seed=MESSAGE_ID))


@pytest.mark.parametrize(
    "bodies",
    [
        {"text": "Hello Ada.\n"},
        {"html": "<p>Hello Ada.</p>"},
        {"text": "Hello Ada.\n", "html": "<p>Hello Ada.</p>"},
    ],
)
@pytest.mark.parametrize(
    "headers", [{}, {"List-Unsubscribe": "<https://acme.example/u/1>"}], ids=["fast", "package"]
)
def test_attachments_read_back_byte_for_byte_beside_the_body(
    bodies: dict[str, str], headers: dict[str, str]
) -> None:
    payloads = [os.urandom(100_000), "Name;Betrag\nÄpfel;3\n".encode(), b""]
    content = Content(
        sender=Address("notifier@example.com"),
        to=(Address("ada@example.com", "Ada"),),
        subject="Your invoice",
        headers=headers,
        text=bodies.get("text"),
        html=bodies.get("html"),
    )

    data = attached(content, payloads)
    message = parsed(data)

    assert message.get_content_type() == "multipart/mixed"
    assert message["Subject"] == "Your invoice"
    assert message["Message-ID"] == MESSAGE_ID
    assert message.get_all("MIME-Version") == ["1.0"]
    assert files_of(message) == [
        (name, kind.partition(";")[0], payload)
        for (name, kind), payload in zip(FILES, payloads, strict=True)
    ]
    body = message.get_body(("plain", "html"))
    assert body is not None
    assert body.get_content().strip() == (bodies.get("text") or bodies["html"]).strip()
    if "html" in bodies and "text" in bodies:
        html = message.get_body(("html",))
        assert html is not None
        assert html.get_content().strip() == bodies["html"]
    assert not [part.defects for part in message.walk() if part.defects]
    # Drawn from the Message-ID: the same bytes again, as every retry sends.
    assert attached(content, payloads) == data


def test_a_non_ascii_file_name_is_sent_in_rfc_2231_form() -> None:
    name = "Rechnung März.pdf"
    part = encoded_part(Attachment(name, "application/pdf", 3), b"pdf")

    assert part.isascii()
    assert b"filename*=utf-8''Rechnung%20M%C3%A4rz.pdf" in part


@pytest.mark.parametrize(
    "name",
    [
        "=?utf-8?b?" + b64(b"a\n.\r\nRSET\r\nMAIL FROM:<ceo@bank.example>\r\n") + "?=",
        'quote"and\\backslash.txt',
        "Rechnung März.pdf",
        "\U0001f600" * 60,
    ],
    ids=["encoded-word", "quote", "latin", "long"],
)
def test_a_part_header_is_ascii_lines_that_read_back_as_the_name_given(name: str) -> None:
    part = encoded_part(Attachment(name, "text/plain; charset=utf-8", 2), b"hi")
    head, _, body = part.partition(b"\r\n\r\n")

    assert part.isascii()
    assert part.count(b"\n") == part.count(b"\r\n") == part.count(b"\r")
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    names = [line.split(b":")[0] for line in head.split(b"\r\n") if not line.startswith(b" ")]
    assert names == [b"Content-Type", b"Content-Transfer-Encoding", b"Content-Disposition"]
    wrapped = (
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n' + part + b"\r\n--B--\r\n"
    )
    (read,) = parsed(wrapped).iter_attachments()
    assert read.get_filename() == name
    assert read.get_param("name") == name
    assert read.get_payload(decode=True) == b"hi"
    assert body == b"aGk=\r\n"


def test_pieces_are_dot_stuffed_as_the_joined_message_would_be() -> None:
    pieces = [
        b"Subject: x\r\n\r\n.leading dot\r\n",
        b"..two\r\nplain\r\n.\r\n",
        b"base64==\r\n",
        b"bare LF\n.then a dot\rand a bare CR\r\n",
    ]

    assert b"".join(data_pieces(pieces)) == data_block(b"".join(pieces))
    with pytest.raises(ValueError, match="CRLF"):
        list(data_pieces([b"no line end"]))


# End to end, on both stores

pytestmark_stores = pytest.mark.parametrize("database_url", STORES, indirect=True)


def attachment(name: str, data: bytes, kind: str = "application/octet-stream") -> dict[str, str]:
    return {"filename": name, "content_type": kind, "content": b64(data)}


@pytestmark_stores
async def test_attachments_reach_the_relay_and_the_status_document(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    pdf, csv = os.urandom(200_000), "Name;Betrag\nÄpfel;3\n".encode()
    async with running_app(make_settings()) as client:
        response = await client.post(
            "/v1/notifications",
            json=notification(
                attachments=[
                    attachment("../../Rechnung März.pdf", pdf, "application/pdf"),
                    attachment("prices.csv", csv, "text/csv; charset=utf-8"),
                ]
            ),
        )
        assert response.status_code == 202, response.text
        doc = await wait_for(client, response.json()["id"])

    assert doc["status"] == "sent"
    assert doc["attachments"] == [
        {"filename": "Rechnung März.pdf", "content_type": "application/pdf", "size": len(pdf)},
        {"filename": "prices.csv", "content_type": "text/csv; charset=utf-8", "size": len(csv)},
    ]
    (received,) = smtp_handler.received
    message = received.message
    assert files_of(message) == [
        ("Rechnung März.pdf", "application/pdf", pdf),
        ("prices.csv", "text/csv", csv),
    ]
    body = message.get_body(("plain",))
    assert body is not None
    assert body.get_content().strip() == "Hi Ada"


@pytestmark_stores
async def test_a_file_name_cannot_smuggle_lines_into_the_message(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    smuggled = "=?utf-8?b?" + b64(b"a\n.\r\nRSET\r\nMAIL FROM:<ceo@bank.example>\r\n") + "?="
    async with running_app(make_settings()) as client:
        response = await client.post(
            "/v1/notifications", json=notification(attachments=[attachment(smuggled, b"x")])
        )
        doc = await wait_for(client, response.json()["id"])

    assert doc["status"] == "sent"
    (received,) = smtp_handler.received
    assert b"ceo@bank.example" not in received.data
    assert received.data.count(b"\n") == received.data.count(b"\r\n")
    assert files_of(received.message) == [(smuggled, "application/octet-stream", b"x")]


@pytestmark_stores
async def test_a_retry_sends_the_very_bytes_of_the_first_attempt(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    # The relay takes the message, then hangs up before answering: outcome unknown, so
    # the message goes again, which must be the same bytes under the same Message-ID.
    smtp_handler.data_replies.extend([DROP_AFTER_ACCEPT, OK])
    payload = os.urandom(300_000)
    async with running_app(make_settings()) as client:
        response = await client.post(
            "/v1/notifications",
            json=notification(
                text="Hi Ada", html="<p>Hi Ada</p>", attachments=[attachment("a.bin", payload)]
            ),
        )
        doc = await wait_for(client, response.json()["id"])

    assert doc["status"] == "sent"
    assert doc["attempt_count"] == 2
    first, second = smtp_handler.received
    assert first.data == second.data
    assert files_of(second.message) == [("a.bin", "application/octet-stream", payload)]


@pytestmark_stores
async def test_the_largest_attachment_allowed_goes_through(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    payload = os.urandom(10 * 1024 * 1024)
    async with running_app(make_settings()) as client:
        response = await client.post(
            "/v1/notifications", json=notification(attachments=[attachment("big.bin", payload)])
        )
        assert response.status_code == 202, response.text
        doc = await wait_for(client, response.json()["id"], deadline=60)

    assert doc["status"] == "sent"
    assert files_of(smtp_handler.received[0].message)[0][2] == payload


async def count(client: httpx.AsyncClient) -> int:
    response = await client.get("/v1/notifications")
    return len(response.json()["items"])


@pytest.mark.parametrize(
    ("attachments", "code", "says"),
    [
        ([attachment(f"{i}.txt", b"x") for i in range(4)], "too_many_attachments", "at most 3"),
        (
            [attachment("a", b"x" * 600), attachment("b", b"x" * 500)],
            "attachments_too_large",
            "1000",
        ),
        (
            [{"filename": "a", "content_type": "text/plain", "content": "abc"}],
            "invalid_request",
            "base64",
        ),
        ([attachment("a", b"x", "multipart/mixed")], "invalid_request", "cannot be attached"),
        (
            [attachment("a", b"x", "text/plain\r\nBcc: eve@evil.example")],
            "invalid_request",
            "media type",
        ),
        ([attachment("../..", b"x")], "invalid_request", "file name"),
        ([{"filename": "a", "content": b64(b"x")}], "invalid_request", "content_type"),
    ],
)
async def test_attachments_out_of_bounds_are_refused_and_nothing_is_stored(
    make_settings: MakeSettings, attachments: list[dict[str, Any]], code: str, says: str
) -> None:
    settings = make_settings(max_attachments=3, max_attachment_bytes=1000)
    async with running_app(settings) as client:
        response = await client.post(
            "/v1/notifications", json=notification(attachments=attachments)
        )
        assert response.status_code == 422, response.text
        assert response.json()["code"] == code
        assert says in response.text
        assert await count(client) == 0


async def test_a_base64_bomb_is_stopped_by_the_request_limit(make_settings: MakeSettings) -> None:
    settings = make_settings(max_attachment_bytes=1000, max_request_bytes=100_000)
    huge = "A" * 200_000  # decodes to 150,000 zero bytes
    async with running_app(settings) as client:
        response = await client.post(
            "/v1/notifications",
            json=notification(
                attachments=[{"filename": "z", "content_type": "text/plain", "content": huge}]
            ),
        )
        assert response.status_code == 413
        assert await count(client) == 0


def test_the_request_limit_must_hold_the_attachments(make_settings: MakeSettings) -> None:
    with pytest.raises(ValueError, match=r"NOTIFIER_MAX_REQUEST_BYTES .* cannot hold"):
        make_settings(max_request_bytes=1024 * 1024)


class CountingReads(SQLiteStore):
    """A real store that counts reads of attachments, and may lose them (``lose``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads = 0
        self.lose = False

    async def attachment_parts(self, notification_id: str) -> list[bytes]:
        self.reads += 1
        parts = await super().attachment_parts(notification_id)
        return [] if self.lose else parts


async def test_only_sends_under_way_hold_their_attachments(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    settings = make_settings(send_concurrency=1)
    store = CountingReads(settings.sqlite_path)
    smtp_handler.stall()
    try:
        async with running_app(settings, store=store) as client:
            ids = [
                await post(client, attachments=[attachment("a.bin", os.urandom(1000))])
                for _ in range(6)
            ]
            await wait_until_in_data(smtp_handler, 1)
            for notification_id in ids:  # every one claimed, waiting for the one slot
                await wait_for(client, notification_id, lambda doc: doc["status"] == "sending")
            for _ in range(50):
                await asyncio.sleep(0)  # let the waiting sends run as far as they can
            reads_while_stalled = store.reads
            smtp_handler.release()
            for notification_id in ids:
                await wait_for(client, notification_id)
    finally:
        smtp_handler.release()

    assert reads_while_stalled == 1
    assert store.reads == 6


async def test_attachments_the_store_lost_fail_the_notification_rather_than_send_without(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    settings = make_settings()
    store = CountingReads(settings.sqlite_path)
    store.lose = True
    async with running_app(settings, store=store) as client:
        doc = await wait_for(client, await post(client, attachments=[attachment("a.bin", b"x")]))

    assert doc["status"] == "failed"
    assert "1 attachments were accepted but the store holds 0" in doc["last_error"]
    assert smtp_handler.received == []
