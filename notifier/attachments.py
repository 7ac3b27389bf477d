"""Attachments: checked and encoded once, when a notification is accepted.

A notification's attachments are stored as the MIME parts they are sent as (headers,
then the content in base64 lines), apart from the notification's row: claims never load
them, an attempt reads them just before it sends, and every attempt sends the same
bytes. :func:`with_attachments` wraps a rendered message and those parts into
``multipart/mixed`` without copying the parts.
"""

from __future__ import annotations

import binascii
import re
import unicodedata
from collections.abc import Sequence

from notifier.domain import Attachment
from notifier.wire import CRLF, make_boundary

#: Longest file name kept, in characters (common file systems allow 255).
MAX_FILENAME = 255
#: Bytes of content per base64 line: 76 characters, as MIME asks (RFC 2045 section 6.8).
_LINE_BYTES = 57
#: Bytes of content encoded at a time: whole lines.
_BLOCK_BYTES = _LINE_BYTES * 1024
#: ``type/subtype`` (RFC 6838 section 4.2), optionally with a ``charset``.
_MEDIA_TYPE = re.compile(
    r"(?P<type>[a-z0-9][a-z0-9!#$&^_.+-]{0,126})/(?P<subtype>[a-z0-9][a-z0-9!#$&^_.+-]{0,126})"
    r'(?:\s*;\s*charset="?(?P<charset>[a-z0-9!#$%&\'*+.^_`{|}~-]{1,40})"?)?'
)
#: Types that are structures of parts themselves: not sent as one base64 part.
_COMPOSITE = frozenset({"multipart", "message"})
_WHITESPACE = re.compile(r"\s+")
#: Unicode categories no file name keeps: controls, formatting (bidirectional
#: overrides, zero-width characters), separators of lines and paragraphs, surrogates.
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
#: A file name written as a quoted string as it is: printable ASCII that no reader
#: decodes (no ``=?``) and that needs no escaping.
_PLAIN_FILENAME = re.compile(r"[A-Za-z0-9 !#$%&'()*+,.;<>@\[\]^_`{|}~-]+")
#: Characters of an RFC 2231 value written as they are (``attr-char``); the rest as %XX.
_ATTR_CHARS = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~"
)
#: Characters of an encoded file name per header line (RFC 2231 continuations), so
#: that each line stays within 78.
_SEGMENT = 50
#: The message headers that describe the body: they move to the body's own part.
_BODY_FIELDS = (b"content-type:", b"content-transfer-encoding:", b"mime-version:")


def sanitised_filename(name: str) -> str:
    """The file name a reader's mail client will save: no folders, no control or
    formatting characters (a right-to-left override would show ``gnp.exe`` as
    ``exe.png``).

    Raises ``ValueError`` when nothing usable is left.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c) not in _INVISIBLE)
    base = base.strip()
    if base in ("", ".", ".."):
        raise ValueError(f"{name!r} has no file name once folders and controls are removed")
    if len(base) > MAX_FILENAME:
        raise ValueError(f"the file name is longer than {MAX_FILENAME} characters")
    return base


def checked_content_type(value: str) -> str:
    """``type/subtype`` in lower case, with a ``charset`` if given; ``ValueError`` otherwise."""
    match = _MEDIA_TYPE.fullmatch(value.strip().lower())
    if match is None:
        raise ValueError(
            f"{value!r} is not a media type such as `application/pdf` "
            "(`type/subtype`, optionally `; charset=...`)"
        )
    if match["type"] in _COMPOSITE:
        raise ValueError(f"{match['type']}/* cannot be attached; send the file as it is stored")
    media_type = f"{match['type']}/{match['subtype']}"
    return f"{media_type}; charset={match['charset']}" if match["charset"] else media_type


def decoded_base64(value: str) -> bytes:
    """Standard base64 (RFC 4648 section 4), line breaks allowed; ``ValueError`` otherwise.

    Decoded from the text as it is (strictly: alphabet, padding, length), without an
    encoded copy of it first.
    """
    if _WHITESPACE.search(value):
        value = _WHITESPACE.sub("", value)
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        if "-" in value or "_" in value:
            raise ValueError(
                "`content` is URL-safe base64; send standard base64 (with + and /)"
            ) from None
        raise ValueError(f"`content` is not valid base64 ({exc})") from None


def encoded_part(attachment: Attachment, content: bytes) -> bytes:
    """The MIME part ``content`` is sent as: its headers, then the content in base64
    lines, each ending in CRLF.

    The headers are written here, not by the ``email`` package, which decodes a value
    shaped like an encoded word (``=?utf-8?b?...?=``) and would write what it hides, line
    breaks included. A plain ASCII file name is quoted as it is; any other is written in
    RFC 2231 form (``filename*=utf-8''...``), in pieces of at most a line each.
    """
    filename = _parameter("filename", attachment.filename)
    name = _parameter("name", attachment.filename)
    head = (
        f"Content-Type: {attachment.content_type};{name}\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: attachment;{filename}\r\n\r\n"
    ).encode("ascii")
    encoded = bytearray(head)
    width = _LINE_BYTES * 4 // 3
    # In blocks of lines, so that no whole-size copy but the result is ever made.
    for start in range(0, len(content), _BLOCK_BYTES):
        block = binascii.b2a_base64(content[start : start + _BLOCK_BYTES], newline=False)
        encoded += CRLF.join(block[i : i + width] for i in range(0, len(block), width))
        encoded += CRLF
    return bytes(encoded)


def _parameter(attribute: str, value: str) -> str:
    """`` attribute="value"``, or its RFC 2231 form folded over lines: ASCII only."""
    if _PLAIN_FILENAME.fullmatch(value) and "=?" not in value:
        return f'\r\n {attribute}="{value}"'
    octets = "".join(chr(b) if b in _ATTR_CHARS else f"%{b:02X}" for b in value.encode())
    segments: list[str] = []
    while octets:
        cut = min(_SEGMENT, len(octets))
        if "%" in octets[cut - 2 : cut]:  # never split a %XX
            cut = octets.rindex("%", 0, cut)
        segments.append(octets[:cut])
        octets = octets[cut:]
    if len(segments) == 1:
        return f"\r\n {attribute}*=utf-8''{segments[0]}"
    segments[0] = "utf-8''" + segments[0]
    return ";".join(f"\r\n {attribute}*{i}*={segment}" for i, segment in enumerate(segments))


def with_attachments(message: bytes, parts: Sequence[bytes], *, seed: str) -> list[bytes]:
    """``message`` as the first part of a ``multipart/mixed`` whose other parts are
    ``parts``, in pieces that each end in CRLF (the parts themselves, not copies).

    The message's own body headers (``Content-Type``, ``Content-Transfer-Encoding``)
    move with its body into the first part. The boundary is drawn from ``seed`` (the
    Message-ID) apart from the body's own, so every attempt sends the same bytes.
    """
    head, separator, body = message.partition(CRLF + CRLF)
    if not separator:
        raise ValueError("the message has no body")
    fields: list[list[bytes]] = []
    for line in head.split(CRLF):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept: list[bytes] = []
    described: list[bytes] = []
    for field in fields:
        name = field[0].lower()
        if name.startswith(b"mime-version:"):
            continue
        target = described if name.startswith(_BODY_FIELDS) else kept
        target.append(CRLF.join(field) + CRLF)
    first = b"".join((*described, CRLF, body))
    boundary = make_boundary(first, *parts, seed=f"{seed} mixed")
    delimiter = b"--" + boundary + CRLF
    pieces = [
        b"".join(
            (
                *kept,
                b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n boundary="',
                boundary,
                b'"\r\n\r\n',
                delimiter,
            )
        ),
        first,
    ]
    for part in parts:
        pieces += (CRLF + delimiter, part)
    pieces.append(CRLF + b"--" + boundary + b"--" + CRLF)
    return pieces
