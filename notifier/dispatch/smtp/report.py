"""What the relay said in one transaction: the transport's answer to the dispatcher."""

from __future__ import annotations

from dataclasses import dataclass, field

from notifier.errors import DeliveryError


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    message: str


@dataclass(slots=True)
class SendReport:
    """What the relay said in one transaction that got as far as RCPT."""

    #: The RCPT reply for each envelope recipient, in order.
    recipients: dict[str, Reply] = field(default_factory=dict)
    #: The reply to the end of DATA, when DATA succeeded.
    data: Reply | None = None
    #: Why DATA failed, when it did; recipients accepted at RCPT share its fate.
    data_error: DeliveryError | None = None
