"""Bounded HTTP connections: a limit on how many, a deadline for the request head, open files.

The process tests run the real service with a low open-files limit and talk to it over
raw loopback sockets, as the silent and slow clients of a flood would.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from notifier.connections import (
    WARNING_INTERVAL,
    RefusalWarnings,
    connection_limit,
    reserved_files,
)
from notifier.errors import ConfigError
from notifier.settings import Settings
from tests.conftest import notification
from tests.service import ServiceProcess, spawn, wait_all_terminal, with_open_files

OPEN_FILES = 160
FLOOD = 200
HEAD_TIMEOUT = "1.0"
#: How long a client waits for the server to answer or close; far above HEAD_TIMEOUT.
DEADLINE = 15.0
SEND_CONCURRENCY = 4  # as in the service_env fixture


def settings(**values: Any) -> Settings:
    return Settings(**{"max_connections": 1024, "send_concurrency": 16, **values})


# The arithmetic


def test_reserve_keeps_two_files_per_sender_and_64_more() -> None:
    assert reserved_files(16) == 96
    assert reserved_files(1) == 66


def test_configured_connections_are_kept_when_open_files_suffice() -> None:
    assert connection_limit(settings(max_connections=500), open_files=4096) == 500


def test_configured_connections_are_lowered_to_what_open_files_leave(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="notifier.connections"):
        limit = connection_limit(settings(send_concurrency=4), open_files=160)

    assert limit == 160 - (2 * 4 + 64)
    assert "NOTIFIER_MAX_CONNECTIONS=1024 lowered to 88" in caplog.text
    assert "160" in caplog.text


def test_open_files_leaving_sixteen_connections_are_enough() -> None:
    assert connection_limit(settings(), open_files=96 + 16) == 16


def test_open_files_leaving_fewer_than_sixteen_connections_stop_start_up() -> None:
    with pytest.raises(ConfigError, match=r"ulimit -n\) is 111.*at least 112"):
        connection_limit(settings(), open_files=96 + 15)


class RecordingLoop:
    """Records call_later instead of running it, so the test plays the clock."""

    def __init__(self) -> None:
        self.scheduled: list[tuple[float, Callable[..., object], tuple[object, ...]]] = []

    def call_later(self, delay: float, callback: Callable[..., object], *args: object) -> None:
        self.scheduled.append((delay, callback, args))

    def run_next(self) -> None:
        _, callback, args = self.scheduled.pop(0)
        callback(*args)


def test_refusals_are_warned_at_once_then_counted_at_most_once_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recording = RecordingLoop()
    loop = cast(Any, recording)
    refusals = RefusalWarnings(max_connections=88)

    with caplog.at_level(logging.WARNING, logger="notifier.connections"):
        for _ in range(50):
            refusals.refused(loop)
        first = [r.getMessage() for r in caplog.records]
        recording.run_next()
        second = [r.getMessage() for r in caplog.records]
        recording.run_next()
        refusals.refused(loop)

    assert len(first) == 1
    assert "88 are open" in first[0]
    assert second[1:] == ["refused 49 more HTTP connections with 503 in the last 1 s"]
    assert [delay for delay, _, _ in recording.scheduled] == [WARNING_INTERVAL]
    assert len(caplog.records) == 3, "a quiet second, then a new refusal is warned at once"


# The real process


@pytest.fixture
def guarded_env(service_env: dict[str, str]) -> dict[str, str]:
    assert service_env["NOTIFIER_SEND_CONCURRENCY"] == str(SEND_CONCURRENCY)
    return {**service_env, "NOTIFIER_REQUEST_HEAD_TIMEOUT": HEAD_TIMEOUT}


def port_of(service: ServiceProcess) -> int:
    return int(service.url.rsplit(":", 1)[1])


def pid_of(service: ServiceProcess) -> int:
    assert service.process is not None
    return service.process.pid


def read_until_closed(sock: socket.socket, give_up: float) -> bytes:
    """Everything the server sends before it closes the connection."""
    received = b""
    while True:
        sock.settimeout(max(give_up - time.monotonic(), 0.001))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"the server neither answered nor closed in time; got {received!r}")
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def parse_response(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("ascii").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    assert int(headers["content-length"]) == len(body)
    return int(status_line.split()[1]), headers, json.loads(body)


class FileCounter:
    """Samples how many files a process has open, in a thread, and keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.directory = f"/proc/{pid}/fd"
        self.peak = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.stopped.is_set():
            self.peak = max(self.peak, len(os.listdir(self.directory)))
            self.stopped.wait(0.002)

    def __enter__(self) -> FileCounter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)


@pytest.fixture
def flood_sockets() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.slow
def test_connection_flood_is_bounded_in_count_and_time(
    guarded_env: dict[str, str],
    tmp_path: Path,
    processes: list[ServiceProcess],
    flood_sockets: list[socket.socket],
) -> None:
    service = spawn(processes, guarded_env, tmp_path, open_files=(OPEN_FILES, OPEN_FILES))
    limit = connection_limit(settings(send_concurrency=SEND_CONCURRENCY), OPEN_FILES)
    assert limit < FLOOD

    with FileCounter(pid_of(service)) as files:
        for _ in range(FLOOD):
            flood_sockets.append(socket.create_connection(("127.0.0.1", port_of(service))))
        give_up = time.monotonic() + DEADLINE
        answers = [read_until_closed(sock, give_up) for sock in flood_sockets]

    closed_silently = [answer for answer in answers if answer == b""]
    refused = [parse_response(answer) for answer in answers if answer]
    assert 0 < len(closed_silently) <= limit
    assert len(refused) >= FLOOD - limit
    for status, headers, body in refused:
        assert status == 503
        assert body["code"] == "too_many_connections"
        assert headers["retry-after"] == "1"
        assert headers["connection"] == "close"
        assert headers["content-type"] == "application/json"

    assert httpx.get(f"{service.url}/healthz", timeout=5).status_code == 200
    posted = httpx.post(f"{service.url}/v1/notifications", json=notification(), timeout=5)
    assert posted.status_code == 202, posted.text
    delivered = wait_all_terminal(service.url, [posted.json()["id"]])
    assert [doc["status"] for doc in delivered.values()] == ["sent"]
    log = service.log.read_text()
    assert "Too many open files" not in log
    assert f"NOTIFIER_MAX_CONNECTIONS=1024 lowered to {limit}" in log
    assert "refusing new HTTP connections with 503" in log
    assert 0 < files.peak < OPEN_FILES


def open_files_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line in /proc/<pid>/limits")


@pytest.mark.slow
def test_soft_open_files_limit_is_raised_to_the_hard_limit_at_start(
    guarded_env: dict[str, str], tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    service = spawn(processes, guarded_env, tmp_path, open_files=(200, 400))

    assert open_files_limits(pid_of(service)) == (400, 400)
    assert "lowered to 328" in service.log.read_text()


@pytest.mark.slow
def test_serve_refuses_to_start_when_open_files_leave_too_few_connections(
    guarded_env: dict[str, str], tmp_path: Path
) -> None:
    command = with_open_files([sys.executable, "-m", "notifier", "serve", "--port", "0"], 80, 80)

    finished = subprocess.run(
        command, env=guarded_env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )

    assert finished.returncode == 2
    assert "ulimit -n" in finished.stderr


PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n"


def trickle_until_closed(sock: socket.socket, give_up: float) -> bytes:
    """Send a header one byte at a time, never ending the head, until the server closes."""
    received = b""
    for byte in b"x-slow: " + b"a" * 100_000:
        if time.monotonic() > give_up:
            pytest.fail("the server kept a slow-loris head open")
        try:
            sock.sendall(bytes([byte]))
            readable, _, _ = select.select([sock], [], [], 0.05)
            chunk = sock.recv(65536) if readable else None
        except (BrokenPipeError, ConnectionResetError):
            return received
        if chunk == b"":
            return received
        received += chunk or b""
    pytest.fail("the head was sent whole without the server closing")


@pytest.mark.slow
def test_slow_loris_heads_are_closed_while_prompt_keep_alive_requests_are_served(
    guarded_env: dict[str, str], tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    service = spawn(processes, guarded_env, tmp_path)
    slow = socket.create_connection(("127.0.0.1", port_of(service)))
    keep_alive = http.client.HTTPConnection("127.0.0.1", port_of(service), timeout=DEADLINE)
    statuses: list[int] = []
    connections: list[socket.socket | None] = []
    try:
        slow.sendall(PARTIAL_HEAD)
        for _ in range(2):
            keep_alive.request("GET", "/healthz")
            response = keep_alive.getresponse()
            response.read()
            statuses.append(response.status)
            connections.append(keep_alive.sock)
        assert keep_alive.sock is not None
        # The same client now stalls in its third request head.
        keep_alive.sock.sendall(PARTIAL_HEAD)
        after_keep_alive = trickle_until_closed(keep_alive.sock, time.monotonic() + DEADLINE)
        from_the_start = trickle_until_closed(slow, time.monotonic() + DEADLINE)
    finally:
        keep_alive.close()
        slow.close()

    assert statuses == [200, 200]
    assert connections[0] is connections[1], "both requests went over one connection"
    assert after_keep_alive == b"", "a stalled head gets no answer, only a close"
    assert from_the_start == b""
