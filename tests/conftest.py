"""Shared fixtures: a real SMTP server, test settings and the app with its lifespan."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

import tests.postgres as pg
from notifier.app import create_app
from notifier.settings import Settings
from notifier.store import Store
from tests.service import TERMINAL, ServiceProcess
from tests.smtp_server import ScriptedHandler, SMTPServer, free_port
from tests.tls import Authenticator, Authority, TLSRelay

DEADLINE_SECONDS = 15.0

MakeSettings = Callable[..., Settings]


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    with SMTPServer() as server:
        yield server


@pytest.fixture
def smtp_handler(smtp: SMTPServer) -> ScriptedHandler:
    return smtp.handler


#: The stores an end-to-end module runs on, each test once per store: it opts in with
#: ``pytestmark = pytest.mark.parametrize("database_url", STORES, indirect=True)``.
STORES = ["sqlite", "postgresql"]


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database of the app and processes a test starts: a SQLite file of its own, or
    (parametrized ``postgresql``) an empty PostgreSQL database of its own."""
    if getattr(request, "param", "sqlite") == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'notifier.db'}"


@pytest.fixture
def make_settings(tmp_path: Path, smtp: SMTPServer, database_url: str) -> MakeSettings:
    """Settings against the test SMTP server, with millisecond retries."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "smtp_host": smtp.host,
            "smtp_port": smtp.port,
            "smtp_tls": "none",
            "smtp_timeout": 5.0,
            "smtp_local_hostname": "notifier.test",
            "mail_from": "notifier@example.com",
            "database_url": database_url,
            "ack_file": tmp_path / "acks.jsonl",
            "auth_disabled": True,
            "retry_initial_delay": 0.01,
            "retry_max_delay": 0.05,
            "retry_max_attempts": 5,
            "poll_interval": 0.02,
            "send_concurrency": 4,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    return make_settings()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings) as http:
        yield http


class running_app:
    """The app with its lifespan running, and an httpx client talking to it in-process."""

    def __init__(
        self,
        settings: Settings,
        headers: dict[str, str] | None = None,
        *,
        store: Store | None = None,
    ) -> None:
        self.app = create_app(settings, store=store)
        self._lifespan = self.app.router.lifespan_context(self.app)
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://notifier.test",
            headers=headers,
        )

    async def __aenter__(self) -> httpx.AsyncClient:
        await self._lifespan.__aenter__()
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()
        await self._lifespan.__aexit__(None, None, None)


def notification(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"to": ["ada@example.com"], "subject": "Hello", "text": "Hi Ada"}
    body.update(overrides)
    return body


async def post(client: httpx.AsyncClient, **overrides: Any) -> str:
    response = await client.post("/v1/notifications", json=notification(**overrides))
    assert response.status_code == 202, response.text
    notification_id: str = response.json()["id"]
    return notification_id


async def wait_until_in_data(handler: ScriptedHandler, count: int) -> None:
    """Poll the test SMTP server until ``count`` DATA commands have arrived."""
    give_up = time.monotonic() + DEADLINE_SECONDS
    while handler.data_commands < count:
        assert time.monotonic() < give_up, "sends never reached DATA"
        await asyncio.sleep(0.01)


async def wait_for(
    client: httpx.AsyncClient,
    notification_id: str,
    until: Callable[[dict[str, Any]], bool] = lambda doc: doc["status"] in TERMINAL,
    deadline: float = DEADLINE_SECONDS,
) -> dict[str, Any]:
    """Poll the status endpoint until ``until`` holds; fail at the deadline."""
    give_up = time.monotonic() + deadline
    while True:
        response = await client.get(f"/v1/notifications/{notification_id}")
        assert response.status_code == 200, response.text
        doc: dict[str, Any] = response.json()
        if until(doc):
            return doc
        if time.monotonic() > give_up:
            pytest.fail(f"deadline passed; last status document: {doc}")
        await asyncio.sleep(0.01)


@pytest.fixture
def service_env(tmp_path: Path, smtp: SMTPServer, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    env.update(
        {
            "NOTIFIER_SMTP_HOST": smtp.host,
            "NOTIFIER_SMTP_PORT": str(smtp.port),
            "NOTIFIER_SMTP_TLS": "none",
            "NOTIFIER_SMTP_LOCAL_HOSTNAME": "notifier.test",
            "NOTIFIER_MAIL_FROM": "notifier@example.com",
            "NOTIFIER_DATABASE_URL": database_url,
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


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    """The authority notifier is told to trust."""
    return Authority.create(tmp_path, "relay")


@pytest.fixture
def rogue(tmp_path: Path) -> Authority:
    """An authority notifier knows nothing of."""
    return Authority.create(tmp_path, "rogue")


@pytest.fixture
def tls_relay(authority: Authority) -> Iterator[TLSRelay]:
    """aiosmtpd requiring STARTTLS before MAIL and AUTH, with a certificate from ``authority``."""
    relay = TLSRelay(ScriptedHandler(), Authenticator(), free_port())
    controller = Controller(
        relay.handler,
        hostname="127.0.0.1",
        port=relay.port,
        tls_context=authority.server_context(),
        require_starttls=True,
        authenticator=relay.authenticator,
        auth_require_tls=True,
    )
    controller.start()
    try:
        yield relay
    finally:
        controller.stop()


# PostgreSQL: one server for the whole session (the throwaway one of tests/postgres.py, or
# NOTIFIER_TEST_POSTGRES_URL's), and a fresh database for each test that asks for one.
# Without PostgreSQL the tests that need it skip, saying why; NOTIFIER_REQUIRE_POSTGRES=1
# (as CI sets) makes that a failure.


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[pg.PostgresServer | pg.ExistingServer]:
    """The session's server; a failure to get one is remembered, not tried again per test."""
    existing = os.environ.get("NOTIFIER_TEST_POSTGRES_URL")
    if existing:
        server = pg.ExistingServer(existing)
        server.check()
        yield server
        return
    try:
        throwaway = pg.PostgresServer()
    except pg.PostgresUnavailable as exc:
        reason = f"PostgreSQL not available: {exc}"
        if os.environ.get("NOTIFIER_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason} (and NOTIFIER_REQUIRE_POSTGRES=1)", pytrace=False)
        pytest.skip(reason)
    # stop() also runs at exit should this teardown never be reached.
    try:
        throwaway.start()
        yield throwaway
    finally:
        throwaway.stop()


@pytest.fixture
def postgres_url(postgres_server: pg.PostgresServer | pg.ExistingServer) -> Iterator[str]:
    """``postgresql://user@127.0.0.1:port/dbname`` of an empty database of this test's
    own, dropped after it (connections still open to it are ended)."""
    with pg.fresh_database(postgres_server) as url:
        yield url
