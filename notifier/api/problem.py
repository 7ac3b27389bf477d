"""One error body everywhere: ``{"detail": "...", "code": "..."}``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from notifier.errors import StoreError
from notifier.schemas import ADDRESS_FORMS

STORE_RETRY_AFTER = "5"

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def error_response(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code, **extra}, status, headers=headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(StoreError, _store_error)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.detail, exc.headers)


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(invalid_body(exc.errors()), 422)


def invalid_body(errors: Sequence[Any]) -> dict[str, Any]:
    """The ``422 invalid_request`` body for pydantic's ``errors``, each field named."""
    issues = [
        {"loc": _location(e.get("loc", ())), "msg": _message(e), "type": e.get("type")}
        for e in errors
    ]
    detail = "; ".join(f"{e['loc']}: {e['msg']}" if e["loc"] else e["msg"] for e in issues)
    return {"detail": detail or "invalid request", "code": "invalid_request", "errors": issues}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.detail), exc.headers)


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(
        503,
        "store_unavailable",
        "the store cannot take writes right now; nothing was stored, retry later",
        {"Retry-After": STORE_RETRY_AFTER},
    )


def _location(loc: Any) -> str:
    """``body.to.0`` from pydantic's location, without its internal union tags."""
    parts = [str(p) for p in loc if isinstance(p, int) or "[" not in str(p)]
    return ".".join(p for p in parts if p not in ADDRESS_FORMS)


def _message(error: Any) -> str:
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")
