"""The real `notifier serve` process: crash recovery, the database lock and the CLI client."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TERMINAL, notification
from tests.smtp_server import SMTPServer, free_port

pytestmark = pytest.mark.slow

STARTUP_DEADLINE = 20.0
DELIVERY_DEADLINE = 30.0


class ServiceProcess:
    """``python -m notifier serve`` on a free loopback port; always stopped by the fixture."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = cwd / f"serve-{self.port}.log"

    def start(self) -> ServiceProcess:
        command = [sys.executable, "-m", "notifier", "serve", "--port", str(self.port)]
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
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
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


@pytest.fixture
def service_env(tmp_path: Path, smtp: SMTPServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env.update(
        {
            "NOTIFIER_SMTP_HOST": smtp.host,
            "NOTIFIER_SMTP_PORT": str(smtp.port),
            "NOTIFIER_SMTP_TLS": "none",
            "NOTIFIER_SMTP_LOCAL_HOSTNAME": "notifier.test",
            "NOTIFIER_MAIL_FROM": "notifier@example.com",
            "NOTIFIER_DATABASE_URL": f"sqlite:///{tmp_path / 'notifier.db'}",
            "NOTIFIER_ACK_FILE": str(tmp_path / "acks.jsonl"),
            "NOTIFIER_AUTH_DISABLED": "true",
            "NOTIFIER_SEND_CONCURRENCY": "4",
            "NOTIFIER_RETRY_INITIAL_DELAY": "0.01",
            "NOTIFIER_RETRY_MAX_DELAY": "0.05",
            "NOTIFIER_POLL_INTERVAL": "0.05",
            "NOTIFIER_LOG_LEVEL": "warning",
        }
    )
    return env


@pytest.fixture
def processes(service_env: dict[str, str], tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    try:
        yield started
    finally:
        for process in started:
            process.kill()


def spawn(processes: list[ServiceProcess], env: dict[str, str], cwd: Path) -> ServiceProcess:
    service = ServiceProcess(env, cwd)
    processes.append(service)
    return service.start()


def wait_all_terminal(url: str, ids: list[str]) -> dict[str, dict[str, object]]:
    docs: dict[str, dict[str, object]] = {}
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


def test_kill_9_while_sends_are_stalled_loses_nothing(
    smtp: SMTPServer,
    service_env: dict[str, str],
    tmp_path: Path,
    processes: list[ServiceProcess],
) -> None:
    handler = smtp.handler
    handler.stall()
    first = spawn(processes, service_env, tmp_path)
    with httpx.Client(base_url=first.url, timeout=5) as client:
        ids = [
            client.post("/v1/notifications", json=notification(subject=f"n{i}")).json()["id"]
            for i in range(20)
        ]
    give_up = time.monotonic() + DELIVERY_DEADLINE
    while handler.data_commands < 4:
        assert time.monotonic() < give_up, "sends never reached DATA"
        time.sleep(0.01)

    first.kill()
    handler.release()
    second = spawn(processes, service_env, tmp_path)
    docs = wait_all_terminal(second.url, ids)

    assert {doc["status"] for doc in docs.values()} == {"sent"}
    copies = Counter(r.message_id for r in handler.received)
    for notification_id, doc in docs.items():
        assert copies[str(doc["message_id"])] >= 1, notification_id
        outcomes = [a["outcome"] for a in doc["attempts"]]  # type: ignore[attr-defined]
        if copies[str(doc["message_id"])] > 1:
            # A duplicate only ever comes from an attempt the crash interrupted.
            assert "interrupted" in outcomes
    interrupted = [d for d in docs.values() if "interrupted" in str(d["attempts"])]
    assert len(interrupted) >= 4
    acks = Counter(
        (line["id"], line["event"])
        for line in map(
            json.loads, Path(service_env["NOTIFIER_ACK_FILE"]).read_text().split("\n")[:-1]
        )
    )
    for notification_id in ids:
        assert acks[(notification_id, "accepted")] >= 1
        assert acks[(notification_id, "sent")] >= 1


def test_second_process_on_the_same_database_is_refused(
    service_env: dict[str, str], tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    spawn(processes, service_env, tmp_path)
    port = str(free_port())

    result = subprocess.run(
        [sys.executable, "-m", "notifier", "serve", "--port", port],
        env=service_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode != 0
    assert "already served by another notifier process" in result.stdout + result.stderr


def test_cli_sends_and_reports_status(
    smtp: SMTPServer,
    service_env: dict[str, str],
    tmp_path: Path,
    processes: list[ServiceProcess],
) -> None:
    service = spawn(processes, service_env, tmp_path)

    sent = service.run_cli("send", "--to", "ada@example.com", "--subject", "CLI", "--text", "hi")
    assert sent.returncode == 0, sent.stderr
    notification_id = json.loads(sent.stdout)["id"]
    wait_all_terminal(service.url, [notification_id])
    status = service.run_cli("status", notification_id)

    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "sent"
    assert smtp.handler.received[0].message["Subject"] == "CLI"


def test_dev_smtp_captures_mail_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    import signal

    import aiosmtplib

    port = free_port()
    mail_dir = tmp_path / "mail"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    command = [sys.executable, "-m", "notifier", "dev-smtp", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--mail-dir", str(mail_dir)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        assert b"capture SMTP" in process.stdout.readline()
        message = b"Subject: captured\r\n\r\nhello\r\n"
        asyncio.run(
            aiosmtplib.send(
                message,
                sender="n@example.com",
                recipients=["ada@example.com"],
                hostname="127.0.0.1",
                port=port,
                start_tls=False,
                local_hostname="notifier.test",
            )
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()

    (captured,) = mail_dir.glob("*.eml")
    content = captured.read_bytes()
    assert content.startswith(b"X-Envelope-From: n@example.com\r\nX-Envelope-To: ada@example.com")
    assert b"Subject: captured" in content
