"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
from contextlib import suppress

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from notifier.api.services import ServicesDep
from notifier.errors import StoreError
from notifier.schemas import LivenessBody, ReadinessBody

router = APIRouter(tags=["health"])

READY_TIMEOUT = 2.0


@router.get(
    "/healthz",
    summary="Liveness: the process and its background parts are alive",
    operation_id="get_liveness",
    response_model=LivenessBody,
    responses={503: {"model": LivenessBody, "description": "A part died; restart the process."}},
)
async def healthz(services: ServicesDep) -> JSONResponse:
    """No I/O at all, so it answers however busy delivery is.

    ``503`` when the dispatcher or the acknowledgment writer has died: nothing in the
    process restarts them, so the orchestrator should restart the process.
    """
    failed = services.failed_parts()
    if not failed:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "failing", "checks": failed}, 503)


@router.get(
    "/readyz",
    summary="Readiness: this replica should receive traffic",
    operation_id="get_readiness",
    response_model=ReadinessBody,
    responses={503: {"model": ReadinessBody, "description": "Not ready; `checks` says why."}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    """``503`` when the store cannot take notifications, the process is shutting down, or
    delivery has died; ``checks`` explains each.

    The relay is reported in ``checks.relay`` but never makes this fail: accepting while
    the relay is down is what a durable queue is for. Alert on the relay through
    ``/metrics`` (``notifier_relay_circuit_open``, ``notifier_oldest_due_age_seconds``).
    """
    failed = services.failed_parts()
    checks = {
        "store": await _store_check(services),
        "dispatcher": failed.get("dispatcher", "ok"),
    }
    if not services.accepting():
        checks["shutdown"] = "shutting down: not taking new notifications"
    ready = all(value == "ok" for value in checks.values())
    checks["relay"] = await _relay_check(services)
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
    problem = await services.relay_check(READY_TIMEOUT)
    return "ok" if problem is None else f"failing: {problem}"
