"""The store contract: every backend, on a real database, passes the same tests.

Claims, leases and due times run on the store's clock (the caller's for SQLite, the
database's for PostgreSQL), so these tests use real time: a lease that must run out is
short, and the test polls until it has.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest

from notifier.domain import (
    Address,
    Attachment,
    Attempt,
    AttemptOutcome,
    Content,
    IdempotencyRecord,
    Notification,
    NotificationStatus,
    Priority,
    Recipient,
    RecipientKind,
    RecipientStatus,
    new_id,
)
from notifier.errors import StoreError, StoreLockedError
from notifier.retention import Retention
from notifier.store import PageFilter, SQLiteStore, Store
from notifier.store.postgres import PostgresStore
from tests.conftest import DEADLINE_SECONDS

#: A fixed moment for the times a store only records (``created_at``, ``updated_at``).
NOW = 1_800_000_000.0
#: A lease no test waits out.
LEASE = 60.0
#: A lease or delay a test does wait out.
SHORT = 0.3

T = TypeVar("T")


def make_notification(created_at: float | None = None, **changes: object) -> Notification:
    """A new notification, created now unless told otherwise (SQLite makes it due then)."""
    if created_at is None:
        created_at = time.time()
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


#: An unopened store on a fresh database of the test's, by backend.
Opener = Callable[[], Store]


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "sqlite":
        return lambda: SQLiteStore(tmp_path / "notifier.db")
    url: str = request.getfixturevalue("postgres_url")
    return lambda: PostgresStore(url)


@pytest.fixture
async def store(opener: Opener) -> AsyncIterator[Store]:
    opened = opener()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def claim(
    store: Store, owner: str = "a", limit: int = 10, lease: float = LEASE
) -> list[Notification]:
    now = time.time()
    return await store.claim(owner=owner, now=now, lease_until=now + lease, limit=limit)


async def eventually(step: Callable[[], Awaitable[list[T]]]) -> list[T]:
    """``step()`` again until it finds something, within the suite's deadline."""
    give_up = time.monotonic() + DEADLINE_SECONDS
    while not (found := await step()):
        assert time.monotonic() < give_up, "nothing came due"
        await asyncio.sleep(0.02)
    return found


async def finish(
    store: Store, n: Notification, status: NotificationStatus, delay: float | None = None
) -> None:
    """Record an attempt's outcome, due again after ``delay`` seconds if not final."""
    n.status = status
    n.updated_at = time.time()
    n.next_attempt_at = None if delay is None else n.updated_at + delay
    assert await store.finish_attempt(n, lease_owner=n.lease_owner or "a")


async def test_added_notification_reads_back_whole_after_reopening(opener: Opener) -> None:
    original = make_notification()
    first = opener()
    await first.open()
    await first.add(original)
    await first.close()

    second = opener()
    await second.open()
    try:
        loaded = await second.get(original.id)
    finally:
        await second.close()

    assert loaded == original


async def test_unknown_id_reads_as_none(store: Store) -> None:
    assert await store.get(new_id()) is None


async def test_a_second_process_cannot_open_the_same_sqlite_database(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "notifier.db")
    await first.open()
    try:
        intruder = SQLiteStore(tmp_path / "notifier.db")
        with pytest.raises(StoreLockedError, match="already served by another notifier process"):
            await intruder.open()
    finally:
        await first.close()


async def test_concurrent_adds_are_all_committed(store: Store) -> None:
    notifications = [make_notification() for _ in range(200)]

    await asyncio.gather(*(store.add(n) for n in notifications))

    page = await store.page(limit=500, before_id=None)
    assert {n.id for n in page} == {n.id for n in notifications}
    assert await store.count_pending() == 200


async def test_claim_leases_due_work_in_the_order_it_came_due_and_only_once(store: Store) -> None:
    first_added, second_added = make_notification(), make_notification()
    await store.add(first_added)
    await store.add(second_added)

    first = await claim(store, "a")
    second = await claim(store, "b")

    assert [n.id for n in first] == [first_added.id, second_added.id]
    assert all(n.status is NotificationStatus.SENDING for n in first)
    assert all(n.attempt_count == 1 and n.lease_owner == "a" for n in first)
    assert second == []


async def test_concurrent_claims_never_take_the_same_notification(store: Store) -> None:
    await asyncio.gather(*(store.add(make_notification()) for _ in range(60)))

    claims = await asyncio.gather(*(claim(store, f"owner-{i}", limit=7) for i in range(12)))

    ids = [n.id for claimed in claims for n in claimed]
    assert len(ids) == len(set(ids)) == 60
    assert all(len(claimed) <= 7 for claimed in claims)


async def test_claim_respects_the_limit(store: Store) -> None:
    for _ in range(5):
        await store.add(make_notification())

    assert len(await claim(store, limit=2)) == 2


async def test_finish_is_fenced_on_the_lease_owner_and_attempt(store: Store) -> None:
    await store.add(make_notification())
    (claimed,) = await claim(store, "a")
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
    assert await store.count_pending() == 0


async def test_outcomes_written_together_are_each_fenced_on_their_own(store: Store) -> None:
    # All at once, so that a store batching outcomes puts them in one statement: the
    # stale and foreign outcomes of one notification beside the current one, and the
    # outcomes of two others.
    for _ in range(3):
        await store.add(make_notification())
    first, second, third = await claim(store, "a", limit=3)
    for n in (first, second, third):
        n.status = NotificationStatus.SENT
        for r in n.recipients:
            r.status = RecipientStatus.SENT

    results = await asyncio.gather(
        store.finish_attempt(first, lease_owner="b"),
        store.finish_attempt(replace(first, attempt_count=0), lease_owner="a"),
        store.finish_attempt(first, lease_owner="a"),
        store.finish_attempt(second, lease_owner="a"),
        store.finish_attempt(replace(third, attempt_count=5), lease_owner="a"),
    )

    assert list(results) == [False, False, True, True, False]
    stored = [await store.get(n.id) for n in (first, second, third)]
    assert [n.status if n else None for n in stored] == [
        NotificationStatus.SENT,
        NotificationStatus.SENT,
        NotificationStatus.SENDING,
    ]


async def test_expired_lease_is_reclaimed_with_an_interrupted_attempt(store: Store) -> None:
    await store.add(make_notification())
    (first,) = await claim(store, "a", lease=SHORT)

    (again,) = await eventually(lambda: claim(store, "b"))

    assert again.id == first.id
    assert again.attempt_count == 2
    assert again.lease_owner == "b"
    (interrupted,) = again.attempts
    assert interrupted.outcome is AttemptOutcome.INTERRUPTED
    assert interrupted.possible_duplicate
    assert interrupted.number == 1
    assert interrupted.started_at == pytest.approx(first.lease_started_at, abs=1e-3)
    assert await store.finish_attempt(first, lease_owner="a") is False


async def test_extended_leases_do_not_run_out(store: Store) -> None:
    await store.add(make_notification())
    (first,) = await claim(store, "a", lease=SHORT)

    await store.extend_leases(owner="a", ids=[first.id], until=time.time() + LEASE)
    await asyncio.sleep(2 * SHORT)  # the first lease's end, passed

    assert await claim(store, "b") == []


async def test_released_leases_are_due_at_once(store: Store) -> None:
    await store.add(make_notification())
    await claim(store, "a")

    released = await store.release_leases(now=time.time())
    reclaimed = await claim(store, "b")

    assert released == 1
    assert len(reclaimed) == 1
    assert reclaimed[0].attempts[0].outcome is AttemptOutcome.INTERRUPTED


async def test_only_the_named_owners_leases_are_released(store: Store) -> None:
    await store.add(make_notification())
    await store.add(make_notification())
    await claim(store, "a", limit=1)
    await claim(store, "b", limit=1)

    released = await store.release_leases(now=time.time(), owner="a")
    reclaimed = await claim(store, "c")

    assert released == 1
    assert len(reclaimed) == 1


async def test_a_claim_given_back_is_claimed_again_without_an_interrupted_attempt(
    store: Store,
) -> None:
    n = make_notification()
    await store.add(n)
    await claim(store, "a")

    given_back = await store.unclaim(owner="a", ids=[n.id])
    not_ours = await store.unclaim(owner="b", ids=[n.id])
    (again,) = await claim(store, "b")

    assert given_back == 1
    assert not_ours == 0
    assert again.id == n.id
    assert again.attempt_count == 1
    assert again.attempts == []


async def test_a_claim_given_back_keeps_its_status(store: Store) -> None:
    deferred, queued = make_notification(), make_notification()
    await store.add(deferred)
    (first,) = await claim(store, "a")
    await finish(store, first, NotificationStatus.DEFERRED, delay=SHORT)
    await store.add(queued)
    await eventually(lambda: claim(store, "a", limit=1))  # the queued one, due first
    claimed = await eventually(lambda: claim(store, "a", limit=1))  # the deferred one

    await store.unclaim(owner="a", ids=[queued.id, claimed[0].id])

    back_queued, back_deferred = await store.get(queued.id), await store.get(deferred.id)
    assert back_queued is not None
    assert back_deferred is not None
    assert (back_queued.status, back_queued.attempt_count) == (NotificationStatus.QUEUED, 0)
    assert (back_deferred.status, back_deferred.attempt_count) == (
        NotificationStatus.DEFERRED,
        1,
    )
    assert back_deferred.lease_owner is None


async def test_deferred_notification_is_due_after_its_delay_and_not_before(store: Store) -> None:
    await store.add(make_notification())
    (claimed,) = await claim(store, "a")
    await finish(store, claimed, NotificationStatus.DEFERRED, delay=3.0)

    early = await claim(store, "a")
    oldest_due = await store.oldest_due()

    assert early == []
    assert oldest_due is not None
    assert await store.count_pending() == 1


async def test_deferred_notification_is_claimed_once_due(store: Store) -> None:
    await store.add(make_notification())
    (claimed,) = await claim(store, "a")
    await finish(store, claimed, NotificationStatus.DEFERRED, delay=SHORT)

    due = await eventually(lambda: claim(store, "a"))

    assert [n.id for n in due] == [claimed.id]
    assert due[0].attempt_count == 2


async def test_terminal_notification_is_never_claimed_again(store: Store) -> None:
    await store.add(make_notification())
    (claimed,) = await claim(store, "a", lease=SHORT)
    await finish(store, claimed, NotificationStatus.FAILED)
    await asyncio.sleep(2 * SHORT)  # its lease's end, passed

    assert await claim(store, "a") == []
    assert await store.oldest_due() is None


async def test_cancel_takes_a_waiting_notification_out_of_the_queue(store: Store) -> None:
    waiting, sending = make_notification(), make_notification()
    await store.add(waiting)
    cancelled, as_cancelled = await store.cancel(waiting.id, now=NOW + 1)
    await store.add(sending)
    await claim(store, "a")

    refused, as_sending = await store.cancel(sending.id, now=NOW + 2)
    unknown = await store.cancel(new_id(), now=NOW + 3)

    assert cancelled
    assert as_cancelled is not None
    assert as_cancelled.status is NotificationStatus.CANCELLED
    assert not refused
    assert as_sending is not None
    assert as_sending.status is NotificationStatus.SENDING
    assert unknown == (False, None)
    assert await store.count_pending() == 1  # the one being sent
    stored = await store.get(waiting.id)
    assert stored is not None
    assert stored.status is NotificationStatus.CANCELLED


async def test_requeue_makes_a_failed_notification_due_again(store: Store) -> None:
    await store.add(make_notification())
    (claimed,) = await claim(store, "a")
    await finish(store, claimed, NotificationStatus.FAILED)
    not_yet = await store.requeue(new_id(), now=NOW, expires_at=NOW + 3600)

    requeued, n = await store.requeue(claimed.id, now=time.time(), expires_at=NOW + 7200)
    again = await claim(store, "b")
    refused, _ = await store.requeue(claimed.id, now=time.time(), expires_at=NOW + 7200)

    assert not_yet == (False, None)
    assert requeued
    assert n is not None
    assert n.status is NotificationStatus.QUEUED
    assert [m.id for m in again] == [claimed.id]
    assert again[0].expires_at == NOW + 7200
    assert not refused  # it is being sent again


async def test_page_is_newest_first_with_filters_and_cursor(store: Store) -> None:
    added = [make_notification() for _ in range(4)]
    stranger = make_notification(owner="owner-2")
    for n in [*added, stranger]:
        await store.add(n)

    mine = PageFilter(owner="owner-1")
    first = await store.page(limit=2, before_id=None, filters=mine)
    rest = await store.page(limit=10, before_id=first[-1].id, filters=mine)
    sending = await store.page(
        limit=10, before_id=None, filters=PageFilter(status=NotificationStatus.SENDING)
    )
    everyone = await store.page(
        limit=10, before_id=None, filters=PageFilter(status=NotificationStatus.QUEUED)
    )

    assert [n.id for n in first + rest] == [n.id for n in reversed(added)]
    assert sending == []
    assert len(everyone) == 5


async def test_an_idempotency_key_is_taken_once(store: Store) -> None:
    first, second = make_notification(), make_notification()
    record = IdempotencyRecord("owner-1", "key-1", "hash", first.id, '{"id": 1}', NOW + 60)

    taken_by_first = await store.add(first, record)
    taken_by_second = await store.add(second, replace(record, notification_id=second.id))

    assert taken_by_first is None
    assert taken_by_second == record
    assert await store.get(second.id) is None
    assert await store.find_idempotency("owner-1", "key-1") == record
    assert await store.find_idempotency("owner-2", "key-1") is None


async def test_concurrent_adds_with_one_key_store_one_notification(store: Store) -> None:
    candidates = [make_notification() for _ in range(10)]
    record = IdempotencyRecord("owner-1", "race", "hash", "", "{}", NOW + 60)

    results = await asyncio.gather(
        *(store.add(n, replace(record, notification_id=n.id)) for n in candidates)
    )

    stored = [n for n in candidates if await store.get(n.id) is not None]
    assert len(stored) == 1
    assert results.count(None) == 1
    assert {r.notification_id for r in results if r is not None} == {stored[0].id}


async def test_expired_idempotency_keys_are_purged(store: Store) -> None:
    old = IdempotencyRecord("o", "old", "h", new_id(), "{}", NOW - 1)
    fresh = IdempotencyRecord("o", "fresh", "h", new_id(), "{}", NOW + 60)
    await store.add(make_notification(id=old.notification_id), old)
    await store.add(make_notification(id=fresh.notification_id), fresh)

    purged = await store.purge_idempotency(now=NOW, limit=10)

    assert purged == 1
    assert await store.find_idempotency("o", "old") is None
    assert await store.find_idempotency("o", "fresh") == fresh


async def test_acknowledgments_are_tracked_until_marked(store: Store) -> None:
    n = make_notification()
    await store.add(n)
    assert [m.id for m in await store.unacknowledged(limit=10, before=NOW + 1)] == [n.id]

    await store.mark_acknowledged(accepted=[n.id], final=[])
    assert await store.unacknowledged(limit=10, before=NOW + 1) == []

    (claimed,) = await claim(store, "a")
    claimed.status, claimed.updated_at = NotificationStatus.SENT, NOW
    await store.finish_attempt(claimed, lease_owner="a")
    assert [m.id for m in await store.unacknowledged(limit=10, before=NOW + 1)] == [n.id]

    await store.mark_acknowledged(accepted=[], final=[n.id])
    assert await store.unacknowledged(limit=10, before=NOW + 1) == []
    stored = await store.get(n.id)
    assert stored is not None
    assert stored.acknowledged


async def test_lines_due_since_a_moment_are_not_unacknowledged_before_it(store: Store) -> None:
    ended_later = make_notification()
    created_later = make_notification(created_at=NOW + 10)
    await store.add(ended_later)
    await store.add(created_later)
    await store.mark_acknowledged(accepted=[ended_later.id], final=[])
    (claimed,) = await claim(store, "a", limit=1)
    assert claimed.id == ended_later.id
    claimed.status, claimed.updated_at = NotificationStatus.SENT, NOW + 20
    await store.finish_attempt(claimed, lease_owner="a")

    assert await store.unacknowledged(limit=10, before=NOW + 5) == []
    found = await store.unacknowledged(limit=10, before=NOW + 30)
    assert sorted(m.id for m in found) == sorted([created_later.id, ended_later.id])


async def test_closed_store_refuses_work(opener: Opener) -> None:
    closed = opener()

    with pytest.raises(StoreError):
        await closed.add(make_notification())


async def test_a_write_that_changes_a_row_proves_the_store_writable(store: Store) -> None:
    await store.check_writable()

    assert store.write_failure() is None


async def test_retention_purges_only_old_finished_and_acknowledged_notifications(
    store: Store,
) -> None:
    old_done, old_unacked, old_pending, recent_done = (make_notification() for _ in range(4))
    for n in (old_done, old_unacked, old_pending, recent_done):
        await store.add(n)
    claimed = {c.id: c for c in await claim(store, "a", limit=4)}
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


async def test_attachments_are_stored_apart_read_back_in_order_and_purged_with_it(
    store: Store,
) -> None:
    files = (Attachment("a.pdf", "application/pdf", 3), Attachment("b.txt", "text/plain", 0))
    parts = (b"part one\r\n" + bytes(range(256)), b"part two\r\n")
    with_files = make_notification(
        content=replace(make_notification().content, attachments=files), attachment_parts=parts
    )
    without = make_notification()
    await store.add(with_files)
    await store.add(without)

    stored = await store.get(with_files.id)
    assert stored is not None
    assert stored.content.attachments == files
    assert stored.attachment_parts == ()  # not loaded with the notification
    assert await store.attachment_parts(with_files.id) == list(parts)
    assert await store.attachment_parts(without.id) == []
    claimed = await claim(store, "a", limit=2)
    assert {n.id for n in claimed} == {with_files.id, without.id}
    assert all(n.attachment_parts == () for n in claimed)

    for n in claimed:
        n.status = NotificationStatus.SENT
        n.updated_at = NOW
        await store.finish_attempt(n, lease_owner="a")
    await store.mark_acknowledged(accepted=[], final=[with_files.id, without.id])
    purged = await Retention(store, keep=600, clock=lambda: NOW + 1000).purge_once()

    assert purged == (2, 0)
    assert await store.attachment_parts(with_files.id) == []


async def test_a_batch_is_stored_whole_or_not_at_all(store: Store) -> None:
    first, second = make_notification(), make_notification()
    await store.add(first)

    # The second's id is taken: the whole batch fails, and its other item is not kept.
    with pytest.raises(StoreError):
        await store.add_many([second, make_notification(id=first.id)])

    assert await store.get(second.id) is None
    await store.add_many([second])
    kept = await store.get(second.id)
    assert kept is not None
    assert kept.status is NotificationStatus.QUEUED


async def test_attempts_and_recipients_read_back_whole(store: Store) -> None:
    await store.add(make_notification())
    (claimed,) = await claim(store, "a")
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
    assert stored.next_attempt_at == NOW + 60


# Priority and scheduling


async def test_due_work_is_claimed_highest_priority_first(store: Store) -> None:
    lows = [make_notification(priority=Priority.LOW) for _ in range(5)]
    normal = make_notification()
    high = make_notification(priority=Priority.HIGH)
    for n in (*lows, normal, high):
        await store.add(n)

    first = await claim(store, limit=2)
    rest = await claim(store, limit=10)

    assert [n.id for n in first] == [high.id, normal.id]
    assert [n.id for n in rest] == [n.id for n in lows]
    assert {n.priority for n in rest} == {Priority.LOW}


async def test_a_share_of_a_claim_goes_to_the_longest_due_whatever_its_priority(
    store: Store,
) -> None:
    lows = [make_notification(priority=Priority.LOW) for _ in range(3)]
    highs = [make_notification(priority=Priority.HIGH) for _ in range(5)]
    for n in (*lows, *highs):
        await store.add(n)
    now = time.time()

    claimed = await store.claim(
        owner="a", now=now, lease_until=now + LEASE, limit=4, oldest_first=1
    )

    # Three by priority (the first highs), one by age (the oldest low), highs handed out first.
    assert [n.id for n in claimed] == [*(n.id for n in highs[:3]), lows[0].id]


async def test_scheduled_work_is_held_until_its_send_at(store: Store) -> None:
    now = time.time()
    later = make_notification(
        status=NotificationStatus.SCHEDULED, send_at=now + 3 * SHORT, priority=Priority.HIGH
    )
    await store.add(later)

    assert await claim(store) == []
    stored = await store.get(later.id)
    assert stored is not None
    assert (stored.status, stored.priority) == (NotificationStatus.SCHEDULED, Priority.HIGH)
    assert stored.send_at == pytest.approx(later.send_at)
    (claimed,) = await eventually(lambda: claim(store))
    assert claimed.id == later.id
    assert claimed.status is NotificationStatus.SENDING
    assert time.time() >= now + 3 * SHORT


async def test_a_scheduled_notification_can_be_cancelled(store: Store) -> None:
    later = make_notification(status=NotificationStatus.SCHEDULED, send_at=time.time() + 3600)
    await store.add(later)

    cancelled, n = await store.cancel(later.id, now=time.time())

    assert cancelled
    assert n is not None
    assert n.status is NotificationStatus.CANCELLED
    assert await store.count_pending() == 0


async def test_pages_filter_by_priority_and_time_of_acceptance(store: Store) -> None:
    base = time.time()
    old_low = make_notification(created_at=base - 300, priority=Priority.LOW)
    new_low = make_notification(created_at=base - 100, priority=Priority.LOW)
    new_high = make_notification(created_at=base - 50, priority=Priority.HIGH)
    for n in (old_low, new_low, new_high):
        await store.add(n)

    async def ids(**filters: object) -> list[str]:
        found = await store.page(limit=10, before_id=None, filters=PageFilter(**filters))  # type: ignore[arg-type]
        return [n.id for n in found]

    assert await ids(priority=Priority.LOW) == [new_low.id, old_low.id]
    assert await ids(created_after=base - 200) == [new_high.id, new_low.id]
    assert await ids(created_before=base - 200) == [old_low.id]
    assert await ids(priority=Priority.LOW, created_after=base - 200) == [new_low.id]


async def test_pages_filter_by_recipient_whatever_the_kind(store: Store) -> None:
    both = make_notification()  # ada in to, bob in cc
    only_carol = make_notification(recipients=[Recipient("carol@example.com", RecipientKind.BCC)])
    for n in (both, only_carol):
        await store.add(n)

    async def ids(recipient: str) -> list[str]:
        found = await store.page(limit=10, before_id=None, filters=PageFilter(recipient=recipient))
        return [n.id for n in found]

    assert await ids("bob@example.com") == [both.id]
    assert await ids("carol@example.com") == [only_carol.id]
    assert await ids("dave@example.com") == []
