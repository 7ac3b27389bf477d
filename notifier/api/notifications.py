"""``/v1/notifications``: accept, look up and list notifications."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Query
from fastapi.responses import JSONResponse

from notifier.api.auth import CallerDep
from notifier.api.problem import ApiError
from notifier.api.services import ServicesDep
from notifier.domain import Address, Notification, NotificationStatus, new_id
from notifier.message import message_id_for
from notifier.schemas import (
    ErrorBody,
    NamedAddress,
    NotificationAccepted,
    NotificationOut,
    NotificationPage,
    NotificationRequest,
    accepted_body,
    status_body,
    to_address,
)
from notifier.settings import Settings

router = APIRouter(prefix="/v1/notifications", tags=["notifications"])

ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or unknown API key."},
    422: {"model": ErrorBody, "description": "The request is invalid; nothing was stored."},
}


@router.post(
    "",
    status_code=202,
    response_model=NotificationAccepted,
    summary="Accept a notification for delivery",
    responses={
        **_ERRORS,
        403: {"model": ErrorBody, "description": "`from` is not an allowed sender."},
        413: {"model": ErrorBody, "description": "The request body is too large."},
        503: {"model": ErrorBody, "description": "The store cannot take writes; retry later."},
    },
)
async def create_notification(
    body: NotificationRequest,
    services: ServicesDep,
    caller: CallerDep,
    background: BackgroundTasks,
) -> JSONResponse:
    """Validate, commit to the store, answer ``202``; delivery happens in the background."""
    settings = services.settings
    count = len(body.to) + len(body.cc) + len(body.bcc)
    if count > settings.max_recipients:
        raise ApiError(
            422,
            "too_many_recipients",
            f"{count} recipients; at most {settings.max_recipients} per notification",
        )
    sender = _sender(body.sender, settings)
    now = time.time()
    notification_id = new_id()
    notification = Notification(
        id=notification_id,
        status=NotificationStatus.QUEUED,
        content=body.content(sender),
        recipients=body.recipients(),
        message_id=message_id_for(notification_id, sender.address),
        created_at=now,
        updated_at=now,
        expires_at=now + settings.message_lifetime,
        metadata=body.metadata,
        owner=caller,
    )
    await services.store.add(notification)
    background.add_task(services.on_accepted, notification)
    location = f"{router.prefix}/{notification_id}"
    return JSONResponse(accepted_body(notification, location), 202, headers={"Location": location})


@router.get(
    "/{notification_id}",
    response_model=NotificationOut,
    summary="Delivery status of one notification",
    responses={**_ERRORS, 404: {"model": ErrorBody, "description": "No such notification."}},
)
async def get_notification(
    notification_id: str, services: ServicesDep, caller: CallerDep
) -> JSONResponse:
    """State, per-recipient results, every attempt, and whether it was acknowledged."""
    notification = await services.store.get(notification_id)
    if notification is None:
        raise ApiError(404, "not_found", f"no notification {notification_id}")
    return JSONResponse(status_body(notification))


@router.get(
    "",
    response_model=NotificationPage,
    summary="List notifications, newest first",
    responses=_ERRORS,
)
async def list_notifications(
    services: ServicesDep,
    caller: CallerDep,
    status: NotificationStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(pattern=ID_PATTERN, description="`next_cursor` of the previous page")
    ] = None,
) -> JSONResponse:
    """Page through notifications; follow ``next_cursor`` until it is ``null``."""
    found = await services.store.page(status=status, limit=limit + 1, before_id=cursor)
    items = found[:limit]
    next_cursor = items[-1].id if len(found) > limit else None
    return JSONResponse({"items": [status_body(n) for n in items], "next_cursor": next_cursor})


def _sender(requested: str | NamedAddress | None, settings: Settings) -> Address:
    """The From address: the default, or one the settings allow (``403`` otherwise)."""
    if requested is None:
        return Address(settings.sender)
    address = to_address(requested)
    wanted = address.address.lower()
    domain = wanted.rpartition("@")[2]
    allowed = {settings.sender.lower(), *(s.lower() for s in settings.allowed_senders)}
    if wanted in allowed or domain in allowed or f"@{domain}" in allowed:
        return address
    raise ApiError(
        403,
        "sender_not_allowed",
        f"{address.address} is not an allowed sender (see NOTIFIER_ALLOWED_SENDERS)",
    )
