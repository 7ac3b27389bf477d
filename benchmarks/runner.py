"""``python -m benchmarks``: run every benchmark and write ``benchmarks/RESULTS.md``.

Environment:

- ``BENCH_QUICK=1``: a smoke run of a minute or two (fewer, shorter rounds, smaller counts).
- ``BENCH_ONLY=1,3``: run only these sections (keys ``0 1 2 2b 3 4 5a 5b 6 7 8``).
- ``BENCH_LOADGEN=python``: use the Python generator even when wrk is installed.
- ``BENCH_OUTPUT=path``: write the report there instead of ``benchmarks/RESULTS.md``.

Every process the run starts is stopped before it exits, whatever happens.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TypeVar

from benchmarks import (
    accept,
    cpu_profile,
    delivery,
    end_to_end,
    features,
    large_store,
    loadgen_check,
    memory,
    never_blocked,
    procs,
    relay_latency,
    report,
    scale_out,
)
from benchmarks.load import Loader
from benchmarks.measure import Figure, LoadWatch
from benchmarks.section import Bench, Plan, Result

HERE = Path(__file__).resolve().parent

#: The sections, in the order they run.
KEYS = ("0", "1", "2", "2b", "3", "4", "5a", "5b", "6", "7", "8")

R = TypeVar("R", bound=Result)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


class _Sections:
    """Runs the sections one at a time; a failed one is reported and the rest still run."""

    def __init__(self, bench: Bench, only: list[str], started: float) -> None:
        self.bench = bench
        self.only = only
        self.started = started
        self.results: list[Result] = []
        self.failures: list[str] = []

    def run(self, key: str, measure: Callable[[Bench], R]) -> R | None:
        """``measure``'s result, or ``None`` when the section was left out or failed."""
        assert key in KEYS, key
        if self.only and key not in self.only:
            return None
        _log(f"[{time.monotonic() - self.started:5.0f} s] section {key}")
        try:
            result = measure(self.bench)
        except Exception as exc:  # noqa: BLE001 - one failed section must not stop the rest
            _log(traceback.format_exc())
            self.failures.append(f"section {key} failed: {type(exc).__name__}: {exc}")
            return None
        finally:
            procs.stop_all()
        self.results.append(result)
        return result


def _run_sections(s: _Sections) -> None:
    """Every section in order; figures a later one needs are handed to it here."""
    s.run("0", loadgen_check.measure)
    accepted = s.run("1", accept.measure)
    delivered = s.run("2", delivery.measure)
    s.run("2b", relay_latency.measure)
    e2e = s.run("3", end_to_end.measure)
    s.run("4", never_blocked.measure)
    s.run("5a", memory.measure)
    s.run("5b", large_store.measure)
    cpu = cpu_profile.CpuPerMessage(
        accept=accepted.notifier.cpu_ms if accepted else Figure(),
        delivery=delivered.notifier.cpu_ms if delivered else Figure(),
        end_to_end=e2e.figures.cpu_ms if e2e else Figure(),
    )
    s.run("6", lambda b: cpu_profile.measure(b, cpu))
    s.run("7", scale_out.measure)
    s.run("8", features.measure)


def main() -> int:
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    only = [k.strip() for k in os.environ.get("BENCH_ONLY", "").split(",") if k.strip()]
    unknown = [k for k in only if k not in KEYS]
    if unknown:
        _log(f"BENCH_ONLY: unknown section(s) {unknown}; known: {' '.join(KEYS)}")
        return 2
    output = Path(os.environ.get("BENCH_OUTPUT", HERE / "RESULTS.md"))
    plan = Plan.smoke() if quick else Plan.full()
    signal.signal(signal.SIGTERM, _terminate)
    work = Path(tempfile.mkdtemp(prefix="notifier-bench-"))
    procs.COMMANDS.replacements[str(work)] = "$BENCH_TMP"
    loader = Loader(work, os.environ.get("BENCH_LOADGEN") or None)
    bench = Bench(plan, work, HERE / "out", loader, LoadWatch(), _log)
    machine = report.machine(work)
    code_before = report.code_state()
    started = time.monotonic()
    sections = _Sections(bench, only, started)
    _log(f"benchmarks ({'quick' if quick else 'full'} mode), load generator: {loader.tool}")
    try:
        _run_sections(sections)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    text = report.render(
        plan=plan,
        machine=machine,
        results=sections.results,
        failures=sections.failures,
        watch=bench.watch,
        loader=loader.tool,
        elapsed=elapsed,
        only=only,
        commit_after=report.commit(),
        code_before=code_before,
        code_after=report.code_state(),
    )
    output.write_text(text)
    _log(f"[{elapsed:5.0f} s] wrote {output}")
    print(report.summary_text(sections.results))
    return 1 if sections.failures else 0
