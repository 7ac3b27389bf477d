"""What every section is given (the plan, the run's context) and what it returns."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Protocol

from benchmarks import services
from benchmarks.load import Loader, LoadResult
from benchmarks.measure import LoadWatch, snapshot


@dataclass(frozen=True)
class Plan:
    quick: bool
    rounds: int = 5
    round_seconds: float = 5.0
    warmup_seconds: float = 2.0
    connections: int = 64
    check_connections: tuple[int, ...] = (16, 64, 128)
    cross_check_connections: tuple[int, ...] = (32, 64)
    check_rounds: int = 3
    check_seconds: float = 3.0
    delivery_rounds: int = 3
    delivery_backlog: int = 15_000
    delivery_window: float = 4.0
    #: An extra notifier run at this send concurrency (0: none), to show what limits it.
    delivery_wide_concurrency: int = 64
    send_concurrency: int = 16
    e2e_count: int = 20_000
    e2e_rounds: int = 3
    blocked_posts: int = 10_000
    blocked_concurrency: tuple[int, ...] = (16, 1024)
    blocked_rounds: int = 3
    blocked_seconds: float = 5.0
    blocked_delay: float = 0.2
    rss_pending: int = 100_000
    rss_rounds: int = 2
    terminal_rows: int = 1_000_000
    claim_due: int = 10_000
    claim_rounds: int = 3
    profile_seconds: float = 8.0
    #: Section 8: calls timed per in-process round; the backlog of due low priority
    #: notifications, and the high priority ones posted at a steady rate for a while.
    render_loops: int = 2_000
    priority_backlog: int = 20_000
    priority_rounds: int = 3
    priority_rate: float = 20.0
    priority_seconds: float = 3.0
    #: Longest wait for the rest of the machine to calm down before a section.
    quiet_patience: float = 60.0

    @classmethod
    def full(cls) -> Plan:
        return cls(quick=False)

    @classmethod
    def smoke(cls) -> Plan:
        return cls(
            quick=True,
            rounds=2,
            round_seconds=2.0,
            warmup_seconds=1.0,
            check_connections=(64,),
            cross_check_connections=(64,),
            check_rounds=1,
            check_seconds=2.0,
            delivery_rounds=1,
            delivery_backlog=4_000,
            delivery_window=2.0,
            delivery_wide_concurrency=0,
            e2e_count=2_000,
            e2e_rounds=1,
            blocked_posts=2_000,
            blocked_concurrency=(16,),
            blocked_rounds=1,
            blocked_seconds=2.0,
            rss_pending=10_000,
            rss_rounds=1,
            terminal_rows=100_000,
            claim_due=2_000,
            claim_rounds=1,
            profile_seconds=3.0,
            render_loops=300,
            priority_backlog=5_000,
            priority_rounds=1,
            priority_seconds=1.0,
            quiet_patience=10.0,
        )


@dataclass(frozen=True)
class Bench:
    """What every section runs with: the plan, a scratch directory, the load generator."""

    plan: Plan
    work: Path
    out: Path
    loader: Loader
    watch: LoadWatch
    log: Callable[[str], None]


@dataclass(frozen=True)
class Row:
    """One line of the summary table."""

    target: str
    figure: str
    notifier: str
    baseline: str
    ratio: str
    goal: str
    met: bool | None


@dataclass(frozen=True)
class Section:
    """One section of the report: its Markdown and its summary rows."""

    key: str
    title: str
    lines: tuple[str, ...]
    rows: tuple[Row, ...] = ()


class Result(Protocol):
    """What a section returns: its own figures, and its part of the report."""

    @property
    def section(self) -> Section: ...


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def paragraph(text: str) -> list[str]:
    """``text`` as the report's lines of Markdown, wrapped at 88 characters."""
    return textwrap.wrap(text, 88, break_long_words=False, break_on_hyphens=False)


def post_round(
    b: Bench, svc: services.HttpService, connections: int, seconds: float, tool: str | None = None
) -> tuple[LoadResult, float, float]:
    """One POST load round: the result, the server's CPU (cores) and the foreign load."""
    a = snapshot()
    result = b.loader.post(svc.port, connections, seconds, tool=tool, server=svc.proc)
    foreign = b.watch.record(svc.label, a, snapshot())
    return result, result.server_cores, foreign


def tool_name(tool: str) -> str:
    return "wrk" if tool == "wrk" else "Python raw-socket generator"


def package_version(package: str) -> str | None:
    """The installed version of ``package``, or ``None`` when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
