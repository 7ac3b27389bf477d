"""The processes under test: notifier itself, the ceiling app, the SMTP sink, bare senders."""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import procs

#: Effectively unlimited rate limits (the defaults, 6000 a minute, would throttle the run).
UNLIMITED = "1000000000"


def name_port(port: int, name: str) -> None:
    """Show ``port`` as ``<name>`` in the report's command list."""
    procs.COMMANDS.replacements[str(port)] = f"<{name}>"


@dataclass
class HttpService:
    label: str
    proc: procs.Proc
    port: int
    db: Path | None = None

    def stop(self) -> int | None:
        return self.proc.stop()


def start_ceiling(work: Path) -> HttpService:
    proc = procs.Proc(
        "ceiling app",
        [procs.PYTHON, "-m", "benchmarks.ceiling"],
        log=work / "ceiling.log",
    ).start()
    port = procs.wait_for_port(proc)
    name_port(port, "ceiling-port")
    procs.wait_healthy(proc, port)
    return HttpService("ceiling", proc, port)


def notifier_env(db: Path, smtp_port: int, *, concurrency: int = 16) -> dict[str, str]:
    return {
        "NOTIFIER_SMTP_HOST": "127.0.0.1",
        "NOTIFIER_SMTP_PORT": str(smtp_port),
        "NOTIFIER_SMTP_TLS": "none",
        "NOTIFIER_SMTP_LOCAL_HOSTNAME": "bench",
        "NOTIFIER_MAIL_FROM": "bench@example.com",
        "NOTIFIER_AUTH_DISABLED": "true",
        "NOTIFIER_DATABASE_URL": f"sqlite:///{db}",
        "NOTIFIER_ACK_FILE": str(db.with_suffix(".acks.jsonl")),
        "NOTIFIER_LOG_LEVEL": "warning",
        "NOTIFIER_MAX_PENDING": "100000000",
        "NOTIFIER_RATE_LIMIT_REQUESTS_PER_MINUTE": UNLIMITED,
        "NOTIFIER_RATE_LIMIT_RECIPIENTS_PER_MINUTE": UNLIMITED,
        "NOTIFIER_SEND_CONCURRENCY": str(concurrency),
        "NOTIFIER_SHUTDOWN_GRACE": "1",
    }


def start_notifier(
    work: Path,
    db: Path,
    smtp_port: int,
    *,
    concurrency: int = 16,
    label: str = "notifier",
    extra_env: dict[str, str] | None = None,
) -> HttpService:
    """``python -m notifier serve --port 0``; the port is read from its listening socket.

    At log level ``warning`` uvicorn does not print its "running on" line, so the
    port comes from /proc (the one socket the process listens on).
    """
    env = {**notifier_env(db, smtp_port, concurrency=concurrency), **(extra_env or {})}
    proc = procs.Proc(
        label,
        [procs.PYTHON, "-m", "notifier", "serve", "--port", "0"],
        env=env,
        cwd=work,
        log=work / f"{db.stem}.log",
    ).start()
    port = procs.wait_for_port(proc, timeout=120)
    name_port(port, "notifier-port")
    procs.wait_healthy(proc, port, timeout=60)
    return HttpService(label, proc, port, db)


def _ready(proc: procs.Proc, line: str, timeout: float = 30.0) -> re.Match[str]:
    """Wait for ``proc`` to print the ``READY`` line matching ``line``."""
    give_up = time.monotonic() + timeout
    while (match := re.search(line, proc.log_text())) is None:
        if time.monotonic() > give_up or not proc.alive():
            raise RuntimeError(f"the {proc.label} did not start:\n{proc.log_text()}")
        time.sleep(0.05)
    return match


class Sink:
    """The aiosmtpd sink process and its control connection."""

    def __init__(
        self, work: Path, delay: float = 0.0, *, pipelining: bool = False, record: bool = False
    ) -> None:
        argv = [procs.PYTHON, "-m", "benchmarks.sink"]
        if delay:
            argv += ["--delay", f"{delay:g}"]
        if pipelining:
            argv.append("--pipelining")
        if record:
            argv.append("--record")
        self.work = work
        log = work / f"sink-{time.monotonic_ns()}.log"
        self.proc = procs.Proc("SMTP sink", argv, log=log).start()
        match = _ready(self.proc, r"READY smtp=(\d+) control=(\d+)")
        self.smtp_port = int(match.group(1))
        name_port(self.smtp_port, "sink-port")
        self._control = socket.create_connection(("127.0.0.1", int(match.group(2))), timeout=10)
        self._lines = self._control.makefile("rb")

    def count(self) -> tuple[int, int]:
        """Messages accepted and connections opened so far."""
        messages, connections, _, _ = self.counts()
        return messages, connections

    def counts(self) -> tuple[int, int, int, int]:
        """Messages, connections opened, connections open now, DATA replies held now."""
        self._control.sendall(b"count\n")
        messages, connections, open_now, held = self._lines.readline().split()
        return int(messages), int(connections), int(open_now), int(held)

    def arrivals(self) -> dict[str, float]:
        """When each message noted since the last call arrived (epoch seconds), by its
        Message-ID without the angle brackets; the sink forgets them (``record`` only)."""
        path = self.work / f"arrivals-{time.monotonic_ns()}.tsv"
        self._control.sendall(f"arrivals {path}\n".encode())
        noted = int(self._lines.readline())
        lines = path.read_text().splitlines()
        path.unlink()
        found = {mid: float(at) for mid, at in (line.split("\t") for line in lines if line)}
        assert len(lines) == noted, (len(lines), noted)
        return found

    def wait_for(self, messages: int, timeout: float) -> tuple[int, float]:
        """Poll until the sink holds ``messages``; returns the count and the time it was seen."""
        give_up = time.monotonic() + timeout
        while True:
            count, _ = self.count()
            now = time.monotonic()
            if count >= messages or now > give_up:
                return count, now
            time.sleep(0.02)

    def stop(self) -> None:
        self._lines.close()
        self._control.close()
        self.proc.stop()


class LatencyProxy:
    """``benchmarks.latency`` in front of ``upstream_port``: a relay ``rtt_ms`` away."""

    def __init__(self, work: Path, upstream_port: int, rtt_ms: float) -> None:
        argv = [procs.PYTHON, "-m", "benchmarks.latency", "--to", str(upstream_port)]
        argv += ["--rtt-ms", f"{rtt_ms:g}"]
        log = work / f"latency-{time.monotonic_ns()}.log"
        self.proc = procs.Proc("latency proxy", argv, log=log).start()
        match = _ready(self.proc, r"READY port=(\d+)")
        self.port = int(match.group(1))
        name_port(self.port, "latency-port")

    def stop(self) -> None:
        self.proc.stop()


def start_sender(
    work: Path,
    smtp_port: int,
    *,
    connections: int,
    seconds: float,
    per_message: bool,
    prebuilt: bool,
    fastapi_mail: bool = False,
) -> procs.Proc:
    argv = [procs.PYTHON, "-m", "benchmarks.smtp_sender", "--port", str(smtp_port)]
    argv += ["--connections", str(connections), "--seconds", f"{seconds:g}"]
    if per_message:
        argv.append("--per-message")
    if fastapi_mail:
        argv.append("--fastapi-mail")
    if prebuilt:
        argv.append("--prebuilt")
    label = "fastapi-mail sender" if fastapi_mail else "bare aiosmtplib sender"
    return procs.Proc(label, argv, log=work / f"sender-{time.monotonic_ns()}.log").start()


def sender_result(proc: procs.Proc, timeout: float) -> dict[str, float]:
    assert proc.process is not None
    proc.process.wait(timeout=timeout)
    proc.stop()
    for line in reversed(proc.log_text().splitlines()):
        if line.startswith("{"):
            data: dict[str, float] = json.loads(line)
            return data
    raise RuntimeError(f"the sender printed no result:\n{proc.log_text()}")
