"""The SMTP fault matrix: every failure path, over a real SMTP exchange.

Each test scripts a relay (aiosmtpd, or :class:`RawSMTPServer` for the faults aiosmtpd
cannot produce), lets the dispatcher run, and checks the final status, the recipients,
the attempt records, and exactly what the relay was told and kept.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from notifier.settings import Settings
from tests.conftest import STORES, MakeSettings, post, running_app, wait_for
from tests.raw_smtp import END_OF_DATA, Action, Hangup, RawSMTPServer, Session, verbs
from tests.tls import PASSWORD, USERNAME, Authority, TLSRelay

#: Each end-to-end path here runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.parametrize("database_url", STORES, indirect=True)

ADA = "ada@example.com"
BOB = "bob@example.com"
#: The attempt budget in the relay fault tests, and more relay faults than it allows.
BUDGET = 2
RELAY_FAULTS = BUDGET + 1
#: A reply line that is not SMTP has no reply code: none recorded, or aiosmtplib's -1.
NO_REPLY_CODE = (None, -1)

PLAIN_SESSION = ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
TLS_SESSION = ["EHLO", "STARTTLS", "EHLO", "AUTH", "MAIL", "RCPT", "DATA", "QUIT"]

Row = tuple[str, int | None, bool, bool]
SENT: Row = ("sent", 250, False, False)


def attempts(doc: dict[str, Any]) -> list[Row]:
    """Each attempt as (outcome, smtp_code, relay_fault, possible_duplicate)."""
    return [
        (a["outcome"], a["smtp_code"], a["relay_fault"], a["possible_duplicate"])
        for a in doc["attempts"]
    ]


def garbled(doc: dict[str, Any]) -> list[tuple[str, bool, bool]]:
    """Each attempt as (outcome, relay_fault, possible_duplicate), checking it had no reply code."""
    assert all(a["smtp_code"] in NO_REPLY_CODE for a in doc["attempts"][:-1])
    return [(a["outcome"], a["relay_fault"], a["possible_duplicate"]) for a in doc["attempts"]]


def recipients(doc: dict[str, Any]) -> dict[str, tuple[str, int | None]]:
    return {r["address"]: (r["status"], r["smtp_code"]) for r in doc["recipients"]}


def relayed_by(make_settings: MakeSettings, server: RawSMTPServer, **overrides: Any) -> Settings:
    return make_settings(smtp_host=server.host, smtp_port=server.port, **overrides)


def secured(
    make_settings: MakeSettings, port: int, ca: Authority | None, **overrides: Any
) -> Settings:
    """Settings for a relay that wants STARTTLS and AUTH, trusting ``ca`` (or the system's)."""
    return make_settings(
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_tls="starttls",
        smtp_username=USERNAME,
        smtp_password=PASSWORD,
        smtp_ca_file=ca.pem if ca else None,
        **overrides,
    )


def credentials_in(auth_plain_line: str) -> str:
    """The decoded payload of ``AUTH PLAIN <base64>``."""
    return base64.b64decode(auth_plain_line.split()[2]).decode()


@pytest.fixture
def raw(authority: Authority) -> Iterator[RawSMTPServer]:
    """A raw relay offering STARTTLS with a certificate from ``authority``."""
    with RawSMTPServer(tls_context=authority.server_context()) as server:
        yield server


@dataclass(frozen=True)
class RelayFault:
    session: Session
    #: The reply code the attempt records, if the fault came with one.
    code: int | None
    #: The commands the relay reads in the faulty session.
    commands: list[str]
    #: Present a certificate from an authority notifier does not trust.
    rogue_certificate: bool = False


RELAY_FAULT_CASES = {
    "connection closed before the greeting": RelayFault(Session(greeting=Action.DROP), None, []),
    "greeting 421": RelayFault(Session(greeting="421 4.3.2 Service not available"), 421, []),
    "greeting 554": RelayFault(Session(greeting="554 5.3.2 No service"), 554, []),
    "EHLO and HELO refused": RelayFault(
        Session(replies={"EHLO": "550 5.7.1 Not welcome", "HELO": "550 5.7.1 Not welcome"}),
        550,
        ["EHLO", "HELO"],
    ),
    "STARTTLS not offered": RelayFault(Session(starttls=False), None, ["EHLO"]),
    "untrusted certificate": RelayFault(Session(), None, ["EHLO", "STARTTLS"], True),
    "AUTH 535": RelayFault(
        Session(replies={"AUTH": "535 5.7.8 Authentication credentials invalid"}),
        535,
        ["EHLO", "STARTTLS", "EHLO", "AUTH"],
    ),
    "AUTH 454": RelayFault(
        Session(replies={"AUTH": "454 4.7.0 Temporary authentication failure"}),
        454,
        ["EHLO", "STARTTLS", "EHLO", "AUTH"],
    ),
    "silent instead of a greeting": RelayFault(Session(greeting=Action.SILENCE), None, []),
    "silent at EHLO": RelayFault(Session(replies={"EHLO": [Action.SILENCE]}), None, ["EHLO"]),
    "silent at AUTH": RelayFault(
        Session(replies={"AUTH": Action.SILENCE}), None, ["EHLO", "STARTTLS", "EHLO", "AUTH"]
    ),
    "silent at MAIL": RelayFault(
        Session(replies={"MAIL": Action.SILENCE}),
        None,
        ["EHLO", "STARTTLS", "EHLO", "AUTH", "MAIL"],
    ),
}
#: Seconds the relay fault tests wait for a reply: the silent relays cost this each time.
SILENCE_TIMEOUT = 1.0


@pytest.mark.parametrize("fault", list(RELAY_FAULT_CASES.values()), ids=list(RELAY_FAULT_CASES))
async def test_relay_fault_defers_beyond_the_attempt_budget_and_sends_once_the_relay_recovers(
    fault: RelayFault,
    make_settings: MakeSettings,
    raw: RawSMTPServer,
    authority: Authority,
    rogue: Authority,
) -> None:
    session = fault.session
    if fault.rogue_certificate:
        session = dataclasses.replace(session, tls_context=rogue.server_context())
    raw.script(*[session] * RELAY_FAULTS)
    settings = secured(
        make_settings,
        raw.port,
        authority,
        retry_max_attempts=BUDGET,
        smtp_timeout=SILENCE_TIMEOUT,
    )

    async with running_app(settings) as client:
        doc = await wait_for(client, await post(client))

    assert doc["status"] == "sent"
    assert recipients(doc) == {ADA: ("sent", 250)}
    assert attempts(doc) == [("deferred", fault.code, True, False)] * RELAY_FAULTS + [SENT]
    *faulty, healthy = raw.sessions
    assert [verbs(lines) for lines in faulty] == [fault.commands] * RELAY_FAULTS
    assert verbs(healthy) == TLS_SESSION
    (received,) = raw.received
    assert received.rcpt_tos == [ADA]
    assert received.message_id == doc["message_id"]


async def test_unreachable_relay_defers_beyond_the_attempt_budget_until_it_listens(
    make_settings: MakeSettings,
) -> None:
    server = RawSMTPServer()  # its port refuses connections until it starts
    try:
        settings = relayed_by(make_settings, server, retry_max_attempts=BUDGET)
        async with running_app(settings) as client:
            notification_id = await post(client)
            refused = await wait_for(
                client,
                notification_id,
                lambda d: len(d["attempts"]) >= RELAY_FAULTS and d["status"] == "deferred",
            )
            server.start()
            doc = await wait_for(client, notification_id)
    finally:
        server.stop()

    assert set(attempts(refused)) == {("deferred", None, True, False)}
    assert recipients(refused) == {ADA: ("deferred", None)}
    assert doc["status"] == "sent"
    *before, last = attempts(doc)
    assert set(before) == {("deferred", None, True, False)}
    assert last == SENT
    assert [verbs(lines) for lines in server.sessions] == [PLAIN_SESSION]
    (received,) = server.received
    assert received.message_id == doc["message_id"]


async def test_credentials_never_cross_a_connection_on_which_starttls_is_not_offered(
    make_settings: MakeSettings, authority: Authority
) -> None:
    hiding = Session(starttls=False, auth=("PLAIN", "LOGIN"))
    with RawSMTPServer(tls_context=authority.server_context(), fallback=hiding) as server:
        settings = secured(make_settings, server.port, authority, retry_max_attempts=BUDGET)
        async with running_app(settings) as client:
            doc = await wait_for(
                client,
                await post(client),
                lambda d: len(d["attempts"]) >= RELAY_FAULTS and d["status"] == "deferred",
            )

    assert set(attempts(doc)) == {("deferred", None, True, False)}
    assert recipients(doc) == {ADA: ("deferred", None)}
    sessions = server.sessions
    assert len(sessions) >= RELAY_FAULTS
    assert {tuple(lines) for lines in sessions} == {("EHLO notifier.test",)}
    assert server.received == []


async def test_credentials_go_to_the_relay_only_after_starttls(
    make_settings: MakeSettings, raw: RawSMTPServer, authority: Authority
) -> None:
    async with running_app(secured(make_settings, raw.port, authority)) as client:
        doc = await wait_for(client, await post(client))

    assert doc["status"] == "sent"
    assert attempts(doc) == [SENT]
    (lines,) = raw.sessions
    assert verbs(lines) == TLS_SESSION
    auth = lines[verbs(lines).index("AUTH")]
    assert auth.startswith("AUTH PLAIN ")
    assert credentials_in(auth) == f"\0{USERNAME}\0{PASSWORD}"
    assert len(raw.received) == 1


async def test_certificate_from_an_untrusted_authority_is_a_relay_fault_and_nothing_is_sent(
    make_settings: MakeSettings, tls_relay: TLSRelay
) -> None:
    settings = secured(make_settings, tls_relay.port, None, retry_max_attempts=BUDGET)
    async with running_app(settings) as client:
        doc = await wait_for(
            client,
            await post(client),
            lambda d: len(d["attempts"]) >= RELAY_FAULTS and d["status"] == "deferred",
        )

    assert set(attempts(doc)) == {("deferred", None, True, False)}
    assert "certificate verify failed" in doc["attempts"][0]["message"].lower()
    assert recipients(doc) == {ADA: ("deferred", None)}
    assert tls_relay.authenticator.tries == []
    assert tls_relay.handler.received == []


async def test_certificate_from_the_configured_authority_is_trusted_and_auth_runs_over_tls(
    make_settings: MakeSettings, tls_relay: TLSRelay, authority: Authority
) -> None:
    async with running_app(secured(make_settings, tls_relay.port, authority)) as client:
        doc = await wait_for(client, await post(client))

    assert doc["status"] == "sent"
    assert attempts(doc) == [SENT]
    assert recipients(doc) == {ADA: ("sent", 250)}
    assert tls_relay.authenticator.tries == [("PLAIN", True, USERNAME.encode())]
    (received,) = tls_relay.handler.received
    assert received.rcpt_tos == [ADA]
    assert received.message_id == doc["message_id"]


async def test_debug_log_shows_each_sessions_shape_and_replies_but_no_secret_or_body(
    make_settings: MakeSettings,
    tls_relay: TLSRelay,
    authority: Authority,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="notifier.dispatch.smtp")
    settings = secured(make_settings, tls_relay.port, authority)
    async with running_app(settings) as client:
        await wait_for(client, await post(client, text="the body, never logged"))

    logged = [r.getMessage() for r in caplog.records if r.name.startswith("notifier.dispatch")]
    (opened,) = [line for line in logged if line.startswith("SMTP session opened")]
    assert f"127.0.0.1:{tls_relay.port}" in opened
    assert "TLS TLSv1." in opened
    assert "AUTH plain" in opened
    assert "PIPELINING offered" in opened
    assert "SMTP transaction, pipelined: MAIL 250, RCPT 250, DATA 354, . 250" in logged
    assert not any(PASSWORD in line or "never logged" in line for line in logged)


async def test_sender_deferred_at_mail_from_is_retried_on_a_new_connection_and_sent_once(
    make_settings: MakeSettings, raw: RawSMTPServer
) -> None:
    raw.script(Session(replies={"MAIL": "451 4.7.1 Greylisted, try again later"}))

    async with running_app(relayed_by(make_settings, raw)) as client:
        doc = await wait_for(client, await post(client))

    assert doc["status"] == "sent"
    assert attempts(doc) == [("deferred", 451, False, False), SENT]
    assert recipients(doc) == {ADA: ("sent", 250)}
    assert [verbs(lines) for lines in raw.sessions] == [["EHLO", "MAIL"], PLAIN_SESSION]
    (received,) = raw.received
    assert received.message_id == doc["message_id"]


async def test_sender_refused_at_mail_from_fails_after_one_attempt_without_rcpt_or_data(
    make_settings: MakeSettings, raw: RawSMTPServer
) -> None:
    raw.script(Session(replies={"MAIL": "550 5.7.1 Sender not allowed"}))

    async with running_app(relayed_by(make_settings, raw)) as client:
        doc = await wait_for(client, await post(client))

    assert doc["status"] == "failed"
    assert attempts(doc) == [("failed", 550, False, False)]
    assert recipients(doc) == {ADA: ("failed", 550)}
    assert "550" in doc["last_error"]
    assert raw.sessions == [["EHLO notifier.test", "MAIL FROM:<notifier@example.com>"]]
    assert raw.received == []


async def test_reply_text_that_is_not_utf8_is_recorded_readably_and_sent_once(
    make_settings: MakeSettings, raw: RawSMTPServer
) -> None:
    raw.script(
        Session(
            replies={
                "RCPT": ["250 2.1.5 Ok", "550 5.1.1 Unbekannt \udcfc"],
                END_OF_DATA: "250 2.0.0 Angenommen \udcff\udcfe",
            }
        )
    )

    async with running_app(relayed_by(make_settings, raw)) as client:
        doc = await wait_for(client, await post(client, to=[ADA, BOB]))

    assert doc["status"] == "partially_sent"
    messages = {r["address"]: r["smtp_message"] for r in doc["recipients"]}
    assert messages == {ADA: "2.0.0 Angenommen \ufffd\ufffd", BOB: "5.1.1 Unbekannt \ufffd"}
    assert attempts(doc) == [("partially_sent", 250, False, False)]
    assert len(raw.received) == 1


async def test_recipients_all_refused_with_mixed_codes_fail_the_permanent_and_retry_the_rest(
    make_settings: MakeSettings, raw: RawSMTPServer
) -> None:
    raw.script(Session(replies={"RCPT": ["450 4.2.1 Mailbox busy", "550 5.1.1 No such user"]}))

    async with running_app(relayed_by(make_settings, raw)) as client:
        doc = await wait_for(client, await post(client, to=[ADA, BOB]))

    assert doc["status"] == "partially_sent"
    assert recipients(doc) == {ADA: ("sent", 250), BOB: ("failed", 550)}
    assert attempts(doc) == [("deferred", 450, False, False), ("partially_sent", 250, False, False)]
    # One connection: the refused transaction is reset, the retry names Ada alone.
    assert raw.sessions == [
        [
            "EHLO notifier.test",
            "MAIL FROM:<notifier@example.com>",
            f"RCPT TO:<{ADA}>",
            f"RCPT TO:<{BOB}>",
            "RSET",
            "MAIL FROM:<notifier@example.com>",
            f"RCPT TO:<{ADA}>",
            "DATA",
            "QUIT",
        ]
    ]
    (received,) = raw.received
    assert received.rcpt_tos == [ADA]
    assert received.message_id == doc["message_id"]


async def test_data_command_deferred_before_the_body_is_retried_and_sent_once(
    make_settings: MakeSettings, raw: RawSMTPServer
) -> None:
    raw.script(Session(replies={"DATA": ["451 4.3.0 Queue full, try later"]}))

    async with running_app(relayed_by(make_settings, raw)) as client:
        doc = await wait_for(client, await post(client))

    assert doc["status"] == "sent"
    assert attempts(doc) == [("deferred", 451, False, False), SENT]
    assert recipients(doc) == {ADA: ("sent", 250)}
    (lines,) = raw.sessions
    assert verbs(lines) == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "QUIT"]
    (received,) = raw.received
    assert received.message_id == doc["message_id"]


async def test_data_command_refused_for_good_fails_without_sending_the_body(
    make_settings: MakeSettings, raw: RawSMTPServer
) -> None:
    raw.script(Session(replies={"DATA": "554 5.5.1 Transaction failed"}))

    async with running_app(relayed_by(make_settings, raw)) as client:
        doc = await wait_for(client, await post(client))

    assert doc["status"] == "failed"
    assert attempts(doc) == [("failed", 554, False, False)]
    assert recipients(doc) == {ADA: ("failed", 554)}
    (lines,) = raw.sessions
    assert verbs(lines) == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "QUIT"]
    assert raw.received == []


async def test_connection_lost_after_354_is_a_possible_duplicate_and_the_retry_delivers_one_copy(
    make_settings: MakeSettings, raw: RawSMTPServer
) -> None:
    raw.script(Session(replies={"DATA": Action.DROP_AFTER_354}))

    async with running_app(relayed_by(make_settings, raw)) as client:
        doc = await wait_for(client, await post(client))

    assert doc["status"] == "sent"
    assert attempts(doc) == [("deferred", None, False, True), SENT]
    assert "outcome unknown" in doc["attempts"][0]["message"]
    assert recipients(doc) == {ADA: ("sent", 250)}
    assert [verbs(lines) for lines in raw.sessions] == [
        ["EHLO", "MAIL", "RCPT", "DATA"],
        PLAIN_SESSION,
    ]
    (received,) = raw.received
    assert received.message_id == doc["message_id"]


async def test_a_relay_that_stops_reading_a_large_message_is_a_known_failure_and_is_left(
    make_settings: MakeSettings, raw: RawSMTPServer
) -> None:
    # Larger than loopback's socket buffers hold unread (tcp_wmem's 4 MiB and an
    # unread receive window): the sender waits for room that never comes.
    raw.script(Session(replies={"DATA": Action.STALL_IN_BODY}))
    payload = os.urandom(8 * 1024 * 1024)
    settings = relayed_by(
        make_settings,
        raw,
        smtp_data_timeout=2.0,  # the retry's relay reads the lines in Python: slowly
        max_attachment_bytes=len(payload),
        max_request_bytes=32 * 1024 * 1024,
    )
    attachment = {
        "filename": "big.bin",
        "content_type": "application/octet-stream",
        "content": base64.b64encode(payload).decode(),
    }

    async with running_app(settings) as client:
        doc = await wait_for(client, await post(client, attachments=[attachment]), deadline=60)

    assert doc["status"] == "sent"
    # Before the final dot the relay cannot have the message: not a possible duplicate.
    assert attempts(doc) == [("deferred", None, False, False), SENT]
    assert "could not be sent" in doc["attempts"][0]["message"]
    (received,) = raw.received
    assert received.message_id == doc["message_id"]


async def test_connection_lost_after_the_final_dot_resends_under_the_same_message_id(
    make_settings: MakeSettings, raw: RawSMTPServer
) -> None:
    raw.script(Session(replies={"DATA": Action.DROP_AFTER_DOT}))

    async with running_app(relayed_by(make_settings, raw)) as client:
        doc = await wait_for(client, await post(client))

    assert doc["status"] == "sent"
    assert attempts(doc) == [("deferred", None, False, True), SENT]
    assert recipients(doc) == {ADA: ("sent", 250)}
    assert [verbs(lines) for lines in raw.sessions] == [
        ["EHLO", "MAIL", "RCPT", "DATA"],
        PLAIN_SESSION,
    ]
    first, second = raw.received
    assert first.message_id == second.message_id == doc["message_id"]
    assert first.data == second.data


#: Where the garbage replaces a reply, and the commands the relay reads by then. At DATA it
#: replaces the 354, so the body never goes out: no duplicate is possible.
GARBAGE_STAGES = [
    pytest.param(Session(greeting=Action.GARBAGE), [], id="greeting"),
    pytest.param(Session(replies={"EHLO": Action.GARBAGE}), ["EHLO"], id="EHLO"),
    pytest.param(Session(replies={"MAIL": Action.GARBAGE}), ["EHLO", "MAIL"], id="MAIL"),
    pytest.param(Session(replies={"RCPT": Action.GARBAGE}), ["EHLO", "MAIL", "RCPT"], id="RCPT"),
    pytest.param(
        Session(replies={"DATA": Action.GARBAGE}), ["EHLO", "MAIL", "RCPT", "DATA"], id="DATA"
    ),
]


@pytest.mark.parametrize(("session", "commands"), GARBAGE_STAGES)
async def test_garbage_reply_is_transient_and_the_retry_delivers_one_copy(
    session: Session, commands: list[str], make_settings: MakeSettings, raw: RawSMTPServer
) -> None:
    raw.script(session)

    async with running_app(relayed_by(make_settings, raw)) as client:
        doc = await wait_for(client, await post(client))

    assert doc["status"] == "sent"
    assert garbled(doc) == [("deferred", False, False), ("sent", False, False)]
    assert "malformed" in doc["attempts"][0]["message"].lower()
    assert recipients(doc) == {ADA: ("sent", 250)}
    assert [verbs(lines) for lines in raw.sessions] == [commands, PLAIN_SESSION]
    (received,) = raw.received
    assert received.message_id == doc["message_id"]


async def test_relay_that_always_answers_garbage_fails_once_the_attempts_are_spent(
    make_settings: MakeSettings,
) -> None:
    babbling = Session(replies={"MAIL": Action.GARBAGE})
    with RawSMTPServer(fallback=babbling) as server:
        settings = relayed_by(make_settings, server)
        async with running_app(settings) as client:
            doc = await wait_for(client, await post(client))

    budget = settings.retry_max_attempts
    assert doc["status"] == "failed"
    assert doc["attempts"][-1]["smtp_code"] in NO_REPLY_CODE
    assert garbled(doc) == [("deferred", False, False)] * (budget - 1) + [("failed", False, False)]
    (recipient,) = doc["recipients"]
    assert recipient["status"] == "failed"
    assert f"{budget} attempts spent" in recipient["smtp_message"]
    assert [verbs(lines) for lines in server.sessions] == [["EHLO", "MAIL"]] * budget
    assert server.received == []


async def test_garbage_reply_to_the_final_dot_is_a_possible_duplicate(
    make_settings: MakeSettings, raw: RawSMTPServer
) -> None:
    raw.script(Session(replies={END_OF_DATA: Action.GARBAGE}))

    async with running_app(relayed_by(make_settings, raw)) as client:
        doc = await wait_for(client, await post(client))

    assert doc["status"] == "sent"
    first, second = raw.received
    assert first.message_id == second.message_id == doc["message_id"]
    assert garbled(doc) == [("deferred", False, True), ("sent", False, False)]


REFUSALS_THEN_HANGUP = {
    "RCPT 550": (
        Session(replies={"RCPT": [Hangup("550 5.1.1 No such user")]}),
        550,
        ["EHLO", "MAIL", "RCPT"],
    ),
    "final dot 554": (
        Session(replies={END_OF_DATA: Hangup("554 5.7.1 Message rejected")}),
        554,
        ["EHLO", "MAIL", "RCPT", "DATA"],
    ),
}


@pytest.mark.parametrize(
    ("session", "code", "commands"),
    list(REFUSALS_THEN_HANGUP.values()),
    ids=list(REFUSALS_THEN_HANGUP),
)
async def test_permanent_refusal_followed_by_a_hangup_still_fails_at_once(
    session: Session,
    code: int,
    commands: list[str],
    make_settings: MakeSettings,
    raw: RawSMTPServer,
) -> None:
    raw.script(session)

    async with running_app(relayed_by(make_settings, raw)) as client:
        doc = await wait_for(client, await post(client))

    assert attempts(doc) == [("failed", code, False, False)]
    assert doc["status"] == "failed"
    assert recipients(doc) == {ADA: ("failed", code)}
    assert [verbs(lines) for lines in raw.sessions] == [commands]
    assert raw.received == []
