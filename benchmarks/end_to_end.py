"""Section 3: a fixed number of notifications posted as fast as possible, until all are sent."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import services, workload
from benchmarks.load import LoadResult
from benchmarks.measure import Figure, snapshot
from benchmarks.section import Bench, Plan, Row, Section, table


@dataclass(frozen=True)
class Figures:
    """End-to-end figures, one value per round."""

    accepted: Figure = field(default_factory=Figure)
    sent: Figure = field(default_factory=Figure)
    accepted_rate: Figure = field(default_factory=Figure)
    sent_rate: Figure = field(default_factory=Figure)
    #: Time from the ``202`` to status ``sent``, ms.
    lag_p50: Figure = field(default_factory=Figure)
    lag_p99: Figure = field(default_factory=Figure)
    lag_max: Figure = field(default_factory=Figure)
    post_p99: Figure = field(default_factory=Figure)
    cpu_ms: Figure = field(default_factory=Figure)
    foreign: Figure = field(default_factory=Figure)


@dataclass(frozen=True)
class EndToEnd:
    figures: Figures
    #: Every round accepted and sent every notification, without an error.
    all_sent: bool
    section: Section


@dataclass(frozen=True)
class _Round:
    """What one round left behind: the answers, the store's statuses, notifier's CPU."""

    posted: LoadResult
    accepted_at: dict[str, float]
    done: dict[str, tuple[str, float]]
    cpu_seconds: float


def measure(b: Bench) -> EndToEnd:
    p = b.plan
    figures = Figures()
    all_sent = _measure_rounds(b, figures)
    title = f"3. End to end: {p.e2e_count:,} notifications posted as fast as possible"
    rows = _rows(p, figures, all_sent)
    return EndToEnd(figures, all_sent, Section("3", title, tuple(_lines(p, figures)), tuple(rows)))


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _measure_rounds(b: Bench, figures: Figures) -> bool:
    """Every round into ``figures``; whether every round sent everything."""
    p = b.plan
    all_sent = True
    b.watch.quiet("e2e", patience=p.quiet_patience)
    sink = services.Sink(b.work)
    try:
        for r in range(p.e2e_rounds):
            done = _run_round(b, sink, r, figures.foreign)
            all_sent = _add_round(p, figures, done) and all_sent
            b.log(
                f"  round {r + 1}: {figures.sent.values[-1]:,.0f}/{p.e2e_count:,} sent, "
                f"{figures.accepted_rate.values[-1]:,.0f} accepted/s, "
                f"{figures.sent_rate.values[-1]:,.0f} sent/s"
            )
    finally:
        sink.stop()
    return all_sent


def _run_round(b: Bench, sink: services.Sink, r: int, foreign: Figure) -> _Round:
    """Post every notification, then wait (bounded) until the store says all are sent.

    The rest of the machine's load while notifier runs goes into ``foreign``.
    """
    p = b.plan
    n = p.e2e_count
    db = b.work / f"e2e-{r}.db"
    ids_file = b.work / f"e2e-{r}.ids"
    notifier = services.start_notifier(b.work, db, sink.smtp_port, concurrency=p.send_concurrency)
    a = snapshot()
    try:
        cpu0 = notifier.proc.cpu_seconds()
        posted = b.loader.python(
            notifier.port, p.connections, count=n, record_ids=ids_file, timeout=600
        )
        give_up = time.monotonic() + 60 + n / 50
        while time.monotonic() < give_up:
            if workload.count_status(db, "sent") >= n:
                break
            time.sleep(0.25)
        cpu1 = notifier.proc.cpu_seconds()
        done = workload.statuses(db)
    finally:
        notifier.stop()
    foreign.add(100 * b.watch.record("e2e", a, snapshot()))
    return _Round(posted, _accepted_at(ids_file), done, cpu1 - cpu0)


def _accepted_at(ids_file: Path) -> dict[str, float]:
    """When each ``202`` arrived, by notification id."""
    lines = ids_file.read_text().splitlines()
    return {i: float(t) for i, t in (line.split("\t") for line in lines if line)}


def _add_round(p: Plan, f: Figures, done: _Round) -> bool:
    """Add one round's figures; whether it accepted and sent all, without an error."""
    n = p.e2e_count
    accepted_at, statuses = done.accepted_at, done.done
    start = done.posted.first_send_wall
    last_accept = max(accepted_at.values(), default=math.nan)
    sent_at = [statuses[i][1] for i in accepted_at if statuses.get(i, ("", 0.0))[0] == "sent"]
    lags = [
        statuses[i][1] - t for i, t in accepted_at.items() if statuses.get(i, ("", 0))[0] == "sent"
    ]
    f.accepted.add(float(len(accepted_at)))
    f.sent.add(float(len(sent_at)))
    f.accepted_rate.add(n / (last_accept - start))
    f.sent_rate.add(n / (max(sent_at, default=math.nan) - start))
    f.lag_p50.add(1000 * _percentile(lags, 0.50))
    f.lag_p99.add(1000 * _percentile(lags, 0.99))
    f.lag_max.add(1000 * max(lags, default=math.nan))
    f.post_p99.add(done.posted.p99_ms)
    f.cpu_ms.add(1000 * done.cpu_seconds / max(1, len(sent_at)))
    return len(accepted_at) == n and len(sent_at) == n and done.posted.errors == 0


def _lines(p: Plan, f: Figures) -> list[str]:
    rows = [
        ["accepted (202)", f.accepted.show()],
        ["status `sent` at the end", f.sent.show()],
        ["accepted/s", f.accepted_rate.show()],
        ["sent/s (all sent, from the first POST)", f.sent_rate.show()],
        ["202 to sent, p50 (ms)", f.lag_p50.show()],
        ["202 to sent, p99 (ms)", f.lag_p99.show()],
        ["202 to sent, max (ms)", f.lag_max.show()],
        ["POST latency p99 under this load (ms)", f.post_p99.show(1)],
        ["notifier CPU ms per notification (accept + deliver)", f.cpu_ms.show(3)],
        ["other load % of the machine", f.foreign.show()],
    ]
    return [
        f"The Python raw-socket generator posts exactly {p.e2e_count:,} notifications over "
        f"{p.connections} connections",
        "as fast as notifier answers (it records the id and arrival time of every `202`),",
        'while notifier delivers into the sink. "Sent" is the notification\'s `updated_at` in',
        "the store when its status became `sent` (same clock, same machine). Rates are",
        "counted from the first request sent. "
        f"{p.e2e_rounds} round(s), a fresh store and service each.",
        "",
        *table(["figure", "median (min-max)"], rows),
        "",
        "The 202-to-sent time is mostly queueing: notifications are accepted faster than",
        "they are delivered, so the last ones wait for the whole backlog ahead of them.",
    ]


def _rows(p: Plan, f: Figures, all_sent: bool) -> list[Row]:
    lags = f"{f.lag_p50.show()} / {f.lag_p99.show()}"
    return [
        Row("3", f"all {p.e2e_count:,} posted end `sent`", f.sent.show(), "", "", "all", all_sent),
        Row("3", "accepted/s", f.accepted_rate.show(), "", "", "report", None),
        Row("3", "sent/s", f.sent_rate.show(), "", "", "report", None),
        Row("3", "202 to sent p50 / p99 (ms)", lags, "", "", "report", None),
    ]
