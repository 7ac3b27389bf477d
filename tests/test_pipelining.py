"""SMTP PIPELINING (RFC 2920): MAIL, RCPT and DATA in one write, to relays that offer it.

The relay is mostly :class:`RawSMTPServer`, which records every line it reads. With
``group_replies`` it answers MAIL and RCPT only once DATA has arrived, so a send that
completes proves the group went out before any reply came back. STARTTLS is aiosmtpd's,
on both event loops the service may run on. The relay's 421s end with the connection
closed either way, pipelined or not.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
import uvloop
from aiosmtpd.controller import Controller

from notifier.dispatch.smtp import SendReport, SMTPTransport
from notifier.errors import PermanentDeliveryError, TransientDeliveryError
from tests.conftest import MakeSettings, post, running_app, wait_for
from tests.raw_smtp import END_OF_DATA, Action, Hangup, RawSMTPServer, Reply, Session, verbs
from tests.smtp_server import ScriptedHandler, free_port
from tests.test_transport import ADA, BOB, SENDER, message, relay_config
from tests.tls import Authority

PIPELINED = Session(pipelining=True, group_replies=True)


@pytest.fixture
def raw() -> Iterator[RawSMTPServer]:
    with RawSMTPServer(fallback=PIPELINED) as server:
        yield server


@pytest.fixture
async def transport(raw: RawSMTPServer) -> AsyncIterator[SMTPTransport]:
    transport = SMTPTransport(relay_config(raw.port))
    try:
        yield transport
    finally:
        await transport.close()


def scripted(raw: RawSMTPServer, **replies: Reply | Sequence[Reply]) -> None:
    raw.script(Session(pipelining=True, group_replies=True, replies=replies))


async def test_commands_go_out_together_and_every_message_arrives_once(
    raw: RawSMTPServer, transport: SMTPTransport
) -> None:
    reports = [await transport.send(SENDER, [ADA, BOB], message(n, ADA, BOB)) for n in (1, 2)]

    assert [r.data.code if r.data else None for r in reports] == [250, 250]
    assert [r.rcpt_tos for r in raw.received] == [[ADA, BOB], [ADA, BOB]]
    (session,) = raw.sessions
    assert verbs(session) == ["EHLO", *["MAIL", "RCPT", "RCPT", "DATA"] * 2]


async def test_replies_that_arrive_in_pieces_are_read_whole(
    raw: RawSMTPServer, transport: SMTPTransport
) -> None:
    raw.script(
        Session(
            pipelining=True,
            split_replies=True,
            replies={"RCPT": ["250 2.1.5 OK", "550 5.1.1 No such user"]},
        )
    )
    reports = [await transport.send(SENDER, [ADA, BOB], message(n, ADA, BOB)) for n in (1, 2)]

    assert [{a: r.code for a, r in report.recipients.items()} for report in reports] == [
        {ADA: 250, BOB: 550},
        {ADA: 250, BOB: 250},
    ]
    assert [r.rcpt_tos for r in raw.received] == [[ADA], [ADA, BOB]]
    assert len(raw.sessions) == 1


async def test_the_service_pipelines_to_a_relay_that_offers_it(
    make_settings: MakeSettings, raw: RawSMTPServer
) -> None:
    async with running_app(make_settings(smtp_host=raw.host, smtp_port=raw.port)) as client:
        doc = await wait_for(client, await post(client))

    assert doc["status"] == "sent"
    (received,) = raw.received
    assert received.message_id == doc["message_id"]


@pytest.mark.parametrize(
    ("pipelining", "commands"),
    [(True, ["EHLO", "MAIL", "RCPT", "DATA"]), (False, ["EHLO", "MAIL"])],
    ids=["pipelining", "NOTIFIER_SMTP_PIPELINING=false"],
)
async def test_a_sender_refused_at_mail_from_shows_whether_the_group_went_ahead(
    make_settings: MakeSettings, raw: RawSMTPServer, pipelining: bool, commands: list[str]
) -> None:
    """Turned off, notifier waits for MAIL's reply, and a refusal stops it there."""
    raw.script(Session(pipelining=True, replies={"MAIL": "550 5.7.1 Sender not allowed"}))
    settings = make_settings(smtp_host=raw.host, smtp_port=raw.port, smtp_pipelining=pipelining)

    async with running_app(settings) as client:
        doc = await wait_for(client, await post(client))

    assert doc["status"] == "failed"
    assert [a["smtp_code"] for a in doc["attempts"]] == [550]
    assert [verbs(lines) for lines in raw.sessions] == [commands]
    assert raw.received == []


async def test_partly_refused_recipients_are_reported_and_the_rest_receive_the_message(
    raw: RawSMTPServer, transport: SMTPTransport
) -> None:
    scripted(raw, RCPT=["250 2.1.5 OK", "550 5.1.1 No such user"])
    report = await transport.send(SENDER, [ADA, BOB], message(1, ADA, BOB))

    assert {a: r.code for a, r in report.recipients.items()} == {ADA: 250, BOB: 550}
    assert report.data is not None
    assert [r.rcpt_tos for r in raw.received] == [[ADA]]


async def test_every_recipient_refused_and_data_refused_resets_and_keeps_the_connection(
    raw: RawSMTPServer, transport: SMTPTransport
) -> None:
    scripted(raw, RCPT=["550 5.1.1 No such user"], DATA=["554 5.5.1 No valid recipients"])
    refused = await transport.send(SENDER, [ADA], message(1))
    sent = await transport.send(SENDER, [ADA], message(2))

    assert refused.recipients[ADA].code == 550
    assert refused.data is None
    assert refused.data_error is None
    assert sent.data is not None
    (session,) = raw.sessions
    assert verbs(session)[:6] == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL"]
    assert len(raw.received) == 1


async def test_data_accepted_without_recipients_gets_a_lone_dot_and_no_message(
    raw: RawSMTPServer, transport: SMTPTransport
) -> None:
    """RFC 2920 section 3.1: a relay may answer 354 although it refused every RCPT."""
    scripted(raw, RCPT=["550 5.1.1 No such user"])
    refused = await transport.send(SENDER, [ADA], message(1))
    sent = await transport.send(SENDER, [ADA], message(2))

    assert refused.recipients[ADA].code == 550
    assert refused.data is None
    assert refused.data_error is None
    assert sent.data is not None
    # The lone dot ended an empty message to nobody; the real one went next.
    empty, real = raw.received
    assert (empty.rcpt_tos, empty.data) == ([], b"")
    assert real.rcpt_tos == [ADA]
    assert b"Message 1" not in b"".join(r.data for r in raw.received)


@pytest.mark.parametrize(
    ("reply", "error"),
    [("451 4.3.0 Try later", TransientDeliveryError), ("550 5.7.1 No", PermanentDeliveryError)],
    ids=["451", "550"],
)
async def test_sender_refused_in_a_group_is_raised_by_code_and_nothing_is_sent(
    raw: RawSMTPServer, transport: SMTPTransport, reply: str, error: type[Exception]
) -> None:
    scripted(raw, MAIL=[reply])
    with pytest.raises(error) as caught:
        await transport.send(SENDER, [ADA], message(1))

    assert "MAIL FROM" in str(caught.value)
    assert raw.received == []


async def test_refused_data_is_reported_with_its_code(
    raw: RawSMTPServer, transport: SMTPTransport
) -> None:
    scripted(raw, DATA=["451 4.3.0 Try again later"])
    report = await transport.send(SENDER, [ADA], message(1))

    assert isinstance(report.data_error, TransientDeliveryError)
    assert report.data_error.code == 451
    assert not report.data_error.unknown_outcome
    assert raw.received == []


async def test_relay_hanging_up_inside_the_group_is_transient_and_nothing_is_sent(
    raw: RawSMTPServer, transport: SMTPTransport
) -> None:
    scripted(raw, RCPT=[Action.DROP])
    with pytest.raises(TransientDeliveryError):
        await transport.send(SENDER, [ADA], message(1))
    retried = await transport.send(SENDER, [ADA], message(1))

    assert retried.data is not None
    assert len(raw.received) == 1


async def test_relay_closing_with_421_inside_the_group_sends_no_data(
    raw: RawSMTPServer, transport: SMTPTransport
) -> None:
    scripted(raw, RCPT=[Hangup("421 4.3.2 Shutting down")])
    report = await transport.send(SENDER, [ADA], message(1))

    assert report.recipients[ADA].code == 421
    assert report.data is None
    assert raw.received == []


async def test_garbage_among_the_replies_is_transient_without_a_reply_code(
    raw: RawSMTPServer, transport: SMTPTransport
) -> None:
    scripted(raw, RCPT=[Action.GARBAGE])
    with pytest.raises(TransientDeliveryError) as caught:
        await transport.send(SENDER, [ADA], message(1))

    assert caught.value.code in (None, -1)
    assert raw.received == []


async def test_connection_lost_after_the_body_is_an_unknown_outcome(
    raw: RawSMTPServer, transport: SMTPTransport
) -> None:
    scripted(raw, DATA=[Action.DROP_AFTER_DOT])
    report = await transport.send(SENDER, [ADA], message(1))

    assert isinstance(report.data_error, TransientDeliveryError)
    assert report.data_error.unknown_outcome
    assert len(raw.received) == 1


async def test_final_reply_refusal_resets_and_the_next_message_goes_on_the_same_connection(
    raw: RawSMTPServer, transport: SMTPTransport
) -> None:
    scripted(raw, **{END_OF_DATA: ["554 5.6.0 Message rejected"]})
    refused = await transport.send(SENDER, [ADA], message(1))
    sent = await transport.send(SENDER, [ADA], message(2))

    assert isinstance(refused.data_error, PermanentDeliveryError)
    assert sent.data is not None
    assert len(raw.sessions) == 1
    assert [r.message_id for r in raw.received] == ["<m2@example.com>"]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_pipelining_over_starttls_on_either_event_loop(tmp_path: Path, loop: str) -> None:
    """The reader is swapped in on the TLS transport too, whose class depends on the loop."""
    authority = Authority.create(tmp_path, "relay")
    handler = ScriptedHandler()
    handler.rcpt_replies[BOB].append("550 5.1.1 No such user")
    port = free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        tls_context=authority.server_context(),
        require_starttls=True,
    )
    config = dataclasses.replace(relay_config(port), tls="starttls", ca_file=str(authority.pem))

    async def send_twice() -> list[SendReport]:
        transport = SMTPTransport(config)
        try:
            return [await transport.send(SENDER, [ADA, BOB], message(n, ADA, BOB)) for n in (1, 2)]
        finally:
            await transport.close()

    controller.start()
    try:
        reports = uvloop.run(send_twice()) if loop == "uvloop" else asyncio.run(send_twice())
    finally:
        controller.stop()

    assert [{a: r.code for a, r in report.recipients.items()} for report in reports] == [
        {ADA: 250, BOB: 550},
        {ADA: 250, BOB: 250},
    ]
    assert [r.rcpt_tos for r in handler.received] == [[ADA], [ADA, BOB]]
    # One connection: EHLO before and after STARTTLS.
    assert handler.sessions == 2


BOTH_WAYS = pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lock-step"])


@BOTH_WAYS
async def test_a_421_to_the_final_dot_closes_the_connection_instead_of_resetting_it(
    raw: RawSMTPServer, pipelining: bool
) -> None:
    raw.script(
        Session(pipelining=True, replies={END_OF_DATA: ["421 4.3.2 Shutting down"]}),
        Session(pipelining=True),
    )
    transport = SMTPTransport(relay_config(raw.port, pipelining=pipelining))
    try:
        refused = await transport.send(SENDER, [ADA], message(1))
        sent = await transport.send(SENDER, [ADA], message(2))
    finally:
        await transport.close()

    assert isinstance(refused.data_error, TransientDeliveryError)
    assert refused.data_error.code == 421
    assert not refused.data_error.unknown_outcome
    assert sent.data is not None
    first, _ = raw.sessions
    assert verbs(first) == ["EHLO", "MAIL", "RCPT", "DATA"]
    assert [r.message_id for r in raw.received] == ["<m2@example.com>"]


@BOTH_WAYS
async def test_an_idle_timeout_421_before_mail_reopens_the_connection_without_a_failure(
    raw: RawSMTPServer, pipelining: bool
) -> None:
    idle_timeout = Hangup("421 4.4.2 Idle timeout exceeded")
    raw.script(
        Session(pipelining=True, replies={"MAIL": ["250 2.1.0 OK", idle_timeout]}),
        Session(pipelining=True),
    )
    transport = SMTPTransport(relay_config(raw.port, pipelining=pipelining))
    try:
        reports = [await transport.send(SENDER, [ADA], message(n)) for n in (1, 2)]
    finally:
        await transport.close()

    assert [r.data.code if r.data else None for r in reports] == [250, 250]
    assert [r.message_id for r in raw.received] == ["<m1@example.com>", "<m2@example.com>"]
    assert len(raw.sessions) == 2
