"""Request and response models of the HTTP API, and their mapping to the domain.

Validation is strict so that nothing unsafe is ever stored: addresses go through
email-validator (no display-name tricks, RFC 5321 lengths, no DNS), and control
characters are refused wherever they could reach a header.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any

import email_validator
import orjson
from email_validator import EmailNotValidError, ValidatedEmail, validate_email
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    model_validator,
)

from notifier.attachments import (
    checked_content_type,
    decoded_base64,
    encoded_part,
    sanitised_filename,
)
from notifier.domain import (
    Address,
    Attachment,
    AttemptOutcome,
    Content,
    Notification,
    NotificationStatus,
    Priority,
    Recipient,
    RecipientKind,
    RecipientStatus,
    new_id,
)
from notifier.headers import checked_headers
from notifier.message import message_id_for
from notifier.records import attachment_record, attempt_record, iso, recipient_record
from notifier.templates import Rendered

#: Anything that could end or forge a header line: C0/C1 controls, DEL, Unicode
#: line and paragraph separators, and lone surrogates (which cannot be encoded).
_HEADER_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
#: In bodies, tab and line breaks are text; other C0 controls and surrogates are not.
_BODY_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")

MAX_HEADER_VALUE = 998
MAX_LOCAL_PART_OCTETS = 64  # RFC 5321 section 4.5.3.1.1
MAX_CUSTOM_HEADERS = 50
MAX_REPLY_TO = 10


def _header_safe(value: str) -> str:
    if match := _HEADER_UNSAFE.search(value):
        raise ValueError(f"control character U+{ord(match.group()):04X} is not allowed here")
    return value


def _body_safe(value: str) -> str:
    if match := _BODY_UNSAFE.search(value):
        raise ValueError(f"control character U+{ord(match.group()):04X} is not allowed in a body")
    return value


#: The key of pydantic's validation context that says whether special-use domains are
#: accepted (``Settings.allow_special_use_domains``); without it they are refused.
SPECIAL_USE_ALLOWED = "special_use_allowed"


@lru_cache(maxsize=8192)
def normalize_address(value: str, special_use_allowed: bool = False) -> str:
    """One bare mailbox, RFC 5321 lengths, the domain in IDNA; raises ``ValueError``.

    A non-ASCII local part is kept (it needs a relay with SMTPUTF8, RFC 6531). A
    special-use domain (``.local``, ``localhost``, ``.test``, ...) is refused unless
    ``special_use_allowed``, with a message naming the setting that allows it.
    """
    _header_safe(value)
    try:
        checked = validate_email(value, check_deliverability=False)
        domain, special_use = checked.ascii_domain, False
    except EmailNotValidError as exc:
        found = _special_use_domain(value)
        if found is None:
            raise ValueError(f"invalid email address: {exc}") from None
        checked, domain = found
        special_use = True
    if len(checked.local_part.encode()) > MAX_LOCAL_PART_OCTETS:
        raise ValueError(f"the part before the @-sign is over {MAX_LOCAL_PART_OCTETS} octets")
    if special_use and not special_use_allowed:
        raise ValueError(
            f"invalid email address: {domain} is a special-use domain; set "
            "NOTIFIER_ALLOW_SPECIAL_USE_DOMAINS=true to accept it"
        )
    return f"{checked.local_part}@{domain}"


def _special_use_domain(value: str) -> tuple[ValidatedEmail, str] | None:
    """``value`` checked as if its special-use domain were an ordinary one, and that
    domain in ASCII; ``None`` unless its domain ends in a special-use name (in ASCII).

    email-validator refuses the names in its ``SPECIAL_USE_DOMAIN_NAMES``, and their
    subdomains, whatever its arguments say (``test_environment`` frees ``test`` alone);
    the only way around is to edit that list for the whole process. So the name is
    swapped for as many letters, and the address checked with
    ``globally_deliverable=False`` (``localhost`` has no dot): every other check, lengths
    included, is still the library's. Raises ``ValueError`` for what else is wrong.
    """
    local_part, at, domain = value.rpartition("@")
    if not at:
        return None
    for special in email_validator.SPECIAL_USE_DOMAIN_NAMES:
        rest, tail = domain[: -len(special)], domain[-len(special) :]
        if tail.isascii() and tail.lower() == special and (not rest or rest.endswith(".")):
            break
    else:
        return None
    stand_in = re.sub(r"[^.]", "x", special)
    try:
        checked = validate_email(
            f"{local_part}@{rest}{stand_in}", check_deliverability=False, globally_deliverable=False
        )
    except EmailNotValidError as exc:
        raise ValueError(f"invalid email address: {exc}") from None
    return checked, checked.ascii_domain[: -len(special)] + special


def _email_address(value: str, info: ValidationInfo) -> str:
    """:func:`normalize_address` under the policy the validation context carries: the
    settings reach request validation this way, not through module state."""
    context = info.context
    return normalize_address(value, bool(context and context.get(SPECIAL_USE_ALLOWED)))


HeaderText = Annotated[str, AfterValidator(_header_safe)]
BodyText = Annotated[str, AfterValidator(_body_safe)]
EmailAddress = Annotated[str, AfterValidator(_email_address)]


class NamedAddress(BaseModel):
    """A mailbox with a display name."""

    model_config = ConfigDict(extra="forbid")

    address: EmailAddress
    name: HeaderText | None = Field(default=None, max_length=256)


#: Tags of the address union; they appear in pydantic error locations.
ADDRESS_FORMS = frozenset({"bare", "named"})


def _address_form(value: object) -> str:
    return "named" if isinstance(value, dict | NamedAddress) else "bare"


AddressIn = Annotated[
    Annotated[EmailAddress, Tag("bare")] | Annotated[NamedAddress, Tag("named")],
    Discriminator(_address_form),
    Field(description="A bare address (`a@example.com`) or `{address, name}`."),
]


def _base64_content(value: object) -> object:
    return decoded_base64(value) if isinstance(value, str) else value


class AttachmentIn(BaseModel):
    """A file to send with the message."""

    model_config = ConfigDict(extra="forbid", ser_json_bytes="base64")

    filename: Annotated[str, AfterValidator(sanitised_filename)] = Field(
        max_length=1024,
        description="The name mail clients save it under; folders and control characters "
        "are removed, and a name that is not ASCII is sent in RFC 2231 form.",
    )
    content_type: Annotated[str, AfterValidator(checked_content_type)] = Field(
        max_length=256, description="Its media type, such as `application/pdf`."
    )
    content: Annotated[bytes, BeforeValidator(_base64_content, json_schema_input_type=str)] = Field(
        description="The file, in standard base64 (RFC 4648)."
    )

    def described(self) -> Attachment:
        return Attachment(self.filename, self.content_type, len(self.content))


def _as_list(value: object) -> object:
    return [value] if isinstance(value, str | dict) else value


class NotificationRequest(BaseModel):
    """A notification to send: ``subject`` with ``text``, ``html`` or both, or a
    ``template`` and its ``data``."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "to": ["ada@example.com"],
                    "subject": "Your report is ready",
                    "text": "Hello Ada, your report is ready.",
                    "metadata": {"report_id": 42},
                }
            ]
        },
    )

    to: list[AddressIn] = Field(min_length=1)
    cc: list[AddressIn] = Field(default_factory=list)
    bcc: list[AddressIn] = Field(default_factory=list)
    reply_to: Annotated[
        list[AddressIn],
        BeforeValidator(
            _as_list,
            json_schema_input_type=AddressIn
            | Annotated[list[AddressIn], Field(max_length=MAX_REPLY_TO)],
        ),
    ] = Field(
        default_factory=list,
        max_length=MAX_REPLY_TO,
        description=f"One address, or a list of at most {MAX_REPLY_TO}.",
    )
    sender: AddressIn | None = Field(default=None, alias="from")
    subject: HeaderText = Field(default="", max_length=MAX_HEADER_VALUE)
    text: BodyText | None = None
    html: BodyText | None = None
    template: str | None = Field(
        default=None,
        max_length=64,
        description="A template's name (`GET /v1/templates`), instead of `subject`, `text` "
        "and `html`: rendered with `data` when the notification is accepted.",
    )
    data: dict[str, Any] | None = Field(
        default=None, description="The values the template reads; only with `template`."
    )
    headers: dict[str, HeaderText] = Field(default_factory=dict, max_length=MAX_CUSTOM_HEADERS)
    metadata: dict[str, Any] = Field(default_factory=dict)
    attachments: list[AttachmentIn] = Field(
        default_factory=list,
        description="Files sent with it: at most `NOTIFIER_MAX_ATTACHMENTS`, and "
        "`NOTIFIER_MAX_ATTACHMENT_BYTES` decoded bytes in all.",
    )
    priority: Priority = Field(
        default=Priority.NORMAL,
        description="Due work is sent highest priority first; `low` still moves while "
        "`high` keeps arriving.",
    )
    send_at: AwareDatetime | None = Field(
        default=None,
        description="Hold it until then (RFC 3339 with a UTC offset; at most "
        "`NOTIFIER_MAX_SCHEDULE_AHEAD` ahead): `scheduled` meanwhile, and cancellable.",
    )
    expires_at: AwareDatetime | None = Field(
        default=None,
        description="Never deliver it after this moment (RFC 3339 with a UTC offset): it "
        "ends `expired`. Default: `NOTIFIER_MESSAGE_LIFETIME` after it is due.",
    )

    @model_validator(mode="after")
    def _check(self) -> NotificationRequest:
        if self.template is not None:
            written = sorted(self.model_fields_set & {"subject", "text", "html"})
            if written:
                fields = ", ".join(f"`{name}`" for name in written)
                raise ValueError(f"give `template` or {fields}, not both")
        elif self.data is not None:
            raise ValueError("`data` is only for a `template`")
        elif self.text is None and self.html is None:
            raise ValueError("give `text`, `html`, or both (or a `template`)")
        if self.headers:
            for name, value in self.headers.items():
                if len(value) > MAX_HEADER_VALUE:
                    raise ValueError(
                        f"header {name!r} is longer than {MAX_HEADER_VALUE} characters"
                    )
            self.headers = checked_headers(self.headers)
        _check_metadata(self.metadata)
        return self

    def recipients(self) -> list[Recipient]:
        """The envelope: each address once, in to, cc, bcc order."""
        if len(self.to) == 1 and not self.cc and not self.bcc:  # the usual notification
            return [Recipient(address=_bare(self.to[0]), kind=RecipientKind.TO)]
        seen: set[str] = set()
        result: list[Recipient] = []
        for kind, group in (
            (RecipientKind.TO, self.to),
            (RecipientKind.CC, self.cc),
            (RecipientKind.BCC, self.bcc),
        ):
            for item in group:
                address = _bare(item)
                if address.lower() not in seen:
                    seen.add(address.lower())
                    result.append(Recipient(address=address, kind=kind))
        return result

    def to_notification(
        self,
        sender: Address,
        *,
        now: float,
        lifetime: float,
        owner: str | None = None,
        rendered: Rendered | None = None,
    ) -> Notification:
        """The new notification this request stands for: ``queued``, or ``scheduled``
        when its ``send_at`` is still to come. ``rendered`` is what its template gave,
        when it names one. ``send_at`` and ``expires_at`` are checked by the caller."""
        notification_id = new_id()
        send_at = self.send_at.timestamp() if self.send_at is not None else None
        if send_at is not None and send_at <= now:
            send_at = None  # a moment already past: send at once
        due = now if send_at is None else send_at
        return Notification(
            id=notification_id,
            status=NotificationStatus.QUEUED if send_at is None else NotificationStatus.SCHEDULED,
            content=self.content(sender, rendered),
            recipients=self.recipients(),
            message_id=message_id_for(notification_id, sender.address),
            created_at=now,
            updated_at=now,
            expires_at=self.expires_at.timestamp() if self.expires_at else due + lifetime,
            metadata=self.metadata,
            owner=owner,
            priority=self.priority,
            send_at=send_at,
            attachment_parts=tuple(
                encoded_part(a.described(), a.content) for a in self.attachments
            ),
        )

    @property
    def recipient_count(self) -> int:
        """To, cc and bcc together, as the limits count them."""
        return len(self.to) + len(self.cc) + len(self.bcc)

    @property
    def attachment_bytes(self) -> int:
        """Decoded bytes of all the attachments together."""
        return sum(len(a.content) for a in self.attachments)

    def schedule_problem(self, *, now: float, ahead: float, lifetime: float) -> str | None:
        """Why ``send_at`` or ``expires_at`` cannot be kept, or ``None``."""
        send_at = self.send_at.timestamp() if self.send_at is not None else now
        if send_at > now + ahead:
            return f"`send_at` is more than {ahead:g} s ahead (NOTIFIER_MAX_SCHEDULE_AHEAD)"
        if self.expires_at is not None:
            expires_at = self.expires_at.timestamp()
            if expires_at <= max(now, send_at):
                return "`expires_at` must be later than now and than `send_at`"
            if expires_at > now + ahead + lifetime:
                return (
                    "`expires_at` is further ahead than NOTIFIER_MAX_SCHEDULE_AHEAD plus "
                    "NOTIFIER_MESSAGE_LIFETIME"
                )
        return None

    def content(self, sender: Address, rendered: Rendered | None = None) -> Content:
        return Content(
            sender=sender,
            to=_addresses(self.to),
            cc=_addresses(self.cc),
            reply_to=_addresses(self.reply_to),
            subject=self.subject if rendered is None else rendered.subject,
            text=self.text if rendered is None else rendered.text,
            html=self.html if rendered is None else rendered.html,
            headers=dict(self.headers),
            template=None if rendered is None else rendered.template,
            attachments=tuple(a.described() for a in self.attachments),
        )


def rendering_problem(rendered: Rendered) -> str | None:
    """Why a template's output cannot be sent (the checks a written subject and body
    get), or ``None``."""
    try:
        _header_safe(rendered.subject)
    except ValueError as exc:
        return f"template {rendered.template!r} gave an unusable subject: {exc}"
    if not rendered.subject:
        return f"template {rendered.template!r} gave an empty subject"
    if len(rendered.subject) > MAX_HEADER_VALUE:
        return f"template {rendered.template!r} gave a subject over {MAX_HEADER_VALUE} characters"
    for part, body in (("text", rendered.text), ("html", rendered.html)):
        if body is not None:
            try:
                _body_safe(body)
            except ValueError as exc:
                return f"template {rendered.template!r} gave an unusable {part} body: {exc}"
    return None


def _check_metadata(metadata: dict[str, Any]) -> None:
    """Refuse metadata the store could not write back as the same JSON.

    Checked with orjson, which the store writes it with: it refuses lone surrogates and
    integers beyond 64 bits, and would write NaN and infinity as ``null``.
    """
    if not metadata:
        return
    try:
        written = orjson.dumps(metadata)
    except orjson.JSONEncodeError as exc:
        if "surrogates" in str(exc):
            raise ValueError("metadata holds a string that is not valid Unicode") from None
        raise ValueError(f"metadata must be plain JSON: {exc}") from None
    # orjson writes NaN and infinity as null: only then is there anything to look for.
    if b"null" in written and _non_finite(metadata):
        raise ValueError("metadata must be plain JSON: NaN and infinity are not JSON numbers")


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_non_finite(v) for v in value)
    return False


def _bare(item: str | NamedAddress) -> str:
    return item.address if isinstance(item, NamedAddress) else item


def _addresses(items: list[str | NamedAddress]) -> tuple[Address, ...]:
    return tuple([to_address(item) for item in items]) if items else ()


def to_address(item: str | NamedAddress) -> Address:
    if isinstance(item, NamedAddress):
        return Address(item.address, item.name)
    return Address(item)


# Responses


class Links(BaseModel):
    self: str


class NotificationAccepted(BaseModel):
    id: str
    status: NotificationStatus
    created_at: datetime
    links: Links
    metadata: dict[str, Any]


class RecipientOut(BaseModel):
    address: str
    kind: RecipientKind
    status: RecipientStatus
    smtp_code: int | None
    smtp_message: str | None


class AttemptOut(BaseModel):
    number: int
    started_at: datetime
    finished_at: datetime
    outcome: AttemptOutcome
    smtp_code: int | None
    message: str | None
    relay_fault: bool
    possible_duplicate: bool


class AttachmentOut(BaseModel):
    filename: str
    content_type: str
    size: int = Field(description="Bytes, decoded.")


class NotificationOut(BaseModel):
    id: str
    status: NotificationStatus
    subject: str
    template: str | None = Field(description="The template it was rendered from, if any.")
    priority: Priority
    send_at: datetime | None = Field(description="When it is held until, if it was scheduled.")
    attachments: list[AttachmentOut]
    recipients: list[RecipientOut]
    attempts: list[AttemptOut]
    attempt_count: int
    next_attempt_at: datetime | None
    last_error: str | None
    message_id: str
    acknowledged: bool
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    metadata: dict[str, Any]


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    next_cursor: str | None


class ValidationIssue(BaseModel):
    loc: str
    msg: str
    type: str | None


class ErrorBody(BaseModel):
    """Every error: a readable ``detail`` and a stable, machine-readable ``code``."""

    detail: str
    code: str
    errors: list[ValidationIssue] | None = Field(
        default=None, description="Each invalid field, for `invalid_request`."
    )


class ReadinessBody(BaseModel):
    status: str
    checks: dict[str, str] = Field(
        description="`store`, `dispatcher` and, while stopping, `shutdown`: each `ok` or why "
        "not. `relay` is reported too, but never makes the instance unready."
    )


class LivenessBody(BaseModel):
    status: str
    checks: dict[str, str] | None = Field(
        default=None, description="The parts that died, and why; only when `status` is `failing`."
    )


def accepted_body(notification: Notification, location: str) -> dict[str, Any]:
    return {
        "id": notification.id,
        "status": notification.status.value,
        "created_at": iso(notification.created_at),
        "links": {"self": location},
        "metadata": notification.metadata,
    }


def status_body(n: Notification) -> dict[str, Any]:
    """The status document, built directly: it is on the hot read path."""
    return {
        "id": n.id,
        "status": n.status.value,
        "subject": n.content.subject,
        "template": n.content.template,
        "priority": n.priority.value,
        "send_at": iso(n.send_at),
        "attachments": [attachment_record(a) for a in n.content.attachments],
        "recipients": [recipient_record(r) for r in n.recipients],
        "attempts": [attempt_record(a, iso) for a in n.attempts],
        "attempt_count": n.attempt_count,
        "next_attempt_at": iso(n.next_attempt_at),
        "last_error": n.last_error,
        "message_id": n.message_id,
        "acknowledged": n.acknowledged,
        "created_at": iso(n.created_at),
        "updated_at": iso(n.updated_at),
        "expires_at": iso(n.expires_at),
        "metadata": n.metadata,
    }
