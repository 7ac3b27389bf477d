"""What the OpenAPI description says about answers: their bodies and the headers they carry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from notifier.schemas import ErrorBody

Headers = Mapping[str, dict[str, Any]]

_SECONDS = {"type": "integer", "minimum": 0}

LOCATION: Headers = {
    "Location": {
        "description": "The notification's status document: `/v1/notifications/{id}`.",
        "schema": {"type": "string"},
    }
}
RETRY_AFTER: Headers = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
#: On every ``/v1`` answer given after the API key was checked, errors included.
RATE_LIMIT: Headers = {
    "RateLimit-Limit": {
        "description": "Requests a minute this API key may make.",
        "schema": {"type": "integer", "minimum": 1},
    },
    "RateLimit-Remaining": {
        "description": "Requests this API key may make now.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RateLimit-Reset": {
        "description": "Seconds until this API key's requests are all available again.",
        "schema": _SECONDS,
    },
}
IDEMPOTENT_REPLAYED: Headers = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the original answer to an earlier request with "
        "the same `Idempotency-Key`; nothing new was stored. Absent otherwise.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
WWW_AUTHENTICATE: Headers = {
    "WWW-Authenticate": {"description": "`Bearer`.", "schema": {"type": "string"}}
}


def documented(
    description: str, *headers: Headers, model: type[BaseModel] | None = ErrorBody
) -> dict[str, Any]:
    """One entry of a route's ``responses``: its body (an error by default) and headers.

    ``model=None`` leaves the body to the route's ``response_model``.
    """
    entry: dict[str, Any] = {"description": description}
    if model is not None:
        entry["model"] = model
    if headers:
        entry["headers"] = {name: spec for group in headers for name, spec in group.items()}
    return entry
