"""Figures over rounds (median, min-max), and the machine's own load while we measure."""

from __future__ import annotations

import math
import os
import resource
import statistics
import time
from dataclasses import dataclass, field

from benchmarks import procs

CORES = os.cpu_count() or 1


@dataclass
class Figure:
    """One measured quantity, one value per round."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        finite = [v for v in self.values if math.isfinite(v)]
        return statistics.median(finite) if finite else math.nan

    @property
    def low(self) -> float:
        finite = [v for v in self.values if math.isfinite(v)]
        return min(finite) if finite else math.nan

    @property
    def high(self) -> float:
        finite = [v for v in self.values if math.isfinite(v)]
        return max(finite) if finite else math.nan

    def show(self, digits: int = 0) -> str:
        """``median (min-max)``, or one value when there was one round."""
        if not self.values:
            return "n/a"
        if len(self.values) == 1:
            return num(self.median, digits)
        return f"{num(self.median, digits)} ({num(self.low, digits)}-{num(self.high, digits)})"


def num(value: float, digits: int = 0) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def ratio(a: float, b: float) -> float:
    return a / b if b and math.isfinite(a) and math.isfinite(b) else math.nan


def _busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / procs.CLOCK_TICKS


def _ours_seconds() -> float:
    """CPU of this runner, its reaped children and its live children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    readers = [proc.cpu_seconds for proc in list(procs._RUNNING)] + list(procs.ALSO_OURS)
    for read in readers:
        try:
            total += read()
        except (OSError, IndexError, ValueError):
            continue
    return total


@dataclass
class Snapshot:
    at: float
    busy: float
    ours: float


def snapshot() -> Snapshot:
    return Snapshot(time.monotonic(), _busy_seconds(), _ours_seconds())


def foreign_load(a: Snapshot, b: Snapshot) -> float:
    """Share of the machine (all cores = 1.0) used by processes that are not ours."""
    elapsed = b.at - a.at
    if elapsed <= 0:
        return math.nan
    return max(0.0, ((b.busy - a.busy) - (b.ours - a.ours)) / (elapsed * CORES))


class LoadWatch:
    """Tracks how busy the rest of the machine was during the measured windows."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self.waited: dict[str, float] = {}

    def quiet(self, phase: str, *, limit: float = 0.10, patience: float = 60.0) -> None:
        """Wait (at most ``patience`` s) until other processes use < ``limit`` of the machine."""
        started = time.monotonic()
        while True:
            a = snapshot()
            time.sleep(1.0)
            load = foreign_load(a, snapshot())
            if load < limit or time.monotonic() - started >= patience:
                self.waited[phase] = time.monotonic() - started
                return

    def record(self, phase: str, a: Snapshot, b: Snapshot) -> float:
        load = foreign_load(a, b)
        self.samples.setdefault(phase, []).append(load)
        return load

    def worst(self, phase: str) -> float:
        values = self.samples.get(phase, [])
        return max(values) if values else math.nan
