"""Rate limits: a token bucket per API key for requests, and one for recipients.

Checked before anything is stored. Every ``/v1`` response carries
``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset``; a refusal is
``429`` with ``Retry-After``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from notifier.api.problem import ApiError
from notifier.keys import ApiKey
from notifier.settings import Settings

#: Where `authenticate_and_charge` leaves the caller's headers for :class:`RateLimitHeaders`.
STATE_KEY = "rate_limit_headers"

MINUTE = 60.0
#: The headers' names as they go on the wire, encoded once.
_WIRE_NAMES = {
    name: name.lower().encode()
    for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
}


@dataclass(slots=True)
class TokenBucket:
    """``capacity`` tokens, refilled evenly over a minute."""

    capacity: int
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.capacity)
        self.updated = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    @property
    def rate(self) -> float:
        return self.capacity / MINUTE

    def take(self, count: int) -> float:
        """Take ``count`` tokens; returns 0, or the seconds until they would be there."""
        self._refill()
        if count <= self.tokens:
            self.tokens -= count
            return 0.0
        return (count - self.tokens) / self.rate

    def headers(self) -> dict[str, str]:
        self._refill()
        reset = math.ceil((self.capacity - self.tokens) / self.rate)
        return {
            "RateLimit-Limit": str(self.capacity),
            "RateLimit-Remaining": str(math.floor(self.tokens)),
            "RateLimit-Reset": str(reset),
        }


class RateLimiter:
    """Buckets per caller (the anonymous caller shares one), created on first use."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self._requests_default = settings.rate_limit_requests_per_minute
        self._recipients_default = settings.rate_limit_recipients_per_minute
        self._clock = clock
        self._buckets: dict[str, tuple[TokenBucket, TokenBucket]] = {}

    def _for(self, caller: ApiKey | None) -> tuple[TokenBucket, TokenBucket]:
        owner = caller.owner if caller else ""
        if owner not in self._buckets:
            requests = (caller and caller.requests_per_minute) or self._requests_default
            recipients = (caller and caller.recipients_per_minute) or self._recipients_default
            self._buckets[owner] = (
                TokenBucket(requests, self._clock),
                TokenBucket(recipients, self._clock),
            )
        return self._buckets[owner]

    def request(self, caller: ApiKey | None) -> dict[str, str]:
        """Count one request; returns the headers to send, or raises ``429``."""
        requests, _ = self._for(caller)
        wait = requests.take(1)
        headers = requests.headers()
        if wait:
            raise _too_many("requests", wait, headers)
        return headers

    def recipients(self, caller: ApiKey | None, count: int) -> None:
        """Count the recipients of one notification, or raise ``429``."""
        requests, recipients = self._for(caller)
        if count > recipients.capacity:
            raise ApiError(
                422,
                "too_many_recipients",
                f"{count} recipients exceed this key's limit of {recipients.capacity} a minute",
            )
        wait = recipients.take(count)
        if wait:
            raise _too_many("recipients", wait, requests.headers())


def _too_many(what: str, wait: float, headers: dict[str, str]) -> ApiError:
    retry_after = str(max(1, math.ceil(wait)))
    return ApiError(
        429,
        "rate_limited",
        f"too many {what} for this API key; retry after {retry_after} s",
        {**headers, "Retry-After": retry_after},
    )


class RateLimitHeaders:
    """Adds the caller's ``RateLimit-*`` headers to every response, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            state = scope.get("state") or {}
            headers = state.get(STATE_KEY)
            if message["type"] == "http.response.start" and headers:
                existing = message.get("headers", [])
                # ASGI header names are lower case; a refusal may carry these already.
                present = {name for name, _ in existing if name.startswith(b"ratelimit-")}
                extra = [
                    (wire, value.encode())
                    for key, value in headers.items()
                    if (wire := _WIRE_NAMES.get(key) or key.lower().encode()) not in present
                ]
                message["headers"] = [*existing, *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
