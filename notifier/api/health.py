"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from notifier.api.services import ServicesDep
from notifier.errors import StoreError

router = APIRouter(tags=["health"])

READY_TIMEOUT = 2.0


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    """No I/O at all, so it answers however busy delivery is."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the store answers")
async def readyz(services: ServicesDep) -> JSONResponse:
    try:
        await asyncio.wait_for(services.store.ping(), READY_TIMEOUT)
    except (StoreError, TimeoutError) as exc:
        body = {"status": "unavailable", "checks": {"store": f"failing: {exc or 'timeout'}"}}
        return JSONResponse(body, 503)
    return JSONResponse({"status": "ready", "checks": {"store": "ok"}})
