"""The SMTP transport: failures translated by reply code, and sessions against a real server."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPConnectTimeoutError,
    SMTPDataError,
    SMTPException,
    SMTPHeloError,
    SMTPReadTimeoutError,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
)
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.dispatch.smtp.translate import translate
from notifier.dispatch.smtp.transport import RelayConfig, SMTPTransport, data_block, smtp_path
from notifier.domain import Address, Content
from notifier.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from notifier.message import render
from tests.smtp_server import DROP, ScriptedHandler, SMTPServer, free_port

SENDER = "notifier@example.com"
ADA = "ada@example.com"
BOB = "bob@example.com"

T = TransientDeliveryError
P = PermanentDeliveryError

#: What each failure must become: (class, code, relay fault).
TRANSLATIONS: dict[str, tuple[BaseException, tuple[type[DeliveryError], int | None, bool]]] = {
    "connect": (SMTPConnectError("Error connecting to 127.0.0.1"), (T, None, True)),
    "connect-timeout": (SMTPConnectTimeoutError("Timed out connecting"), (T, None, True)),
    "greeting-421": (SMTPConnectResponseError(421, "4.3.2 Not now"), (T, 421, True)),
    "greeting-554": (SMTPConnectResponseError(554, "5.3.2 No service"), (T, 554, True)),
    "ehlo-501": (SMTPHeloError(501, "5.5.4 Invalid domain name"), (T, 501, True)),
    "auth-535": (SMTPAuthenticationError(535, "5.7.8 Bad credentials"), (T, 535, True)),
    "auth-454": (SMTPAuthenticationError(454, "4.7.0 Temporary failure"), (T, 454, True)),
    "mail-451": (SMTPSenderRefused(451, "4.3.0 Later", SENDER), (T, 451, False)),
    "mail-550": (SMTPSenderRefused(550, "5.7.1 Not allowed", SENDER), (P, 550, False)),
    "data-451": (SMTPDataError(451, "4.3.0 Try again later"), (T, 451, False)),
    "data-554": (SMTPDataError(554, "5.6.0 Message rejected"), (P, 554, False)),
    "malformed-reply": (SMTPResponseException(-1, "Malformed line"), (T, -1, False)),
    "disconnected": (SMTPServerDisconnected("Connection lost"), (T, None, False)),
    "read-timeout": (SMTPReadTimeoutError("Timed out waiting"), (T, None, False)),
    "starttls-missing": (
        SMTPException("SMTP STARTTLS extension not supported by server."),
        (T, None, True),
    ),
    "certificate": (
        ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] self-signed"),
        (T, None, True),
    ),
    "value-error": (ValueError("Newline in address"), (P, None, False)),
    "unicode-encode": (
        UnicodeEncodeError("ascii", "\udc80", 0, 1, "surrogates not allowed"),
        (P, None, False),
    ),
    "connection-refused": (ConnectionRefusedError(111, "Connection refused"), (T, None, True)),
}


@pytest.mark.parametrize(("exc", "expected"), list(TRANSLATIONS.values()), ids=list(TRANSLATIONS))
def test_failure_is_translated_by_reply_code(
    exc: BaseException, expected: tuple[type[DeliveryError], int | None, bool]
) -> None:
    error = translate(exc)

    assert (type(error), error.code, error.relay) == expected


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (SMTPSenderRefused(550, "5.7.1 Sender not allowed", SENDER), "MAIL FROM: 550"),
        (SMTPDataError(451, "4.3.0 Try again later"), "DATA: 451"),
        (SMTPAuthenticationError(535, "5.7.8 Bad credentials"), "AUTH: 535"),
        (SMTPServerDisconnected("Connection lost"), "connection lost"),
    ],
)
def test_translated_error_names_the_stage_and_the_reply(exc: BaseException, text: str) -> None:
    assert text in str(translate(exc))


def relay_config(
    port: int, max_messages_per_connection: int = 100, *, pipelining: bool = True
) -> RelayConfig:
    return RelayConfig(
        host="127.0.0.1",
        port=port,
        tls="none",
        username=None,
        password=None,
        timeout=5.0,
        data_timeout=5.0,
        validate_certs=True,
        ca_file=None,
        local_hostname="notifier.test",
        max_messages_per_connection=max_messages_per_connection,
        pipelining=pipelining,
    )


def message(number: int, *to: str) -> bytes:
    content = Content(
        sender=Address(SENDER),
        to=tuple(Address(a) for a in to or (ADA,)),
        subject=f"Message {number}",
        text=f"This is message {number}.",
    )
    return render(content, message_id=f"<m{number}@example.com>", created_at=1_700_000_000.0)


class RestartedSMTPServer(SMTPServer):
    """A fresh server on the port of one that stopped: a relay that restarted."""

    def __init__(self, port: int, *, pipelining: bool) -> None:
        self.handler = ScriptedHandler(pipelining=pipelining)
        self.host = "127.0.0.1"
        self.port = port
        self._controller = Controller(self.handler, hostname=self.host, port=port)


@pytest.fixture(params=[True, False], ids=["pipelining offered", "lock-step"])
def smtp(request: pytest.FixtureRequest) -> Iterator[SMTPServer]:
    """The relay of every session test here, offering PIPELINING (RFC 2920) or not."""
    with SMTPServer(pipelining=request.param) as server:
        yield server


@pytest.fixture
async def transport(smtp: SMTPServer) -> AsyncIterator[SMTPTransport]:
    transport = SMTPTransport(relay_config(smtp.port))
    try:
        yield transport
    finally:
        await transport.close()


async def test_messages_over_one_transport_reuse_a_single_session(
    transport: SMTPTransport, smtp_handler: ScriptedHandler
) -> None:
    for number in range(3):
        report = await transport.send(SENDER, [ADA], message(number))
        assert report.data is not None
        assert report.data.code == 250

    assert smtp_handler.sessions == 1
    assert [r.message_id for r in smtp_handler.received] == [
        "<m0@example.com>",
        "<m1@example.com>",
        "<m2@example.com>",
    ]


async def test_session_is_replaced_after_max_messages_per_connection(smtp: SMTPServer) -> None:
    transport = SMTPTransport(relay_config(smtp.port, max_messages_per_connection=2))
    try:
        for number in range(5):
            await transport.send(SENDER, [ADA], message(number))
    finally:
        await transport.close()

    assert len(smtp.handler.received) == 5
    assert smtp.handler.sessions == 3


async def test_connection_dropped_at_mail_is_reopened_transparently(
    transport: SMTPTransport, smtp_handler: ScriptedHandler
) -> None:
    await transport.send(SENDER, [ADA], message(1))
    smtp_handler.mail_replies.append(DROP)

    report = await transport.send(SENDER, [ADA], message(2))

    assert report.data is not None
    assert report.data.code == 250
    assert smtp_handler.sessions == 2
    assert [r.message_id for r in smtp_handler.received] == [
        "<m1@example.com>",
        "<m2@example.com>",
    ]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining offered", "lock-step"])
async def test_idle_connection_closed_by_a_restarted_relay_is_reopened_transparently(
    pipelining: bool,
) -> None:
    first = SMTPServer(pipelining=pipelining)
    first.start()
    transport = SMTPTransport(relay_config(first.port))
    try:
        try:
            await transport.send(SENDER, [ADA], message(1))
        finally:
            first.stop()
        second = RestartedSMTPServer(first.port, pipelining=pipelining)
        second.start()
        try:
            report = await transport.send(SENDER, [ADA], message(2))
        finally:
            second.stop()
    finally:
        await transport.close()

    assert report.data is not None
    assert report.data.code == 250
    assert [r.message_id for r in second.handler.received] == ["<m2@example.com>"]
    assert second.handler.sessions == 1


async def test_partial_rcpt_refusal_is_reported_not_raised(
    transport: SMTPTransport, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.rcpt_replies[BOB].append("550 5.1.1 No such user")

    report = await transport.send(SENDER, [ADA, BOB], message(1, ADA, BOB))

    assert {a: r.code for a, r in report.recipients.items()} == {ADA: 250, BOB: 550}
    assert report.recipients[BOB].message == "5.1.1 No such user"
    assert report.data is not None
    assert report.data.code == 250
    assert report.data_error is None
    (received,) = smtp_handler.received
    assert received.rcpt_tos == [ADA]


async def test_every_rcpt_refused_is_reported_and_no_data_is_sent(
    transport: SMTPTransport, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.rcpt_replies[ADA].append("550 5.1.1 No such user")
    smtp_handler.rcpt_replies[BOB].append("452 4.5.3 Too many recipients")

    report = await transport.send(SENDER, [ADA, BOB], message(1, ADA, BOB))

    assert {a: r.code for a, r in report.recipients.items()} == {ADA: 550, BOB: 452}
    assert report.data is None
    assert report.data_error is None
    assert smtp_handler.data_commands == 0


async def test_refused_data_is_reported_and_the_session_stays_usable(
    transport: SMTPTransport, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.data_replies.append("451 4.3.0 Try again later")

    refused = await transport.send(SENDER, [ADA], message(1))
    accepted = await transport.send(SENDER, [ADA], message(2))

    assert isinstance(refused.data_error, TransientDeliveryError)
    assert refused.data_error.code == 451
    assert refused.data is None
    assert accepted.data is not None
    assert accepted.data.code == 250
    assert smtp_handler.sessions == 1
    assert [r.message_id for r in smtp_handler.received] == ["<m2@example.com>"]


async def test_unreachable_relay_is_a_transient_relay_fault() -> None:
    transport = SMTPTransport(relay_config(free_port()))
    try:
        with pytest.raises(TransientDeliveryError) as caught:
            await transport.send(SENDER, [ADA], message(1))
    finally:
        await transport.close()

    assert caught.value.relay is True
    assert caught.value.code is None
    assert isinstance(caught.value.__cause__, SMTPConnectError)


#: Addresses the fast path must bracket as aiosmtplib does, or leave to aiosmtplib.
ADDRESSES = [
    ADA,
    "first.last+tag@mail.example.co.uk",
    "o'brien@example.com",
    "!#$%&'*+/=?^_`{|}~-@example.com",
    "josé@exämple.com",
    '"quoted local"@example.com',
    "Ada Lovelace <ada@example.com>",
    "ada@[192.0.2.1]",
    "a..b@example.com",
    ".ada@example.com",
]


@pytest.mark.parametrize("address", ADDRESSES)
def test_envelope_address_is_bracketed_as_aiosmtplib_quotes_it(address: str) -> None:
    assert smtp_path(address) == quote_address(address)


@settings(max_examples=500, derandomize=True, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=40))
def test_any_envelope_address_is_bracketed_or_refused_as_aiosmtplib_does(address: str) -> None:
    try:
        expected = quote_address(address)
    except ValueError:
        with pytest.raises(ValueError, match="not permitted"):
            smtp_path(address)
    else:
        assert smtp_path(address) == expected


def aiosmtplib_data_block(message: bytes) -> bytes:
    """What aiosmtplib's ``execute_data_command`` writes for ``message``."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


@pytest.mark.parametrize(
    "message",
    [b"", b".", b"a", b".a\r\n..b\r\n.\r\nc", b"a\nb\rc\r\n", b"\r\r\n\n.", b"x\r\n.\r\n"],
)
def test_data_block_is_what_aiosmtplib_sends(message: bytes) -> None:
    assert data_block(message) == aiosmtplib_data_block(message)


@settings(max_examples=500, derandomize=True, deadline=None)
@given(st.lists(st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"a", b" "]), max_size=30))
def test_any_data_block_is_what_aiosmtplib_sends(pieces: list[bytes]) -> None:
    message = b"".join(pieces)
    assert data_block(message) == aiosmtplib_data_block(message)


async def test_lines_that_start_with_a_dot_arrive_as_written(
    transport: SMTPTransport, smtp_handler: ScriptedHandler
) -> None:
    content = Content(
        sender=Address(SENDER),
        to=(Address(ADA),),
        subject="Dots",
        text=".first\n..second\n.\nlast",
    )
    sent = render(content, message_id="<dots@example.com>", created_at=1_700_000_000.0)

    report = await transport.send(SENDER, [ADA], sent)

    assert report.data is not None
    (received,) = smtp_handler.received
    assert received.data.replace(b"\r\n", b"\n") == sent.replace(b"\r\n", b"\n")
    text = received.message.get_content().replace("\r\n", "\n")
    assert text == ".first\n..second\n.\nlast\n"


async def test_relay_closing_at_rcpt_gets_no_data_and_the_next_send_reconnects(
    transport: SMTPTransport, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.rcpt_replies[ADA].append("421 4.3.2 Shutting down")

    closed = await transport.send(SENDER, [ADA], message(1))
    sent = await transport.send(SENDER, [ADA], message(2))

    assert closed.recipients[ADA].code == 421
    assert closed.data is None
    assert closed.data_error is None
    assert sent.data is not None
    assert smtp_handler.data_commands == 1
    assert smtp_handler.sessions == 2
