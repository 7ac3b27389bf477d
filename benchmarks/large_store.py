"""Section 5b: accept and claim rates with many terminal rows in the store, against an empty one."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import procs, services, workload
from benchmarks.measure import Figure, num, ratio
from benchmarks.section import Bench, Plan, Row, Section, post_round, table
from notifier.store import SQLiteStore

#: The two stores, in the order they are measured.
STORES = ("empty", "terminal")


@dataclass(frozen=True)
class StoreFigures:
    """One store (empty, or with the terminal rows), over the rounds."""

    accept_rps: Figure = field(default_factory=Figure)
    accept_p99: Figure = field(default_factory=Figure)
    #: Rows/s ``SQLiteStore.claim`` drained.
    claimed_rps: Figure = field(default_factory=Figure)
    #: Time from starting notifier on this store to its first healthy answer, s.
    start_seconds: float = math.nan


@dataclass(frozen=True)
class Seeding:
    """How the large store was made, and what was left of it at the end."""

    seconds: float
    size_mb: float
    #: ``sent`` rows in the large store after the runs.
    remaining: int


@dataclass(frozen=True)
class LargeStore:
    #: By store (``empty``, ``terminal``).
    stores: dict[str, StoreFigures]
    seeding: Seeding
    section: Section


def measure(b: Bench) -> LargeStore:
    p = b.plan
    big, empty = b.work / "terminal.db", b.work / "empty.db"
    started = time.monotonic()
    workload.seed_terminal(big, p.terminal_rows)
    seed_seconds = time.monotonic() - started
    workload.create_schema(empty)
    size_mb = big.stat().st_size / 1e6
    b.log(f"  seeded {p.terminal_rows:,} terminal rows in {seed_seconds:.0f} s ({size_mb:,.0f} MB)")
    dbs = {"empty": empty, "terminal": big}
    claims = _measure_claims(b, dbs)
    stores = _measure_accepts(b, dbs, claims)
    seeding = Seeding(seed_seconds, size_mb, workload.count_status(big, "sent"))
    title = f"5b. Cost with {p.terminal_rows:,} terminal rows in the store"
    section = Section("5b", title, tuple(_lines(p, stores, seeding)), tuple(_rows(p, stores)))
    return LargeStore(stores, seeding, section)


async def _claim_all(db: Path, limit: int, expect: int) -> tuple[int, float]:
    store = SQLiteStore(db)
    await store.open()
    try:
        claimed = 0
        started = time.perf_counter()
        give_up = started + 300
        while claimed < expect and time.perf_counter() < give_up:
            now = time.time()
            got = await store.claim(owner="bench", now=now, lease_until=now + 900, limit=limit)
            if not got:
                break
            claimed += len(got)
        return claimed, time.perf_counter() - started
    finally:
        await store.close()


def claim_rate(db: Path, due: int, limit: int) -> float:
    """Rows/s claimed by ``SQLiteStore.claim`` (batches of ``limit``) from ``due`` queued."""
    workload.seed_queued(db, due)
    claimed, seconds = asyncio.run(_claim_all(db, limit, due))
    connection = sqlite3.connect(db)
    try:
        with connection:
            connection.execute("DELETE FROM notifications WHERE status = 'sending'")
    finally:
        connection.close()
    return claimed / seconds


def _measure_claims(b: Bench, dbs: dict[str, Path]) -> dict[str, Figure]:
    """Claim rates from each store, rounds alternating."""
    p = b.plan
    claims = {key: Figure() for key in STORES}
    b.watch.quiet("cost", patience=p.quiet_patience)
    for _ in range(p.claim_rounds):
        for key in STORES:
            claims[key].add(claim_rate(dbs[key], p.claim_due, p.send_concurrency))
    b.log(f"  claims: empty {claims['empty'].show()}, terminal {claims['terminal'].show()} rows/s")
    return claims


def _measure_accepts(
    b: Bench, dbs: dict[str, Path], claims: dict[str, Figure]
) -> dict[str, StoreFigures]:
    """The POST load against a notifier on each store, side by side, rounds alternating."""
    p = b.plan
    closed = procs.ClosedPort()
    services.name_port(closed.port, "closed-port")
    start_seconds: dict[str, float] = {}
    running: dict[str, services.HttpService] = {}
    accepts = {key: Figure() for key in STORES}
    p99s = {key: Figure() for key in STORES}
    try:
        for key in STORES:
            t0 = time.monotonic()
            running[key] = services.start_notifier(
                b.work, dbs[key], closed.port, label=f"notifier-{key}"
            )
            start_seconds[key] = time.monotonic() - t0
            b.loader.post(running[key].port, p.connections, p.warmup_seconds)
        for _ in range(p.rounds):
            for key, svc in running.items():
                result, _, _ = post_round(b, svc, p.connections, p.round_seconds)
                accepts[key].add(result.rps)
                p99s[key].add(result.p99_ms)
    finally:
        for svc in running.values():
            svc.stop()
        closed.close()
    return {
        key: StoreFigures(accepts[key], p99s[key], claims[key], start_seconds.get(key, math.nan))
        for key in STORES
    }


def _lines(p: Plan, stores: dict[str, StoreFigures], seeding: Seeding) -> list[str]:
    rows_k = f"{p.terminal_rows:,}"
    rows = [
        [
            key,
            f.accept_rps.show(),
            f.accept_p99.show(1),
            f.claimed_rps.show(),
            num(f.start_seconds, 2),
        ]
        for key, f in stores.items()
    ]
    remaining = seeding.remaining
    return [
        f"{rows_k} `sent` rows (`visible_at` NULL, both acknowledgments written) are inserted",
        "directly with `executemany` into the schema notifier's own store creates "
        f"({seeding.seconds:.0f} s, {seeding.size_mb:,.0f} MB).",
        f"Claim: `SQLiteStore.claim` in batches of {p.send_concurrency} (the dispatcher's "
        f"batch at concurrency {p.send_concurrency}) drains",
        f"{p.claim_due:,} freshly queued notifications, each batch its own committed "
        "transaction, as in the",
        "dispatcher; the claimed rows are deleted after each round. Accept: the same POST",
        f"load as target 1 ({p.connections} connections, {p.rounds} rounds of "
        f"{p.round_seconds:g} s), against two notifier",
        "processes started side by side on the two stores, rounds alternating.",
        "",
        *table(["store", "accept req/s", "accept p99 ms", "claimed rows/s", "start-up s"], rows),
        "",
        f"`sent` rows in the large store after the runs: {remaining:,}"
        + (
            " (all still there: they are younger than `NOTIFIER_RETENTION`, so the retention "
            "purge had nothing to do)."
            if remaining >= p.terminal_rows
            else f" (**fewer than the {rows_k} seeded**: something purged them meanwhile)."
        ),
    ]


def _rows(p: Plan, stores: dict[str, StoreFigures]) -> list[Row]:
    rows_k = f"{p.terminal_rows:,}"
    empty, terminal = stores["empty"], stores["terminal"]
    accept_ratio = ratio(terminal.accept_rps.median, empty.accept_rps.median)
    claim_ratio = ratio(terminal.claimed_rps.median, empty.claimed_rps.median)
    return [
        Row(
            "5",
            f"accept req/s with {rows_k} terminal rows vs empty",
            terminal.accept_rps.show(),
            empty.accept_rps.show(),
            num(accept_ratio, 3),
            ">= 0.90",
            accept_ratio >= 0.90,
        ),
        Row(
            "5",
            f"claimed rows/s with {rows_k} terminal rows vs empty",
            terminal.claimed_rps.show(),
            empty.claimed_rps.show(),
            num(claim_ratio, 3),
            ">= 0.90",
            claim_ratio >= 0.90,
        ),
    ]
