"""Section 8b: high priority notifications posted behind a backlog of due low priority ones.

notifier starts on a store seeded with a backlog of due ``low`` notifications and
delivers it into the sink; once that is under way, ``high`` ones are posted at a steady
rate for a few seconds, and the sink notes when each message arrived, by Message-ID.
The baseline is the same run with nothing to choose between: backlog and posted
notifications all ``normal``, so each posted one waits its turn behind the backlog.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import tests.postgres as pg
from benchmarks import scale_out, services, workload
from benchmarks.measure import Figure, num, ratio, snapshot
from benchmarks.section import Bench, Plan, Row, paragraph, table
from notifier.dispatch.dispatcher import CLAIM_AHEAD, OLDEST_SHARE
from notifier.message import message_id_for

TITLE = "8b. Priority: `high` notifications behind a backlog of due `low` ones"

STORES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
#: Each run: the backlog's priority, and that of the notifications posted meanwhile.
RUNS = {"priority": ("low", "high"), "fifo": ("normal", "normal")}
RUN_LABELS = {
    "priority": "`high` posted behind `low`",
    "fifo": "baseline: `normal` posted behind `normal`",
}


@dataclass(frozen=True)
class RunFigures:
    """One kind of run on one store, over the rounds."""

    posted: Figure = field(default_factory=Figure)
    #: Messages (backlog and posted) that never reached the sink.
    missing: Figure = field(default_factory=Figure)
    #: From sending the POST to the sink receiving the message, ms.
    p50: Figure = field(default_factory=Figure)
    p99: Figure = field(default_factory=Figure)
    max: Figure = field(default_factory=Figure)
    #: From the backlog's first arrival at the sink to its last, s.
    drain: Figure = field(default_factory=Figure)
    #: Backlog messages a second at the sink over the whole drain, and while posting.
    rate: Figure = field(default_factory=Figure)
    rate_posting: Figure = field(default_factory=Figure)
    #: Backlog messages that arrived after the last POST was sent.
    left: Figure = field(default_factory=Figure)
    foreign: Figure = field(default_factory=Figure)

    @property
    def ran(self) -> bool:
        return bool(self.posted.values)


@dataclass(frozen=True)
class PriorityLatency:
    #: By store, then by run.
    runs: dict[str, dict[str, RunFigures]]
    #: Why PostgreSQL was left out, if it was.
    skipped: str | None
    title: str
    lines: tuple[str, ...]
    rows: tuple[Row, ...]


def measure(b: Bench) -> PriorityLatency:
    runs = {store: {run: RunFigures() for run in RUNS} for store in STORES}
    posted = {priority for _, priority in RUNS.values()}
    bodies = {priority: _body_file(b.work, priority) for priority in posted}
    b.watch.quiet("features", patience=b.plan.quiet_patience)
    skipped: str | None = None
    sink = services.Sink(b.work, record=True)
    try:
        with ExitStack() as stack:
            try:
                server = stack.enter_context(scale_out.postgres_server(b))
                databases: scale_out.Databases | None = scale_out.Databases(server)
            except pg.PostgresUnavailable as exc:
                skipped, databases = str(exc), None
                b.log(f"  PostgreSQL left out: {exc}")
            for r in range(b.plan.priority_rounds):
                for store, run in _order(databases is not None):
                    _run(b, sink, store, run, r, databases, bodies, runs[store][run])
    finally:
        sink.stop()
    lines = _lines(b.plan, runs, skipped)
    return PriorityLatency(runs, skipped, TITLE, tuple(lines), tuple(_rows(b.plan, runs)))


def _order(with_postgres: bool) -> Iterator[tuple[str, str]]:
    for store in STORES:
        if store == "sqlite" or with_postgres:
            for run in RUNS:
                yield store, run


def _body_file(work: Path, priority: str) -> Path:
    """The benchmark notification at ``priority``, as a POST body."""
    path = work / f"body-{priority}.json"
    path.write_text(json.dumps({**workload.BODY, "priority": priority}, separators=(",", ":")))
    return path


def _run(
    b: Bench,
    sink: services.Sink,
    store: str,
    run: str,
    r: int,
    databases: scale_out.Databases | None,
    bodies: dict[str, Path],
    into: RunFigures,
) -> None:
    """Seed the backlog, start notifier on it, post while it drains, wait until all is sent."""
    p = b.plan
    n = p.priority_backlog
    backlog_priority, posted_priority = RUNS[run]
    db = b.work / f"priority-{store}-{run}-{r}.db"  # the SQLite file, or just a name
    extra: dict[str, str] = {}
    if store == "sqlite":
        backlog = workload.seed_queued(db, n, priority=backlog_priority)
    else:
        assert databases is not None
        url = databases.new()
        backlog = workload.seed_queued_postgres(url, n, priority=backlog_priority)
        extra["NOTIFIER_DATABASE_URL"] = url
    sink.arrivals()  # forget what earlier runs left noted
    base, _ = sink.count()
    warm = _warm(p)
    posted_file = b.work / f"priority-{store}-{run}-{r}.ids"
    a = snapshot()
    notifier = services.start_notifier(
        b.work,
        db,
        sink.smtp_port,
        concurrency=p.send_concurrency,
        label=f"notifier ({STORES[store]})",
        extra_env=extra,
    )
    try:
        count, _ = sink.wait_for(base + warm, timeout=60)
        if count < base + warm:
            raise RuntimeError(f"delivery did not start: {count - base} of {warm} after 60 s")
        b.loader.python(
            notifier.port,
            1,
            seconds=p.priority_seconds,
            rate=p.priority_rate,
            body=bodies[posted_priority],
            record_ids=posted_file,
            record_sent=True,
            timeout=30,
        )
        posted = _sent_at(posted_file)
        sink.wait_for(base + n + len(posted), timeout=60 + n / 200)
    finally:
        notifier.stop()
    into.foreign.add(100 * b.watch.record("features", a, snapshot()))
    _add(into, backlog, posted, sink.arrivals())
    b.log(
        f"  {STORES[store]}, {RUN_LABELS[run]}: p50 {into.p50.values[-1]:,.0f} ms, "
        f"p99 {into.p99.values[-1]:,.0f} ms; backlog drained in {into.drain.values[-1]:.1f} s, "
        f"{into.rate_posting.values[-1]:,.0f}/s of it while posting"
    )


def _warm(p: Plan) -> int:
    """Backlog messages at the sink before the first POST: delivery under way."""
    return min(500, p.priority_backlog // 10)


def _sent_at(path: Path) -> dict[str, float]:
    """When each accepted POST was sent, by notification id."""
    lines = path.read_text().splitlines()
    return {i: float(t) for i, t in (line.split("\t") for line in lines if line)}


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _add(
    f: RunFigures, backlog: list[str], posted: dict[str, float], arrivals: dict[str, float]
) -> None:
    """One run's figures: ``posted`` maps each posted id to when its POST was sent."""

    def arrived(notification_id: str) -> float | None:
        return arrivals.get(message_id_for(notification_id, workload.SENDER)[1:-1])

    backlog_at = sorted(t for i in backlog if (t := arrived(i)) is not None)
    latencies = sorted(t - sent for i, sent in posted.items() if (t := arrived(i)) is not None)
    first, last = min(posted.values(), default=math.nan), max(posted.values(), default=math.nan)
    f.posted.add(float(len(posted)))
    f.missing.add(float(len(backlog) + len(posted) - len(backlog_at) - len(latencies)))
    f.p50.add(1000 * _percentile(latencies, 0.50))
    f.p99.add(1000 * _percentile(latencies, 0.99))
    f.max.add(1000 * max(latencies, default=math.nan))
    drain = backlog_at[-1] - backlog_at[0] if len(backlog_at) > 1 else math.nan
    f.drain.add(drain)
    f.rate.add((len(backlog_at) - 1) / drain if drain > 0 else math.nan)
    during = sum(1 for t in backlog_at if first <= t <= last)
    f.rate_posting.add(during / (last - first) if last > first else math.nan)
    f.left.add(float(sum(1 for t in backlog_at if t > last)))


def _lines(p: Plan, runs: dict[str, dict[str, RunFigures]], skipped: str | None) -> list[str]:
    lines = paragraph(
        f"notifier starts on a store seeded with {p.priority_backlog:,} due notifications "
        "(through its own store, as section 2 seeds them) and delivers them into the sink, "
        "which notes when each message's DATA arrived, by Message-ID. Once "
        f"{_warm(p):,} have arrived, the Python generator posts one notification every "
        f"{1000 / p.priority_rate:g} ms over one connection for {p.priority_seconds:g} s, "
        "recording when each POST was sent; a posted notification's latency runs from then "
        "to its arrival at the sink (one clock). In the priority run the backlog is `low` "
        "and the posted ones `high`. In the baseline both are `normal`: priority has "
        "nothing to choose, so each posted one waits its turn behind the backlog, as "
        "without priorities. The backlog's drain runs from its first arrival at the sink to "
        f"its last. `NOTIFIER_SEND_CONCURRENCY={p.send_concurrency}`; "
        f"{p.priority_rounds} round(s) of each run on each store, a fresh store each time."
    )
    if skipped is not None:
        lines += ["", f"PostgreSQL was left out: {skipped}."]
    for store, label in STORES.items():
        if runs[store]["priority"].ran:
            lines += ["", f"**{label}**", "", *_table(runs[store])]
    lines += ["", *paragraph(_in_hand_text(p, runs))]
    lines += ["", *paragraph(_starvation_text(runs))]
    if any(v == 0 for s in runs.values() for f in s.values() for v in f.left.values):
        lines += [
            "",
            *paragraph(
                "**In some run the backlog was gone before the last POST**, so its last "
                "POSTs met an empty queue: lengthen the backlog or shorten the posting."
            ),
        ]
    return lines


def _table(runs: dict[str, RunFigures]) -> list[str]:
    header = [
        "run",
        "posted",
        "POST to sink p50 ms",
        "p99 ms",
        "max ms",
        "backlog drain s",
        "backlog sent/s",
        "backlog sent/s while posting",
        "backlog left after the last POST",
        "never arrived",
        "other load %",
    ]
    rows = [
        [
            RUN_LABELS[run],
            f.posted.show(),
            f.p50.show(),
            f.p99.show(),
            f.max.show(),
            f.drain.show(1),
            f.rate.show(),
            f.rate_posting.show(),
            f.left.show(),
            f.missing.show(),
            f.foreign.show(),
        ]
        for run, f in runs.items()
    ]
    return table(header, rows)


def _in_hand_text(p: Plan, runs: dict[str, dict[str, RunFigures]]) -> str:
    """What a ``high`` notification waits for: what notifier holds claimed already."""
    in_hand = CLAIM_AHEAD + p.send_concurrency
    parts = []
    for store, label in STORES.items():
        f = runs[store]["priority"]
        if f.ran:
            ms = 1000 * in_hand / f.rate.median if f.rate.median > 0 else math.nan
            parts.append(f"{label} {num(ms)} ms at its {num(f.rate.median)} a second")
    return (
        "A `high` notification waits for what notifier already holds, not for the "
        f"backlog: up to {in_hand} claimed notifications ({CLAIM_AHEAD} claimed ahead of "
        f"the {p.send_concurrency} connections), sent in the order claimed. At the drain "
        f"rates measured, that many take {', '.join(parts)}. That, with the POST's commit "
        "and the claim's, is the claim cycle; the baseline shows what waiting behind the "
        "backlog costs instead."
    )


def _starvation_text(runs: dict[str, dict[str, RunFigures]]) -> str:
    """How fast the ``low`` backlog went out while ``high`` ones arrived."""
    parts = []
    for store, label in STORES.items():
        f = runs[store]["priority"]
        if f.ran:
            share = ratio(f.rate_posting.median, f.rate.median)
            parts.append(
                f"{label} {num(f.rate_posting.median)} a second, {num(share, 2)} of its rate "
                "over the whole drain"
            )
    return (
        "Meanwhile the `low` backlog kept going out: "
        + "; ".join(parts)
        + f". One claimed place in {OLDEST_SHARE} goes to the longest due notification "
        "whatever its priority, so `low` work moves even under a stream of `high`; with "
        "`high` ones as rare as here, nearly every place goes to the backlog anyway."
    )


def _rows(p: Plan, runs: dict[str, dict[str, RunFigures]]) -> list[Row]:
    rows = []
    for store, label in STORES.items():
        high, fifo = runs[store]["priority"], runs[store]["fifo"]
        if not high.ran:
            continue
        rows += [
            Row(
                "8",
                f"{label}: `high` p50 / p99 ms behind {p.priority_backlog:,} due `low`",
                f"{high.p50.show()} / {high.p99.show()}",
                f"{fifo.p50.show()} / {fifo.p99.show()}",
                num(ratio(high.p50.median, fifo.p50.median), 4),
                "report",
                None,
            ),
            Row(
                "8",
                f"{label}: `low` sent/s while `high` arrive / whole drain",
                high.rate_posting.show(),
                high.rate.show(),
                num(ratio(high.rate_posting.median, high.rate.median), 3),
                "report",
                None,
            ),
        ]
    return rows
