"""Who is calling: bearer API keys, compared as digests in constant time, then rate-limited."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase

from notifier.api.problem import ApiError
from notifier.api.ratelimit import STATE_KEY
from notifier.api.services import Services, services_of
from notifier.keys import ApiKey

CHALLENGE = {"WWW-Authenticate": "Bearer"}
#: The security scheme's name in OpenAPI (``components.securitySchemes``).
SCHEME_NAME = "bearer"


def authenticate_and_charge(request: Request) -> ApiKey | None:
    """The caller's key (``None`` when authentication is off), after one rate-limit token.

    ``401`` for a missing or unknown key, ``429`` when the key's request bucket is empty;
    the ``RateLimit-*`` headers it leaves are sent with the answer, errors included.
    """
    services = services_of(request)
    caller = _identify(request, services)
    headers = services.rate_limiter.request(caller)
    request.scope.setdefault("state", {})[STATE_KEY] = headers
    return caller


class AuthenticateAndCharge(SecurityBase):
    """:func:`authenticate_and_charge` as a dependency, documented as the bearer scheme.

    Being a ``SecurityBase`` is what puts the scheme in OpenAPI; FastAPI does nothing
    else with it, so the check is the same function whichever way a route binds it.
    ``async`` although it never awaits: FastAPI runs plain ``def`` dependencies in its
    thread pool, a hand-off that costs more than the check itself.
    """

    def __init__(self) -> None:
        self.model = HTTPBearerModel(
            description="An API key from `NOTIFIER_API_KEYS` or `NOTIFIER_API_KEYS_FILE`. "
            "Not checked while authentication is disabled."
        )
        self.scheme_name = SCHEME_NAME

    async def __call__(self, request: Request) -> ApiKey | None:
        return authenticate_and_charge(request)


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


CallerDep = Annotated[ApiKey | None, Depends(AuthenticateAndCharge())]
