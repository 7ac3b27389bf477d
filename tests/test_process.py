"""The real `notifier serve` process: crash recovery, the database lock and the CLI client."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import notification
from tests.service import DELIVERY_DEADLINE, ServiceProcess, spawn, wait_all_terminal
from tests.smtp_server import SMTPServer, free_port

pytestmark = pytest.mark.slow


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
        outcomes = [a["outcome"] for a in doc["attempts"]]
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
    port = "0"

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
