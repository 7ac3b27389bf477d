"""What routes may use, handed over by the app's lifespan as request state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from notifier.domain import Notification
from notifier.settings import Settings
from notifier.store import Store


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: Store
    #: Run after a 202 has been sent: queue the acknowledgment, wake the dispatcher.
    on_accepted: Callable[[Notification], Awaitable[None]]


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
