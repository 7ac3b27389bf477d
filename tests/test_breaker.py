"""The relay circuit breaker as a state machine, with a hand-driven clock."""

from __future__ import annotations

from notifier.dispatch.breaker import BreakerState, RelayBreaker
from notifier.errors import TransientDeliveryError

REFUSED = TransientDeliveryError("connect: refused", relay=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock) -> RelayBreaker:
    return RelayBreaker(initial_delay=1.0, max_delay=8.0, clock=clock)


def test_closed_breaker_allows_every_free_slot() -> None:
    closed = breaker(Clock())

    assert closed.state is BreakerState.CLOSED
    assert closed.allowance(16) == 16
    assert closed.problem() is None
    assert closed.seconds_until_probe() is None


def test_relay_fault_opens_it_and_nothing_is_claimed() -> None:
    clock = Clock()
    tripped = breaker(clock)

    tripped.relay_failed(REFUSED)

    assert tripped.state is BreakerState.OPEN
    assert tripped.allowance(16) == 0
    wait = tripped.seconds_until_probe()
    assert wait is not None
    assert 1.0 <= wait <= 2.0
    problem = tripped.problem()
    assert problem is not None
    assert "connect: refused" in problem


def test_after_the_backoff_exactly_one_probe_goes_out() -> None:
    clock = Clock()
    tripped = breaker(clock)
    tripped.relay_failed(REFUSED)
    clock.now += 2.0

    assert tripped.state is BreakerState.HALF_OPEN
    assert tripped.allowance(16) == 1
    tripped.claimed(1)
    assert tripped.allowance(16) == 0


def test_probe_that_reaches_the_relay_closes_it() -> None:
    clock = Clock()
    tripped = breaker(clock)
    tripped.relay_failed(REFUSED)
    clock.now += 2.0
    tripped.claimed(1)

    tripped.relay_answered()

    assert tripped.state is BreakerState.CLOSED
    assert tripped.allowance(16) == 16
    assert tripped.problem() is None


def test_failed_probes_back_off_longer_up_to_the_maximum() -> None:
    clock = Clock()
    tripped = breaker(clock)
    waits = []
    for _ in range(6):
        tripped.relay_failed(REFUSED)
        wait = tripped.seconds_until_probe()
        assert wait is not None
        waits.append(wait)
        clock.now += wait

    assert waits[1] >= 2.0
    assert waits[2] >= 4.0
    assert max(waits) <= 8.0 + 1e-9  # the clock accumulates float sums


def test_probe_abandoned_before_reaching_the_relay_lets_another_go() -> None:
    clock = Clock()
    tripped = breaker(clock)
    tripped.relay_failed(REFUSED)
    clock.now += 2.0
    tripped.claimed(1)

    tripped.probe_abandoned()

    assert tripped.allowance(16) == 1
