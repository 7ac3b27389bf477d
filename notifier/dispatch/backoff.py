"""Exponential backoff with jitter: tenacity's, the one formula every retry here follows.

Deliveries and the relay breaker persist or schedule the delay themselves, so they ask
:func:`delay` for the n-th wait; local writes (acknowledgment lines, attempt outcomes)
let tenacity run the whole loop through :func:`retried`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, wait_exponential_jitter

T = TypeVar("T")


def exponential(initial: float, maximum: float) -> wait_exponential_jitter:
    """``initial * 2**(n-1)`` plus up to ``initial`` of jitter, never below ``initial``,
    capped at ``maximum``."""
    return wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial, min=initial)


def delay(wait: wait_exponential_jitter, attempt_number: int) -> float:
    """The seconds ``wait`` waits after failed attempt ``attempt_number`` (1-based)."""
    state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt_number
    return float(wait(state))


async def retried(step: Callable[[], Awaitable[T]], retrying: Callable[[], AsyncRetrying]) -> T:
    """``step()``, and only if it fails, tenacity's retries from that first failure on.

    Setting tenacity up costs more than the write it guards (``benchmarks/LEVERS.md``),
    so the first try goes without it. On a failure, tenacity's first attempt raises that same
    failure again instead of calling ``step``: its schedule, ``before_sleep`` and
    attempt numbers are then exactly those of tenacity running every try.
    """
    try:
        return await step()
    except Exception as exc:  # noqa: BLE001 - tenacity's own predicate decides what is retried
        first_failure: list[BaseException] = [exc]

    async def again() -> T:
        if first_failure:
            raise first_failure.pop()
        return await step()

    return await retrying()(again)
