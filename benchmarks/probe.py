"""Paced probes of a live notifier: ``GET /healthz`` and a status read, while it delivers."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks import procs, services
from benchmarks.load import LoadResult, parse_python
from benchmarks.measure import Figure
from benchmarks.section import Bench


@dataclass(frozen=True)
class PhaseFigures:
    """The probes' rounds in one phase (idle or busy)."""

    #: DATA replies the sink held, and SMTP connections open, sampled during the probes.
    in_flight: Figure = field(default_factory=Figure)
    open: Figure = field(default_factory=Figure)
    #: Delivered/s, and the backlog still undelivered when the round began.
    rate: Figure = field(default_factory=Figure)
    backlog: Figure = field(default_factory=Figure)
    health_p50: Figure = field(default_factory=Figure)
    health_p99: Figure = field(default_factory=Figure)
    health_max: Figure = field(default_factory=Figure)
    status_p50: Figure = field(default_factory=Figure)
    status_p99: Figure = field(default_factory=Figure)
    status_max: Figure = field(default_factory=Figure)
    #: notifier's CPU, % of a core.
    cpu: Figure = field(default_factory=Figure)

    def add_probes(self, health: LoadResult, status: LoadResult) -> None:
        self.health_p50.add(health.p50_ms)
        self.health_p99.add(health.p99_ms)
        self.health_max.add(health.max_ms)
        self.status_p50.add(status.p50_ms)
        self.status_p99.add(status.p99_ms)
        self.status_max.add(status.max_ms)


def probe(
    b: Bench, port: int, seconds: float, ids: list[str], tag: str, during: Callable[[], None]
) -> tuple[LoadResult, LoadResult]:
    """GET /healthz and GET /v1/notifications/{id}, paced, two connections each, at once."""
    paths = b.work / f"probe-{tag}.paths"
    paths.write_text("".join(f"/v1/notifications/{i}\n" for i in ids))
    outs = {name: b.work / f"probe-{tag}-{name}.json" for name in ("health", "status")}
    argvs = {
        "health": b.loader.python_argv(
            port, 2, outs["health"], seconds=seconds, path="/healthz", post=False, rate=100
        ),
        "status": b.loader.python_argv(
            port, 2, outs["status"], seconds=seconds, post=False, paths_file=paths, rate=100
        ),
    }
    running = {
        name: procs.Proc(
            "latency probe (python load generator, paced)",
            argv,
            log=b.work / f"probe-{tag}-{name}.log",
        ).start()
        for name, argv in argvs.items()
    }
    give_up = time.monotonic() + seconds + 60
    while any(proc.alive() for proc in running.values()) and time.monotonic() < give_up:
        during()
        time.sleep(0.25)
    results = {}
    for name, proc in running.items():
        proc.stop()
        results[name] = parse_python(json.loads(outs[name].read_text()))
    return results["health"], results["status"]


def _sample_sink(sink: services.Sink, into: list[tuple[int, int, int, int]]) -> None:
    into.append(sink.counts())


def probe_rounds(
    b: Bench,
    notifier: services.HttpService,
    sink: services.Sink,
    phase: str,
    ids: list[str],
    rounds: int,
    target_count: int,
    into: PhaseFigures,
) -> None:
    """``rounds`` rounds of probes, sampling the sink meanwhile; ``target_count`` is all sent."""
    for r in range(rounds):
        count0, _ = sink.count()
        t0 = time.monotonic()
        cpu0 = notifier.proc.cpu_seconds()
        samples: list[tuple[int, int, int, int]] = []
        health, status = probe(
            b,
            notifier.port,
            b.plan.blocked_seconds,
            ids,
            f"{phase}-{r}",
            during=functools.partial(_sample_sink, sink, samples),
        )
        cpu1 = notifier.proc.cpu_seconds()
        count1, _ = sink.count()
        t1 = time.monotonic()
        rate = (count1 - count0) / (t1 - t0)
        backlog = max(0, target_count - count0)
        into.in_flight.add(sum(s[3] for s in samples) / max(1, len(samples)))
        into.open.add(sum(s[2] for s in samples) / max(1, len(samples)))
        into.rate.add(rate)
        into.backlog.add(float(backlog))
        into.add_probes(health, status)
        into.cpu.add(100 * (cpu1 - cpu0) / (t1 - t0))
        b.log(
            f"  {phase}: healthz p99 {health.p99_ms:.2f} ms, status p99 {status.p99_ms:.2f} ms, "
            f"{rate:,.0f} msg/s, {backlog:,} undelivered"
        )
