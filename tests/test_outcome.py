"""How one attempt's result settles a notification, and how SMTP replies are classified."""

from __future__ import annotations

import pytest

from notifier.dispatch.outcome import expire, settle
from notifier.dispatch.policy import RetryPolicy
from notifier.dispatch.smtp.classify import connection_error, recipient_status, reply_error
from notifier.dispatch.smtp.report import Reply, SendReport
from notifier.domain import (
    Address,
    Attempt,
    AttemptOutcome,
    Content,
    Notification,
    NotificationStatus,
    Recipient,
    RecipientKind,
    RecipientStatus,
)
from notifier.errors import (
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)

NOW = 1_700_000_000.0
STARTED = NOW - 2.0
DAY = 86_400.0
POLICY = RetryPolicy(max_attempts=5, initial_delay=30.0, max_delay=3600.0)

ADA = "ada@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"

ACCEPTED = Reply(250, "2.1.5 OK")
QUEUED = Reply(250, "2.0.0 Ok: queued as 4F2C1")
NO_SUCH_USER = Reply(550, "5.1.1 No such user")
MAILBOX_BUSY = Reply(450, "4.2.1 Mailbox busy")


def notification(
    *addresses: str,
    attempt_count: int = 1,
    expires_at: float = NOW + DAY,
    relay_faults: int = 0,
) -> Notification:
    """A notification just claimed for attempt ``attempt_count``.

    Its history holds the earlier attempts: the first ``relay_faults`` of them were
    relay faults, the rest ordinary deferrals.
    """
    history = [
        Attempt(
            i,
            STARTED,
            STARTED,
            AttemptOutcome.DEFERRED,
            451,
            "451 Busy",
            relay_fault=i <= relay_faults,
        )
        for i in range(1, attempt_count)
    ]
    return Notification(
        id="0190c1d2-7e4f-7abc-8def-0123456789ab",
        status=NotificationStatus.SENDING,
        content=Content(
            sender=Address("notifier@example.com"),
            to=tuple(Address(a) for a in addresses),
            subject="Hello",
            text="Hi",
        ),
        recipients=[Recipient(a, RecipientKind.TO) for a in addresses],
        message_id="<0190c1d2-7e4f-7abc-8def-0123456789ab@example.com>",
        created_at=NOW - 3600.0,
        updated_at=NOW - 3600.0,
        expires_at=expires_at,
        attempt_count=attempt_count,
        attempts=history,
    )


def settle_report(n: Notification, report: SendReport) -> None:
    settle(n, started_at=STARTED, now=NOW, policy=POLICY, report=report)


def settle_error(n: Notification, error: DeliveryError) -> None:
    settle(n, started_at=STARTED, now=NOW, policy=POLICY, error=error)


def statuses(n: Notification) -> dict[str, RecipientStatus]:
    return {r.address: r.status for r in n.recipients}


def recipient(n: Notification, address: str) -> Recipient:
    (found,) = (r for r in n.recipients if r.address == address)
    return found


def assert_deferred_within_policy(n: Notification) -> None:
    assert n.status is NotificationStatus.DEFERRED
    assert n.next_attempt_at is not None
    assert POLICY.initial_delay <= n.next_attempt_at - NOW <= POLICY.max_delay


def test_every_recipient_accepted_is_sent_and_the_attempt_is_recorded() -> None:
    n = notification(ADA, BOB, attempt_count=2)

    settle_report(n, SendReport(recipients={ADA: ACCEPTED, BOB: ACCEPTED}, data=QUEUED))

    assert n.status is NotificationStatus.SENT
    assert statuses(n) == {ADA: RecipientStatus.SENT, BOB: RecipientStatus.SENT}
    assert {(r.smtp_code, r.smtp_message) for r in n.recipients} == {(250, QUEUED.message)}
    assert n.next_attempt_at is None
    assert n.last_error is None
    assert n.updated_at == NOW
    assert n.attempts[-1] == Attempt(2, STARTED, NOW, AttemptOutcome.SENT, 250, QUEUED.message)


def test_recipient_refused_for_good_while_others_accepted_is_partially_sent() -> None:
    n = notification(ADA, BOB)

    settle_report(n, SendReport(recipients={ADA: ACCEPTED, BOB: NO_SUCH_USER}, data=QUEUED))

    assert n.status is NotificationStatus.PARTIALLY_SENT
    assert statuses(n) == {ADA: RecipientStatus.SENT, BOB: RecipientStatus.FAILED}
    assert (recipient(n, BOB).smtp_code, recipient(n, BOB).smtp_message) == (
        550,
        "5.1.1 No such user",
    )
    assert n.next_attempt_at is None
    assert n.last_error is not None
    assert BOB in n.last_error
    assert "550" in n.last_error
    assert n.attempts[-1].outcome == "partially_sent"


def test_every_recipient_refused_for_good_fails() -> None:
    n = notification(ADA, BOB)

    settle_report(n, SendReport(recipients={ADA: NO_SUCH_USER, BOB: Reply(553, "5.1.3 Bad")}))

    assert n.status is NotificationStatus.FAILED
    assert statuses(n) == {ADA: RecipientStatus.FAILED, BOB: RecipientStatus.FAILED}
    assert n.attempts[-1].smtp_code == 550
    assert n.attempts[-1].message == "RCPT ada@example.com: 550 5.1.1 No such user"


def test_transient_rcpt_refusal_defers_with_a_delay_within_the_policy_bounds() -> None:
    n = notification(ADA, BOB)

    settle_report(n, SendReport(recipients={ADA: ACCEPTED, BOB: MAILBOX_BUSY}, data=QUEUED))

    assert_deferred_within_policy(n)
    assert statuses(n) == {ADA: RecipientStatus.SENT, BOB: RecipientStatus.DEFERRED}
    assert recipient(n, BOB).smtp_code == 450
    assert n.attempts[-1].outcome == "deferred"


def test_transient_rcpt_refusal_of_every_recipient_defers_them_all() -> None:
    n = notification(ADA, BOB)

    settle_report(n, SendReport(recipients={ADA: MAILBOX_BUSY, BOB: Reply(452, "4.5.3 Full")}))

    assert_deferred_within_policy(n)
    assert statuses(n) == {ADA: RecipientStatus.DEFERRED, BOB: RecipientStatus.DEFERRED}
    assert n.last_error == "RCPT ada@example.com: 450 4.2.1 Mailbox busy"


def test_recipient_already_sent_is_never_touched_by_a_later_report() -> None:
    n = notification(ADA, BOB)
    settle_report(n, SendReport(recipients={ADA: ACCEPTED, BOB: MAILBOX_BUSY}, data=QUEUED))
    sent_before = (
        recipient(n, ADA).status,
        recipient(n, ADA).smtp_code,
        recipient(n, ADA).smtp_message,
    )
    n.attempt_count = 2

    settle_report(
        n,
        SendReport(
            recipients={ADA: NO_SUCH_USER, BOB: ACCEPTED},
            data=Reply(250, "2.0.0 Ok: queued as 9A1B2"),
        ),
    )

    after = recipient(n, ADA)
    assert (after.status, after.smtp_code, after.smtp_message) == sent_before
    assert recipient(n, BOB).status is RecipientStatus.SENT
    assert n.status is NotificationStatus.SENT
    assert [a.number for a in n.attempts] == [1, 2]
    assert [a.outcome for a in n.attempts] == ["deferred", "sent"]


@pytest.mark.parametrize(
    "error",
    [
        PermanentDeliveryError("DATA: 554 5.6.0 Rejected", code=554),
        TransientDeliveryError("connection lost: closed"),
    ],
    ids=["permanent", "transient"],
)
def test_recipient_already_sent_is_never_touched_by_a_later_error(error: DeliveryError) -> None:
    n = notification(ADA, BOB)
    settle_report(n, SendReport(recipients={ADA: ACCEPTED, BOB: MAILBOX_BUSY}, data=QUEUED))
    n.attempt_count = 2

    settle_error(n, error)

    ada = recipient(n, ADA)
    assert (ada.status, ada.smtp_code, ada.smtp_message) == (
        RecipientStatus.SENT,
        250,
        QUEUED.message,
    )
    assert recipient(n, BOB).smtp_code == error.code


def test_transient_data_reply_defers_the_accepted_and_fails_the_refused() -> None:
    n = notification(ADA, BOB, CAROL)
    data_error = TransientDeliveryError("DATA: 451 4.3.0 Try again later", code=451)

    settle_report(
        n,
        SendReport(
            recipients={ADA: ACCEPTED, BOB: NO_SUCH_USER, CAROL: ACCEPTED},
            data_error=data_error,
        ),
    )

    assert_deferred_within_policy(n)
    assert statuses(n) == {
        ADA: RecipientStatus.DEFERRED,
        BOB: RecipientStatus.FAILED,
        CAROL: RecipientStatus.DEFERRED,
    }
    assert recipient(n, ADA).smtp_code == 451
    assert recipient(n, BOB).smtp_code == 550
    assert n.attempts[-1].smtp_code == 451
    assert n.last_error == "DATA: 451 4.3.0 Try again later"


def test_permanent_data_reply_fails_the_accepted_recipients() -> None:
    n = notification(ADA, BOB)
    data_error = PermanentDeliveryError("DATA: 554 5.6.0 Message rejected", code=554)

    settle_report(
        n, SendReport(recipients={ADA: ACCEPTED, BOB: MAILBOX_BUSY}, data_error=data_error)
    )

    assert statuses(n) == {ADA: RecipientStatus.FAILED, BOB: RecipientStatus.DEFERRED}
    assert_deferred_within_policy(n)
    assert recipient(n, ADA).smtp_code == 554


def test_permanent_error_fails_every_open_recipient() -> None:
    n = notification(ADA, BOB)
    error = PermanentDeliveryError("MAIL FROM: 550 5.7.1 Sender not allowed", code=550)

    settle_error(n, error)

    assert n.status is NotificationStatus.FAILED
    assert statuses(n) == {ADA: RecipientStatus.FAILED, BOB: RecipientStatus.FAILED}
    assert {r.smtp_code for r in n.recipients} == {550}
    assert n.next_attempt_at is None
    assert n.last_error is not None
    assert "550 5.7.1 Sender not allowed" in n.last_error
    assert n.attempts == [Attempt(1, STARTED, NOW, AttemptOutcome.FAILED, 550, str(error))]


def test_transient_error_defers_every_open_recipient() -> None:
    n = notification(ADA, BOB)

    settle_error(n, TransientDeliveryError("MAIL FROM: 451 4.3.0 Later", code=451))

    assert_deferred_within_policy(n)
    assert statuses(n) == {ADA: RecipientStatus.DEFERRED, BOB: RecipientStatus.DEFERRED}
    assert n.last_error == "MAIL FROM: 451 4.3.0 Later"


def test_spent_attempts_fail_the_open_recipients_with_the_last_error() -> None:
    n = notification(ADA, BOB, attempt_count=POLICY.max_attempts)

    settle_error(n, TransientDeliveryError("DATA: 451 4.3.0 Busy", code=451))

    assert n.status is NotificationStatus.FAILED
    assert n.next_attempt_at is None
    assert statuses(n) == {ADA: RecipientStatus.FAILED, BOB: RecipientStatus.FAILED}
    for r in n.recipients:
        assert r.smtp_message is not None
        assert f"{POLICY.max_attempts} attempts spent" in r.smtp_message
        assert "451" in r.smtp_message
    assert n.last_error is not None
    assert "451" in n.last_error
    assert n.attempts[-1].outcome == "failed"


def test_spent_attempts_after_a_partial_success_is_partially_sent() -> None:
    n = notification(ADA, BOB, attempt_count=POLICY.max_attempts)

    settle_report(n, SendReport(recipients={ADA: ACCEPTED, BOB: MAILBOX_BUSY}, data=QUEUED))

    assert n.status is NotificationStatus.PARTIALLY_SENT
    assert statuses(n) == {ADA: RecipientStatus.SENT, BOB: RecipientStatus.FAILED}
    bob_message = recipient(n, BOB).smtp_message
    assert bob_message is not None
    assert "attempts spent" in bob_message


def test_attempts_below_the_cap_still_defer() -> None:
    n = notification(ADA, attempt_count=POLICY.max_attempts - 1)

    settle_error(n, TransientDeliveryError("DATA: 451 4.3.0 Busy", code=451))

    assert_deferred_within_policy(n)


@pytest.mark.parametrize("attempt_count", [POLICY.max_attempts, POLICY.max_attempts + 3])
def test_relay_error_at_the_attempt_cap_still_defers(attempt_count: int) -> None:
    n = notification(ADA, BOB, attempt_count=attempt_count)
    error = TransientDeliveryError("AUTH: 535 5.7.8 Bad credentials", code=535, relay=True)

    settle_error(n, error)

    assert_deferred_within_policy(n)
    assert statuses(n) == {ADA: RecipientStatus.DEFERRED, BOB: RecipientStatus.DEFERRED}
    assert n.attempts[-1] == Attempt(
        attempt_count, STARTED, NOW, AttemptOutcome.DEFERRED, 535, str(error), relay_fault=True
    )


def test_relay_faults_do_not_spend_the_budget_of_a_later_message_fault() -> None:
    relay_outage = POLICY.max_attempts + 2
    n = notification(ADA, attempt_count=relay_outage + 1, relay_faults=relay_outage)

    settle_error(n, TransientDeliveryError("DATA: 451 4.3.0 Busy", code=451))

    assert_deferred_within_policy(n)
    assert n.attempts[-1].relay_fault is False


def test_next_attempt_past_expiry_expires_instead_of_deferring() -> None:
    n = notification(ADA, BOB, expires_at=NOW + POLICY.initial_delay / 2)

    settle_error(n, TransientDeliveryError("DATA: 451 4.3.0 Busy", code=451))

    assert n.status is NotificationStatus.EXPIRED
    assert n.next_attempt_at is None
    assert statuses(n) == {ADA: RecipientStatus.FAILED, BOB: RecipientStatus.FAILED}
    for r in n.recipients:
        assert r.smtp_message is not None
        assert "lifetime spent" in r.smtp_message
    assert n.attempts[-1].outcome == "expired"


def test_next_attempt_past_expiry_after_a_partial_success_is_partially_sent() -> None:
    n = notification(ADA, BOB, expires_at=NOW + POLICY.initial_delay / 2)

    settle_report(n, SendReport(recipients={ADA: ACCEPTED, BOB: MAILBOX_BUSY}, data=QUEUED))

    assert n.status is NotificationStatus.PARTIALLY_SENT
    assert statuses(n) == {ADA: RecipientStatus.SENT, BOB: RecipientStatus.FAILED}
    assert n.next_attempt_at is None


def test_relay_error_past_expiry_expires() -> None:
    n = notification(ADA, attempt_count=POLICY.max_attempts + 3, expires_at=NOW + 1.0)

    settle_error(n, TransientDeliveryError("connect: refused", relay=True))

    assert n.status is NotificationStatus.EXPIRED
    assert n.next_attempt_at is None


def test_expire_before_an_attempt_fails_open_recipients_and_records_why() -> None:
    n = notification(ADA, BOB, attempt_count=3, expires_at=NOW - 1.0)
    n.next_attempt_at = NOW - 5.0

    expire(n, started_at=NOW, now=NOW)

    reason = "message lifetime spent before delivery"
    assert n.status is NotificationStatus.EXPIRED
    assert n.next_attempt_at is None
    assert n.last_error == reason
    assert statuses(n) == {ADA: RecipientStatus.FAILED, BOB: RecipientStatus.FAILED}
    assert {r.smtp_message for r in n.recipients} == {reason}
    assert n.attempts[-1] == Attempt(3, NOW, NOW, AttemptOutcome.EXPIRED, None, reason)
    assert n.updated_at == NOW


def test_expire_keeps_recipients_already_sent_and_is_partially_sent() -> None:
    n = notification(ADA, BOB)
    settle_report(n, SendReport(recipients={ADA: ACCEPTED, BOB: MAILBOX_BUSY}, data=QUEUED))
    n.attempt_count = 2

    expire(n, started_at=NOW + DAY, now=NOW + DAY)

    assert n.status is NotificationStatus.PARTIALLY_SENT
    assert statuses(n) == {ADA: RecipientStatus.SENT, BOB: RecipientStatus.FAILED}
    bob_message = recipient(n, BOB).smtp_message
    assert bob_message is not None
    assert bob_message.startswith("4.2.1 Mailbox busy")
    assert "lifetime spent" in bob_message
    assert [a.outcome for a in n.attempts] == ["deferred", "partially_sent"]


def test_settle_without_a_report_or_an_error_is_refused() -> None:
    with pytest.raises(ValueError, match="report or an error"):
        settle(notification(ADA), started_at=STARTED, now=NOW, policy=POLICY)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (250, RecipientStatus.SENT),
        (251, RecipientStatus.SENT),
        (421, RecipientStatus.DEFERRED),
        (450, RecipientStatus.DEFERRED),
        (451, RecipientStatus.DEFERRED),
        (452, RecipientStatus.DEFERRED),
        (550, RecipientStatus.FAILED),
        (552, RecipientStatus.DEFERRED),
        (553, RecipientStatus.FAILED),
        (554, RecipientStatus.FAILED),
    ],
)
def test_rcpt_reply_code_decides_the_recipient_status(code: int, expected: RecipientStatus) -> None:
    assert recipient_status(code) is expected


@pytest.mark.parametrize(
    ("code", "relay", "kind"),
    [
        (421, False, TransientDeliveryError),
        (451, False, TransientDeliveryError),
        (550, False, PermanentDeliveryError),
        (554, False, PermanentDeliveryError),
        (-1, False, TransientDeliveryError),
        (535, True, TransientDeliveryError),
        (554, True, TransientDeliveryError),
    ],
)
def test_reply_error_is_decided_by_code_and_relay_faults_are_transient(
    code: int, relay: bool, kind: type[DeliveryError]
) -> None:
    error = reply_error(code, "text", stage="DATA", relay=relay)

    assert type(error) is kind
    assert (error.code, error.relay) == (code, relay)
    assert str(error) == f"DATA: {code} text"


def test_connection_error_is_a_transient_relay_fault_without_a_code() -> None:
    error = connection_error("refused", stage="connect")

    assert type(error) is TransientDeliveryError
    assert (error.code, error.relay, str(error)) == (None, True, "connect: refused")
