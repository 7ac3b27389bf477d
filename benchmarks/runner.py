"""``python -m benchmarks``: run every benchmark and write ``benchmarks/RESULTS.md``.

Environment:

- ``BENCH_QUICK=1``: a smoke run of a minute or two (fewer, shorter rounds, smaller counts).
- ``BENCH_ONLY=1,3``: run only these sections (keys ``0 1 2 2b 3 4 5a 5b 6``).
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
from pathlib import Path
from types import FrameType

from benchmarks import procs, report
from benchmarks.load import Loader
from benchmarks.measure import LoadWatch
from benchmarks.scenarios import SCENARIOS, Bench, Plan, Section

HERE = Path(__file__).resolve().parent


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    only = [k.strip() for k in os.environ.get("BENCH_ONLY", "").split(",") if k.strip()]
    unknown = [k for k in only if k not in SCENARIOS]
    if unknown:
        _log(f"BENCH_ONLY: unknown section(s) {unknown}; known: {' '.join(SCENARIOS)}")
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
    sections: list[Section] = []
    failures: list[str] = []
    started = time.monotonic()
    _log(f"benchmarks ({'quick' if quick else 'full'} mode), load generator: {loader.tool}")
    try:
        for key, scenario in SCENARIOS.items():
            if only and key not in only:
                continue
            _log(f"[{time.monotonic() - started:5.0f} s] section {key}")
            try:
                sections.append(scenario(bench))
            except Exception as exc:  # noqa: BLE001 - one failed section must not stop the rest
                _log(traceback.format_exc())
                failures.append(f"section {key} failed: {type(exc).__name__}: {exc}")
            finally:
                procs.stop_all()
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    text = report.render(
        plan=plan,
        machine=machine,
        sections=sections,
        failures=failures,
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
    print(report.summary_text(sections))
    return 1 if failures else 0
