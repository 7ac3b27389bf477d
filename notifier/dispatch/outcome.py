"""How one attempt's result settles a notification: pure, unit-tested without I/O."""

from __future__ import annotations

from notifier.dispatch.policy import RetryPolicy
from notifier.dispatch.smtp.classify import (
    error_status,
    is_permanent,
    is_success,
    recipient_status,
)
from notifier.dispatch.smtp.report import Reply, SendReport
from notifier.domain import (
    Attempt,
    AttemptOutcome,
    Notification,
    NotificationStatus,
    Recipient,
    RecipientStatus,
)
from notifier.errors import DeliveryError


def open_recipients(notification: Notification) -> list[Recipient]:
    return [r for r in notification.recipients if r.open]


def settle(
    n: Notification,
    *,
    started_at: float,
    now: float,
    policy: RetryPolicy,
    report: SendReport | None = None,
    error: DeliveryError | None = None,
) -> None:
    """Apply the attempt's result to ``n``: recipients, status, next attempt, history."""
    if error is not None:
        code, text = _apply_error(n, error)
        problem = text
    elif report is not None:
        code, text, problem = _apply_report(n, report)
    else:
        raise ValueError("settle needs a report or an error")
    relay_fault = error is not None and error.relay
    unknown = (
        report is not None and report.data_error is not None and report.data_error.unknown_outcome
    )
    spent = sum(not a.relay_fault for a in n.attempts if a.number > n.budget_from)
    spent += not relay_fault
    _conclude(n, now=now, policy=policy, reason=problem, spent=spent, relay_fault=relay_fault)
    n.attempts.append(
        Attempt(
            number=n.attempt_count,
            started_at=started_at,
            finished_at=now,
            outcome=AttemptOutcome.after(n.status),
            smtp_code=code,
            message=text,
            relay_fault=relay_fault,
            possible_duplicate=unknown,
        )
    )
    n.updated_at = now


def expire(n: Notification, *, started_at: float, now: float) -> None:
    """End ``n`` whose lifetime ran out before this attempt could start."""
    reason = "message lifetime spent before delivery"
    _close_open(n, reason)
    n.status = _final_status(n, NotificationStatus.EXPIRED)
    n.last_error = reason
    n.next_attempt_at = None
    outcome = AttemptOutcome.after(n.status)
    n.attempts.append(Attempt(n.attempt_count, started_at, now, outcome, None, reason))
    n.updated_at = now


def _apply_error(n: Notification, error: DeliveryError) -> tuple[int | None, str]:
    for r in open_recipients(n):
        _apply_error_to(r, error)
    return error.code, str(error)


def _apply_report(n: Notification, report: SendReport) -> tuple[int | None, str, str]:
    """Per-recipient outcomes; returns the attempt's code and message, and what went wrong."""
    first_refusal: tuple[str, Reply] | None = None
    for r in open_recipients(n):
        reply = report.recipients.get(r.address)
        if reply is None:
            continue
        if not is_success(reply.code):
            first_refusal = first_refusal or (r.address, reply)
            r.status, r.smtp_code, r.smtp_message = (
                recipient_status(reply.code),
                reply.code,
                reply.message,
            )
        elif report.data is not None:
            r.status, r.smtp_code, r.smtp_message = (
                RecipientStatus.SENT,
                report.data.code,
                report.data.message,
            )
        elif report.data_error is not None:
            _apply_error_to(r, report.data_error)
    refusal = None
    if first_refusal is not None:
        address, reply = first_refusal
        refusal = f"RCPT {address}: {reply.code} {reply.message}"
    if report.data_error is not None:
        text = str(report.data_error)
        return report.data_error.code, text, text
    if report.data is not None:
        return report.data.code, report.data.message, refusal or report.data.message
    if first_refusal is not None and refusal is not None:
        return first_refusal[1].code, refusal, refusal
    return None, "no recipient left to send to", "no recipient left to send to"


def _apply_error_to(r: Recipient, error: DeliveryError) -> None:
    r.status, r.smtp_code, r.smtp_message = error_status(error), error.code, str(error)


def _conclude(
    n: Notification,
    *,
    now: float,
    policy: RetryPolicy,
    reason: str,
    spent: int,
    relay_fault: bool,
) -> None:
    """Final status once no recipient is open; else the attempt budget and lifetime decide."""
    if not open_recipients(n):
        n.status = _final_status(n, NotificationStatus.FAILED)
        n.next_attempt_at = None
        n.last_error = None if n.status is NotificationStatus.SENT else _first_failure(n)
        return
    next_at = now + policy.delay_after(n.attempt_count)
    n.last_error = reason
    if next_at >= n.expires_at:
        _close_open(n, f"message lifetime spent; last error: {reason}")
        n.status = _final_status(n, NotificationStatus.EXPIRED)
        n.next_attempt_at = None
    elif spent >= policy.max_attempts and not relay_fault:
        _close_open(n, f"{spent} attempts spent; last error: {reason}")
        n.status = _final_status(n, NotificationStatus.FAILED)
        n.next_attempt_at = None
    else:
        n.status = NotificationStatus.DEFERRED
        n.next_attempt_at = next_at


def _close_open(n: Notification, reason: str) -> None:
    for r in open_recipients(n):
        r.status = RecipientStatus.FAILED
        r.smtp_message = reason if r.smtp_message is None else f"{r.smtp_message} ({reason})"


def _final_status(n: Notification, nobody_reached: NotificationStatus) -> NotificationStatus:
    """``sent``, ``partially_sent``, or ``nobody_reached`` once no recipient is open."""
    sent = sum(r.status is RecipientStatus.SENT for r in n.recipients)
    if sent == len(n.recipients):
        return NotificationStatus.SENT
    return NotificationStatus.PARTIALLY_SENT if sent else nobody_reached


def _first_failure(n: Notification) -> str | None:
    for r in n.recipients:
        if r.status is RecipientStatus.FAILED:
            code = f"{r.smtp_code} " if r.smtp_code is not None else ""
            return f"{r.address}: {code}{r.smtp_message or 'refused'}"
    return None


def end_reason(n: Notification) -> str:
    """Why ``n`` ended, for the metrics: ``delivered``, ``partial``, ``cancelled``,
    ``lifetime``, ``refused`` (a permanent reply) or ``retries_exhausted``."""
    match n.status:
        case NotificationStatus.SENT:
            return "delivered"
        case NotificationStatus.PARTIALLY_SENT:
            return "partial"
        case NotificationStatus.CANCELLED:
            return "cancelled"
        case NotificationStatus.EXPIRED:
            return "lifetime"
    last_code = n.attempts[-1].smtp_code if n.attempts else None
    return "refused" if last_code is not None and is_permanent(last_code) else "retries_exhausted"
