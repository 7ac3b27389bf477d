"""Turn a notification into RFC 5322 bytes: the one place the message is defined.

Pure: no I/O, so every header rule is unit-tested directly. The API has already
refused control characters; ``EmailMessage`` is the second line of defence.
:func:`build_message` is the reference; :mod:`notifier.wire` writes the same bytes
directly for common messages, which is most of the CPU saved per delivery.
"""

from __future__ import annotations

import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

from notifier.domain import Content
from notifier.wire import WIRE_POLICY as WIRE_POLICY
from notifier.wire import header_address, make_boundary, render_fast, unstructured

#: For internationalised addresses (RFC 6532): UTF-8 headers, sent only with SMTPUTF8.
UTF8_POLICY = email.policy.SMTP.clone(utf8=True)


def message_id_for(notification_id: str, sender: str) -> str:
    """The Message-ID every copy of a notification carries, on every attempt."""
    domain = sender.rpartition("@")[2] or "notifier.invalid"
    return f"<{notification_id}@{domain}>"


def build_message(content: Content, *, message_id: str, created_at: float) -> EmailMessage:
    """The message as sent; Bcc recipients are in the envelope only, never a header."""
    message = EmailMessage(policy=_policy(content))
    message["From"] = header_address(content.sender)
    message["To"] = [header_address(a) for a in content.to]
    if content.cc:
        message["Cc"] = [header_address(a) for a in content.cc]
    if content.reply_to:
        message["Reply-To"] = [header_address(a) for a in content.reply_to]
    message["Subject"] = unstructured("Subject", content.subject)
    message["Date"] = format_datetime(datetime.fromtimestamp(created_at, UTC))
    message["Message-ID"] = message_id
    for name, value in content.headers.items():
        message[name] = unstructured(name, value)
    _set_body(message, content)
    return message


def render(content: Content, *, message_id: str, created_at: float) -> bytes:
    """The wire bytes of :func:`build_message`, written directly when :mod:`~notifier.wire` can."""
    fast = render_fast(content, message_id=message_id, created_at=created_at)
    if fast is not None:
        return fast
    message = build_message(content, message_id=message_id, created_at=created_at)
    if message.is_multipart():
        # The same boundary on every attempt, as the fast path draws it.
        bodies = [
            (content.text or "").encode(errors="replace"),
            (content.html or "").encode(errors="replace"),
        ]
        message.set_boundary(make_boundary(*bodies, seed=message_id).decode("ascii"))
    return message.as_bytes(policy=_policy(content))


def _policy(content: Content) -> email.policy.EmailPolicy[EmailMessage]:
    return UTF8_POLICY if content.needs_smtputf8 else WIRE_POLICY


def _set_body(message: EmailMessage, content: Content) -> None:
    if content.text is not None and content.html is not None:
        message.set_content(content.text)
        message.add_alternative(content.html, subtype="html")
    elif content.html is not None:
        message.set_content(content.html, subtype="html")
    else:
        message.set_content(content.text or "")
