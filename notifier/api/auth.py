"""Who is calling: bearer API keys, compared as digests in constant time, then rate-limited."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from notifier.api.problem import ApiError
from notifier.api.ratelimit import STATE_KEY
from notifier.api.services import Services, services_of
from notifier.keys import ApiKey

CHALLENGE = {"WWW-Authenticate": "Bearer"}


def caller_of(request: Request) -> ApiKey | None:
    """The caller's key (``None`` when authentication is off), after one rate-limit token."""
    services = services_of(request)
    caller = _identify(request, services)
    headers = services.rate_limiter.request(caller)
    request.scope.setdefault("state", {})[STATE_KEY] = headers
    return caller


async def authenticate(request: Request) -> ApiKey | None:
    """:func:`caller_of` as a dependency.

    ``async`` although it never awaits: FastAPI runs plain ``def`` dependencies in
    its thread pool, a hand-off that costs more than the check itself.
    """
    return caller_of(request)


def _identify(request: Request, services: Services) -> ApiKey | None:
    if not services.settings.auth_required:
        return None
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise ApiError(401, "unauthorized", "send `Authorization: Bearer <API key>`", CHALLENGE)
    key = services.keys.match(presented.strip())
    if key is None:
        raise ApiError(401, "unauthorized", "unknown API key", CHALLENGE)
    return key


def owner_of(caller: ApiKey | None) -> str | None:
    """What a caller's notifications are stored under; ``None`` sees everything."""
    return caller.owner if caller else None


CallerDep = Annotated[ApiKey | None, Depends(authenticate)]
