"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
from contextlib import suppress

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from notifier.api.services import ServicesDep
from notifier.errors import StoreError
from notifier.schemas import ReadinessBody

router = APIRouter(tags=["health"])

READY_TIMEOUT = 2.0


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    """No I/O at all, so it answers however busy delivery is."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the store takes writes and the relay answers",
    response_model=ReadinessBody,
    responses={503: {"model": ReadinessBody, "description": "Not ready; `checks` says why."}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    """``503`` with an explanation per check when something is wrong."""
    checks = {"store": await _store_check(services), "relay": await _relay_check(services)}
    if not services.accepting():
        checks["shutdown"] = "shutting down: not taking new notifications"
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    return JSONResponse(body, 200 if ready else 503)


async def _store_check(services: ServicesDep) -> str:
    """Reads answer, and writes commit: after a failed write, one small write must
    succeed again before this is ``ok``, so readiness agrees with what a POST would get."""
    store = services.store
    try:
        await asyncio.wait_for(store.ping(), READY_TIMEOUT)
    except TimeoutError:
        return f"failing: no answer within {READY_TIMEOUT} s"
    except StoreError as exc:
        return f"failing: {exc}"
    if store.write_failure() is not None:
        with suppress(TimeoutError, StoreError):  # the reason is the failure itself
            await asyncio.wait_for(store.check_writable(), READY_TIMEOUT)
    failure = store.write_failure()
    return "ok" if failure is None else f"failing: cannot commit: {failure}"


async def _relay_check(services: ServicesDep) -> str:
    try:
        problem = await asyncio.wait_for(services.relay_check(), READY_TIMEOUT)
    except TimeoutError:
        return f"failing: no answer within {READY_TIMEOUT} s"
    return "ok" if problem is None else f"failing: {problem}"
