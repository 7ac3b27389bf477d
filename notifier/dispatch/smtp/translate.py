"""The one place aiosmtplib's failures become notifier's: by reply code, and by the stage
of the session they happened in (``raise translate(exc) from exc``, the cause kept)."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable
from typing import TypeVar

import aiosmtplib

from notifier.dispatch.smtp.classify import connection_error, reply_error
from notifier.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError

T = TypeVar("T")


def readable(text: str) -> str:
    """Reply text as stored and shown: bytes that were not UTF-8 become U+FFFD.

    aiosmtplib keeps such bytes as lone surrogates, which neither JSON nor a log file
    can hold: left in, recording the attempt fails and the message is sent again.
    """
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


async def translated(step: Awaitable[T]) -> T:
    """Await ``step``, turning aiosmtplib's and the socket's failures into notifier's."""
    try:
        return await step
    except DeliveryError:
        raise
    except (aiosmtplib.SMTPException, OSError, ValueError, UnicodeError) as exc:
        raise translate(exc) from exc


def relay_silent(exc: aiosmtplib.SMTPException, *, stage: str) -> DeliveryError:
    """A timeout or hang-up before the message was handed over: a relay fault, which opens
    the breaker and spends no attempt. Only the DATA phase is the message's."""
    kind = "timeout" if isinstance(exc, aiosmtplib.SMTPTimeoutError) else "connection lost"
    return connection_error(f"{kind}: {readable(str(exc))}", stage=stage)


def translate(exc: BaseException) -> DeliveryError:
    """The one place aiosmtplib's failures become notifier's, decided by reply code."""
    match exc:
        case aiosmtplib.SMTPAuthenticationError():
            return reply_error(exc.code, readable(exc.message), stage="AUTH", relay=True)
        case aiosmtplib.SMTPConnectResponseError():
            return reply_error(exc.code, readable(exc.message), stage="greeting", relay=True)
        case aiosmtplib.SMTPHeloError():
            return reply_error(exc.code, readable(exc.message), stage="EHLO", relay=True)
        case aiosmtplib.SMTPSenderRefused():
            return reply_error(exc.code, readable(exc.message), stage="MAIL FROM")
        case aiosmtplib.SMTPDataError():
            return reply_error(exc.code, readable(exc.message), stage="DATA")
        case aiosmtplib.SMTPResponseException():
            return reply_error(exc.code, readable(exc.message), stage="reply")
        case aiosmtplib.SMTPConnectError():
            return connection_error(readable(str(exc)), stage="connect")
        case aiosmtplib.SMTPTimeoutError():
            return TransientDeliveryError(f"timeout: {exc}")
        case aiosmtplib.SMTPServerDisconnected():
            return TransientDeliveryError(f"connection lost: {exc}")
        case aiosmtplib.SMTPException():
            # STARTTLS refused or not offered, and other relay-level refusals without a code.
            return connection_error(readable(str(exc)), stage="relay")
        case ssl.SSLError():
            return connection_error(f"TLS failure: {exc}", stage="TLS")
        case UnicodeError() | ValueError():
            return PermanentDeliveryError(f"message could not be encoded for SMTP: {exc}")
        case OSError():
            return connection_error(str(exc), stage="connect")
    return TransientDeliveryError(f"unexpected failure: {exc!r}")
