"""HTTP load: the raw-socket Python generator, or wrk (with a Lua script) as a cross-check.

The Python generator is the default for every figure: it saturates the ceiling app
as wrk does, and its latency tail is the steadier of the two (section 0 of
``benchmarks/RESULTS.md`` compares them). ``BENCH_LOADGEN=wrk`` makes wrk the default
instead.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from benchmarks import procs, workload

WRK_SCRIPT = """\
wrk.method = "{method}"
{body}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""
POST_BODY = """\
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("{path}", "rb"))
wrk.body = f:read("*a")
f:close()
"""


class CpuSource(Protocol):
    """Something whose CPU time can be read: a process, or a group of them."""

    def cpu_seconds(self) -> float: ...


@dataclass
class LoadResult:
    tool: str
    connections: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    client_cpu_seconds: float
    #: CPU of the server under load, in cores, over the measured window (if measured).
    server_cores: float = math.nan
    first_send_wall: float = math.nan
    extra: dict[str, object] = field(default_factory=dict)
    #: CPU of each of the ``meters`` given, in cores, over the measured window.
    cores: dict[str, float] = field(default_factory=dict)


def wrk_path() -> str | None:
    return shutil.which("wrk")


class Loader:
    """Runs load against a port; ``tool`` is ``wrk`` or ``python``."""

    def __init__(self, work: Path, tool: str | None = None) -> None:
        self.work = work
        self.tool = tool or "python"
        self.body_file = work / "body.json"
        self.body_file.write_bytes(workload.BODY_BYTES)
        self._scripts: dict[str, Path] = {}

    def post(
        self,
        port: int,
        connections: int,
        seconds: float,
        tool: str | None = None,
        server: procs.Proc | None = None,
    ) -> LoadResult:
        return self.run(
            port, "/v1/notifications", connections, seconds, post=True, tool=tool, server=server
        )

    def run(
        self,
        port: int,
        path: str,
        connections: int,
        seconds: float,
        *,
        post: bool,
        tool: str | None = None,
        server: procs.Proc | None = None,
    ) -> LoadResult:
        if (tool or self.tool) == "wrk":
            return self._wrk(port, path, connections, seconds, post=post, server=server)
        return self.python(port, connections, seconds=seconds, path=path, post=post, server=server)

    def _wrk(
        self,
        port: int,
        path: str,
        connections: int,
        seconds: float,
        *,
        post: bool,
        server: procs.Proc | None = None,
    ) -> LoadResult:
        wrk = wrk_path()
        assert wrk is not None
        script = self._script(post)
        argv = [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu0, t0 = (server.cpu_seconds() if server else math.nan), time.monotonic()
        done = procs.run_tool("wrk", argv, timeout=seconds + 60)
        cpu1, t1 = (server.cpu_seconds() if server else math.nan), time.monotonic()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        line = next((s for s in done.stdout.splitlines() if s.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
        data = json.loads(line.removeprefix("WRKJSON "))
        duration = data["duration_us"] / 1e6
        errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
        return LoadResult(
            tool="wrk",
            connections=connections,
            seconds=duration,
            requests=data["requests"],
            rps=data["requests"] / duration,
            p50_ms=data["p50_us"] / 1000,
            p90_ms=data["p90_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
            max_ms=data["max_us"] / 1000,
            errors=errors,
            client_cpu_seconds=(after.ru_utime + after.ru_stime)
            - (before.ru_utime + before.ru_stime),
            server_cores=(cpu1 - cpu0) / (t1 - t0),
        )

    def _script(self, post: bool) -> Path:
        key = "post" if post else "get"
        if key not in self._scripts:
            body = POST_BODY.format(path=self.body_file) if post else ""
            script = self.work / f"wrk-{key}.lua"
            script.write_text(WRK_SCRIPT.format(method="POST" if post else "GET", body=body))
            self._scripts[key] = script
        return self._scripts[key]

    def python_argv(
        self,
        port: int | Sequence[int],
        connections: int,
        out: Path,
        *,
        seconds: float | None = None,
        count: int | None = None,
        path: str = "/v1/notifications",
        post: bool = True,
        paths_file: Path | None = None,
        rate: float | None = None,
        record_ids: Path | None = None,
        record_sent: bool = False,
        warmup: float = 0.0,
        body: Path | None = None,
    ) -> list[str]:
        """The generator's command line; ``body`` is a POST body other than the benchmark's."""
        ports = [port] if isinstance(port, int) else port
        argv = [procs.PYTHON, "-m", "benchmarks.loadgen"]
        argv += [arg for p in ports for arg in ("--port", str(p))]
        argv += ["--connections", str(connections), "--out", str(out), "--path", path]
        argv += ["--seconds", f"{seconds:g}"] if seconds is not None else ["--count", str(count)]
        if warmup:
            argv += ["--warmup", f"{warmup:g}"]
        if post:
            argv += ["--post-body", str(body or self.body_file)]
        if paths_file is not None:
            argv += ["--paths-file", str(paths_file)]
        if rate is not None:
            argv += ["--rate", f"{rate:g}"]
        if record_ids is not None:
            argv += ["--record-ids", str(record_ids)]
        if record_sent:
            argv.append("--record-sent")
        return argv

    def python(
        self,
        port: int | Sequence[int],
        connections: int,
        *,
        seconds: float | None = None,
        count: int | None = None,
        path: str = "/v1/notifications",
        post: bool = True,
        record_ids: Path | None = None,
        record_sent: bool = False,
        rate: float | None = None,
        body: Path | None = None,
        server: CpuSource | None = None,
        meters: Mapping[str, CpuSource] | None = None,
        timeout: float = 600.0,
    ) -> LoadResult:
        """Run the Python generator (over several ports: connections dealt out in turn);
        with ``server`` and ``meters``, measure their CPU over the window."""
        out = self.work / "loadgen.json"
        out.unlink(missing_ok=True)
        argv = self.python_argv(
            port,
            connections,
            out,
            seconds=seconds,
            count=count,
            path=path,
            post=post,
            record_ids=record_ids,
            record_sent=record_sent,
            rate=rate,
            body=body,
        )
        log = self.work / "loadgen.log"
        log.unlink(missing_ok=True)
        proc = procs.Proc("python load generator", argv, log=log).start()
        assert proc.process is not None
        give_up = time.monotonic() + timeout + (seconds or 0.0)
        sources = {**(meters or {}), **({"": server} if server is not None else {})}
        marks: dict[str, tuple[float, dict[str, float]]] = {}
        try:
            while proc.process.poll() is None and time.monotonic() < give_up:
                text = log.read_text(errors="replace") if log.exists() else ""
                for word in ("GO", "END"):
                    if word not in marks and f"{word}\n" in text:
                        cpu = {name: source.cpu_seconds() for name, source in sources.items()}
                        marks[word] = (time.monotonic(), cpu)
                time.sleep(0.005)
            if proc.process.poll() is None:
                raise RuntimeError(f"the load generator did not finish within {timeout} s")
        finally:
            proc.stop()
        if not out.exists():
            raise RuntimeError(f"load generator failed: {proc.log_text()}")
        result = parse_python(json.loads(out.read_text()))
        if "GO" in marks and "END" in marks:
            (t0, cpu0), (t1, cpu1) = marks["GO"], marks["END"]
            cores = {k: (cpu1[k] - cpu0[k]) / (t1 - t0) if t1 > t0 else math.nan for k in cpu0}
            result.server_cores = cores.pop("", math.nan)
            result.cores = cores
        return result


def parse_python(data: dict[str, object]) -> LoadResult:
    def number(key: str) -> float:
        value = data.get(key)
        return float(value) if isinstance(value, int | float) else math.nan

    return LoadResult(
        tool="python",
        connections=int(number("connections")),
        seconds=number("seconds"),
        requests=int(number("requests")),
        rps=number("rps"),
        p50_ms=number("p50_ms"),
        p90_ms=number("p90_ms"),
        p99_ms=number("p99_ms"),
        max_ms=number("max_ms"),
        errors=int(number("errors")) + _non_2xx(data.get("statuses")),
        client_cpu_seconds=number("client_cpu_seconds"),
        first_send_wall=number("first_send_wall"),
        extra=data,
    )


def _non_2xx(statuses: object) -> int:
    if not isinstance(statuses, dict):
        return 0
    return sum(int(n) for code, n in statuses.items() if not str(code).startswith("2"))
