"""What routes may use, handed over by the app's lifespan as request state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from notifier.api.backpressure import Backpressure
from notifier.api.idempotency import IdempotencyGuard
from notifier.api.ratelimit import RateLimiter
from notifier.domain import Notification
from notifier.keys import KeyRing
from notifier.metrics import Metrics
from notifier.settings import Settings
from notifier.store import Store
from notifier.templates import Templates


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: Store
    #: Run after a 202 has been sent: queue the acknowledgment, wake the dispatcher.
    on_accepted: Callable[[Notification], Awaitable[None]]
    #: Run after a cancel or manual retry: acknowledge or wake as needed.
    on_changed: Callable[[Notification], Awaitable[None]]
    #: Whether new notifications are taken (false while shutting down).
    accepting: Callable[[], bool]
    #: The relay circuit breaker's complaint, or ``None`` while it is closed (no I/O).
    relay_problem: Callable[[], str | None]
    #: What is wrong with the relay, probing it at most once an interval; the argument
    #: bounds the wait for a probe in progress.
    relay_check: Callable[[float], Awaitable[str | None]]
    #: Background parts that died (a bug), by name, and why: only a restart revives them.
    failed_parts: Callable[[], dict[str, str]]
    backpressure: Backpressure
    idempotency: IdempotencyGuard
    keys: KeyRing
    rate_limiter: RateLimiter
    metrics: Metrics
    templates: Templates


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    """``async`` so that FastAPI calls it inline, not through its thread pool."""
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]
