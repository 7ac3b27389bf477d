"""JSON request bodies, parsed and validated as FastAPI does, for routes that bind by hand.

The errors are FastAPI's own (``RequestValidationError`` with ``body`` locations,
``400`` for bodies that cannot be decoded at all), so clients see one behaviour
whichever way a route binds its arguments.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.types import Receive

from notifier.api.problem import ApiError

Model = TypeVar("Model", bound=BaseModel)


def require_json(request: Request) -> None:
    """``415`` unless the body is declared JSON (``application/json`` or ``+json``)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "send the notification as `application/json`")


async def read_body(receive: Receive) -> bytes:
    """The whole request body, straight from ASGI (no ``Request`` stream around it)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def parse_json(raw: bytes, model: type[Model], context: dict[str, Any] | None = None) -> Model:
    """The body as ``model``; ``422`` when it is missing, malformed or invalid, ``400`` when
    it cannot be decoded (not UTF-8, nested too deep).

    Valid UTF-8 JSON is parsed and validated in one pass by pydantic. Anything that
    pass refuses goes the way FastAPI goes (``json.loads``, then validation), which
    accepts the same documents plus UTF-16 and UTF-32, and words the errors. ``context``
    is pydantic's validation context, for validators that depend on the settings.
    """
    if raw:
        try:
            return model.model_validate_json(raw, context=context)
        except ValidationError:
            pass
    if not raw:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing])
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        invalid = {
            "type": "json_invalid",
            "loc": ("body", exc.pos),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": exc.msg},
        }
        raise RequestValidationError([invalid]) from exc
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "bad_request", "There was an error parsing the body") from exc
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from exc
