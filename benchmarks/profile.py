"""Where the service's CPU goes: per-thread CPU from /proc, and py-spy samples of its stacks.

py-spy attaches to the live process by pid (no code change, no restart). It samples
with ``--gil``: only the thread holding the GIL, i.e. the one running Python code at
that instant. That leaves out threads merely waiting (py-spy's own idle detection
counts a thread pool's waiting workers as busy under load) and C code that releases
the GIL (SQLite statements, fsync, uvloop's epoll). The per-thread table, from
``/proc/<pid>/task/*/stat``, covers all of it. Raw stacks are kept in
``benchmarks/out/`` for flame graphs (``flamegraph.pl`` or speedscope).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import procs

_THREAD = re.compile(r"^thread \((\d+)\): (.*)$")
_DUMP_THREAD = re.compile(r'^Thread (\d+) \([^)]*\): "(.*)"')
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    candidate = Path(sys.executable).with_name("py-spy")
    return str(candidate) if candidate.exists() else None


@dataclass
class Profile:
    samples: int = 0
    threads: Counter[str] = field(default_factory=Counter)
    own: Counter[str] = field(default_factory=Counter)
    packages: Counter[str] = field(default_factory=Counter)
    attributed: Counter[str] = field(default_factory=Counter)
    #: Samples with this function anywhere on the stack.
    inclusive: Counter[str] = field(default_factory=Counter)
    #: CPU of each thread (pools merged), in cores, over the sampling window.
    thread_cpu: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of each thread of ``pid``, by native thread id."""
    found: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(OSError, IndexError, ValueError),
                open(f"/proc/{pid}/task/{tid}/stat") as stat,
            ):
                fields = stat.read().rpartition(")")[2].split()
                found[int(tid)] = (int(fields[11]) + int(fields[12])) / procs.CLOCK_TICKS
    return found


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names by native thread id, from ``py-spy dump``."""
    tool = py_spy()
    if tool is None:
        return {}
    try:
        done = subprocess.run(
            [tool, "dump", "--pid", str(pid)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    names = {}
    for line in done.stdout.splitlines():
        if match := _DUMP_THREAD.match(line):
            names[int(match.group(1))] = match.group(2)
    return names


class Sampler:
    """py-spy on ``pid`` for ``seconds``, in the background, plus per-thread CPU."""

    def __init__(self, pid: int, seconds: float, out: Path, rate: int = 100) -> None:
        self.pid = pid
        self.out = out
        self.error: str | None = None
        self.spy: procs.Proc | None = None
        self.names = thread_names(pid)
        self.cpu0 = thread_cpu(pid)
        self.t0 = time.monotonic()
        tool = py_spy()
        if tool is None:
            self.error = "py-spy is not installed (`pip install -e '.[bench]'`)"
            return
        out.unlink(missing_ok=True)
        argv = [tool, "record", "--pid", str(pid), "--duration", f"{max(1, round(seconds))}"]
        argv += ["--rate", str(rate), "--gil", "--threads", "--function"]
        argv += ["--format", "raw", "--output", str(out)]
        self.spy = procs.Proc("py-spy", argv, log=out.with_suffix(".log")).start()

    def finish(self, timeout: float = 60.0) -> Profile:
        profile = Profile(error=self.error)
        if self.spy is not None:
            assert self.spy.process is not None
            try:
                self.spy.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                profile.error = "py-spy did not finish in time"
            self.spy.stop()
            if profile.error is None and (
                self.spy.process.returncode != 0 or not self.out.exists()
            ):
                profile.error = f"py-spy failed: {self.spy.log_text(300).strip()}"
            if profile.error is None:
                profile = summarise(self.out, self.names)
        cpu1 = thread_cpu(self.pid)
        profile.seconds = time.monotonic() - self.t0
        self.names.update(thread_names(self.pid))
        usage: dict[str, float] = {}
        for tid, after in cpu1.items():
            name = _pool(self.names.get(tid, f"thread {tid} (no Python name)"))
            usage[name] = usage.get(name, 0.0) + after - self.cpu0.get(tid, 0.0)
        ranked = sorted(usage.items(), key=lambda kv: -kv[1])
        profile.thread_cpu = {k: v / profile.seconds for k, v in ranked}
        return profile


def record(pid: int, seconds: float, out: Path) -> Profile:
    return Sampler(pid, seconds, out).finish(timeout=seconds + 60)


def summarise(path: Path, names: dict[int, str] | None = None) -> Profile:
    profile = Profile()
    for line in path.read_text(errors="replace").splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack_text.split(";")
        thread = "?"
        if frames and (match := _THREAD.match(frames[0])):
            thread = _pool(match.group(2))
            if names is not None:
                names.setdefault(int(match.group(1)), match.group(2))
            frames = frames[1:]
        if not frames:
            continue
        profile.samples += count
        profile.threads[thread] += count
        leaf = frames[-1]
        profile.own[_short(leaf)] += count
        profile.packages[_package(leaf)] += count
        profile.attributed[_attribute(frames, thread)] += count
        for name in {_short(f) for f in frames}:
            profile.inclusive[name] += count
    return profile


def _attribute(frames: list[str], thread: str) -> str:
    """The innermost notifier frame, and the library it was in when it is not the leaf."""
    for depth in range(len(frames) - 1, -1, -1):
        if _file(frames[depth]).startswith("notifier/"):
            owner = _short(frames[depth])
            if depth == len(frames) - 1:
                return owner
            return f"{owner} -> {_package(frames[depth + 1])}"
    return f"(no notifier frame: {thread})"


def _pool(name: str) -> str:
    """``notifier-read_1`` and ``notifier-read_0`` are one pool."""
    return re.sub(r"_\d+$", "", name.strip())


def _file(frame: str) -> str:
    match = _FRAME.match(frame)
    return match.group("file") if match else ""


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    return f"{match.group('func')} ({match.group('file')})"


def _package(frame: str) -> str:
    """The library a leaf frame belongs to: its top-level module or package."""
    file = _file(frame)
    if not file:
        return frame.split(" ")[0]
    head = file.split("/")[0]
    return head.removesuffix(".py")


def table(
    profile: Profile, counter: Counter[str], limit: int, title: str, *, below: float = 1.01
) -> list[str]:
    """A Markdown table of the ``limit`` largest entries of ``counter`` under ``below``."""
    if profile.error:
        return [f"_{profile.error}_"]
    if not profile.samples:
        return ["_no samples_"]
    lines = [f"| {title} | share of GIL samples |", "| --- | ---: |"]
    kept = [(n, c) for n, c in counter.most_common() if c / profile.samples < below]
    for name, count in kept[:limit]:
        cell = name.replace("|", "\\|")
        lines.append(f"| `{cell}` | {100 * count / profile.samples:.1f}% |")
    return lines


def thread_table(profile: Profile, limit: int = 8) -> list[str]:
    if not profile.thread_cpu:
        return ["_no per-thread CPU_"]
    lines = ["| thread | CPU % of a core |", "| --- | ---: |"]
    shown = [(n, c) for n, c in profile.thread_cpu.items() if c >= 0.005][:limit]
    for name, cores in shown:
        lines.append(f"| `{name}` | {100 * cores:.0f}% |")
    lines.append(f"| total | {100 * sum(profile.thread_cpu.values()):.0f}% |")
    return lines
