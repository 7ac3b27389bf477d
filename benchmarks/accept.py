"""Section 1: durable POST throughput and latency against the ceiling app."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from benchmarks import procs, services, workload
from benchmarks.load import LoadResult
from benchmarks.measure import Figure, num, ratio
from benchmarks.section import Bench, Plan, Row, Section, post_round, table, tool_name

TITLE = "1. Accept: durable POST against the ceiling"


@dataclass(frozen=True)
class AppFigures:
    """One app under the POST load, over the rounds."""

    rps: Figure = field(default_factory=Figure)
    p50: Figure = field(default_factory=Figure)
    p99: Figure = field(default_factory=Figure)
    max: Figure = field(default_factory=Figure)
    #: Server CPU, % of a core.
    cpu: Figure = field(default_factory=Figure)
    cpu_ms: Figure = field(default_factory=Figure)
    errors: Figure = field(default_factory=Figure)
    foreign: Figure = field(default_factory=Figure)

    def add(self, result: LoadResult, cores: float, foreign: float) -> None:
        self.rps.add(result.rps)
        self.p50.add(result.p50_ms)
        self.p99.add(result.p99_ms)
        self.max.add(result.max_ms)
        self.cpu.add(100 * cores)
        self.cpu_ms.add(1000 * cores / result.rps if result.rps else math.nan)
        self.errors.add(float(result.errors))
        self.foreign.add(100 * foreign)


@dataclass(frozen=True)
class Accept:
    ceiling: AppFigures
    notifier: AppFigures
    #: Notifications still pending in notifier's store at the end.
    pending: int
    section: Section


def measure(b: Bench) -> Accept:
    ceiling, notifier = AppFigures(), AppFigures()
    pending = _measure_rounds(b, ceiling, notifier)
    lines = _lines(b, ceiling, notifier, pending)
    section = Section("1", TITLE, tuple(lines), tuple(_rows(b.plan, ceiling, notifier)))
    return Accept(ceiling, notifier, pending, section)


def _measure_rounds(b: Bench, c: AppFigures, n: AppFigures) -> int:
    """Alternating rounds against both apps; returns notifier's pending count at the end."""
    p = b.plan
    closed = procs.ClosedPort()
    services.name_port(closed.port, "closed-port")
    b.watch.quiet("accept", patience=p.quiet_patience)
    ceiling = services.start_ceiling(b.work)
    notifier = services.start_notifier(b.work, b.work / "accept.db", closed.port)
    try:
        for svc in (ceiling, notifier):
            b.loader.post(svc.port, p.connections, p.warmup_seconds)
        for _ in range(p.rounds):
            for svc, f in ((ceiling, c), (notifier, n)):
                f.add(*post_round(b, svc, p.connections, p.round_seconds))
            b.log(
                f"  round: ceiling {c.rps.values[-1]:,.0f} req/s, "
                f"notifier {n.rps.values[-1]:,.0f} req/s"
            )
        return workload.pending_count(notifier.db) if notifier.db else 0
    finally:
        notifier.stop()
        ceiling.stop()
        closed.close()


def _lines(b: Bench, c: AppFigures, n: AppFigures, pending: int) -> list[str]:
    p = b.plan
    paired = Figure([ratio(x, y) for x, y in zip(n.rps.values, c.rps.values, strict=True)])
    header = [
        "app",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "server CPU % of a core",
        "CPU ms per request",
        "errors",
        "other load %",
    ]
    rows = [
        [
            label,
            f.rps.show(),
            f.p50.show(1),
            f.p99.show(1),
            f.max.show(0),
            f.cpu.show(),
            f.cpu_ms.show(3),
            f.errors.show(),
            f.foreign.show(),
        ]
        for label, f in (("ceiling", c), ("notifier", n))
    ]
    return [
        f"{tool_name(b.loader.tool)} at {p.connections} keep-alive connections, "
        f"{p.rounds} rounds of "
        f"{p.round_seconds:g} s, ceiling and notifier alternating (after a "
        f"{p.warmup_seconds:g} s warm-up each). notifier commits every notification",
        "(WAL, `synchronous=FULL`, group commit) before its `202`.",
        "",
        "Delivery is kept out of the way by pointing `NOTIFIER_SMTP_PORT` at a **closed",
        "port** (bound, never listening): the first claimed batch fails with a relay fault,",
        "the circuit breaker opens and from then on only one probe message goes out every",
        "2 s or more, so nothing competes with accepting. A stalling sink was the other",
        "option; it would hold 16 sends open but adds a process on a 2-core machine for",
        "nothing. Accepted notifications pile up as pending "
        f"({pending:,} at the end), which is part of the cost being measured.",
        "",
        *table(header, rows),
        "",
        f"Throughput ratio {num(_rps_ratio(c, n), 3)} (per-round pairs {paired.show(3)}); "
        f"p99 ratio {num(_p99_ratio(c, n), 2)}.",
    ]


def _rps_ratio(c: AppFigures, n: AppFigures) -> float:
    return ratio(n.rps.median, c.rps.median)


def _p99_ratio(c: AppFigures, n: AppFigures) -> float:
    return ratio(n.p99.median, c.p99.median)


def _rows(p: Plan, c: AppFigures, n: AppFigures) -> list[Row]:
    rps_ratio, p99_ratio = _rps_ratio(c, n), _p99_ratio(c, n)
    return [
        Row(
            "1",
            f"accept req/s at {p.connections} connections",
            n.rps.show(),
            c.rps.show(),
            num(rps_ratio, 3),
            ">= 0.90",
            rps_ratio >= 0.90,
        ),
        Row(
            "1",
            "accept p99 latency (ms)",
            n.p99.show(1),
            c.p99.show(1),
            num(p99_ratio, 2),
            "<= 2.0",
            p99_ratio <= 2.0,
        ),
    ]
