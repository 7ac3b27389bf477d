"""Section 4: reads stay fast while sends are in flight against a slow relay."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import services, workload
from benchmarks.probe import PhaseFigures, probe_rounds
from benchmarks.section import Bench, Plan, Row, Section, table

TITLE = "4. Never blocked: probes while sends are in flight"

#: Notifications posted (and delivered) before the idle probes.
WARM_POSTS = 200


@dataclass(frozen=True)
class ProbeFigures:
    """The probes at one send concurrency: idle, then over a backlog due at once."""

    idle: PhaseFigures = field(default_factory=PhaseFigures)
    busy: PhaseFigures = field(default_factory=PhaseFigures)


@dataclass(frozen=True)
class NeverBlocked:
    by_concurrency: dict[int, ProbeFigures]
    section: Section


def measure(b: Bench) -> NeverBlocked:
    p = b.plan
    by_concurrency: dict[int, ProbeFigures] = {}
    b.watch.quiet("blocked", patience=p.quiet_patience)
    sink = services.Sink(b.work, delay=p.blocked_delay)
    try:
        for concurrency in p.blocked_concurrency:
            figures = by_concurrency[concurrency] = ProbeFigures()
            db = b.work / f"blocked-{concurrency}.db"
            _measure_idle(b, sink, db, concurrency, figures.idle)
            _measure_busy(b, sink, db, concurrency, figures.busy)
    finally:
        sink.stop()
    rows = [row for c, f in by_concurrency.items() for row in _rows(c, f)]
    section = Section("4", TITLE, tuple(_lines(p, by_concurrency)), tuple(rows))
    return NeverBlocked(by_concurrency, section)


def backlog_for(p: Plan, concurrency: int) -> int:
    """The configured backlog, or enough to keep ``concurrency`` sends busy for every round."""
    if concurrency <= p.send_concurrency:
        return p.blocked_posts
    return max(p.blocked_posts, 5 * p.blocked_posts)


def _measure_idle(
    b: Bench, sink: services.Sink, db: Path, concurrency: int, into: PhaseFigures
) -> None:
    """Probes of a notifier that has just delivered a few posted notifications."""
    notifier = services.start_notifier(b.work, db, sink.smtp_port, concurrency=concurrency)
    try:
        base, _ = sink.count()
        warm_ids = b.work / f"blocked-{concurrency}-warm.ids"
        b.loader.python(notifier.port, 16, count=WARM_POSTS, record_ids=warm_ids, timeout=120)
        sink.wait_for(base + WARM_POSTS, timeout=60)
        time.sleep(0.5)
        ids = [line.split("\t")[0] for line in warm_ids.read_text().splitlines() if line]
        probe_rounds(b, notifier, sink, "idle", ids, 1, base + WARM_POSTS, into)
    finally:
        notifier.stop()


def _measure_busy(
    b: Bench, sink: services.Sink, db: Path, concurrency: int, into: PhaseFigures
) -> None:
    """Probes of notifier restarted over a seeded backlog, all of it due at once."""
    p = b.plan
    backlog = backlog_for(p, concurrency)
    ids = workload.seed_queued(db, backlog)
    base, _ = sink.count()
    notifier = services.start_notifier(b.work, db, sink.smtp_port, concurrency=concurrency)
    try:
        sink.wait_for(base + min(concurrency, 100), timeout=60)
        probe_rounds(b, notifier, sink, "busy", ids, p.blocked_rounds, base + backlog, into)
    finally:
        notifier.stop()


def _table_row(concurrency: int, phase: str, f: PhaseFigures) -> list[str]:
    return [
        str(concurrency),
        phase,
        f.open.show(),
        f.in_flight.show(),
        f.rate.show(),
        f.backlog.show(),
        f.health_p50.show(2),
        f.health_p99.show(2),
        f.health_max.show(1),
        f.status_p50.show(2),
        f.status_p99.show(2),
        f.status_max.show(1),
        f.cpu.show(),
    ]


def _rows(concurrency: int, f: ProbeFigures) -> list[Row]:
    return [
        Row(
            "4",
            f"GET /healthz p99 (ms), {concurrency} sends in flight",
            f.busy.health_p99.show(2),
            f.idle.health_p99.show(2),
            "",
            "< 10 ms",
            f.busy.health_p99.median < 10,
        ),
        Row(
            "4",
            f"GET /v1/notifications/{{id}} p99 (ms), {concurrency} sends in flight",
            f.busy.status_p99.show(2),
            f.idle.status_p99.show(2),
            "",
            "< 20 ms",
            f.busy.status_p99.median < 20,
        ),
    ]


def _lines(p: Plan, by_concurrency: dict[int, ProbeFigures]) -> list[str]:
    header = [
        "send concurrency",
        "phase",
        "SMTP connections open",
        "DATA replies held by the sink",
        "delivered/s",
        "undelivered",
        "healthz p50 ms",
        "healthz p99 ms",
        "healthz max ms",
        "status p50 ms",
        "status p99 ms",
        "status max ms",
        "notifier CPU %",
    ]
    rows = [
        _table_row(c, phase, figures)
        for c, f in by_concurrency.items()
        for phase, figures in (("idle", f.idle), ("busy", f.busy))
    ]
    return [
        f"The sink holds every DATA reply for {p.blocked_delay * 1000:.0f} ms. notifier first "
        "delivers 200 posted",
        "notifications and is probed idle. It is then stopped, "
        f"{p.blocked_posts:,} queued notifications are",
        "added to its store (through notifier's own `SQLiteStore.add`) and it is started",
        "again, so the whole backlog is due at once. While it works through it, two paced",
        f"probes run at the same time for {p.blocked_seconds:g} s a round "
        f"({p.blocked_rounds} rounds): `GET /healthz` and",
        "`GET /v1/notifications/{id}` (random ids of the backlog), each on 2 keep-alive",
        "connections at 100 requests/s per connection, from their own processes.",
        f"`NOTIFIER_SEND_CONCURRENCY={p.blocked_concurrency[0]}` is the configured default: "
        "at most that many SMTP",
        "transactions are open, the rest of the backlog waits in the store.",
        *_wide_note(p),
        "",
        *table(header, rows),
        "",
        "Connections open and DATA replies held are sampled from the sink every 0.25 s during",
        'the probes and averaged; "undelivered" is the part of the backlog the sink had not',
        "yet acknowledged when the round began.",
    ]


def _wide_note(p: Plan) -> list[str]:
    """The widest concurrency's rows, when there are more than the default's."""
    if len(p.blocked_concurrency) <= 1:
        return []
    widest = p.blocked_concurrency[-1]
    return [
        f"The `{widest}` rows raise it to the maximum the settings allow, over a backlog of",
        f"{backlog_for(p, widest):,} so that it lasts every round: then about a thousand SMTP",
        "transactions are really in flight on the event loop at once.",
    ]
