"""The real `notifier serve` process, for tests that need a whole process to crash."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from notifier.domain import TERMINAL_STATUSES

TERMINAL = {status.value for status in TERMINAL_STATUSES}
STARTUP_DEADLINE = 20.0
DELIVERY_DEADLINE = 30.0


_LISTENING = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)")
#: Run argv[3:] with the open-files limit set to (argv[1], argv[2]); exec keeps the pid.
_WITH_OPEN_FILES = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
    "os.execv(sys.argv[3], sys.argv[3:])"
)


class ServiceProcess:
    """``python -m notifier serve`` on loopback; always stopped by the ``processes`` fixture.

    It binds port 0 and the test reads the port it got from uvicorn's start-up line,
    so no other process can take the port in between.
    """

    def __init__(
        self,
        env: dict[str, str],
        cwd: Path,
        open_files: tuple[int, int] | None = None,
        arguments: tuple[str, ...] = ("--port", "0"),
    ) -> None:
        self.env = {**env, "NOTIFIER_LOG_LEVEL": "info"}
        self.cwd = cwd
        #: What follows ``serve`` on its command line.
        self.arguments = arguments
        #: (soft, hard) open-files limit to start the process with; None inherits ours.
        self.open_files = open_files
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.log = cwd / f"serve-{uuid.uuid4().hex[:8]}.log"

    def start(self) -> ServiceProcess:
        command = [sys.executable, "-m", "notifier", "serve", *self.arguments]
        if self.open_files is not None:
            command = with_open_files(command, *self.open_files)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_until_healthy()
        return self

    def _wait_until_healthy(self) -> None:
        assert self.process is not None
        give_up = time.monotonic() + STARTUP_DEADLINE
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                pytest.fail(f"notifier exited at start:\n{self.log.read_text()}")
            if match := _LISTENING.search(self.log.read_bytes()):
                self.url = f"http://127.0.0.1:{int(match.group(1))}"
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        pytest.fail(f"notifier did not become healthy:\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs at all."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "notifier", *args, "--url", self.url]
        return subprocess.run(
            command, env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=30
        )


def spawn(
    processes: list[ServiceProcess],
    env: dict[str, str],
    cwd: Path,
    open_files: tuple[int, int] | None = None,
    arguments: tuple[str, ...] = ("--port", "0"),
) -> ServiceProcess:
    service = ServiceProcess(env, cwd, open_files, arguments)
    processes.append(service)
    return service.start()


def with_open_files(command: list[str], soft: int, hard: int) -> list[str]:
    """``command`` started with this open-files limit (exec keeps the pid, no preexec_fn)."""
    return [sys.executable, "-c", _WITH_OPEN_FILES, str(soft), str(hard), *command]


def wait_all_terminal(url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    give_up = time.monotonic() + DELIVERY_DEADLINE
    with httpx.Client(base_url=url, timeout=5) as client:
        for notification_id in ids:
            while True:
                doc = client.get(f"/v1/notifications/{notification_id}").json()
                if doc["status"] in TERMINAL and doc["acknowledged"]:
                    docs[notification_id] = doc
                    break
                assert time.monotonic() < give_up, f"not delivered in time: {doc}"
                time.sleep(0.02)
    return docs
