"""Plain data: notifications, recipients, attempts and their statuses.

Times are UNIX epoch seconds (floats); the web layer renders them as ISO 8601.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class NotificationStatus(StrEnum):
    #: Stored and waiting for the dispatcher.
    QUEUED = "queued"
    #: Stored, held until its ``send_at``; then claimed like a queued one.
    SCHEDULED = "scheduled"
    #: Claimed by a dispatcher, an SMTP transaction in progress.
    SENDING = "sending"
    #: A transient fault; another attempt is due at ``next_attempt_at``.
    DEFERRED = "deferred"
    #: Every recipient accepted by the relay.
    SENT = "sent"
    #: Some recipients accepted, the others refused for good.
    PARTIALLY_SENT = "partially_sent"
    #: Refused for good, or attempts spent.
    FAILED = "failed"
    #: Still undelivered when its lifetime ran out.
    EXPIRED = "expired"
    #: Cancelled by a caller before it was sent.
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        NotificationStatus.SENT,
        NotificationStatus.PARTIALLY_SENT,
        NotificationStatus.FAILED,
        NotificationStatus.EXPIRED,
        NotificationStatus.CANCELLED,
    }
)


class Priority(StrEnum):
    """Which due work is claimed first; stored as its :attr:`rank`, lowest first."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        return _PRIORITY_RANKS[self]


_PRIORITY_RANKS = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}
PRIORITY_OF_RANK = {rank: priority for priority, rank in _PRIORITY_RANKS.items()}


class RecipientStatus(StrEnum):
    #: Not tried yet.
    PENDING = "pending"
    #: Accepted by the relay; never sent to again.
    SENT = "sent"
    #: Refused for now (4xx) or not reached; retried.
    DEFERRED = "deferred"
    #: Refused for good (5xx), or out of attempts.
    FAILED = "failed"


class AttemptOutcome(StrEnum):
    """How one attempt ended: the status it left the notification in, or ``interrupted``."""

    #: Every open recipient accepted.
    SENT = "sent"
    #: Some recipients accepted, the others refused for good.
    PARTIALLY_SENT = "partially_sent"
    #: A transient fault: another attempt follows.
    DEFERRED = "deferred"
    #: Refused for good, or the attempts were spent.
    FAILED = "failed"
    #: The lifetime ran out before or during this attempt.
    EXPIRED = "expired"
    #: The sender stopped before recording an outcome; the relay may have the message.
    INTERRUPTED = "interrupted"

    @classmethod
    def after(cls, status: NotificationStatus) -> AttemptOutcome:
        """The outcome of an attempt that left its notification ``status``."""
        return cls(status.value)


class RecipientKind(StrEnum):
    TO = "to"
    CC = "cc"
    BCC = "bcc"


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox: a bare address and an optional display name."""

    address: str
    name: str | None = None


@dataclass(slots=True)
class Recipient:
    address: str
    kind: RecipientKind
    status: RecipientStatus = RecipientStatus.PENDING
    smtp_code: int | None = None
    smtp_message: str | None = None

    @property
    def open(self) -> bool:
        """Still to be delivered."""
        return self.status in (RecipientStatus.PENDING, RecipientStatus.DEFERRED)


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int
    started_at: float
    finished_at: float
    outcome: AttemptOutcome
    smtp_code: int | None = None
    message: str | None = None
    #: The relay failed (down, AUTH, TLS), not this message: does not spend the budget.
    relay_fault: bool = False
    #: The relay may have the message although no reply said so (a crash, or a
    #: connection lost during DATA); the next copy carries the same Message-ID.
    possible_duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file sent with a message: what the status document shows of it. Its bytes are
    stored apart, as the MIME part they are sent as (:mod:`notifier.attachments`)."""

    filename: str
    content_type: str
    #: Bytes of the file, decoded.
    size: int


@dataclass(frozen=True, slots=True)
class Content:
    """What the message says; fixed once accepted."""

    @property
    def needs_smtputf8(self) -> bool:
        """An address has a non-ASCII local part: only an SMTPUTF8 relay can carry it."""
        mailboxes = (self.sender, *self.to, *self.cc, *self.reply_to)
        return not all(m.address.isascii() for m in mailboxes)

    sender: Address
    to: tuple[Address, ...]
    cc: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    subject: str = ""
    text: str | None = None
    html: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: The template the subject and bodies were rendered from, if any.
    template: str | None = None
    attachments: tuple[Attachment, ...] = ()


@dataclass(slots=True)
class Notification:
    id: str
    status: NotificationStatus
    content: Content
    recipients: list[Recipient]
    message_id: str
    created_at: float
    updated_at: float
    expires_at: float
    metadata: dict[str, Any] = field(default_factory=dict)
    owner: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    attempt_count: int = 0
    next_attempt_at: float | None = None
    last_error: str | None = None
    acknowledged: bool = False
    lease_owner: str | None = None
    lease_started_at: float | None = None
    #: Attempts numbered above this count toward the budget (raised by a manual retry).
    budget_from: int = 0
    priority: Priority = Priority.NORMAL
    #: When it was asked to be sent, if later than accepted (``scheduled`` until then).
    send_at: float | None = None
    #: The MIME parts of its attachments, while it is being stored; the store keeps them
    #: apart and does not load them with the notification.
    attachment_parts: tuple[bytes, ...] = ()

    @property
    def cancellable(self) -> bool:
        return self.status in CANCELLABLE

    @property
    def retryable(self) -> bool:
        return self.status in (NotificationStatus.FAILED, NotificationStatus.EXPIRED)

    def reopen(self, *, now: float, expires_at: float) -> None:
        """Queue a failed or expired notification again, with a fresh budget and lifetime.

        Recipients already sent stay sent; the others are tried again.
        """
        for r in self.recipients:
            if r.status is not RecipientStatus.SENT:
                r.status, r.smtp_code, r.smtp_message = RecipientStatus.PENDING, None, None
        self.status = NotificationStatus.QUEUED
        self.budget_from = self.attempt_count
        self.expires_at = expires_at
        self.next_attempt_at = None
        self.last_error = None
        self.updated_at = now


CANCELLABLE = frozenset(
    {NotificationStatus.QUEUED, NotificationStatus.SCHEDULED, NotificationStatus.DEFERRED}
)


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """An ``Idempotency-Key`` as used once: replayed for the same request, refused otherwise."""

    owner: str
    key: str
    request_hash: str
    notification_id: str
    response: str
    expires_at: float


def new_id() -> str:
    """A UUIDv7 (RFC 9562) carrying the clock to ~250 ns, so ids sort by creation time.

    48 bits of milliseconds, then 12 bits of sub-millisecond fraction (method 3),
    then 62 random bits.
    """
    millis, nanos = divmod(time.time_ns(), 1_000_000)
    fraction = nanos * 4096 // 1_000_000
    # Ids are not secrets (a key sees only its own), so no syscall for their randomness.
    random_bits = random.getrandbits(62)
    value = (millis << 80) | (0x7 << 76) | (fraction << 64) | (0b10 << 62) | random_bits
    digits = f"{value:032x}"  # as str(uuid.UUID(int=value)) writes it, without the object
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
