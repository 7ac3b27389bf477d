"""Section 5a: notifier's memory as pending notifications pile up."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from benchmarks import procs, services, workload
from benchmarks.measure import Figure
from benchmarks.section import Bench, Plan, Row, Section, table

#: Steps from 0 to ``Plan.rss_pending`` pending, RSS read after each.
STEPS = 4


def _checkpoints() -> tuple[Figure, ...]:
    return tuple(Figure() for _ in range(STEPS + 2))


@dataclass(frozen=True)
class Figures:
    """Memory figures (MB, but ``pending``), one value per round."""

    #: RSS at start, after the warm-up, and after each step.
    checkpoints: tuple[Figure, ...] = field(default_factory=_checkpoints)
    #: RSS growth from the warm-up to the last step.
    growth: Figure = field(default_factory=Figure)
    #: Peak RSS (VmHWM).
    peak: Figure = field(default_factory=Figure)
    #: Notifications pending at the end.
    pending: Figure = field(default_factory=Figure)


@dataclass(frozen=True)
class Memory:
    figures: Figures
    section: Section


def measure(b: Bench) -> Memory:
    p = b.plan
    f = Figures()
    closed = procs.ClosedPort()
    services.name_port(closed.port, "closed-port")
    b.watch.quiet("memory", patience=p.quiet_patience)
    try:
        for r in range(p.rss_rounds):
            _measure_round(b, r, closed.port, f)
    finally:
        closed.close()
    title = f"5a. Memory from 0 to {p.rss_pending:,} pending"
    section = Section("5a", title, tuple(_lines(p, f)), (_row(p, f),))
    return Memory(f, section)


def _measure_round(b: Bench, r: int, smtp_port: int, f: Figures) -> None:
    """A fresh store fed step by step, RSS read 1 s after each step's last answer."""
    p = b.plan
    db = b.work / f"memory-{r}.db"
    notifier = services.start_notifier(b.work, db, smtp_port)
    try:
        rss = [notifier.proc.rss_mb()]
        b.loader.python(notifier.port, p.connections, count=1000, timeout=300)
        time.sleep(1.0)
        rss.append(notifier.proc.rss_mb())
        for _ in range(STEPS):
            b.loader.python(notifier.port, p.connections, count=p.rss_pending // STEPS, timeout=600)
            time.sleep(1.0)
            rss.append(notifier.proc.rss_mb())
        f.peak.add(notifier.proc.peak_rss_mb())
        f.pending.add(float(workload.pending_count(db)))
    finally:
        notifier.stop()
    for checkpoint, value in zip(f.checkpoints, rss, strict=True):
        checkpoint.add(value)
    f.growth.add(rss[-1] - rss[1])
    b.log(f"  round {r + 1}: RSS {rss[1]:.1f} -> {rss[-1]:.1f} MB")


def _lines(p: Plan, f: Figures) -> list[str]:
    labels = ["at start", 'after 1,000 warm-up POSTs ("0 pending")'] + [
        f"+{p.rss_pending * (i + 1) // STEPS:,} pending" for i in range(STEPS)
    ]
    rows = [[label, c.show(1)] for label, c in zip(labels, f.checkpoints, strict=True)]
    return [
        "notifier with SMTP on a closed port (nothing is delivered, every accepted",
        "notification stays pending), fed by the Python generator at "
        f"{p.connections} connections; VmRSS",
        "from /proc after each step (1 s after the last answer). "
        f"{p.rss_rounds} round(s), a fresh store each.",
        "",
        *table(["point", "RSS MB"], rows),
        "",
        f"Growth {f.growth.show(1)} MB; peak RSS (VmHWM) {f.peak.show(1)} MB; "
        f"pending at the end {f.pending.show()}.",
    ]


def _row(p: Plan, f: Figures) -> Row:
    return Row(
        "5",
        f"RSS growth, 0 to {p.rss_pending:,} pending (MB)",
        f.growth.show(1),
        "",
        "",
        "< 50 MB",
        f.growth.median < 50,
    )
