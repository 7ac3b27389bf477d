"""The retry policy: bounded, jittered, exponential backoff built from settings."""

from __future__ import annotations

from statistics import median

import pytest

from notifier.dispatch.policy import RetryPolicy
from notifier.settings import Settings

SAMPLES = 500
POLICY = RetryPolicy(max_attempts=10, initial_delay=30.0, max_delay=3600.0)


def delays(policy: RetryPolicy, attempt_number: int) -> list[float]:
    return [policy.delay_after(attempt_number) for _ in range(SAMPLES)]


@pytest.mark.parametrize("attempt_number", [0, 1, 2, 3, 5, 8, 12, 30, 100, 10_000])
def test_delay_is_never_below_the_initial_delay(attempt_number: int) -> None:
    assert min(delays(POLICY, attempt_number)) >= POLICY.initial_delay


@pytest.mark.parametrize("attempt_number", [1, 2, 3, 5, 8, 12, 30, 100, 10_000])
def test_delay_is_never_above_the_maximum_delay(attempt_number: int) -> None:
    assert max(delays(POLICY, attempt_number)) <= POLICY.max_delay


def test_delay_reaches_the_maximum_once_the_backoff_outgrows_it() -> None:
    assert set(delays(POLICY, 30)) == {POLICY.max_delay}


def test_delays_grow_roughly_exponentially() -> None:
    policy = RetryPolicy(max_attempts=10, initial_delay=1.0, max_delay=1_000_000.0)
    samples = {n: delays(policy, n) for n in range(1, 9)}

    for n in range(1, 8):
        assert min(samples[n + 1]) >= 1.9 * min(samples[n])
        assert 1.5 * median(samples[n]) < median(samples[n + 1]) < 2.5 * median(samples[n])


def test_delays_are_jittered() -> None:
    assert len(set(delays(POLICY, 2))) > SAMPLES // 2


def test_from_settings_maps_the_retry_settings() -> None:
    settings = Settings(
        retry_max_attempts=7,
        retry_initial_delay=2.5,
        retry_max_delay=90.0,
        smtp_local_hostname="notifier.test",
    )

    policy = RetryPolicy.from_settings(settings)

    assert policy == RetryPolicy(max_attempts=7, initial_delay=2.5, max_delay=90.0)
    assert (policy.max_attempts, policy.initial_delay, policy.max_delay) == (7, 2.5, 90.0)
    assert 2.5 <= policy.delay_after(1) <= 90.0
