"""Section 0: the load generator saturates the ceiling app before it is trusted with notifier."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmarks import services
from benchmarks.load import wrk_path
from benchmarks.measure import Figure
from benchmarks.section import Bench, Plan, Row, Section, post_round, table, tool_name

TITLE = "0. The load generator is not the bottleneck"


@dataclass(frozen=True)
class GeneratorFigures:
    """One generator at one connection count against the ceiling app, over the rounds."""

    rps: Figure = field(default_factory=Figure)
    p99: Figure = field(default_factory=Figure)
    max: Figure = field(default_factory=Figure)
    #: CPU of the ceiling app and of the generator, % of a core.
    server: Figure = field(default_factory=Figure)
    client: Figure = field(default_factory=Figure)
    foreign: Figure = field(default_factory=Figure)


@dataclass(frozen=True)
class LoadgenCheck:
    #: By generator (``python`` or ``wrk``) and connection count, in the order they ran.
    runs: dict[tuple[str, int], GeneratorFigures]
    section: Section


def measure(b: Bench) -> LoadgenCheck:
    runs = _measure_runs(b)
    section = Section("0", TITLE, tuple(_lines(b, runs)), tuple(_rows(b.plan, runs)))
    return LoadgenCheck(runs, section)


def _planned(b: Bench) -> list[tuple[str, int]]:
    """The chosen generator at each connection count, and the other one as a cross-check."""
    p = b.plan
    other = "wrk" if b.loader.tool == "python" else "python"
    runs = [(b.loader.tool, c) for c in p.check_connections]
    if other == "python" or wrk_path():
        runs += [(other, c) for c in p.cross_check_connections]
    return runs


def _measure_runs(b: Bench) -> dict[tuple[str, int], GeneratorFigures]:
    p = b.plan
    b.watch.quiet("check", patience=p.quiet_patience)
    ceiling = services.start_ceiling(b.work)
    runs: dict[tuple[str, int], GeneratorFigures] = {}
    try:
        b.loader.post(ceiling.port, p.connections, p.warmup_seconds)
        for tool, connections in _planned(b):
            f = runs[tool, connections] = GeneratorFigures()
            for _ in range(p.check_rounds):
                _measure_round(b, ceiling, tool, connections, f)
            b.log(f"  {tool} c={connections}: {f.rps.show()} req/s, ceiling CPU {f.server.show()}%")
    finally:
        ceiling.stop()
    return runs


def _measure_round(
    b: Bench, ceiling: services.HttpService, tool: str, connections: int, f: GeneratorFigures
) -> None:
    result, cpu, load = post_round(b, ceiling, connections, b.plan.check_seconds, tool)
    f.rps.add(result.rps)
    f.p99.add(result.p99_ms)
    f.max.add(result.max_ms)
    f.server.add(100 * cpu)
    f.client.add(100 * result.client_cpu_seconds / result.seconds)
    f.foreign.add(100 * load)


def _lines(b: Bench, runs: dict[tuple[str, int], GeneratorFigures]) -> list[str]:
    header = [
        "generator",
        "connections",
        "ceiling req/s",
        "p99 ms",
        "max ms",
        "ceiling CPU % of a core",
        "generator CPU % of a core",
        "other load % of machine",
    ]
    rows = [
        [
            tool_name(tool),
            str(connections),
            f.rps.show(),
            f.p99.show(1),
            f.max.show(),
            f.server.show(),
            f.client.show(),
            f.foreign.show(),
        ]
        for (tool, connections), f in runs.items()
    ]
    return [
        "The ceiling app (`benchmarks/ceiling.py`) validates notifier's `NotificationRequest`",
        "and answers `202` without storing anything, served by the same uvicorn settings as",
        "`notifier serve`. A load generator is good enough when the ceiling, not the",
        "generator, runs out of CPU: the ceiling's one worker near 100% of a core, the",
        "generator well below, and more connections adding no throughput. Server CPU is",
        "measured over the generator's own window (it prints when the window opens and",
        "closes).",
        "",
        *table(header, rows),
        "",
        f"Every figure below uses the {tool_name(b.loader.tool)} "
        f"(`BENCH_LOADGEN` chooses). wrk is the",
        "cross-check: its throughput agrees, but one wrk instance at 64 connections shows",
        "sporadic 100-400 ms latency outliers that neither wrk at 32 connections nor the",
        "Python generator sees against the same server (running both at once, 32",
        "connections each, their tails agree), so they are the client's, and the latency",
        "figures come from the Python generator.",
    ]


def _rows(p: Plan, runs: dict[tuple[str, int], GeneratorFigures]) -> list[Row]:
    return [
        Row(
            "0",
            f"{tool_name(tool)} saturates the ceiling app ({connections} connections)",
            f"{f.server.show()}%",
            "",
            "",
            "ceiling CPU >= 85% of a core",
            f.server.median >= 85,
        )
        for (tool, connections), f in runs.items()
        if connections == p.connections
    ]
