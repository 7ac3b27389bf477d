"""Crash safety of the real process: repeated kill -9 and SIGTERM against a faulty relay.

The ledger check: every id that got a 202 ends sent; the relay holds every message at
least once; every extra copy is explained by an attempt recorded as a possible
duplicate (an interrupted attempt or a connection lost during DATA), and shares the
Message-ID; the acknowledgment file has both lines for every id.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import STORES, notification
from tests.service import ServiceProcess, spawn, wait_all_terminal
from tests.smtp_server import DROP, DROP_AFTER_ACCEPT, OK, SMTPServer

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("database_url", STORES, indirect=True)]

BATCHES = 3
PER_BATCH = 100
DEADLINE = 60.0


def inject_faults(smtp: SMTPServer, seed: int) -> None:
    """A relay that mostly accepts, sometimes defers, drops, or keeps-then-drops."""
    rng = random.Random(seed)
    replies = [OK] * 40 + ["451 4.3.0 Try later"] * 4 + [DROP] * 2 + [DROP_AFTER_ACCEPT] * 2
    smtp.handler.data_replies.extend(rng.choice(replies) for _ in range(BATCHES * PER_BATCH))
    smtp.handler.data_delay = 0.01


def wait_for_deliveries(smtp: SMTPServer, count: int) -> None:
    give_up = time.monotonic() + DEADLINE
    while len(smtp.handler.received) < count:
        assert time.monotonic() < give_up, "deliveries stopped"
        time.sleep(0.005)


def post_batch(service: ServiceProcess, batch: int) -> list[str]:
    with httpx.Client(base_url=service.url, timeout=10) as client:
        return [
            client.post("/v1/notifications", json=notification(subject=f"b{batch}-{i}")).json()[
                "id"
            ]
            for i in range(PER_BATCH)
        ]


def check_ledger(smtp: SMTPServer, docs: dict[str, dict[str, Any]], ack_file: Path) -> None:
    assert {doc["status"] for doc in docs.values()} == {"sent"}
    copies = Counter(r.message_id for r in smtp.handler.received)
    for doc in docs.values():
        held = copies[doc["message_id"]]
        assert held >= 1, doc["id"]
        flagged = sum(a["possible_duplicate"] for a in doc["attempts"])
        assert held - 1 <= flagged, f"unexplained duplicate of {doc['id']}: {doc['attempts']}"
    lines = map(json.loads, ack_file.read_text().splitlines())
    acks = Counter((line["id"], line["event"]) for line in lines)
    for notification_id in docs:
        assert acks[(notification_id, "accepted")] >= 1
        assert acks[(notification_id, "sent")] >= 1


@pytest.mark.parametrize("how", ["kill", "sigterm"])
def test_repeated_stops_lose_nothing_and_duplicate_only_in_the_documented_window(
    how: str,
    smtp: SMTPServer,
    service_env: dict[str, str],
    database_url: str,
    tmp_path: Path,
    processes: list[ServiceProcess],
) -> None:
    rng = random.Random(how)
    inject_faults(smtp, seed=7)
    env = {**service_env, "NOTIFIER_SHUTDOWN_GRACE": "0.5"}
    if not database_url.startswith("sqlite"):
        # A PostgreSQL replica cannot tell its killed predecessor's leases from a live
        # replica's: they are taken over when they run out, as in tests/test_replicas.py.
        env["NOTIFIER_LEASE_SECONDS"] = "2"
    accepted: list[str] = []
    for batch in range(BATCHES):
        service = spawn(processes, env, tmp_path)
        smtp.handler.stall()
        accepted += post_batch(service, batch)
        # Stop at a random point of this batch's delivery, with sends in flight.
        stop_at = len(smtp.handler.received) + rng.randint(5, PER_BATCH // 2)
        smtp.handler.release()
        wait_for_deliveries(smtp, stop_at)
        assert service.process is not None
        if how == "kill":
            service.kill()
        else:
            service.process.send_signal(signal.SIGTERM)
            assert service.process.wait(timeout=30) == 0
    final = spawn(processes, env, tmp_path)
    docs = wait_all_terminal(final.url, accepted)

    check_ledger(smtp, docs, Path(env["NOTIFIER_ACK_FILE"]))
    assert len(accepted) == BATCHES * PER_BATCH
    # The faults really happened: copies kept by the relay, and (for kill) sends cut short.
    outcomes = Counter(a["outcome"] for doc in docs.values() for a in doc["attempts"])
    assert len(smtp.handler.received) > len(accepted)
    if how == "kill":
        assert outcomes["interrupted"] >= 1
