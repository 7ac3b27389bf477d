"""The Markdown report: machine, summary, method and figures of each section, commands."""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import sqlite3
import subprocess
import sys
from pathlib import Path

from benchmarks import procs, profile
from benchmarks.load import wrk_path
from benchmarks.measure import CORES, LoadWatch, num
from benchmarks.section import Plan, Result, package_version

PACKAGES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "pydantic",
    "pydantic-core",
    "email-validator",
    "aiosmtplib",
    "aiosmtpd",
    "tenacity",
    "fastapi-mail",
)


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "n/a"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "n/a"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _filesystem(path: Path) -> str:
    best = ("", "unknown", "")
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                device, mount, fstype = line.split()[:3]
                if str(path).startswith(mount) and len(mount) >= len(best[0]):
                    best = (mount, fstype, device)
    except OSError:
        pass
    return f"{best[1]} on {best[2]} (mounted at {best[0]})"


def code_state() -> str:
    """What decides the figures: the notifier/ tree at HEAD and any uncommitted change to it."""
    tree = _first_line(["git", "-C", str(procs.REPO), "rev-parse", "HEAD:notifier"])
    diff = subprocess.run(
        ["git", "-C", str(procs.REPO), "diff", "HEAD", "--", "notifier"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return f"{tree}:{hashlib.sha256(diff.encode()).hexdigest()[:12]}"


def commit() -> str:
    head = _first_line(["git", "-C", str(procs.REPO), "rev-parse", "--short", "HEAD"])
    status = subprocess.run(
        ["git", "-C", str(procs.REPO), "status", "--porcelain", "--", "notifier"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{head}" + (" (notifier/ has uncommitted changes)" if status else "")


def machine(work: Path) -> list[tuple[str, str]]:
    versions = [f"{name} {package_version(name) or '(not installed)'}" for name in PACKAGES]
    wrk = wrk_path()
    spy = profile.py_spy()
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", f"{_cpu_model()}, {CORES} cores ({len(os.sched_getaffinity(0))} usable)"),
        ("memory", _memory()),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("Python", sys.version.split()[0] + f" ({platform.python_implementation()})"),
        ("packages", ", ".join(versions)),
        ("SQLite", sqlite3.sqlite_version),
        ("wrk", _first_line([wrk, "--version"]) if wrk else "not installed"),
        ("py-spy", _first_line([spy, "--version"]) if spy else "not installed"),
        ("notifier commit", commit()),
        ("store filesystem", _filesystem(work)),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(
    *,
    plan: Plan,
    machine: list[tuple[str, str]],
    results: list[Result],
    failures: list[str],
    watch: LoadWatch,
    loader: str,
    elapsed: float,
    only: list[str],
    commit_after: str,
    code_before: str,
    code_after: str,
) -> str:
    mode = (
        "**quick mode** (`BENCH_QUICK=1`: a smoke run with fewer, shorter rounds and smaller "
        "counts; its figures are not the issue's)"
        if plan.quick
        else "**full mode**"
    )
    lines = [
        "# notifier benchmarks",
        "",
        f"Written by `make bench` (`python -m benchmarks`) in {mode}, in "
        f"{elapsed / 60:.1f} minutes.",
    ]
    if only:
        lines.append(f"Only sections {', '.join(only)} were run (`BENCH_ONLY`).")
    lines += [
        "",
        "Each figure is the median over its rounds, with the minimum and maximum in",
        "brackets. Absolute numbers drift from run to run and machine to machine; the",
        "ratios, taken within one run, are what to compare. These are targets, not tests:",
        "CI asserts none of them.",
        "",
    ]
    if failures:
        lines += ["**Failed sections:**", "", *[f"- {f}" for f in failures], ""]
    if code_after != code_before:
        lines += [
            "**notifier/ changed during the run** (commit "
            f"{dict(machine).get('notifier commit', '?')} at the start, {commit_after} at the "
            "end): sections may have measured different code.",
            "",
        ]
    lines += [
        "## Summary",
        "",
        "| target | figure | notifier | baseline | ratio | goal | verdict |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for result in results:
        for row in result.section.rows:
            verdict = {True: "met", False: "**missed**", None: "-"}[row.met]
            lines.append(
                f"| {row.target} | {_cell(row.figure)} | {row.notifier} | {row.baseline} | "
                f"{row.ratio} | {row.goal} | {verdict} |"
            )
    lines += [
        "",
        "Baselines: 0, the generator's own verdict; 1, the ceiling app; 2, the bare senders;",
        "4, the same probes against idle notifier; 5, the empty store; 8, the same message",
        "written out, and the same backlog with everything `normal`.",
    ]
    lines += ["", "## Machine", "", "| | |", "| --- | --- |"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in machine]
    lines += ["", "## Method", "", *_method(plan, loader), ""]
    lines += _load_table(watch)
    for result in results:
        lines += ["", f"### {result.section.title}", "", *result.section.lines]
    lines += ["", *_levers()]
    lines += ["", "## Commands", "", *_commands(), ""]
    return "\n".join(lines)


def _levers() -> list[str]:
    """What each lever bought: measured before and after each change, kept by hand."""
    return (Path(__file__).parent / "LEVERS.md").read_text(encoding="utf-8").rstrip().splitlines()


def _method(plan: Plan, loader: str) -> list[str]:
    generator = (
        "`wrk` (a Lua script sets the POST body; its `done()` prints the percentiles)"
        if loader == "wrk"
        else "the Python raw-socket generator (`benchmarks/loadgen.py`, uvloop, one process)"
    )
    return [
        "- Everything runs on 127.0.0.1 as separate processes: `python -m notifier serve",
        "  --port 0` (the port read from its listening socket in /proc, as uvicorn prints no",
        "  start-up line at log level `warning`), the ceiling app, the aiosmtpd sink, the",
        "  bare senders and the load generators. The runner stops every one of them",
        "  (SIGTERM, then SIGKILL) when its section ends, and again on the way out.",
        "- notifier runs with `NOTIFIER_LOG_LEVEL=warning`, authentication off, rate limits",
        "  and `NOTIFIER_MAX_PENDING` out of reach, `NOTIFIER_SEND_CONCURRENCY="
        f"{plan.send_concurrency}`, SMTP without",
        "  TLS to the sink (or to a closed port), and a fresh SQLite store in a temporary",
        "  directory (see Commands for the exact environment).",
        f"- HTTP load: {generator}, {plan.connections} keep-alive connections, no",
        "  pipelining. Fixed counts (targets 3, 5a) and paced probes (target 4) always use",
        "  the Python generator, which records every id and answer time. Section 0 shows",
        "  it saturates the ceiling app, and cross-checks it with wrk when installed.",
        "- CPU is user + system time from `/proc/<pid>/stat` (all threads); RSS is",
        "  `VmRSS` from `/proc/<pid>/status`.",
        "- The machine may be shared: for every measured window the runner compares",
        "  /proc/stat with its own processes' CPU and reports what the rest of the machine",
        '  used ("other load"); before each section it waits up to a minute for that to',
        "  drop under 10%. Figures from windows with high other load are suspect.",
        "- Profiles are py-spy samples of the live service (section 6).",
    ]


def _load_table(watch: LoadWatch) -> list[str]:
    if not watch.samples and not watch.waited:
        return []
    lines = [
        "Other load on the machine during measured windows (% of all cores):",
        "",
        "| section | windows | median | worst | waited for quiet (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for phase in sorted(set(watch.samples) | set(watch.waited)):
        values = sorted(watch.samples.get(phase, []))
        median = values[len(values) // 2] if values else float("nan")
        lines.append(
            f"| {phase} | {len(values)} | {num(100 * median, 1)} | "
            f"{num(100 * watch.worst(phase), 1)} | {num(watch.waited.get(phase, 0.0), 0)} |"
        )
    return lines


def _commands() -> list[str]:
    lines = [
        "Every command the run started (`$BENCH_TMP` is its temporary directory; ports in",
        "angle brackets were picked by the kernel). All also get `PYTHONPATH=<repo>`.",
        "",
    ]
    for label, text in procs.COMMANDS.entries:
        lines += [f"- {label}:", "", "  ```", f"  {text}", "  ```"]
    return lines


def summary_text(results: list[Result]) -> str:
    """The summary table for the terminal."""
    out = []
    for result in results:
        for row in result.section.rows:
            verdict = {True: "met", False: "MISSED", None: "-"}[row.met]
            out.append(
                f"{row.target:>2}  {row.figure[:58]:<58} {row.notifier:>24} "
                f"{row.baseline:>24} {row.ratio:>6} {row.goal:>10}  {verdict}"
            )
    return "\n".join(out)
