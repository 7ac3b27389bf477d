"""Liveness and readiness: what a load balancer and an orchestrator are told, and why."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from notifier.domain import Notification
from notifier.settings import Settings
from notifier.store import SQLiteStore
from tests.conftest import DEADLINE_SECONDS, MakeSettings, running_app
from tests.raw_smtp import Delayed, RawSMTPServer, Session, verbs
from tests.tls import Authority

#: Longer than /readyz waits for a probe (2 s): the probe's answer comes after it gave up.
SLOW_REFUSAL_SECONDS = 2.5


class ClaimBug(SQLiteStore):
    """A store whose claims fail with an error no one expects: the dispatcher dies."""

    async def claim(self, **kwargs: Any) -> list[Notification]:
        raise RuntimeError("a bug in claiming")


class CatchUpBug(SQLiteStore):
    """A store that fails the acknowledgment writer's first read: the writer dies."""

    async def unacknowledged(self, *, limit: int, before: float) -> list[Notification]:
        raise RuntimeError("a bug in reading")


async def test_a_dead_dispatcher_fails_liveness_and_readiness(settings: Settings) -> None:
    async with running_app(settings, store=ClaimBug(settings.sqlite_path)) as client:
        give_up = time.monotonic() + DEADLINE_SECONDS
        while (live := await client.get("/healthz")).status_code == 200:
            assert time.monotonic() < give_up, "the dead dispatcher went unnoticed"
            await asyncio.sleep(0.01)
        ready = await client.get("/readyz")

    assert live.status_code == 503
    assert live.json()["status"] == "failing"
    assert "a bug in claiming" in live.json()["checks"]["dispatcher"]
    assert ready.status_code == 503
    assert "a bug in claiming" in ready.json()["checks"]["dispatcher"]


async def test_a_dead_acknowledgment_writer_fails_liveness(settings: Settings) -> None:
    async with running_app(settings, store=CatchUpBug(settings.sqlite_path)) as client:
        give_up = time.monotonic() + DEADLINE_SECONDS
        while (live := await client.get("/healthz")).status_code == 200:
            assert time.monotonic() < give_up, "the dead writer went unnoticed"
            await asyncio.sleep(0.01)

    assert live.status_code == 503
    assert "a bug in reading" in live.json()["checks"]["acknowledgments"]


async def test_a_healthy_instance_is_live_and_ready(settings: Settings) -> None:
    async with running_app(settings) as client:
        live = await client.get("/healthz")
        ready = await client.get("/readyz")

    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"store": "ok", "dispatcher": "ok", "relay": "ok"}


async def test_a_relay_slow_to_refuse_a_login_is_probed_once_and_its_refusal_shown(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    authority = Authority.create(tmp_path, "relay")
    slow = Session(
        replies={"AUTH": Delayed("535 5.7.8 Authentication failed", SLOW_REFUSAL_SECONDS)}
    )
    with RawSMTPServer(tls_context=authority.server_context(), fallback=slow) as relay:
        settings = make_settings(
            smtp_host=relay.host,
            smtp_port=relay.port,
            smtp_tls="starttls",
            smtp_username="notifier",
            smtp_password="wrong",
            smtp_ca_file=authority.pem,
            relay_check_interval=300.0,
        )
        async with running_app(settings) as client:
            first = await client.get("/readyz")
            give_up = time.monotonic() + DEADLINE_SECONDS
            while "535" not in (later := await client.get("/readyz")).json()["checks"]["relay"]:
                assert time.monotonic() < give_up, later.text
                await asyncio.sleep(0.05)
            again = await client.get("/readyz")
        sessions = relay.sessions

    assert first.status_code == 200
    assert "not known yet" in first.json()["checks"]["relay"]
    assert "535" in again.json()["checks"]["relay"]
    assert later.status_code == again.status_code == 200
    # One probe, one login, however often readiness was asked.
    assert [verbs(lines) for lines in sessions] == [["EHLO", "STARTTLS", "EHLO", "AUTH"]]
