"""SMTP reply classification: the reply code decides, never the exception class.

Pure functions (RFC 5321 section 4.2.1): 2xx accepted, 4xx try again later,
5xx refused for good. Codes below 100 (malformed replies) count as transient.
"""

from __future__ import annotations

from notifier.domain import RecipientStatus
from notifier.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError

#: "Too many recipients" at RCPT is a transient condition, per RFC 5321 section 4.5.3.1.10.
RCPT_TOO_MANY_RECIPIENTS = 552


def is_success(code: int) -> bool:
    return 200 <= code < 300


def is_permanent(code: int) -> bool:
    return 500 <= code < 600


def recipient_status(rcpt_code: int) -> RecipientStatus:
    """What a RCPT reply means for that recipient."""
    if is_success(rcpt_code):
        return RecipientStatus.SENT
    if is_permanent(rcpt_code) and rcpt_code != RCPT_TOO_MANY_RECIPIENTS:
        return RecipientStatus.FAILED
    return RecipientStatus.DEFERRED


def error_status(error: DeliveryError) -> RecipientStatus:
    """What a failed transaction means for the recipients it was for."""
    return (
        RecipientStatus.FAILED
        if isinstance(error, PermanentDeliveryError)
        else RecipientStatus.DEFERRED
    )


def reply_error(code: int, message: str, *, stage: str, relay: bool = False) -> DeliveryError:
    """The delivery error an unwanted reply at ``stage`` stands for."""
    text = f"{stage}: {code} {message}".strip()
    if is_permanent(code) and not relay:
        return PermanentDeliveryError(text, code=code)
    return TransientDeliveryError(text, code=code, relay=relay)


def connection_error(message: str, *, stage: str) -> DeliveryError:
    """The relay could not be reached or went away: transient, the relay's fault."""
    return TransientDeliveryError(f"{stage}: {message}", relay=True)
