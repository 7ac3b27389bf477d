"""Section 7: notifier on PostgreSQL with one and two replicas, next to SQLite and the ceiling.

PostgreSQL is a throwaway server of the section's own (``tests/postgres.py``: ``fsync``,
``synchronous_commit`` and ``full_page_writes`` on, as in production) on this machine,
so the load generator, the replicas and PostgreSQL share its cores. The CPU each of
them used is measured, and from the CPU per message a projection is drawn for replicas
on machines of their own.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import tests.postgres as pg
from benchmarks import procs, services, workload
from benchmarks.delivery_window import SenderFigures, measure_window, sender_window
from benchmarks.load import CpuSource, LoadResult
from benchmarks.measure import CORES, Figure, num, ratio, snapshot
from benchmarks.section import Bench, Row, Section, table

TITLE = "7. Scale-out: PostgreSQL with one and two replicas, SQLite, the ceiling"

#: What each configuration is, in the tables' order.
ACCEPTORS = {
    "ceiling": "ceiling app",
    "sqlite": "notifier on SQLite",
    "pg1": "notifier on PostgreSQL, 1 replica",
    "pg2": "notifier on PostgreSQL, 2 replicas",
}
SENDERS = {
    "render": "bare aiosmtplib, rendering each message",
    "sqlite": "notifier on SQLite",
    "pg1": "notifier on PostgreSQL, 1 replica",
    "pg2": "notifier on PostgreSQL, 2 replicas",
}
#: Replicas of each notifier configuration; SQLite is always one process.
REPLICAS = {"sqlite": 1, "pg1": 1, "pg2": 2}
#: Targets of issue 15: one replica on PostgreSQL against one on SQLite, two against one.
PG_VS_SQLITE = 0.8
TWO_VS_ONE = 1.3
#: Replica counts of the projection.
PROJECTED = (2, 4, 8)


class CpuSum:
    """The CPU of several processes together (the replicas of one configuration)."""

    def __init__(self, sources: Sequence[CpuSource]) -> None:
        self.sources = sources

    def cpu_seconds(self) -> float:
        return sum(source.cpu_seconds() for source in self.sources)


class PostgresCpu:
    """The CPU of the PostgreSQL server: its postmaster and every process it forked."""

    def __init__(self, server: pg.PostgresServer) -> None:
        self.pid = int((server.data / "postmaster.pid").read_text().split()[0])

    def cpu_seconds(self) -> float:
        return procs.tree_cpu_seconds(self.pid)


@dataclass(frozen=True)
class AcceptFigures:
    """One configuration under the POST load, over the rounds."""

    rps: Figure = field(default_factory=Figure)
    p50: Figure = field(default_factory=Figure)
    p99: Figure = field(default_factory=Figure)
    errors: Figure = field(default_factory=Figure)
    #: CPU ms per request of the app (all replicas) and of PostgreSQL.
    app_ms: Figure = field(default_factory=Figure)
    postgres_ms: Figure = field(default_factory=Figure)
    #: Cores used over the window by the app, PostgreSQL and the load generator.
    app_cores: Figure = field(default_factory=Figure)
    postgres_cores: Figure = field(default_factory=Figure)
    loadgen_cores: Figure = field(default_factory=Figure)
    foreign: Figure = field(default_factory=Figure)

    def add(self, result: LoadResult, foreign: float) -> None:
        postgres = result.cores["postgres"]
        self.rps.add(result.rps)
        self.p50.add(result.p50_ms)
        self.p99.add(result.p99_ms)
        self.errors.add(float(result.errors))
        self.app_ms.add(1000 * result.server_cores / result.rps if result.rps else math.nan)
        self.postgres_ms.add(1000 * postgres / result.rps if result.rps else math.nan)
        self.app_cores.add(result.server_cores)
        self.postgres_cores.add(postgres)
        seconds = result.seconds if result.seconds > 0 else math.nan
        self.loadgen_cores.add(result.client_cpu_seconds / seconds)
        self.foreign.add(100 * foreign)


@dataclass(frozen=True)
class DeliveryFigures(SenderFigures):
    #: PostgreSQL's CPU, ms per delivered message.
    postgres_ms: Figure = field(default_factory=Figure)


@dataclass(frozen=True)
class ScaleOut:
    accept: dict[str, AcceptFigures]
    delivery: dict[str, DeliveryFigures]
    section: Section


def measure(b: Bench) -> ScaleOut:
    accept = {kind: AcceptFigures() for kind in ACCEPTORS}
    delivery = {kind: DeliveryFigures() for kind in SENDERS}
    with postgres_server(b) as server:
        postgres, databases = PostgresCpu(server), Databases(server)
        _measure_accept(b, databases, postgres, accept)
        _measure_delivery(b, databases, postgres, delivery)
    lines = _lines(b, accept, delivery)
    return ScaleOut(accept, delivery, Section("7", TITLE, tuple(lines), tuple(_rows(accept))))


@contextmanager
def postgres_server(b: Bench) -> Iterator[pg.PostgresServer]:
    """A throwaway PostgreSQL server for one section (7, 8), its CPU counted as the run's."""
    server = pg.PostgresServer()
    server.start()
    b.log(f"  PostgreSQL on port {server.port}, started in {server.started_in:.1f} s")
    procs.ALSO_OURS.append(PostgresCpu(server).cpu_seconds)
    try:
        yield server
    finally:
        procs.ALSO_OURS.clear()
        server.stop()


class Databases:
    """Fresh databases on a section's server, one per configuration and run."""

    def __init__(self, server: pg.PostgresServer) -> None:
        self.server = server
        self.made = 0

    def new(self) -> str:
        self.made += 1
        name = f"bench_{self.made}"
        pg.create_database(self.server.admin_url, name)
        return self.server.url(name)


def _start_replicas(
    b: Bench, kind: str, smtp_port: int, *, url: str | None, run: str
) -> list[services.HttpService]:
    """``REPLICAS[kind]`` notifier processes at once; on ``url``'s database, or a new SQLite
    file when ``url`` is ``None``. Each has its own acknowledgment file and log."""
    count = REPLICAS[kind]

    def start(index: int) -> services.HttpService:
        name = b.work / f"{run}-{kind}-{index}.db"  # the SQLite file, or just a name
        extra = {} if url is None else {"NOTIFIER_DATABASE_URL": url}
        return services.start_notifier(
            b.work,
            name,
            smtp_port,
            concurrency=b.plan.send_concurrency,
            label=f"notifier ({ACCEPTORS[kind]})",
            extra_env=extra,
        )

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(start, range(count)))


def _measure_accept(
    b: Bench,
    databases: Databases,
    postgres: PostgresCpu,
    figures: dict[str, AcceptFigures],
) -> None:
    """Rounds over the four configurations in turn; delivery out of the way (a closed port,
    as in section 1)."""
    p = b.plan
    closed = procs.ClosedPort()
    services.name_port(closed.port, "closed-port")
    b.watch.quiet("scale-out", patience=p.quiet_patience)
    apps: dict[str, list[services.HttpService]] = {}
    try:
        apps["ceiling"] = [services.start_ceiling(b.work)]
        apps["sqlite"] = _start_replicas(b, "sqlite", closed.port, url=None, run="accept")
        for kind in ("pg1", "pg2"):
            url = databases.new()
            apps[kind] = _start_replicas(b, kind, closed.port, url=url, run="accept")
        for replicas in apps.values():
            b.loader.python([s.port for s in replicas], p.connections, seconds=p.warmup_seconds)
        for _ in range(p.rounds):
            for kind, replicas in apps.items():
                a = snapshot()
                result = b.loader.python(
                    [s.port for s in replicas],
                    p.connections,
                    seconds=p.round_seconds,
                    server=CpuSum([s.proc for s in replicas]),
                    meters={"postgres": postgres},
                )
                figures[kind].add(result, b.watch.record("scale-out", a, snapshot()))
            b.log(
                "  accept round: "
                + ", ".join(f"{kind} {f.rps.values[-1]:,.0f} req/s" for kind, f in figures.items())
            )
    finally:
        for replicas in apps.values():
            for service in replicas:
                service.stop()
        closed.close()


def _measure_delivery(
    b: Bench,
    databases: Databases,
    postgres: PostgresCpu,
    figures: dict[str, DeliveryFigures],
) -> None:
    """Each round: a fresh backlog delivered by each notifier configuration into the sink,
    and the bare sender as the ceiling."""
    p = b.plan
    warm = _warm(p.delivery_backlog)
    sink = services.Sink(b.work)
    try:
        for r in range(p.delivery_rounds):
            a = snapshot()
            window, _ = sender_window(b, "render", sink, sink.smtp_port, warm=min(warm, 200))
            figures["render"].add(window)
            figures["render"].foreign.add(100 * b.watch.record("scale-out", a, snapshot()))
            for kind in ("sqlite", "pg1", "pg2"):
                _delivery_run(b, kind, f"delivery{r}", sink, databases, postgres, figures, warm)
            b.log(
                "  delivery round: "
                + ", ".join(f"{kind} {f.rate.values[-1]:,.0f} msg/s" for kind, f in figures.items())
            )
    finally:
        sink.stop()


def _warm(backlog: int) -> int:
    """Messages at the sink before the window opens (connections warm), as in section 2."""
    return min(1000, backlog // 10)


def _delivery_run(
    b: Bench,
    kind: str,
    run: str,
    sink: services.Sink,
    databases: Databases,
    postgres: PostgresCpu,
    figures: dict[str, DeliveryFigures],
    warm: int,
) -> None:
    p = b.plan
    if kind == "sqlite":
        url = None
        workload.seed_queued(b.work / f"{run}-{kind}-0.db", p.delivery_backlog)
    else:
        url = databases.new()
        workload.seed_queued_postgres(url, p.delivery_backlog)
    a = snapshot()
    base, _ = sink.count()
    replicas = _start_replicas(b, kind, sink.smtp_port, url=url, run=run)
    try:
        window = measure_window(
            sink,
            CpuSum([s.proc for s in replicas]),
            start_after=base + warm,
            seconds=p.delivery_window,
            stop_at=base + int(p.delivery_backlog * 0.95),
            meters={"postgres": postgres},
        )
    finally:
        for service in replicas:
            service.stop()
    figures[kind].add(window)
    figures[kind].postgres_ms.add(window.meters_ms["postgres"])
    figures[kind].foreign.add(100 * b.watch.record("scale-out", a, snapshot()))


def _lines(
    b: Bench, accept: dict[str, AcceptFigures], delivery: dict[str, DeliveryFigures]
) -> list[str]:
    p = b.plan
    warm = _warm(p.delivery_backlog)
    ceiling = accept["ceiling"].rps.median
    accept_rows = [
        [
            text,
            f.rps.show(),
            num(ratio(f.rps.median, ceiling), 3),
            f.p50.show(1),
            f.p99.show(1),
            f.app_ms.show(3),
            f.postgres_ms.show(3) if kind.startswith("pg") else "-",
            f.app_cores.show(2),
            f.postgres_cores.show(2),
            f.loadgen_cores.show(2),
            num(CORES - f.app_cores.median - f.postgres_cores.median - f.loadgen_cores.median, 2),
            f.errors.show(),
        ]
        for kind, text in ACCEPTORS.items()
        for f in (accept[kind],)
    ]
    render = delivery["render"].rate.median
    delivery_rows = [
        [
            text,
            f.rate.show(),
            num(ratio(f.rate.median, render), 3),
            f.cpu_ms.show(3),
            f.postgres_ms.show(3) if kind.startswith("pg") else "-",
            f.sink_ms.show(3),
            f.foreign.show(),
        ]
        for kind, text in SENDERS.items()
        for f in (delivery[kind],)
    ]
    return [
        f"PostgreSQL {_server_version()} runs on this machine (`tests/postgres.py`: `fsync`,",
        "`synchronous_commit` and `full_page_writes` on), a database of its own for each",
        "configuration and run. Each replica is a `notifier serve` process with the",
        "environment of section 1; with two, the Python load generator deals its",
        f"{p.connections} connections out over both ports in turn, as a round-robin",
        "balancer would.",
        "",
        "The driver is psycopg 3 (pooled, statements prepared once a connection has run",
        "them five times). asyncpg was measured faster at bulk `executemany` (42.7k against",
        "23.9k rows/s, `../shared/postgres-notes.md`), but notifier never uses it: a drained",
        "batch of inserts, or of outcomes, is one statement over a JSON array. Claims cost",
        "the same with both. psycopg is libpq, so every libpq URL parameter and environment",
        "variable (`sslmode=verify-full`, `sslrootcert`, `PGPASSFILE`, service files) works",
        "as operators know it, where asyncpg reimplements a subset; and behind a PgBouncer in",
        "transaction mode it needs one switch (`NOTIFIER_DATABASE_PREPARED_STATEMENTS=false`).",
        "",
        f"**Accept.** {p.rounds} rounds of {p.round_seconds:g} s over the four in turn, after a "
        f"{p.warmup_seconds:g} s warm-up each; delivery kept out of the way by a closed "
        "port, as in section 1. CPU is measured over each window: notifier's replicas, "
        "PostgreSQL (the postmaster and every process it forked) and the load generator; "
        f'"left" is what remained of the {CORES} cores.',
        "",
        *table(
            [
                "configuration",
                "req/s",
                "/ ceiling",
                "p50 ms",
                "p99 ms",
                "app CPU ms per request",
                "PostgreSQL CPU ms per request",
                "app cores",
                "PostgreSQL cores",
                "load generator cores",
                "left",
                "errors",
            ],
            accept_rows,
        ),
        "",
        f"**Delivery.** {p.delivery_rounds} rounds; each run seeds a fresh backlog of "
        f"{p.delivery_backlog:,} queued notifications and counts at the sink over "
        f"{p.delivery_window:g} s once {warm:,} have arrived, as section 2 does. Each replica "
        f"sends up to {p.send_concurrency} at once (two replicas: twice that). The bare "
        "sender is section 2's.",
        "",
        *table(
            [
                "sender",
                "delivered/s",
                "/ bare sender",
                "sender CPU ms per message",
                "PostgreSQL CPU ms per message",
                "sink CPU ms per message",
                "other load %",
            ],
            delivery_rows,
        ),
        "",
        *_projection(accept, delivery),
    ]


def _server_version() -> str:
    try:
        return str(pg.find_bindir().parent.name)
    except pg.PostgresUnavailable:
        return "?"


def _projection(
    accept: dict[str, AcceptFigures], delivery: dict[str, DeliveryFigures]
) -> list[str]:
    """Replicas on machines of their own against one PostgreSQL, from the CPU per message."""
    app_ms = accept["pg1"].app_ms.median + delivery["pg1"].cpu_ms.median
    postgres_ms = accept["pg1"].postgres_ms.median + delivery["pg1"].postgres_ms.median
    per_replica = 1000 / app_ms if app_ms > 0 else math.nan
    rows = [
        [
            str(n),
            num(n * per_replica),
            num(n * per_replica * postgres_ms / 1000, 1),
        ]
        for n in PROJECTED
    ]
    return [
        "**Projection, on paper.** A notification accepted and delivered costs a replica "
        f"{num(app_ms, 3)} ms of CPU and PostgreSQL {num(postgres_ms, 3)} ms (one replica on "
        "PostgreSQL, accept plus delivery, medians above). A replica is one Python process: "
        f"one core's worth, so about {num(per_replica)} notifications/s each, accepted and "
        "delivered, on a machine of its own. Against one PostgreSQL:",
        "",
        *table(["replicas", "notifications/s", "PostgreSQL cores needed"], rows),
        "",
        "What limits it first: PostgreSQL's CPU, by the last column, once it exceeds the "
        "database machine's cores (its commits are shared, one per drained batch of a "
        "replica, so fsyncs grow with replicas, not with messages); before that, the relay, "
        "which must take N times one replica's sends. The projection assumes the network "
        "adds latency but no CPU, and that PostgreSQL's cost per message stays flat as "
        "replicas are added; this machine cannot check either.",
    ]


def _rows(accept: dict[str, AcceptFigures]) -> list[Row]:
    sqlite, one, two = (accept[k].rps for k in ("sqlite", "pg1", "pg2"))
    pg_vs_sqlite = ratio(one.median, sqlite.median)
    two_vs_one = ratio(two.median, one.median)
    return [
        Row(
            "7",
            "accept req/s, 1 replica on PostgreSQL vs SQLite",
            one.show(),
            sqlite.show(),
            num(pg_vs_sqlite, 3),
            f">= {PG_VS_SQLITE:.2f}",
            pg_vs_sqlite >= PG_VS_SQLITE,
        ),
        Row(
            "7",
            "accept req/s, 2 replicas vs 1 on PostgreSQL",
            two.show(),
            one.show(),
            num(two_vs_one, 3),
            f">= {TWO_VS_ONE:.1f}",
            two_vs_one >= TWO_VS_ONE,
        ),
    ]
