"""The wire bytes of common messages, written directly instead of through ``EmailMessage``.

Building an ``EmailMessage`` parses and refolds every header and flattens the tree
through a generator: most of the CPU spent per delivered notification. For the shapes
notifications take, :func:`render_fast` writes the bytes the ``email`` package writes
under :data:`WIRE_POLICY` (byte for byte; for multipart, given the same boundary) and
returns ``None`` for anything else, which then takes the ``EmailMessage`` path.

A header value that fits on one line and needs no encoding is written as is; any other
is folded by the package's own header object for it, so it cannot differ. Bodies are
encoded with the helpers and the transfer-encoding choice of
``email.contentmanager.set_text_content``. The tests compare against the package.
"""

from __future__ import annotations

import binascii
import email.policy
import random
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from email import quoprimime
from email.header import Header
from email.headerregistry import Address as HeaderAddress
from email.utils import format_datetime
from functools import lru_cache

from notifier.domain import Address, Content

#: CRLF line endings and 7-bit transfer encodings, so any relay takes the bytes as is.
WIRE_POLICY = email.policy.SMTP.clone(cte_type="7bit")

CRLF = b"\r\n"
#: Longest line, CRLF excluded, before the package folds a header or encodes a body.
MAX_LINE = 78

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
#: A local part or domain the package writes unquoted and parses back unchanged.
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_MESSAGE_ID = re.compile(rf"<{_DOT_ATOM.pattern}@{_DOT_ATOM.pattern}>")
#: A display name without specials: written unquoted.
_ATOMS = re.compile(rf"{_ATEXT}+(?: {_ATEXT}+)*")
#: A display name with specials: written as a quoted string.
_QUOTABLE = re.compile(r"[!-~]+(?: [!-~]+)*")
#: Controls, line separators, surrogates: the package refuses or encodes them; left to it.
_HEADER_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_CUSTOM_HEADER = re.compile(r"[Xx]-[!-9;-~]+")
#: How the generator finds line ends in a payload (``email.generator.NLCRE``).
_LINE_ENDS = re.compile(r"\r\n|\r|\n")
#: Digits in the generator's boundaries (``email.generator._width``).
_BOUNDARY_DIGITS = len(repr(sys.maxsize - 1))
#: Bytes per base64 line (``email.contentmanager._encode_base64``).
_BASE64_CHUNK = MAX_LINE // 4 * 3
#: Lines the package looks at to choose between quoted-printable and base64.
_SNIFF_LINES = 10


def render_fast(content: Content, *, message_id: str, created_at: float) -> bytes | None:
    """The bytes of ``build_message(...).as_bytes(policy=WIRE_POLICY)``, or ``None``.

    ``None`` for what the package would raise on, encode in UTF-8 (SMTPUTF8) or treat
    specially, so the caller builds those with ``EmailMessage``.
    """
    if content.needs_smtputf8 or not content.to or not _headers_safe(content, message_id):
        return None
    try:
        body = _body(content, message_id)
    except UnicodeEncodeError:  # a lone surrogate: the package raises, let it say so
        return None
    return b"".join(_headers(content, message_id, created_at)) + body


def header_address(address: Address) -> HeaderAddress:
    """The package's mailbox for ``address``: split at the last ``@``."""
    username, _, domain = address.address.rpartition("@")
    return HeaderAddress(display_name=address.name or "", username=username, domain=domain)


class LiteralText(str):
    """An unstructured header value that arrives as written, though it looks encoded.

    The package decodes anything shaped like an RFC 2047 encoded word (``=?utf-8?q?hi?=``)
    when a header is set, and then writes the decoded text, so readers would see ``hi``.
    Set as this, the value is written as encoded words of its own text instead: the
    package keeps a value that carries its header's ``name`` as it is, and folds it by
    calling its ``fold``.
    """

    name: str

    def __new__(cls, name: str, value: str) -> LiteralText:
        text = super().__new__(cls, value)
        text.name = name
        return text

    def fold(self, *, policy: email.policy.Policy) -> str:
        encoded = Header(str(self), "utf-8", header_name=self.name).encode(
            linesep=policy.linesep, maxlinelen=policy.max_line_length
        )
        return f"{self.name}: {encoded}{policy.linesep}"


def unstructured(name: str, value: str) -> str:
    """``value`` to set as header ``name``, so that readers see exactly ``value``."""
    return LiteralText(name, value) if "=?" in value else value


def make_boundary(*parts: bytes, seed: str | None = None) -> bytes:
    """A boundary as the generator makes one, and found in none of ``parts``.

    With a ``seed`` (the Message-ID), the same for every rendering of one message, so
    that a retry sends the very bytes of the first attempt.
    """
    draw = random.Random(seed).randrange if seed is not None else random.randrange  # noqa: S311
    while True:
        token = draw(sys.maxsize)  # unique, not secret
        boundary = f"==============={token:0{_BOUNDARY_DIGITS}d}==".encode()
        if not any(boundary in part for part in parts):
            return boundary


def _headers_safe(content: Content, message_id: str) -> bool:
    """No value the package would refuse, and only ``X-`` names (never moved or merged)."""
    values = [content.subject, message_id, *content.headers.values()]
    for mailbox in (content.sender, *content.to, *content.cc, *content.reply_to):
        values += (mailbox.address, mailbox.name or "")
    return all(_CUSTOM_HEADER.fullmatch(name) for name in content.headers) and not any(
        _HEADER_UNSAFE.search(value) for value in values
    )


def _headers(content: Content, message_id: str, created_at: float) -> Iterator[bytes]:
    """The headers in the order :func:`notifier.message.build_message` sets them."""
    yield _address_header("From", (content.sender,))
    yield _address_header("To", content.to)
    if content.cc:
        yield _address_header("Cc", content.cc)
    if content.reply_to:
        yield _address_header("Reply-To", content.reply_to)
    yield _unstructured_header("Subject", content.subject)
    yield _date_header(created_at)
    yield _message_id_header(message_id)
    for name, value in content.headers.items():
        yield _unstructured_header(name, value)


def _one_line(name: str, value: str) -> bytes | None:
    """``name: value``, when the package would write it so: short, and no encoded word.

    The package folds a value only if the whole line is over ``MAX_LINE``; ``=?`` could
    start an encoded word, which the package decodes before writing.
    """
    line = f"{name}: {value}\r\n"
    if len(line) > MAX_LINE + len(CRLF) or "=?" in value:
        return None
    return line.encode("ascii")


def _folded(name: str, value: object) -> bytes:
    """The header exactly as ``EmailMessage`` stores and the generator writes it."""
    return WIRE_POLICY.fold_binary(*WIRE_POLICY.header_store_parse(name, value))


def _unstructured_header(name: str, value: str) -> bytes:
    if not value:
        return f"{name}:\r\n".encode("ascii")
    if value.isascii() and value.isprintable() and (line := _one_line(name, value)):
        return line
    return _folded(name, unstructured(name, value))


def _address_header(name: str, mailboxes: tuple[Address, ...]) -> bytes:
    value = _address_list(mailboxes)
    if value is not None and (line := _one_line(name, value)):
        return line
    return _folded(name, [header_address(m) for m in mailboxes])


def _address_list(mailboxes: tuple[Address, ...]) -> str | None:
    written: list[str] = []
    for address in mailboxes:
        mailbox = _mailbox(address)
        if mailbox is None:
            return None
        written.append(mailbox)
    return ", ".join(written)


def _mailbox(address: Address) -> str | None:
    """``address`` as ``headerregistry.Address`` writes it, if that parses back the same."""
    local, at, domain = address.address.rpartition("@")
    if not (at and _DOT_ATOM.fullmatch(local) and _DOT_ATOM.fullmatch(domain)):
        return None
    name = address.name
    if not name:
        return address.address
    if _ATOMS.fullmatch(name):
        return f"{name} <{address.address}>"
    if _QUOTABLE.fullmatch(name):
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{quoted}" <{address.address}>'
    return None


def _date_header(created_at: float) -> bytes:
    return _date_header_at(datetime.fromtimestamp(created_at, UTC).replace(microsecond=0))


@lru_cache(maxsize=256)
def _date_header_at(moment: datetime) -> bytes:
    """Remembered per second: notifications sent together were mostly created together."""
    value = format_datetime(moment)
    # The package parses the date back; a year below 1000 would not come back the same.
    if moment.year >= 1000 and (line := _one_line("Date", value)):
        return line
    return _folded("Date", value)


def _message_id_header(message_id: str) -> bytes:
    if _MESSAGE_ID.fullmatch(message_id) and (line := _one_line("Message-ID", message_id)):
        return line
    return _folded("Message-ID", message_id)


def _body(content: Content, message_id: str) -> bytes:
    """The MIME headers and body ``notifier.message`` sets with ``set_content``."""
    if content.text is not None and content.html is not None:
        return _alternative(content.text, content.html, message_id)
    if content.html is not None:
        return _text_part(content.html, "html", mime_version=True)
    return _text_part(content.text or "", "plain", mime_version=True)


def _alternative(text: str, html: str, message_id: str) -> bytes:
    """``multipart/alternative``; the package adds MIME-Version to the html part too."""
    plain = _text_part(text, "plain", mime_version=False)
    rich = _text_part(html, "html", mime_version=True)
    boundary = make_boundary(plain, rich, seed=message_id)
    delimiter = b"--" + boundary
    return b"".join(
        (
            b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary="',
            boundary,
            b'"\r\n\r\n',
            delimiter + CRLF + plain + CRLF,
            delimiter + CRLF + rich + CRLF,
            delimiter + b"--\r\n",
        )
    )


def _text_part(text: str, subtype: str, *, mime_version: bool) -> bytes:
    cte, body = _encode_text(text)
    trailer = "MIME-Version: 1.0\r\n" if mime_version else ""
    head = (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {cte}\r\n{trailer}\r\n"
    )
    return head.encode("ascii") + body


def _encode_text(text: str) -> tuple[str, bytes]:
    """Transfer encoding and CRLF body, as ``contentmanager._encode_text`` picks them.

    7bit for ASCII lines of at most ``MAX_LINE`` bytes; otherwise quoted-printable,
    unless base64 is shorter for the first lines. Lines end with CRLF, the last too.
    """
    lines = text.encode("utf-8").splitlines()
    if max(map(len, lines), default=0) <= MAX_LINE:
        body = CRLF.join(lines) + CRLF
        if body.isascii():
            return "7bit", body
    sniff = CRLF.join(lines[:_SNIFF_LINES]) + CRLF
    sniff_qp = quoprimime.body_encode(sniff.decode("latin-1"), MAX_LINE)
    if len(sniff_qp) > len(binascii.b2a_base64(sniff)):
        return "base64", _base64(CRLF.join(lines) + CRLF)
    if len(lines) <= _SNIFF_LINES:
        qp = sniff_qp
    else:
        qp = quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"), MAX_LINE)
    return "quoted-printable", _LINE_ENDS.sub("\r\n", qp).encode("ascii")


def _base64(data: bytes) -> bytes:
    lines = (
        binascii.b2a_base64(data[i : i + _BASE64_CHUNK]) for i in range(0, len(data), _BASE64_CHUNK)
    )
    return b"".join(lines).replace(b"\n", CRLF)
