"""The SQLite store on a real file: durability, claims, leases, fencing, paging."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from notifier.domain import (
    Address,
    AttemptOutcome,
    Content,
    Notification,
    NotificationStatus,
    Recipient,
    RecipientKind,
    RecipientStatus,
    new_id,
)
from notifier.errors import StoreError, StoreLockedError
from notifier.store import SQLiteStore

NOW = 1_800_000_000.0
LEASE = 60.0


def make_notification(created_at: float = NOW, **changes: object) -> Notification:
    notification = Notification(
        id=new_id(),
        status=NotificationStatus.QUEUED,
        content=Content(
            sender=Address("notifier@example.com", "Notifier"),
            to=(Address("ada@example.com", "Ada"),),
            cc=(Address("bob@example.com"),),
            subject="Hello",
            text="Hi",
            html="<p>Hi</p>",
            headers={"X-Trace": "t-1"},
        ),
        recipients=[
            Recipient("ada@example.com", RecipientKind.TO),
            Recipient("bob@example.com", RecipientKind.CC),
        ],
        message_id="<m@example.com>",
        created_at=created_at,
        updated_at=created_at,
        expires_at=created_at + 3600,
        metadata={"order": 1, "nested": {"ok": True}},
        owner="owner-1",
    )
    return replace(notification, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "notifier.db")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_added_notification_reads_back_whole_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "notifier.db"
    original = make_notification()
    first = SQLiteStore(path)
    await first.open()
    await first.add(original)
    await first.close()

    second = SQLiteStore(path)
    await second.open()
    try:
        loaded = await second.get(original.id)
    finally:
        await second.close()

    assert loaded == original


async def test_unknown_id_reads_as_none(store: SQLiteStore) -> None:
    assert await store.get(new_id()) is None


async def test_a_second_process_cannot_open_the_same_database(
    store: SQLiteStore, tmp_path: Path
) -> None:
    intruder = SQLiteStore(tmp_path / "notifier.db")

    with pytest.raises(StoreLockedError, match="already served by another notifier process"):
        await intruder.open()


async def test_concurrent_adds_are_all_committed(store: SQLiteStore) -> None:
    notifications = [make_notification() for _ in range(200)]

    await asyncio.gather(*(store.add(n) for n in notifications))

    page = await store.page(status=None, limit=500, before_id=None)
    assert {n.id for n in page} == {n.id for n in notifications}


async def test_claim_leases_due_work_oldest_first_and_only_once(store: SQLiteStore) -> None:
    older = make_notification(created_at=NOW - 10)
    newer = make_notification(created_at=NOW - 5)
    future = make_notification(created_at=NOW + 100)
    for n in (newer, older, future):
        await store.add(n)

    first = await store.claim(owner="a", now=NOW, lease_until=NOW + LEASE, limit=10)
    second = await store.claim(owner="b", now=NOW, lease_until=NOW + LEASE, limit=10)

    assert [n.id for n in first] == [older.id, newer.id]
    assert all(n.status is NotificationStatus.SENDING for n in first)
    assert all(n.attempt_count == 1 and n.lease_owner == "a" for n in first)
    assert second == []


async def test_claim_respects_the_limit(store: SQLiteStore) -> None:
    for _ in range(5):
        await store.add(make_notification())

    claimed = await store.claim(owner="a", now=NOW, lease_until=NOW + LEASE, limit=2)

    assert len(claimed) == 2


async def test_finish_is_fenced_on_the_lease_owner_and_attempt(store: SQLiteStore) -> None:
    await store.add(make_notification())
    (claimed,) = await store.claim(owner="a", now=NOW, lease_until=NOW + LEASE, limit=1)
    claimed.status = NotificationStatus.SENT
    for r in claimed.recipients:
        r.status = RecipientStatus.SENT

    by_stranger = await store.finish_attempt(claimed, lease_owner="b")
    stale = await store.finish_attempt(replace(claimed, attempt_count=0), lease_owner="a")
    by_owner = await store.finish_attempt(claimed, lease_owner="a")

    assert (by_stranger, stale, by_owner) == (False, False, True)
    stored = await store.get(claimed.id)
    assert stored is not None
    assert stored.status is NotificationStatus.SENT
    assert stored.lease_owner is None


async def test_expired_lease_is_reclaimed_with_an_interrupted_attempt(store: SQLiteStore) -> None:
    await store.add(make_notification())
    (first,) = await store.claim(owner="a", now=NOW, lease_until=NOW + LEASE, limit=1)

    later = NOW + LEASE + 1
    (again,) = await store.claim(owner="b", now=later, lease_until=later + LEASE, limit=1)

    assert again.id == first.id
    assert again.attempt_count == 2
    assert again.lease_owner == "b"
    (interrupted,) = again.attempts
    assert interrupted.outcome == "interrupted"
    assert interrupted.number == 1
    assert interrupted.started_at == NOW
    assert await store.finish_attempt(first, lease_owner="a") is False


async def test_released_leases_are_due_at_once(store: SQLiteStore) -> None:
    await store.add(make_notification())
    await store.claim(owner="a", now=NOW, lease_until=NOW + LEASE, limit=1)

    released = await store.release_leases(now=NOW + 1)
    reclaimed = await store.claim(owner="b", now=NOW + 1, lease_until=NOW + LEASE, limit=1)

    assert released == 1
    assert len(reclaimed) == 1
    assert reclaimed[0].attempts[0].outcome == "interrupted"


async def test_a_claim_given_back_is_claimed_again_without_an_interrupted_attempt(
    store: SQLiteStore,
) -> None:
    n = make_notification()
    await store.add(n)
    await store.claim(owner="a", now=NOW, lease_until=NOW + LEASE, limit=1)

    given_back = await store.unclaim(owner="a", ids=[n.id])
    not_ours = await store.unclaim(owner="b", ids=[n.id])
    (again,) = await store.claim(owner="b", now=NOW + 1, lease_until=NOW + LEASE, limit=1)

    assert given_back == 1
    assert not_ours == 0
    assert again.id == n.id
    assert again.attempt_count == 1
    assert again.attempts == []


async def test_a_claim_given_back_keeps_its_status(store: SQLiteStore) -> None:
    queued, deferred = make_notification(), make_notification(created_at=NOW - 100)
    await store.add(queued)
    await store.add(deferred)
    (first,) = await store.claim(owner="a", now=NOW, lease_until=NOW + LEASE, limit=1)
    first.status, first.next_attempt_at = NotificationStatus.DEFERRED, NOW + 30
    await store.finish_attempt(first, lease_owner="a")
    later = NOW + 30
    claimed = await store.claim(owner="a", now=later, lease_until=later + LEASE, limit=2)

    await store.unclaim(owner="a", ids=[n.id for n in claimed])

    back_queued, back_deferred = await store.get(queued.id), await store.get(deferred.id)
    assert back_queued is not None
    assert back_deferred is not None
    assert (back_queued.status, back_queued.attempt_count) == (NotificationStatus.QUEUED, 0)
    assert (back_deferred.status, back_deferred.attempt_count) == (
        NotificationStatus.DEFERRED,
        1,
    )
    assert back_deferred.lease_owner is None


async def test_deferred_notification_is_due_at_its_next_attempt(store: SQLiteStore) -> None:
    await store.add(make_notification())
    (claimed,) = await store.claim(owner="a", now=NOW, lease_until=NOW + LEASE, limit=1)
    claimed.status = NotificationStatus.DEFERRED
    claimed.next_attempt_at = NOW + 30
    await store.finish_attempt(claimed, lease_owner="a")

    early = await store.claim(owner="a", now=NOW + 29, lease_until=NOW + 99, limit=1)
    due = await store.claim(owner="a", now=NOW + 30, lease_until=NOW + 99, limit=1)

    assert early == []
    assert [n.id for n in due] == [claimed.id]


async def test_terminal_notification_is_never_claimed_again(store: SQLiteStore) -> None:
    await store.add(make_notification())
    (claimed,) = await store.claim(owner="a", now=NOW, lease_until=NOW + LEASE, limit=1)
    claimed.status = NotificationStatus.FAILED
    await store.finish_attempt(claimed, lease_owner="a")

    later = NOW + 10 * LEASE
    assert await store.claim(owner="a", now=later, lease_until=later + LEASE, limit=1) == []


async def test_page_is_newest_first_with_status_filter_and_cursor(store: SQLiteStore) -> None:
    added = [make_notification() for _ in range(4)]
    for n in added:
        await store.add(n)

    first = await store.page(status=None, limit=2, before_id=None)
    rest = await store.page(status=None, limit=10, before_id=first[-1].id)
    sending = await store.page(status=NotificationStatus.SENDING, limit=10, before_id=None)

    assert [n.id for n in first + rest] == [n.id for n in reversed(added)]
    assert sending == []


async def test_acknowledgments_are_tracked_until_marked(store: SQLiteStore) -> None:
    n = make_notification()
    await store.add(n)
    assert [m.id for m in await store.unacknowledged(limit=10, before=NOW + 1)] == [n.id]

    await store.mark_acknowledged(accepted=[n.id], final=[])
    assert await store.unacknowledged(limit=10, before=NOW + 1) == []

    (claimed,) = await store.claim(owner="a", now=NOW, lease_until=NOW + LEASE, limit=1)
    claimed.status = NotificationStatus.SENT
    await store.finish_attempt(claimed, lease_owner="a")
    assert [m.id for m in await store.unacknowledged(limit=10, before=NOW + 1)] == [n.id]

    await store.mark_acknowledged(accepted=[], final=[n.id])
    assert await store.unacknowledged(limit=10, before=NOW + 1) == []
    stored = await store.get(n.id)
    assert stored is not None
    assert stored.acknowledged


async def test_lines_due_since_a_moment_are_not_unacknowledged_before_it(
    store: SQLiteStore,
) -> None:
    created_later = make_notification(created_at=NOW + 10)
    ended_later = make_notification()
    await store.add(created_later)
    await store.add(ended_later)
    await store.mark_acknowledged(accepted=[ended_later.id], final=[])
    (claimed,) = await store.claim(owner="a", now=NOW + 20, lease_until=NOW + LEASE, limit=1)
    assert claimed.id == ended_later.id
    claimed.status, claimed.updated_at = NotificationStatus.SENT, NOW + 20
    await store.finish_attempt(claimed, lease_owner="a")

    assert await store.unacknowledged(limit=10, before=NOW + 5) == []
    found = await store.unacknowledged(limit=10, before=NOW + 30)
    assert sorted(m.id for m in found) == sorted([created_later.id, ended_later.id])


async def test_closed_store_refuses_work(tmp_path: Path) -> None:
    closed = SQLiteStore(tmp_path / "notifier.db")

    with pytest.raises(StoreError):
        await closed.add(make_notification())


async def test_retention_purges_only_old_finished_and_acknowledged_notifications(
    store: SQLiteStore,
) -> None:
    from notifier.retention import Retention

    old_done, old_unacked, old_pending, recent_done = (make_notification() for _ in range(4))
    for n in (old_done, old_unacked, old_pending, recent_done):
        await store.add(n)
    claimed = {
        c.id: c for c in await store.claim(owner="a", now=NOW, lease_until=NOW + LEASE, limit=4)
    }
    for n, finished_at in ((old_done, NOW), (old_unacked, NOW), (recent_done, NOW + 900)):
        finished = claimed[n.id]
        finished.status = NotificationStatus.SENT
        finished.updated_at = finished_at
        await store.finish_attempt(finished, lease_owner="a")
    await store.mark_acknowledged(accepted=[], final=[old_done.id, recent_done.id])

    purged = await Retention(store, keep=600, clock=lambda: NOW + 1000).purge_once()

    assert purged == (1, 0)
    assert await store.get(old_done.id) is None
    for kept in (old_unacked, old_pending, recent_done):
        assert await store.get(kept.id) is not None


async def test_attempts_and_recipients_read_back_whole(store: SQLiteStore) -> None:
    from notifier.domain import Attempt

    await store.add(make_notification())
    (claimed,) = await store.claim(owner="a", now=NOW, lease_until=NOW + LEASE, limit=1)
    claimed.status = NotificationStatus.DEFERRED
    claimed.next_attempt_at = NOW + 60
    claimed.recipients[0].status = RecipientStatus.SENT
    claimed.recipients[0].smtp_code = 250
    claimed.recipients[0].smtp_message = "2.0.0 OK"
    claimed.attempts.append(
        Attempt(1, NOW, NOW + 1, AttemptOutcome.DEFERRED, 451, "4.3.0 later", True, True)
    )
    await store.finish_attempt(claimed, lease_owner="a")

    stored = await store.get(claimed.id)

    assert stored is not None
    assert stored.attempts == claimed.attempts
    assert stored.recipients == claimed.recipients
