"""``/v1/notifications``: accept, look up and list notifications."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated, Any, ClassVar

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.routing import APIRoute
from pydantic import AwareDatetime, BaseModel
from starlette.types import Receive, Scope, Send

from notifier.api.auth import CallerDep, authenticate_and_charge, owner_of
from notifier.api.body import parse_json, read_body, require_json
from notifier.api.idempotency import HEADER as IDEMPOTENCY_HEADER
from notifier.api.idempotency import checked_key, once_per_key, request_hash
from notifier.api.openapi import (
    IDEMPOTENT_REPLAYED,
    LOCATION,
    RATE_LIMIT,
    RETRY_AFTER,
    WWW_AUTHENTICATE,
    documented,
)
from notifier.api.problem import ApiError
from notifier.api.responses import JSON, RawJSON
from notifier.api.services import Services, ServicesDep, services_of
from notifier.api.templates import render_or_refuse
from notifier.domain import (
    Address,
    IdempotencyRecord,
    Notification,
    NotificationStatus,
    Priority,
)
from notifier.keys import ApiKey, sender_allowed
from notifier.schemas import (
    SPECIAL_USE_ALLOWED,
    NamedAddress,
    NotificationAccepted,
    NotificationOut,
    NotificationPage,
    NotificationRequest,
    accepted_body,
    normalize_address,
    status_body,
    to_address,
)
from notifier.settings import Settings
from notifier.store import PageFilter
from notifier.templates import Rendered

router = APIRouter(prefix="/v1/notifications", tags=["notifications"])

ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
NotificationId = Annotated[
    str,
    Path(
        description="The `id` from the 202 answer.",
        openapi_examples={"id": {"value": "01a1fde9-a2eb-74e1-86b5-597eb64cdee6"}},
    ),
]
#: Every route here checks the API key, takes a rate-limit token and uses the store.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    401: documented("Missing or unknown API key.", WWW_AUTHENTICATE),
    422: documented("The request is invalid; nothing was stored.", RATE_LIMIT),
    429: documented(
        "Rate limit of this API key reached; retry after `Retry-After` seconds.",
        RATE_LIMIT,
        RETRY_AFTER,
    ),
    503: documented(
        "The store cannot answer now (busy, locked or unreachable); nothing changed. "
        "Retry after `Retry-After` seconds.",
        RATE_LIMIT,
        RETRY_AFTER,
    ),
}
#: What else a route that accepts notifications can answer: its body, its key, its store.
ACCEPT_ERRORS: dict[int | str, dict[str, Any]] = {
    400: documented("Unparsable JSON or malformed `Idempotency-Key`.", RATE_LIMIT),
    409: documented("Same key, first request still in progress.", RATE_LIMIT, RETRY_AFTER),
    413: documented("The request body is too large."),
    415: documented("The body is not `application/json`."),
    503: documented(
        "Shutting down, too many undelivered notifications, or the store cannot take "
        "writes; nothing was stored. Retry after `Retry-After` seconds.",
        RATE_LIMIT,
        RETRY_AFTER,
    ),
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: documented("No such notification.", RATE_LIMIT)}
RETRY_AFTER_BUSY = "5"
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        description="Send the same key again to get the original answer instead of a "
        "second notification (1 to 255 printable characters; kept for the message "
        "lifetime plus 24 hours).",
    ),
]


class AcceptRoute(APIRoute):
    """Serves :func:`create_notification` straight from ASGI; FastAPI only describes it.

    FastAPI's request handling (dependency solving, ``Request`` and ``Response``
    objects, its exception-wrapping layers) cost more per request than storing the
    notification (``benchmarks/LEVERS.md``). :meth:`handle` does the same steps for
    this one endpoint, checking before the body is parsed: ``415``, then the API key
    (``401``) and its rate limit (``429``), then the body (FastAPI's own
    ``400``/``422``). Errors propagate to the app's exception handlers as from any
    route. The endpoint's signature still describes the operation in OpenAPI.
    """

    #: All :meth:`handle` reads besides ``Content-Type`` and the bearer key: the body, as
    #: this model, and these headers, each passed on as the keyword argument named beside
    #: it. ``tests/test_openapi.py`` holds the operation's OpenAPI description to exactly these.
    BODY: ClassVar[type[BaseModel]] = NotificationRequest
    HEADERS: ClassVar[tuple[tuple[str, str], ...]] = ((IDEMPOTENCY_HEADER, "idempotency_key"),)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in (self.methods or ()):
            await super().handle(scope, receive, send)  # 405, as on every route
            return
        request = Request(scope, receive)
        require_json(request)
        caller = authenticate_and_charge(request)
        allowed = services_of(request).settings.allow_special_use_domains
        body = parse_json(await read_body(receive), self.BODY, {SPECIAL_USE_ALLOWED: allowed})
        headers = request.headers
        arguments = {argument: headers.get(name) for name, argument in self.HEADERS}
        answer: RawJSON = await self.endpoint(body, request, caller, **arguments)
        await answer(send)


async def create_notification(
    body: NotificationRequest,
    request: Request,
    caller: CallerDep,
    idempotency_key: IdempotencyKey = None,
) -> RawJSON:
    """Validate, commit to the store, answer ``202``; delivery happens in the background.

    With an ``Idempotency-Key``, the same key and body answer the original ``202``
    again (``Idempotent-Replayed: true``); the same key with another body is ``422``.
    """
    services = services_of(request)
    key = checked_key(idempotency_key)

    async def checked_and_admitted(keyed: tuple[str, str, str] | None) -> RawJSON:
        sender, rendered = checked_request(body, services, caller)
        services.rate_limiter.recipients(caller, body.recipient_count)
        return await _admit(body, rendered, sender, services, caller, keyed)

    if key is None:
        return await checked_and_admitted(None)
    digest = request_hash(body.model_dump_json(by_alias=True))
    return await once_per_key(
        services.idempotency,
        services.store,
        (owner_of(caller) or "", key, digest),
        _replay,
        checked_and_admitted,
    )


router.add_api_route(
    "",
    create_notification,
    methods=["POST"],
    route_class_override=AcceptRoute,
    status_code=202,
    response_model=NotificationAccepted,
    summary="Accept a notification for delivery",
    operation_id="create_notification",
    responses={
        **COMMON_ERRORS,
        202: documented(
            "Accepted and committed; or, for a repeated `Idempotency-Key`, the original answer "
            "again (`Idempotent-Replayed: true`).",
            LOCATION,
            RATE_LIMIT,
            IDEMPOTENT_REPLAYED,
            model=None,
        ),
        **ACCEPT_ERRORS,
        403: documented("`from` is not an allowed sender.", RATE_LIMIT),
    },
)


def checked_request(
    body: NotificationRequest, services: Services, caller: ApiKey | None
) -> tuple[Address, Rendered | None]:
    """What a valid request needs beyond its own fields, checked in the documented order:
    recipients, sender, schedule, attachments, template; raises ``ApiError``. Returns
    the sender and what the template rendered."""
    settings = services.settings
    count = body.recipient_count
    if count > settings.max_recipients:
        raise ApiError(
            422,
            "too_many_recipients",
            f"{count} recipients; at most {settings.max_recipients} per notification",
        )
    sender = _sender(body.sender, settings, caller)
    if body.send_at is not None or body.expires_at is not None:
        problem = body.schedule_problem(
            now=time.time(), ahead=settings.max_schedule_ahead, lifetime=settings.message_lifetime
        )
        if problem is not None:
            raise ApiError(422, "invalid_schedule", problem)
    if body.attachments:
        _check_attachments(body, settings)
    return sender, _render(body, services)


def _check_attachments(body: NotificationRequest, settings: Settings) -> None:
    if len(body.attachments) > settings.max_attachments:
        raise ApiError(
            422,
            "too_many_attachments",
            f"{len(body.attachments)} attachments; at most {settings.max_attachments} per "
            "notification (NOTIFIER_MAX_ATTACHMENTS)",
        )
    total = body.attachment_bytes
    if total > settings.max_attachment_bytes:
        raise ApiError(
            422,
            "attachments_too_large",
            f"the attachments hold {total} bytes; at most {settings.max_attachment_bytes} per "
            "notification (NOTIFIER_MAX_ATTACHMENT_BYTES)",
        )


def _render(body: NotificationRequest, services: Services) -> Rendered | None:
    """What the request's template gives for its data (``None`` without a template);
    ``422`` naming the template or the missing variable. Rendered once, here: every
    retry sends what was stored."""
    if body.template is None:
        return None
    return render_or_refuse(services.templates, body.template, body.data or {}, unknown=422)


async def _admit(
    body: NotificationRequest,
    rendered: Rendered | None,
    sender: Address,
    services: Services,
    caller: ApiKey | None,
    idempotency: tuple[str, str, str] | None,
) -> RawJSON:
    """Store a new notification (with its key, in the same transaction) and answer 202."""
    settings = services.settings
    await check_admitting(services)
    now = time.time()
    notification = body.to_notification(
        sender,
        now=now,
        lifetime=settings.message_lifetime,
        owner=owner_of(caller),
        rendered=rendered,
    )
    notification_id = notification.id
    location = f"{router.prefix}/{notification_id}"
    answer = accepted_body(notification, location)
    record = key_record(idempotency, notification_id, answer, now + settings.idempotency_window)
    taken = await services.store.add(notification, record)
    if taken is not None:
        return _replay(taken, record.request_hash if record else "")
    services.backpressure.accepted()
    services.metrics.accepted_one(notification.priority)
    # After the answer is sent: queue the acknowledgment, wake the dispatcher.
    after = partial(services.on_accepted, notification)
    return RawJSON(answer, 202, {"Location": location}, after)


def key_record(
    idempotency: tuple[str, str, str] | None,
    notification_id: str,
    answer: dict[str, Any],
    expires_at: float,
) -> IdempotencyRecord | None:
    """What the store keeps of a request's ``Idempotency-Key`` (owner, key, request hash),
    if it had one: the answer, to give again."""
    if idempotency is None:
        return None
    owner, key, digest = idempotency
    return IdempotencyRecord(
        owner=owner,
        key=key,
        request_hash=digest,
        notification_id=notification_id,
        response=json.dumps(answer),
        expires_at=expires_at,
    )


async def check_admitting(services: Services) -> None:
    """``503`` while shutting down or over the back-pressure limit: nothing is stored."""
    if not services.accepting():
        raise ApiError(
            503,
            "shutting_down",
            "this instance is shutting down; nothing was stored, retry shortly",
            {"Retry-After": RETRY_AFTER_BUSY},
        )
    if not await services.backpressure.admits():
        raise ApiError(
            503,
            "too_many_pending",
            f"{services.backpressure.limit} notifications already await delivery; "
            "nothing was stored, retry later",
            {"Retry-After": RETRY_AFTER_BUSY},
        )


def _replay(record: IdempotencyRecord, digest: str) -> RawJSON:
    """The original answer for a repeated key, or ``422`` if the body differs."""
    if record.request_hash != digest:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body; "
            "use a new key for a new notification",
        )
    answer = json.loads(record.response)
    headers = {"Location": answer["links"]["self"], "Idempotent-Replayed": "true"}
    return RawJSON(answer, 202, headers)


@router.get(
    "/{notification_id}",
    response_model=NotificationOut,
    summary="Delivery status of one notification",
    operation_id="get_notification",
    responses={
        **COMMON_ERRORS,
        **_NOT_FOUND,
        200: documented("The status document.", RATE_LIMIT, model=None),
    },
)
async def get_notification(
    notification_id: NotificationId, services: ServicesDep, caller: CallerDep
) -> JSON:
    """State, per-recipient results, every attempt, and whether it was acknowledged."""
    notification = await _owned(services, notification_id, caller)
    return JSON(status_body(notification))


@router.get(
    "",
    response_model=NotificationPage,
    summary="List notifications, newest first",
    operation_id="list_notifications",
    responses={
        **COMMON_ERRORS,
        200: documented("One page of status documents.", RATE_LIMIT, model=None),
    },
)
async def list_notifications(
    services: ServicesDep,
    caller: CallerDep,
    status: NotificationStatus | None = None,
    priority: Priority | None = None,
    created_after: Annotated[
        AwareDatetime | None, Query(description="Only those accepted after this moment.")
    ] = None,
    created_before: Annotated[
        AwareDatetime | None, Query(description="Only those accepted before this moment.")
    ] = None,
    recipient: Annotated[
        str | None, Query(description="Only those sent to this address (to, cc or bcc).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(pattern=ID_PATTERN, description="`next_cursor` of the previous page")
    ] = None,
) -> JSON:
    """Page through notifications; follow ``next_cursor`` until it is ``null``."""
    if recipient is not None:
        try:
            recipient = normalize_address(recipient, services.settings.allow_special_use_domains)
        except ValueError as exc:
            raise ApiError(422, "invalid_request", f"recipient: {exc}") from None
    filters = PageFilter(
        owner=owner_of(caller),
        status=status,
        priority=priority,
        created_after=None if created_after is None else created_after.timestamp(),
        created_before=None if created_before is None else created_before.timestamp(),
        recipient=recipient,
    )
    found = await services.store.page(limit=limit + 1, before_id=cursor, filters=filters)
    items = found[:limit]
    next_cursor = items[-1].id if len(found) > limit else None
    return JSON({"items": [status_body(n) for n in items], "next_cursor": next_cursor})


@router.delete(
    "/{notification_id}",
    response_model=NotificationOut,
    summary="Cancel a notification not yet sent",
    operation_id="cancel_notification",
    responses={
        **COMMON_ERRORS,
        **_NOT_FOUND,
        200: documented("Cancelled: the status document.", RATE_LIMIT, model=None),
        409: documented("Already sent, being sent, or finished.", RATE_LIMIT),
    },
)
async def cancel_notification(
    notification_id: NotificationId, services: ServicesDep, caller: CallerDep
) -> JSON:
    """Cancel a ``queued`` or ``deferred`` notification; answers its status document."""
    notification = await _transition(
        services,
        notification_id,
        caller,
        lambda: services.store.cancel(notification_id, now=time.time()),
        refusal="not_cancellable",
        rule="only queued, scheduled or deferred notifications can be cancelled",
    )
    return JSON(status_body(notification))


@router.post(
    "/{notification_id}/retry",
    response_model=NotificationOut,
    status_code=202,
    summary="Queue a failed or expired notification again",
    operation_id="retry_notification",
    responses={
        **COMMON_ERRORS,
        **_NOT_FOUND,
        202: documented("Queued again: the status document.", LOCATION, RATE_LIMIT, model=None),
        409: documented("Not failed or expired.", RATE_LIMIT),
    },
)
async def retry_notification(
    notification_id: NotificationId, services: ServicesDep, caller: CallerDep
) -> JSON:
    """Recipients not yet reached get a fresh attempt budget and message lifetime."""
    now = time.time()
    expires_at = now + services.settings.message_lifetime
    notification = await _transition(
        services,
        notification_id,
        caller,
        lambda: services.store.requeue(notification_id, now=now, expires_at=expires_at),
        refusal="not_retryable",
        rule="only failed or expired notifications can be retried",
    )
    location = f"{router.prefix}/{notification_id}"
    return JSON(status_body(notification), 202, headers={"Location": location})


async def _transition(
    services: Services,
    notification_id: str,
    caller: ApiKey | None,
    change: Callable[[], Awaitable[tuple[bool, Notification | None]]],
    *,
    refusal: str,
    rule: str,
) -> Notification:
    """Apply an operator's change to the caller's notification: ``404``, ``409`` or done."""
    await _owned(services, notification_id, caller)
    changed, notification = await change()
    if notification is None:
        raise _not_found(notification_id)
    if not changed:
        raise ApiError(
            409, refusal, f"notification {notification_id} is {notification.status.value}; {rule}"
        )
    await services.on_changed(notification)
    return notification


async def _owned(services: Services, notification_id: str, caller: ApiKey | None) -> Notification:
    """The notification, if it exists and this caller created it; ``404`` otherwise alike."""
    notification = await services.store.get(notification_id)
    owner = owner_of(caller)
    if notification is None or (owner is not None and notification.owner != owner):
        raise _not_found(notification_id)
    return notification


def _not_found(notification_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no notification {notification_id}")


def _sender(
    requested: str | NamedAddress | None, settings: Settings, caller: ApiKey | None
) -> Address:
    """The From address: the default, or one this key (or else the settings) allows.

    A key limited to some senders is held to them even when it relies on the default.
    """
    address = Address(settings.sender) if requested is None else to_address(requested)
    per_key = caller.may_send_as(address.address) if caller else None
    if per_key is None and address.address == settings.sender:
        return address  # the default sender, which no key rule narrows
    allowed = (
        per_key
        if per_key is not None
        else sender_allowed(address.address, [settings.sender, *settings.allowed_senders])
    )
    if allowed:
        return address
    rule = "this API key's senders" if per_key is not None else "NOTIFIER_ALLOWED_SENDERS"
    raise ApiError(
        403, "sender_not_allowed", f"{address.address} is not an allowed sender (see {rule})"
    )
