"""The RFC 5322 bytes built from a notification: headers, bodies, and wire safety."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace
from datetime import UTC, datetime
from email.headerregistry import AddressHeader
from email.message import EmailMessage
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.domain import Address, Content
from notifier.message import message_id_for, render
from notifier.schemas import NotificationRequest

MESSAGE_ID = "<0190c1d2-7e4f-7abc-8def-0123456789ab@example.com>"
CREATED_AT = 1_700_000_000.75

CONTENT = Content(
    sender=Address("notifier@example.com", "Notifier"),
    to=(Address("ada@example.com", "Ada Lovelace"),),
    subject="Your report is ready",
    text="Hello Ada,\nyour report is ready.\n",
)


def wire(content: Content) -> bytes:
    return render(content, message_id=MESSAGE_ID, created_at=CREATED_AT)


def parse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def mailboxes(message: EmailMessage, name: str) -> list[tuple[str, str]]:
    header = message[name]
    assert isinstance(header, AddressHeader), f"{name} is missing"
    return [(a.display_name, a.addr_spec) for a in header.addresses]


def body_lines(message: EmailMessage, subtype: str) -> list[str]:
    part = message.get_body((subtype,))
    assert isinstance(part, EmailMessage)
    content = part.get_content()
    assert isinstance(content, str)
    return content.splitlines()


def test_from_to_cc_and_reply_to_carry_addresses_and_display_names() -> None:
    content = replace(
        CONTENT,
        sender=Address("notifier@example.com", "Nötifier"),
        to=(Address("ada@example.com", "Ada Lovelace"), Address("bob@example.com")),
        cc=(Address("chloe@example.com", "Chloé Dupré"),),
        reply_to=(Address("support@example.com", "Support desk"),),
    )

    message = parse(wire(content))

    assert mailboxes(message, "From") == [("Nötifier", "notifier@example.com")]
    assert mailboxes(message, "To") == [
        ("Ada Lovelace", "ada@example.com"),
        ("", "bob@example.com"),
    ]
    assert mailboxes(message, "Cc") == [("Chloé Dupré", "chloe@example.com")]
    assert mailboxes(message, "Reply-To") == [("Support desk", "support@example.com")]


def test_cc_and_reply_to_are_left_out_when_empty() -> None:
    message = parse(wire(CONTENT))

    assert "Cc" not in message
    assert "Reply-To" not in message


def test_display_name_with_a_comma_is_quoted_and_stays_one_mailbox() -> None:
    content = replace(CONTENT, to=(Address("ada@example.com", "Lovelace, Ada"),))

    raw = wire(content)

    assert b'To: "Lovelace, Ada" <ada@example.com>\r\n' in raw
    assert mailboxes(parse(raw), "To") == [("Lovelace, Ada", "ada@example.com")]


def test_non_ascii_display_name_with_a_comma_is_encoded_and_decodes_back() -> None:
    content = replace(CONTENT, to=(Address("jorg@example.com", "Müller, Jörg"),))

    raw = wire(content)

    assert "Müller".encode() not in raw
    assert b"=?utf-8?" in raw
    assert mailboxes(parse(raw), "To") == [("Müller, Jörg", "jorg@example.com")]


def test_display_name_with_quotes_and_angle_brackets_cannot_add_a_mailbox() -> None:
    name = 'Eve" <eve@evil.example>, "x'
    content = replace(CONTENT, reply_to=(Address("support@example.com", name),))

    message = parse(wire(content))

    assert mailboxes(message, "Reply-To") == [(name, "support@example.com")]


def test_bcc_recipients_never_appear_in_the_message() -> None:
    request = NotificationRequest.model_validate(
        {
            "to": ["ada@example.com"],
            "bcc": [{"address": "secret@example.com", "name": "Secret Keeper"}],
            "subject": "Hello",
            "text": "Hi",
        }
    )

    raw = wire(request.content(Address("notifier@example.com")))

    assert b"secret" not in raw.lower()
    assert b"bcc" not in raw.lower()


def test_message_id_is_the_one_given_and_the_same_on_every_render() -> None:
    content = replace(CONTENT, html="<p>Hello Ada</p>")

    first, second = parse(wire(content)), parse(wire(content))

    assert first["Message-ID"] == MESSAGE_ID
    assert second["Message-ID"] == MESSAGE_ID


def test_single_part_message_renders_to_the_same_bytes_every_time() -> None:
    assert wire(CONTENT) == wire(CONTENT)


@pytest.mark.parametrize(
    "content",
    [
        replace(CONTENT, html="<p>Hello Ada</p>"),
        # Written by the email package, not notifier.wire: an SMTPUTF8 address.
        replace(CONTENT, html="<p>Hello Jörg</p>", to=(Address("jörg@example.com"),)),
    ],
    ids=["fast-path", "email-package"],
)
def test_a_multipart_message_renders_to_the_same_bytes_every_time(content: Content) -> None:
    # The boundary is drawn from the Message-ID: every retry sends the first attempt's bytes.
    first = wire(content)

    assert wire(content) == first
    assert render(content, message_id="<other@example.com>", created_at=CREATED_AT) != first
    assert parse(first).get_content_type() == "multipart/alternative"


def test_date_is_the_creation_time_in_utc() -> None:
    message = parse(wire(CONTENT))

    date = parsedate_to_datetime(str(message["Date"]))

    assert date == datetime.fromtimestamp(int(CREATED_AT), UTC)
    assert str(message["Date"]).endswith("+0000")


def test_ascii_subject_is_sent_as_written() -> None:
    raw = wire(CONTENT)

    assert b"\r\nSubject: Your report is ready\r\n" in raw


def test_non_ascii_subject_is_rfc2047_encoded() -> None:
    subject = "Grüße aus Köln ☃ " + "und noch viel mehr Text " * 5
    raw = wire(replace(CONTENT, subject=subject))

    subject_line = raw.split(b"\r\nSubject: ", 1)[1]
    assert subject_line.startswith(b"=?utf-8?")
    assert parse(raw)["Subject"] == subject


@pytest.mark.parametrize(
    "subject",
    ["=?utf-8?q?hello?=", "Re: =?iso-8859-1?b?SGk=?= again", "Prix =?utf-8?q?caf=C3=A9?= " * 6],
)
def test_subject_that_looks_like_an_encoded_word_arrives_as_written(subject: str) -> None:
    assert parse(wire(replace(CONTENT, subject=subject)))["Subject"] == subject


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.text(st.sampled_from("ab =?_Qqé日"), max_size=60).map(lambda t: f"=?{t}?="))
def test_any_subject_with_encoded_word_marks_arrives_as_written(subject: str) -> None:
    assert parse(wire(replace(CONTENT, subject=subject)))["Subject"] == subject


def test_custom_header_that_looks_like_an_encoded_word_arrives_as_written() -> None:
    headers = {"X-Note": "=?utf-8?q?hello?="}

    assert parse(wire(replace(CONTENT, headers=headers)))["X-Note"] == "=?utf-8?q?hello?="


def test_subject_with_literal_marks_but_no_encoded_word_stays_readable() -> None:
    subject = "Is 2+2 =? 4"

    assert parse(wire(replace(CONTENT, subject=subject)))["Subject"] == subject


def test_custom_x_headers_are_present() -> None:
    headers = {"X-Campaign": "spring-2024", "X-Ticket": "Réf 42"}

    raw = wire(replace(CONTENT, headers=headers))

    assert b"\r\nX-Campaign: spring-2024\r\n" in raw
    message = parse(raw)
    assert message["X-Campaign"] == "spring-2024"
    assert message["X-Ticket"] == "Réf 42"


def test_text_only_is_a_single_text_plain_part() -> None:
    message = parse(wire(replace(CONTENT, text="Hello", html=None)))

    assert message.get_content_type() == "text/plain"
    assert not message.is_multipart()
    assert body_lines(message, "plain") == ["Hello"]


def test_html_only_is_a_single_text_html_part() -> None:
    message = parse(wire(replace(CONTENT, text=None, html="<p>Hello</p>")))

    assert message.get_content_type() == "text/html"
    assert not message.is_multipart()
    assert body_lines(message, "html") == ["<p>Hello</p>"]


def test_text_and_html_are_alternatives_with_text_first() -> None:
    message = parse(wire(replace(CONTENT, text="Hello", html="<p>Hello</p>")))

    assert message.get_content_type() == "multipart/alternative"
    parts = [part.get_content_type() for part in message.iter_parts()]
    assert parts == ["text/plain", "text/html"]


NON_ASCII_BODIES = [
    pytest.param("Grüße, Jörg ☃\n" + "é" * 2000 + "\n", None, id="text"),
    pytest.param(None, "<p>Grüße, Jörg ☃</p>\n" + "<b>é</b>" * 500, id="html"),
    pytest.param("Grüße ☃\n", "<p>Grüße ☃</p>\n", id="text-and-html"),
]


@pytest.mark.parametrize(("text", "html"), NON_ASCII_BODIES)
def test_every_line_ends_with_crlf(text: str | None, html: str | None) -> None:
    raw = wire(replace(CONTENT, text=text, html=html))

    assert raw.count(b"\n") == raw.count(b"\r\n")
    assert raw.count(b"\r") == raw.count(b"\r\n")
    assert raw.endswith(b"\r\n")


@pytest.mark.parametrize(("text", "html"), NON_ASCII_BODIES)
def test_output_is_seven_bit_clean_even_for_non_ascii_bodies(
    text: str | None, html: str | None
) -> None:
    content = replace(
        CONTENT,
        sender=Address("notifier@example.com", "Nötifier"),
        subject="Grüße",
        headers={"X-Note": "naïve"},
        text=text,
        html=html,
    )

    raw = wire(content)

    assert all(byte < 128 for byte in raw)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("first\n.\nlast\n", id="ascii"),
        pytest.param("erste Zeile: Grüße\n.\nletzte\n", id="non-ascii"),
    ],
)
def test_body_line_of_a_single_dot_survives_a_parse_round_trip(text: str) -> None:
    message = parse(wire(replace(CONTENT, text=text)))

    assert body_lines(message, "plain") == text.splitlines()


def test_message_id_uses_the_sender_domain() -> None:
    message_id = message_id_for("0190c1d2-7e4f", "notifier@mail.example.com")

    assert message_id == "<0190c1d2-7e4f@mail.example.com>"


def test_message_id_without_a_sender_domain_uses_a_reserved_one() -> None:
    assert message_id_for("0190c1d2-7e4f", "") == "<0190c1d2-7e4f@notifier.invalid>"
