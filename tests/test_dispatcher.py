"""The dispatcher against a real store and relay, with the store's failures and shutdown
arriving at chosen moments (a store subclass holds or fails a call)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from notifier.dispatch.ack import AckWriter
from notifier.dispatch.breaker import RelayBreaker
from notifier.dispatch.dispatcher import Dispatcher, OldestShare
from notifier.dispatch.policy import RetryPolicy
from notifier.dispatch.smtp import RelayConfig, SMTPTransport
from notifier.domain import Notification, NotificationStatus
from notifier.errors import StoreError
from notifier.metrics import Metrics
from notifier.settings import Settings
from notifier.store import SQLiteStore
from tests.conftest import DEADLINE_SECONDS
from tests.smtp_server import ScriptedHandler
from tests.test_store import make_notification

DISK_FULL = StoreError("database commit failed: database or disk is full")


class HeldClaims(SQLiteStore):
    """Claims commit, then wait at a gate before their caller hears of them."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.committed = asyncio.Event()
        self.gate = asyncio.Event()

    async def claim(self, **kwargs: Any) -> list[Notification]:
        claimed = await super().claim(**kwargs)
        if claimed:
            self.committed.set()
            await self.gate.wait()
        return claimed


class FullDisk(SQLiteStore):
    """Refuses the first ``refusals`` outcome writes as a full disk does."""

    def __init__(self, path: Path, refusals: int) -> None:
        super().__init__(path)
        self.refusals = refusals
        self.refused = 0

    async def finish_attempt(self, notification: Notification, *, lease_owner: str) -> bool:
        if self.refused < self.refusals:
            self.refused += 1
            raise DISK_FULL
        return await super().finish_attempt(notification, lease_owner=lease_owner)


def dispatcher(store: SQLiteStore, settings: Settings, **overrides: Any) -> Dispatcher:
    options: dict[str, Any] = {
        "concurrency": 2,
        "lease_seconds": 60.0,
        "poll_interval": 0.02,
    }
    options.update(overrides)
    return Dispatcher(
        store,
        SMTPTransport(RelayConfig.from_settings(settings)),
        AckWriter(settings.ack_file, store, clock=time.time),
        RetryPolicy.from_settings(settings),
        RelayBreaker(initial_delay=0.01, max_delay=0.05, clock=time.time),
        Metrics(),
        **options,
    )


async def wait_for_status(
    store: SQLiteStore, notification_id: str, status: NotificationStatus
) -> Notification:
    give_up = time.monotonic() + DEADLINE_SECONDS
    while True:
        found = await store.get(notification_id)
        assert found is not None
        if found.status is status:
            return found
        assert time.monotonic() < give_up, f"still {found.status} with {found.attempts}"
        await asyncio.sleep(0.01)


@pytest.fixture
async def held(settings: Settings) -> AsyncIterator[HeldClaims]:
    store = HeldClaims(settings.sqlite_path)
    await store.open()
    yield store
    await store.close()


async def test_a_claim_committed_as_shutdown_begins_is_given_back_not_abandoned(
    held: HeldClaims, settings: Settings, smtp_handler: ScriptedHandler
) -> None:
    added = [make_notification(created_at=time.time()) for _ in range(3)]
    for n in added:
        await held.add(n)
    running = dispatcher(held, settings)
    await running.start()
    await asyncio.wait_for(held.committed.wait(), DEADLINE_SECONDS)

    running.stop_claiming()
    held.gate.set()
    await running.stop(grace=1.0)

    for n in added:
        stored = await held.get(n.id)
        assert stored is not None
        assert (stored.status, stored.attempt_count, stored.lease_owner) == (
            NotificationStatus.QUEUED,
            0,
            None,
        )
    assert smtp_handler.received == []


async def test_an_outcome_the_store_refused_is_written_once_it_takes_writes(
    settings: Settings, smtp_handler: ScriptedHandler
) -> None:
    store = FullDisk(settings.sqlite_path, refusals=3)
    await store.open()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(0)

    n = make_notification(created_at=time.time())
    await store.add(n)
    running = dispatcher(store, settings, sleep=sleep)
    await running.start()
    try:
        sent = await wait_for_status(store, n.id, NotificationStatus.SENT)
    finally:
        await running.stop(grace=1.0)
        await store.close()

    assert store.refused == 3
    assert len(slept) == 3
    assert [a.outcome for a in sent.attempts] == ["sent"]
    assert len(smtp_handler.received) == 1


def test_one_claimed_place_in_eight_goes_to_the_longest_due() -> None:
    share = OldestShare(8)

    singles = sum(share.of(1) for _ in range(80))
    batches = [OldestShare(8).of(16) for _ in range(3)]
    mixed = OldestShare(8)
    mixed_total = sum(mixed.of(n) for n in [1, 3, 16, 2, 2, 7, 1] * 8)

    assert singles == 10
    assert batches == [2, 2, 2]
    assert mixed_total == sum([1, 3, 16, 2, 2, 7, 1] * 8) // 8
