"""Section 8, batch accept: notifications a second through ``POST /v1/notifications/batch``
in batches of 100, against single POSTs of the same notification to the same server in
the same run, alternating rounds.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass

from benchmarks import procs, services
from benchmarks.accept import AppFigures
from benchmarks.measure import Figure, num, ratio, snapshot
from benchmarks.section import Bench, Plan, Row, paragraph, table

TITLE = "Batch accept"
#: Notifications in each batch, as the issue asks.
BATCH_SIZE = 100
BATCH_PATH = "/v1/notifications/batch"
#: The goal: a batch's notifications a second, against single POSTs'.
TARGET = 5.0
#: Connections posting batches: 800 notifications in flight, against single POSTs' 64
#: (``plan.connections``). More only lengthen the queue: at 64, each batch waits
#: behind 6,400 notifications and the server spends more on holding them.
BATCH_CONNECTIONS = 8
NOTIFICATION = {
    "to": ["ada@example.com"],
    "subject": "Your report is ready",
    "text": "Hello Ada, your report is ready.",
    "metadata": {"report_id": 42},
}


@dataclass(frozen=True)
class BatchAccept:
    single: AppFigures
    #: Requests a second; each carries ``BATCH_SIZE`` notifications.
    batch: AppFigures
    title: str
    lines: tuple[str, ...]
    rows: tuple[Row, ...]


def measure(b: Bench) -> BatchAccept:
    p = b.plan
    single_body = b.work / "body-single.json"
    batch_body = b.work / "body-batch.json"
    single_body.write_text(json.dumps(NOTIFICATION))
    batch_body.write_text(json.dumps({"notifications": [NOTIFICATION] * BATCH_SIZE}))
    single, batch = AppFigures(), AppFigures()
    closed = procs.ClosedPort()  # delivery kept out of the way, as in section 1
    services.name_port(closed.port, "closed-port")
    notifier = services.start_notifier(
        b.work, b.work / "batch-accept.db", closed.port, concurrency=p.send_concurrency
    )
    try:
        _check_every_item_accepted(notifier.port, batch_body.read_bytes())
        kinds = (
            (single_body, "/v1/notifications", p.connections, single),
            (batch_body, BATCH_PATH, BATCH_CONNECTIONS, batch),
        )
        for body, path, connections, _ in kinds:
            b.loader.python(
                notifier.port, connections, seconds=p.warmup_seconds, body=body, path=path
            )
        for _ in range(p.rounds):
            for body, path, connections, f in kinds:
                a = snapshot()
                result = b.loader.python(
                    notifier.port,
                    connections,
                    seconds=p.round_seconds,
                    body=body,
                    path=path,
                    server=notifier.proc,
                )
                f.add(result, result.server_cores, b.watch.record("features", a, snapshot()))
            b.log(
                f"  batch round: single {single.rps.values[-1]:,.0f} notifications/s, "
                f"batches {BATCH_SIZE * batch.rps.values[-1]:,.0f} notifications/s"
            )
    finally:
        notifier.stop()
        closed.close()
    lines = tuple(_lines(p, single, batch))
    return BatchAccept(single, batch, TITLE, lines, (_row(single, batch),))


def _check_every_item_accepted(port: int, body: bytes) -> None:
    """One batch by hand first: the generator sees the 200, not the items' own statuses."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{BATCH_PATH}",
        data=body,
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        items = json.load(response)["items"]
    refused = [item for item in items if item["status"] != 202]
    if len(items) != BATCH_SIZE or refused:
        raise RuntimeError(f"the batch was not accepted whole: {refused[:3]}")


def _per_notification(batch: AppFigures) -> Figure:
    return Figure([BATCH_SIZE * rps for rps in batch.rps.values])


def _lines(p: Plan, single: AppFigures, batch: AppFigures) -> list[str]:
    notifications = _per_notification(batch)
    paired = Figure(
        [ratio(n, s) for n, s in zip(notifications.values, single.rps.values, strict=True)]
    )
    rows = [
        [
            "single POSTs",
            single.rps.show(),
            single.rps.show(),
            single.p99.show(1),
            single.cpu.show(),
            single.errors.show(),
            single.foreign.show(),
        ],
        [
            f"batches of {BATCH_SIZE}",
            batch.rps.show(),
            notifications.show(),
            batch.p99.show(1),
            batch.cpu.show(),
            batch.errors.show(),
            batch.foreign.show(),
        ],
    ]
    return [
        *paragraph(
            f"One `notifier serve` on SQLite, delivery parked on a closed port as in section "
            f"1; the Python raw-socket generator posts, in alternating rounds of "
            f"{p.round_seconds:g} s ({p.rounds} each), the same notification alone to `POST "
            f"/v1/notifications` at {p.connections} connections, or {BATCH_SIZE} times in one "
            f"`POST {BATCH_PATH}` at {BATCH_CONNECTIONS} connections "
            f"({BATCH_CONNECTIONS * BATCH_SIZE} notifications in flight; more connections "
            "only lengthen the queue). A batch is checked by hand first: all "
            f"{BATCH_SIZE} items answered 202. Each batch's items are committed in one "
            "transaction."
        ),
        "",
        *table(
            [
                "requests",
                "req/s",
                "notifications/s",
                "p99 ms",
                "server CPU % of a core",
                "errors",
                "other load %",
            ],
            rows,
        ),
        "",
        *paragraph(
            f"Notifications a second in batches: {num(_ratio(single, batch), 3)} times single "
            f"POSTs (by round: {paired.show(2)}; goal at least {TARGET:g}x)."
        ),
    ]


def _ratio(single: AppFigures, batch: AppFigures) -> float:
    return ratio(_per_notification(batch).median, single.rps.median)


def _row(single: AppFigures, batch: AppFigures) -> Row:
    value = _ratio(single, batch)
    return Row(
        "8",
        f"accepted notifications/s, batches of {BATCH_SIZE} vs single POSTs",
        _per_notification(batch).show(),
        single.rps.show(),
        num(value, 2),
        f">= {TARGET:g}",
        value >= TARGET,
    )
