"""Bearer API keys, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request

from notifier.api.problem import ApiError
from notifier.api.services import ServicesDep

CHALLENGE = {"WWW-Authenticate": "Bearer"}


def key_fingerprint(key: str) -> str:
    """Who a key is, without keeping the key: stored as a notification's owner."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def authenticate(request: Request, services: ServicesDep) -> str | None:
    """The caller's key fingerprint, or ``None`` when authentication is off."""
    settings = services.settings
    if not settings.auth_required:
        return None
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise ApiError(401, "unauthorized", "send `Authorization: Bearer <API key>`", CHALLENGE)
    matched = False
    for key in settings.api_keys:
        matched |= hmac.compare_digest(presented.encode(), key.get_secret_value().encode())
    if not matched:
        raise ApiError(401, "unauthorized", "unknown API key", CHALLENGE)
    return key_fingerprint(presented)


CallerDep = Annotated[str | None, Depends(authenticate)]
