"""Domain objects as plain dicts, one form each: what the store keeps as JSON, the API
sends and the acknowledgment file records is built here, and nowhere else.

Times go through a formatter: epoch seconds in the store, ISO 8601 on the wire. Written
out by hand rather than with ``dataclasses.asdict``, which deep-copies: these run for
every notification stored, sent and shown.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, overload

from notifier.domain import Address, Attachment, Attempt, Content, Recipient


@overload
def iso(timestamp: float) -> str: ...
@overload
def iso(timestamp: None) -> None: ...
@overload
def iso(timestamp: float | None) -> str | None: ...
def iso(timestamp: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC, to the millisecond."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def epoch(timestamp: float) -> float:
    """Epoch seconds as they are: the store's time format."""
    return timestamp


def address_record(a: Address) -> dict[str, str | None]:
    return {"address": a.address, "name": a.name}


def content_record(c: Content) -> dict[str, Any]:
    return {
        "sender": address_record(c.sender),
        "to": [address_record(a) for a in c.to],
        "cc": [address_record(a) for a in c.cc],
        "reply_to": [address_record(a) for a in c.reply_to],
        "subject": c.subject,
        "text": c.text,
        "html": c.html,
        "headers": c.headers,
        "template": c.template,
        "attachments": [attachment_record(a) for a in c.attachments],
    }


def attachment_record(a: Attachment) -> dict[str, Any]:
    return {"filename": a.filename, "content_type": a.content_type, "size": a.size}


def recipient_record(r: Recipient) -> dict[str, Any]:
    return {
        "address": r.address,
        "kind": r.kind.value,
        "status": r.status.value,
        "smtp_code": r.smtp_code,
        "smtp_message": r.smtp_message,
    }


def attempt_record(a: Attempt, time: Callable[[float], Any] = epoch) -> dict[str, Any]:
    return {
        "number": a.number,
        "started_at": time(a.started_at),
        "finished_at": time(a.finished_at),
        "outcome": a.outcome.value,
        "smtp_code": a.smtp_code,
        "message": a.message,
        "relay_fault": a.relay_fault,
        "possible_duplicate": a.possible_duplicate,
    }
