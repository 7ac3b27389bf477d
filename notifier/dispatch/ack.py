"""The acknowledgment file: one JSON line when a notification is accepted, one when it ends.

Lines are appended and fsynced in batches on a dedicated thread, then marked in the
store. A failing write is retried with backoff (tenacity) while delivery goes on, and
never leaves part of a line behind. Whatever is not marked by a crash is written again
at the next start (at least once); in normal operation each line is written once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from notifier.dispatch.backoff import exponential, retried
from notifier.domain import Notification
from notifier.errors import StoreError
from notifier.logs import report_crash
from notifier.records import iso
from notifier.store import Store

log = logging.getLogger(__name__)

ACCEPTED = "accepted"
CATCH_UP_BATCH = 1000
#: With replicas sharing a database: how often each looks for lines nobody wrote, and
#: how old such a line must be (a live replica writes its own within moments).
SWEEP_INTERVAL = 30.0
SWEEP_GRACE = 60.0


def ack_line(notification: Notification, event: str, at: str) -> dict[str, Any]:
    """The record of ``event`` at ISO time ``at``: ids, addresses and outcomes, never the body."""
    return {
        "id": notification.id,
        "event": event,
        "at": at,
        "message_id": notification.message_id,
        # The enums as they are: orjson writes their values.
        "recipients": [
            {"address": r.address, "kind": r.kind, "status": r.status}
            for r in notification.recipients
        ],
        "metadata": notification.metadata,
    }


class AckWriter:
    def __init__(
        self,
        path: Path,
        store: Store,
        *,
        clock: Callable[[], float],
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_failure: Callable[[], None] = lambda: None,
        sweep: tuple[float, float] | None = None,
    ) -> None:
        """``sweep`` is (interval, grace) when other processes share the store: then
        lines they never wrote (one was killed) are written here, once ``grace`` old."""
        self._path = path
        self._sweep = sweep
        self._store = store
        self._clock = clock
        self._queue: asyncio.Queue[tuple[Notification, str]] = asyncio.Queue()
        self._wait = exponential(retry_initial, retry_max)
        self._sleep = sleep
        self._on_failure = on_failure
        self._io = ThreadPoolExecutor(1, thread_name_prefix="notifier-ack")
        self._task: asyncio.Task[None] | None = None
        #: When this run began queueing lines itself; the catch-up covers what came before.
        self._since = float("inf")

    def accepted(self, notification: Notification) -> None:
        self._queue.put_nowait((notification, ACCEPTED))

    def finished(self, notification: Notification) -> None:
        self._queue.put_nowait((notification, notification.status.value))

    async def start(self) -> None:
        """Start writing; call before anything can accept or finish a notification."""
        self._since = self._clock()
        self._task = asyncio.create_task(self._run(), name="notifier-ack-writer")
        self._task.add_done_callback(report_crash)

    def failure(self) -> str | None:
        """Why no more lines will be written (the writer ended by a bug), or ``None``."""
        task = self._task
        if task is None or not task.done():
            return None
        exc = None if task.cancelled() else task.exception()
        return f"{task.get_name()} stopped: {exc!r}"

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._io.shutdown(wait=True)

    async def _run(self) -> None:
        await self._catch_up(self._since)
        sweeper = None
        if self._sweep is not None:
            sweeper = asyncio.create_task(self._sweep_forever(*self._sweep), name="ack-sweep")
            sweeper.add_done_callback(report_crash)
        try:
            await self._write_queued()
        finally:
            if sweeper is not None:
                sweeper.cancel()
                await asyncio.gather(sweeper, return_exceptions=True)

    async def _sweep_forever(self, interval: float, grace: float) -> None:
        while True:
            await self._sleep(interval)
            await self._catch_up(self._clock() - grace)

    async def _write_queued(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # Within a batch, accepted lines go first.
            batch.sort(key=lambda item: item[1] != ACCEPTED)
            await self._write_with_retries(batch)

    async def _catch_up(self, since: float) -> None:
        """Write the lines left unwritten (at least once, so maybe twice) of what was
        accepted or ended before ``since``.

        At start, ``since`` is this run's start: later lines are queued by
        :meth:`accepted` and :meth:`finished`, and written once, from there. A sweep
        passes a moment old enough that any live replica would have written its own.
        """
        try:
            while missing := await self._store.unacknowledged(limit=CATCH_UP_BATCH, before=since):
                batch = [(n, ACCEPTED) for n in missing if not n.acknowledged]
                batch += [
                    (n, n.status.value)
                    for n in missing
                    if n.status.terminal and n.updated_at < since
                ]
                await self._write_with_retries(batch)
        except StoreError as exc:
            log.error("catching up acknowledgments failed; the next start retries: %s", exc)

    async def _write_with_retries(self, batch: list[tuple[Notification, str]]) -> None:
        # One write, so one time: that of the batch.
        at = iso(self._clock())
        lines = b"".join(
            [
                orjson.dumps(ack_line(n, event, at), option=orjson.OPT_APPEND_NEWLINE)
                for n, event in batch
            ]
        )
        loop = asyncio.get_running_loop()
        await retried(
            lambda: loop.run_in_executor(self._io, append_lines, self._path, lines),
            lambda: AsyncRetrying(
                retry=retry_if_exception_type(OSError),
                wait=self._wait,
                sleep=self._sleep,
                before_sleep=self._failed,
            ),
        )
        accepted = [n.id for n, event in batch if event == ACCEPTED]
        final = [n.id for n, event in batch if event != ACCEPTED]
        await retried(
            lambda: self._store.mark_acknowledged(accepted=accepted, final=final),
            lambda: AsyncRetrying(wait=self._wait, sleep=self._sleep),
        )
        for n, event in batch:
            if event == ACCEPTED:
                n.acknowledged = True

    def _failed(self, state: RetryCallState) -> None:
        self._on_failure()
        log.warning(
            "acknowledgment write failed (attempt %d), retrying: %s",
            state.attempt_number,
            state.outcome.exception() if state.outcome else None,
        )


def append_lines(
    path: Path, lines: bytes, write: Callable[[int, memoryview], int] = os.write
) -> None:
    """Append ``lines`` and fsync them, or leave the file as it was.

    A full disk can take part of an append: the file is cut back to its size before
    it, so the retry cannot glue its first line onto the fragment. A fragment that a
    crash left (nothing could cut it back) is ended with a newline first, so it spoils
    only itself.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            lines = b"\n" + lines
        try:
            pending = memoryview(lines)
            while pending:
                pending = pending[write(fd, pending) :]
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)
