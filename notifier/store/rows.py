"""Notifications as table rows and back, the same for every store.

JSON columns hold the records of :mod:`notifier.records`; a driver that hands back a
JSON column already parsed (PostgreSQL's ``jsonb``) is read the same as text.
"""

from __future__ import annotations

from typing import Any

import orjson

from notifier.domain import (
    PRIORITY_OF_RANK,
    Address,
    Attachment,
    Attempt,
    AttemptOutcome,
    Content,
    Notification,
    NotificationStatus,
    Recipient,
    RecipientKind,
    RecipientStatus,
)
from notifier.records import attempt_record, content_record, recipient_record
from notifier.store.base import PageFilter

#: Stored values back to members: a dict lookup, where calling the enum costs ten times more.
_NOTIFICATION_STATUS = {member.value: member for member in NotificationStatus}
_RECIPIENT_KIND = {member.value: member for member in RecipientKind}
_RECIPIENT_STATUS = {member.value: member for member in RecipientStatus}
_ATTEMPT_OUTCOME = {member.value: member for member in AttemptOutcome}

#: The message of the attempt a store records for a lease that ran out.
INTERRUPTED = "the sender stopped before recording an outcome; the message may have been delivered"

#: The columns a new notification is inserted with, in the order of a bulk insert's rows.
INSERT_COLUMNS = (
    "id",
    "owner",
    "status",
    "content",
    "recipients",
    "metadata",
    "message_id",
    "created_at",
    "updated_at",
    "expires_at",
    "visible_at",
    "priority",
    "send_at",
)


def dump(value: object) -> str:
    return orjson.dumps(value).decode()


def _address(value: dict[str, Any]) -> Address:
    return Address(value["address"], value.get("name"))


def recipients_json(recipients: list[Recipient]) -> str:
    return dump([recipient_record(r) for r in recipients])


def attempts_json(attempts: list[Attempt]) -> str:
    return dump([attempt_record(a) for a in attempts])


def to_row(n: Notification) -> dict[str, Any]:
    content = n.content
    return {
        "id": n.id,
        "owner": n.owner,
        "status": n.status.value,
        "content": dump(content_record(content)),
        "recipients": recipients_json(n.recipients),
        "metadata": dump(n.metadata),
        "message_id": n.message_id,
        "created_at": n.created_at,
        "updated_at": n.updated_at,
        "expires_at": n.expires_at,
        # Due when asked for: at once, or at its send_at.
        "visible_at": n.send_at if n.send_at is not None else n.created_at,
        "priority": n.priority.rank,
        "send_at": n.send_at,
    }


def _attempt(value: dict[str, Any]) -> Attempt:
    return Attempt(**{**value, "outcome": _ATTEMPT_OUTCOME[value["outcome"]]})


def from_row(row: Any) -> Notification:
    content = _parsed(row["content"])
    return Notification(
        id=row["id"],
        owner=row["owner"],
        status=_NOTIFICATION_STATUS[row["status"]],
        content=Content(
            sender=_address(content["sender"]),
            to=tuple(_address(a) for a in content["to"]),
            cc=tuple(_address(a) for a in content["cc"]),
            reply_to=tuple(_address(a) for a in content["reply_to"]),
            subject=content["subject"],
            text=content["text"],
            html=content["html"],
            headers=content["headers"],
            # Rows stored before templates existed have no "template".
            template=content.get("template"),
            attachments=tuple(Attachment(**a) for a in content.get("attachments", ())),
        ),
        recipients=[
            Recipient(
                address=r["address"],
                kind=_RECIPIENT_KIND[r["kind"]],
                status=_RECIPIENT_STATUS[r["status"]],
                smtp_code=r["smtp_code"],
                smtp_message=r["smtp_message"],
            )
            for r in _parsed(row["recipients"])
        ],
        attempts=[_attempt(a) for a in _parsed(row["attempts"])],
        metadata=_parsed(row["metadata"]),
        message_id=row["message_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expires_at=row["expires_at"],
        next_attempt_at=row["next_attempt_at"],
        attempt_count=row["attempt_count"],
        last_error=row["last_error"],
        acknowledged=bool(row["ack_accepted"]),
        lease_owner=row["lease_owner"],
        lease_started_at=row["lease_started_at"],
        budget_from=row["budget_from"],
        priority=PRIORITY_OF_RANK[row["priority"]],
        send_at=row["send_at"],
    )


def _parsed(value: Any) -> Any:
    """A JSON column's value: text is parsed, what the driver parsed is taken as it is."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def claim_order(n: Notification) -> tuple[int, float]:
    """The order claimed notifications are handed out in: by priority, then due time."""
    return n.priority.rank, n.next_attempt_at or n.send_at or n.created_at


def page_filter(
    placeholder: str, filters: PageFilter, before_id: str | None, *, recipient_clause: str
) -> tuple[str, list[object]]:
    """The ``WHERE`` clause of a page of the list, and its parameters.

    ``recipient_clause`` is the store's own test that ``recipients`` holds the address
    (a JSON column each database reads its own way), with one placeholder.
    """
    f = filters
    conditions: list[tuple[str, object]] = [
        (recipient_clause, f.recipient),
        (f"owner = {placeholder}", f.owner),
        (f"status = {placeholder}", None if f.status is None else f.status.value),
        (f"priority = {placeholder}", None if f.priority is None else f.priority.rank),
        (f"created_at > {placeholder}", f.created_after),
        (f"created_at < {placeholder}", f.created_before),
        (f"id < {placeholder}", before_id),
    ]
    chosen = [(clause, value) for clause, value in conditions if value is not None]
    where = " AND ".join(clause for clause, _ in chosen)
    return (f"WHERE {where}" if where else ""), [value for _, value in chosen]
