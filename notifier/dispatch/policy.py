"""The retry policy as data, and the backoff it implies.

tenacity's ``wait_exponential_jitter`` computes each delay; the dispatcher persists
the result as ``next_attempt_at`` so the schedule survives restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tenacity import wait_exponential_jitter

from notifier.dispatch.backoff import delay, exponential
from notifier.settings import Settings


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    initial_delay: float
    max_delay: float
    _wait: wait_exponential_jitter = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_wait", exponential(self.initial_delay, self.max_delay))

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.retry_max_attempts,
            initial_delay=settings.retry_initial_delay,
            max_delay=settings.retry_max_delay,
        )

    def delay_after(self, attempt_number: int) -> float:
        """Seconds to wait after failed attempt ``attempt_number`` (1-based)."""
        return delay(self._wait, attempt_number)
