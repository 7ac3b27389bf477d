"""``POST /v1/notifications/batch``: many notifications in one request and one commit.

Each item is checked as a single ``POST`` would be and answered in place: ``202`` with
its id, or the error a single ``POST`` would have given. The valid items are committed
together, in one transaction, before the answer; an invalid item rejects only itself.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from notifier.api.auth import CallerDep, owner_of
from notifier.api.idempotency import checked_key, once_per_key, request_hash
from notifier.api.notifications import (
    ACCEPT_ERRORS,
    COMMON_ERRORS,
    AcceptRoute,
    IdempotencyKey,
    check_admitting,
    checked_request,
    key_record,
)
from notifier.api.openapi import IDEMPOTENT_REPLAYED, RATE_LIMIT, documented
from notifier.api.problem import ApiError, invalid_body
from notifier.api.responses import RawJSON
from notifier.api.services import Services, services_of
from notifier.domain import Address, IdempotencyRecord, Notification
from notifier.keys import ApiKey
from notifier.schemas import SPECIAL_USE_ALLOWED, ErrorBody, NotificationRequest
from notifier.templates import Rendered

router = APIRouter(prefix="/v1/notifications", tags=["notifications"])

#: An item checked and ready to store: its request, the sender and what its template gave.
_Valid = tuple[int, NotificationRequest, Address, Rendered | None]


class NotificationBatch(BaseModel):
    """Notifications to accept together; each item is a `POST /v1/notifications` body."""

    model_config = ConfigDict(extra="forbid")

    #: Each item valid as a single POST body is validated here, in one pass over the
    #: JSON; any other is kept as it came, and validated again alone for its errors.
    notifications: Annotated[
        list[Annotated[NotificationRequest | Any, Field(union_mode="left_to_right")]],
        Field(
            min_length=1,
            description="At most `NOTIFIER_MAX_BATCH` notifications, each checked on its own.",
            json_schema_extra={"items": {"$ref": "#/components/schemas/NotificationRequest"}},
        ),
    ]


class BatchItem(BaseModel):
    status: int = Field(description="`202` when accepted, else the status a single POST got.")
    id: str | None = Field(default=None, description="The accepted notification's id.")
    error: ErrorBody | None = Field(default=None, description="Why it was refused.")


class BatchAnswer(BaseModel):
    items: list[BatchItem] = Field(description="One result per notification, in order.")


class BatchRoute(AcceptRoute):
    """Served from ASGI like a single accept: the same checks, in the same order."""

    BODY = NotificationBatch


async def create_notifications(
    body: NotificationBatch,
    request: Request,
    caller: CallerDep,
    idempotency_key: IdempotencyKey = None,
) -> RawJSON:
    """Check each notification, commit the valid ones together, answer ``200`` per item.

    With an ``Idempotency-Key``, the same key and batch answer the original ``200``
    again (``Idempotent-Replayed: true``); nothing is stored twice.
    """
    services = services_of(request)
    settings = services.settings
    key = checked_key(idempotency_key)
    if len(body.notifications) > settings.max_batch:
        raise ApiError(
            422,
            "batch_too_large",
            f"{len(body.notifications)} notifications; at most {settings.max_batch} in one "
            "batch (NOTIFIER_MAX_BATCH)",
        )
    if key is None:
        return await _check_and_admit(body, services, caller, None)
    digest = request_hash("batch " + "\n".join(map(_canonical, body.notifications)))
    return await once_per_key(
        services.idempotency,
        services.store,
        (owner_of(caller) or "", key, digest),
        _replay,
        lambda keyed: _check_and_admit(body, services, caller, keyed),
    )


async def _check_and_admit(
    body: NotificationBatch,
    services: Services,
    caller: ApiKey | None,
    idempotency: tuple[str, str, str] | None,
) -> RawJSON:
    """Check each item as a single POST is checked, charge their recipients, store the
    valid ones (with the key, when there are any) and answer."""
    results: list[dict[str, Any]] = []
    valid: list[_Valid] = []
    context = {SPECIAL_USE_ALLOWED: services.settings.allow_special_use_domains}
    for position, item in enumerate(body.notifications):
        try:
            if isinstance(item, NotificationRequest):
                single = item
            else:  # invalid: validated alone, for the errors a single POST would get
                single = NotificationRequest.model_validate(item, context=context)
            sender, rendered = checked_request(single, services, caller)
        except ValidationError as exc:
            errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
            results.append({"status": 422, "error": invalid_body(errors)})
        except ApiError as exc:
            error = {"detail": exc.detail, "code": exc.code}
            results.append({"status": exc.status, "error": error})
        else:
            results.append({"status": 202})
            valid.append((position, single, sender, rendered))
    if not valid:
        return RawJSON({"items": results}, 200)
    services.rate_limiter.recipients(caller, sum(v[1].recipient_count for v in valid))
    return await _admit(valid, results, services, caller, idempotency)


router.add_api_route(
    "/batch",
    create_notifications,
    methods=["POST"],
    route_class_override=BatchRoute,
    status_code=200,
    response_model=BatchAnswer,
    summary="Accept many notifications in one request",
    operation_id="create_notifications",
    responses={
        **COMMON_ERRORS,
        200: documented(
            "Each item's result, in order; the accepted ones are committed. For a repeated "
            "`Idempotency-Key`, the original answer again (`Idempotent-Replayed: true`).",
            RATE_LIMIT,
            IDEMPOTENT_REPLAYED,
            model=None,
        ),
        **ACCEPT_ERRORS,
        422: documented(
            "The batch itself is invalid (not a list, empty, over `NOTIFIER_MAX_BATCH`, or "
            "the key reused with another batch); nothing was stored.",
            RATE_LIMIT,
        ),
    },
)


async def _admit(
    valid: list[_Valid],
    results: list[dict[str, Any]],
    services: Services,
    caller: ApiKey | None,
    idempotency: tuple[str, str, str] | None,
) -> RawJSON:
    """Store the valid items in one transaction (with the key), then answer ``200``."""
    await check_admitting(services)
    settings = services.settings
    now = time.time()
    owner = owner_of(caller)
    notifications: list[Notification] = []
    for position, single, sender, rendered in valid:
        n = single.to_notification(
            sender, now=now, lifetime=settings.message_lifetime, owner=owner, rendered=rendered
        )
        notifications.append(n)
        results[position]["id"] = n.id
    answer = {"items": results}
    expires_at = now + settings.idempotency_window
    record = key_record(idempotency, notifications[0].id, answer, expires_at)
    taken = await services.store.add_many(notifications, record)
    if taken is not None:
        return _replay(taken, record.request_hash if record else "")
    for priority, count in Counter(n.priority for n in notifications).items():
        services.metrics.accepted_one(priority, count)
    for _ in notifications:
        services.backpressure.accepted()
    return RawJSON(answer, 200, {}, partial(_accepted, services, notifications))


async def _accepted(services: Services, notifications: list[Notification]) -> None:
    """After the answer: acknowledge each, and wake the dispatcher."""
    for n in notifications:
        await services.on_accepted(n)


def _canonical(item: NotificationRequest | Any) -> str:
    """One item as the key's hash sees it: what a single POST hashes for a valid one; an
    invalid one as it came, in the standard library's JSON (it may hold integers beyond
    64 bits, which orjson refuses)."""
    if isinstance(item, NotificationRequest):
        return item.model_dump_json(by_alias=True)
    return json.dumps(item, sort_keys=True, separators=(",", ":"))


def _replay(record: IdempotencyRecord, digest: str) -> RawJSON:
    if record.request_hash != digest:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body; "
            "use a new key for a new batch",
        )
    return RawJSON(json.loads(record.response), 200, {"Idempotent-Replayed": "true"})
