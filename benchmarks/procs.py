"""Child processes of a run: started on loopback, measured through /proc, always stopped.

Every process the suite starts goes through :class:`Proc`, which registers it;
:func:`stop_all` (called from the runner's ``finally``) stops whatever is left.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PYTHON = sys.executable

_RUNNING: list[Proc] = []
#: CPU readers of processes the run started some other way (PostgreSQL, through
#: ``runuser``), counted as the run's own rather than as the machine's other load.
ALSO_OURS: list[Callable[[], float]] = []


class CommandLog:
    """Every distinct command the run started, for the report (paths and ports made generic)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []
        self._seen: set[str] = set()
        self.replacements: dict[str, str] = {}

    def add(self, label: str, argv: list[str], env: dict[str, str] | None) -> None:
        words = [f"{k}={v}" for k, v in sorted((env or {}).items())]
        words += ["python" if a == PYTHON else a for a in argv]
        text = shlex.join(words)
        for old, new in sorted(self.replacements.items(), key=lambda kv: -len(kv[0])):
            text = re.sub(rf"(?<![0-9]){re.escape(old)}(?![0-9])", new, text)
        # One entry per kind of command, not per round: numbered scratch files become N.
        text = re.sub(r"\$BENCH_TMP/[^\s'\"]*", lambda m: re.sub(r"\d+", "N", m.group()), text)
        if text not in self._seen:
            self._seen.add(text)
            self.entries.append((label, text))


COMMANDS = CommandLog()


class Proc:
    """One child process, its output in a log file, in a session of its own."""

    def __init__(
        self,
        label: str,
        argv: list[str],
        *,
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path = REPO,
    ) -> None:
        self.label = label
        self.argv = argv
        self.env_overrides = env or {}
        self.cwd = cwd
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
        env.update(self.env_overrides)
        env.setdefault("PYTHONPATH", str(REPO))
        COMMANDS.add(self.label, self.argv, self.env_overrides)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _RUNNING.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float:
        """User plus system CPU of every thread of the process so far."""
        return cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        return _status_kb(self.pid, "VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return _status_kb(self.pid, "VmHWM") / 1024

    def log_text(self, tail: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        with contextlib.suppress(ValueError):
            _RUNNING.remove(self)
        return self.process.returncode


def stop_all() -> None:
    """Stop every process still running (the runner calls this in ``finally``)."""
    for proc in list(reversed(_RUNNING)):
        proc.stop(timeout=5.0)


def cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    # utime and stime: fields 14 and 15 of proc(5).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU of ``pid`` and of every process under it, those that have exited included
    (their time is in their parent's ``cutime``/``cstime`` once reaped): PostgreSQL's
    server is a postmaster and the processes it forks."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                children.setdefault(int(_stat_fields(int(entry))[1]), []).append(int(entry))
    ticks, pending = 0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):  # one that exited meanwhile is in its parent's
            # utime, stime, cutime, cstime: fields 14 to 17 of proc(5).
            ticks += sum(int(field) for field in _stat_fields(current)[11:15])
            pending += children.get(current, [])
    return ticks / CLOCK_TICKS


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (field 3 of proc(5) is [0])."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()


def _status_kb(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return float(line.split()[1])
    raise LookupError(f"{key} not in /proc/{pid}/status")


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process listens on, from its socket inodes and /proc/net/tcp."""
    inodes: set[str] = set()
    fd_dir = f"/proc/{pid}/fd"
    with contextlib.suppress(OSError):
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                target = os.readlink(f"{fd_dir}/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                parts = line.split()
                if parts[3] == "0A" and parts[9] in inodes:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def wait_for_port(proc: Proc, timeout: float = 30.0) -> int:
    """The one port ``proc`` listens on, once it listens."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if not proc.alive():
            raise RuntimeError(f"{proc.label} exited at start:\n{proc.log_text()}")
        ports = listening_ports(proc.pid)
        if len(ports) == 1:
            return ports.pop()
        time.sleep(0.05)
    raise RuntimeError(f"{proc.label} did not listen within {timeout} s:\n{proc.log_text()}")


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_healthy(proc: Proc, port: int, timeout: float = 30.0) -> None:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if not proc.alive():
            raise RuntimeError(f"{proc.label} exited at start:\n{proc.log_text()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_get(port, "/healthz", timeout=1.0)[0] == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.label} did not become healthy:\n{proc.log_text()}")


class ClosedPort:
    """A loopback port that is bound but never listens: every connect is refused."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]

    def close(self) -> None:
        self._socket.close()


def run_tool(
    label: str, argv: list[str], *, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A short-lived tool (wrk, py-spy, a load generator), bounded in time."""
    COMMANDS.add(label, argv, env)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    full_env.update(env or {})
    full_env.setdefault("PYTHONPATH", str(REPO))
    return subprocess.run(
        argv,
        cwd=REPO,
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        start_new_session=True,
    )
