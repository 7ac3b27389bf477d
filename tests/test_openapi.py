"""The OpenAPI description: what it promises is what the service does, and a client
generated from it works."""

from __future__ import annotations

import asyncio
import importlib
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from notifier.api.auth import SCHEME_NAME, AuthenticateAndCharge
from notifier.api.notifications import AcceptRoute
from notifier.app import begin_shutdown, create_app
from notifier.domain import AttemptOutcome
from notifier.settings import Settings
from tests.conftest import DEADLINE_SECONDS, MakeSettings, notification, running_app, wait_for
from tests.smtp_server import ScriptedHandler

KEY = "k-openapi"
AUTH = {"authorization": f"Bearer {KEY}"}
UNKNOWN_ID = "01a1fde9-a2eb-74e1-86b5-597eb64cdee6"
ONE = "/v1/notifications/{notification_id}"
#: The response headers the description declares, as they arrive (lower case).
DECLARED_KINDS = {
    "location",
    "retry-after",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "idempotent-replayed",
    "www-authenticate",
}


def schema_of(settings: Settings) -> dict[str, Any]:
    schema: dict[str, Any] = create_app(settings).openapi()
    return schema


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield method, path, operation


def test_every_operation_has_a_short_stable_id(settings: Settings) -> None:
    ids = {
        (method, path): op["operationId"] for method, path, op in operations(schema_of(settings))
    }

    assert ids == {
        ("post", "/v1/notifications"): "create_notification",
        ("post", "/v1/notifications/batch"): "create_notifications",
        ("get", "/v1/notifications"): "list_notifications",
        ("get", ONE): "get_notification",
        ("delete", ONE): "cancel_notification",
        ("post", f"{ONE}/retry"): "retry_notification",
        ("get", "/v1/templates"): "list_templates",
        ("post", "/v1/templates/{name}/preview"): "preview_template",
        ("get", "/healthz"): "get_liveness",
        ("get", "/readyz"): "get_readiness",
        ("get", "/metrics"): "get_metrics",
    }


def test_every_v1_operation_and_only_those_require_the_bearer_scheme(settings: Settings) -> None:
    schema = schema_of(settings)

    (name, scheme), *others = schema["components"]["securitySchemes"].items()
    assert (name, scheme["type"], scheme["scheme"], others) == (SCHEME_NAME, "http", "bearer", [])
    for method, path, operation in operations(schema):
        expected: list[dict[str, list[str]]] | None = (
            [{SCHEME_NAME: []}] if path.startswith("/v1/") else None
        )
        assert operation.get("security") == expected, f"{method} {path}"


def test_every_store_operation_declares_store_unavailable_with_retry_after(
    settings: Settings,
) -> None:
    # Templates are read from files at start-up: their routes never touch the store.
    for method, path, operation in operations(schema_of(settings)):
        if path.startswith("/v1/notifications"):
            unavailable = operation["responses"]["503"]
            assert "store" in unavailable["description"], f"{method} {path}"
            assert "Retry-After" in unavailable["headers"], f"{method} {path}"


def test_attempt_outcome_is_the_enum_of_outcomes_interrupted_included(settings: Settings) -> None:
    schemas = schema_of(settings)["components"]["schemas"]

    outcome = schemas["AttemptOut"]["properties"]["outcome"]
    assert outcome == {"$ref": "#/components/schemas/AttemptOutcome"}
    assert schemas["AttemptOutcome"]["enum"] == [o.value for o in AttemptOutcome]
    assert "interrupted" in schemas["AttemptOutcome"]["enum"]


async def test_reply_to_is_documented_and_accepted_as_one_address_or_a_list(
    settings: Settings,
) -> None:
    reply_to = schema_of(settings)["components"]["schemas"]["NotificationRequest"]["properties"][
        "reply_to"
    ]
    one, many = reply_to["anyOf"]
    assert one["oneOf"] == many["items"]["oneOf"]
    assert many["type"] == "array"
    assert many["maxItems"] == 10

    async with running_app(settings) as client:
        for value in (
            "ada@example.com",
            {"address": "ada@example.com", "name": "Ada"},
            ["ada@example.com", {"address": "bob@example.com"}],
        ):
            response = await client.post("/v1/notifications", json=notification(reply_to=value))
            assert response.status_code == 202, (value, response.text)
        too_many = [f"r{i}@example.com" for i in range(11)]
        response = await client.post("/v1/notifications", json=notification(reply_to=too_many))
        assert response.status_code == 422


# The accept route serves itself from ASGI; its signature only describes it.


def accept_route(app: FastAPI, path: str = "/v1/notifications") -> AcceptRoute:
    return next(
        route
        for route in app.router.routes
        if isinstance(route, AcceptRoute) and route.path == path
    )


@pytest.mark.parametrize("path", ["/v1/notifications", "/v1/notifications/batch"])
def test_the_accept_routes_bind_exactly_what_their_operations_document(
    settings: Settings, path: str
) -> None:
    app = create_app(settings)
    operation = app.openapi()["paths"][path]["post"]
    route = accept_route(app, path)

    documented = {(p["in"], p["name"]) for p in operation.get("parameters", [])}
    assert documented == {("header", name) for name, _ in route.HEADERS}
    # handle() passes each header as the keyword argument the signature names for it.
    assert {p.alias: p.name for p in route.dependant.header_params} == dict(route.HEADERS)
    body = operation["requestBody"]
    assert body["required"] is True
    assert body["content"] == {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{route.BODY.__name__}"}}
    }
    assert route.body_field is not None
    assert route.body_field.field_info.annotation is route.BODY
    # The one dependency is the key check and rate charge that handle() calls itself.
    assert operation["security"] == [{SCHEME_NAME: []}]
    assert [type(d.call) for d in route.dependant.dependencies] == [AuthenticateAndCharge]


Effect = Callable[[httpx.AsyncClient], Awaitable[None]]


async def _idempotency_key_replays_the_first_answer(client: httpx.AsyncClient) -> None:
    headers = {**AUTH, "Idempotency-Key": "documented-1"}
    first = await client.post("/v1/notifications", json=notification(), headers=headers)
    again = await client.post("/v1/notifications", json=notification(), headers=headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"


async def _bearer_key_is_required(client: httpx.AsyncClient) -> None:
    anonymous = await client.post("/v1/notifications", json=notification())
    known = await client.post("/v1/notifications", json=notification(), headers=AUTH)
    assert (anonymous.status_code, known.status_code) == (401, 202)


async def _body_is_the_notification(client: httpx.AsyncClient) -> None:
    sent = await client.post(
        "/v1/notifications", json=notification(subject="documented body"), headers=AUTH
    )
    invalid = await client.post("/v1/notifications", json={"to": []}, headers=AUTH)
    status = await client.get(f"/v1/notifications/{sent.json()['id']}", headers=AUTH)
    assert status.json()["subject"] == "documented body"
    assert invalid.status_code == 422
    assert invalid.json()["errors"][0]["loc"].startswith("body")


#: What each part of the accept operation's description does, seen from outside.
EFFECTS: dict[tuple[str, str], Effect] = {
    ("header", "Idempotency-Key"): _idempotency_key_replays_the_first_answer,
    ("security", SCHEME_NAME): _bearer_key_is_required,
    ("body", "NotificationRequest"): _body_is_the_notification,
}


async def test_each_part_of_the_accept_operation_takes_effect(make_settings: MakeSettings) -> None:
    settings = make_settings(api_keys=[KEY], auth_disabled=False)
    operation = schema_of(settings)["paths"]["/v1/notifications"]["post"]
    documented = {(p["in"], p["name"]) for p in operation["parameters"]}
    documented |= {("security", name) for req in operation["security"] for name in req}
    body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    documented.add(("body", body.rsplit("/", 1)[1]))

    assert documented == set(EFFECTS)
    async with running_app(settings) as client:
        for effect in EFFECTS.values():
            await effect(client)


# Declared response headers against the headers answers carry.


class Answers:
    """Each answer seen, by operation and status, with the declared headers it carried."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.sent: defaultdict[tuple[str, str, str], set[str]] = defaultdict(set)

    def saw(self, method: str, path: str, response: httpx.Response) -> httpx.Response:
        status = str(response.status_code)
        declared = self.declared(method, path, status)
        carried = {name for name in response.headers if name in DECLARED_KINDS}
        assert carried <= declared, f"{method} {path} {status} undeclared: {carried - declared}"
        self.sent[method, path, status] |= carried
        return response

    def declared(self, method: str, path: str, status: str) -> set[str]:
        responses = self.schema["paths"][path][method]["responses"]
        assert status in responses, f"{method} {path} answered an undeclared {status}"
        return {name.lower() for name in responses[status].get("headers", {})}

    def each_declared_header_was_seen(self) -> None:
        for (method, path, status), carried in self.sent.items():
            assert self.declared(method, path, status) == carried, f"{method} {path} {status}"


ACCEPT_STATUSES = ("202", "400", "401", "403", "413", "415", "422", "503")


async def test_answers_carry_exactly_the_headers_their_operations_declare(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    settings = make_settings(
        api_keys=[KEY],
        auth_disabled=False,
        max_request_bytes=1024,
        max_attachment_bytes=0,
        retry_initial_delay=60.0,
        retry_max_delay=60.0,
        store_busy_timeout=0.1,
    )
    seen = Answers(schema_of(settings))
    runner = running_app(settings, headers=AUTH)
    smtp_handler.data_replies.extend(["554 5.7.1 Rejected", "451 4.3.0 Try later"])
    async with runner as client:

        async def accept(**headers: str) -> httpx.Response:
            response = await client.post("/v1/notifications", json=notification(), headers=headers)
            return seen.saw("post", "/v1/notifications", response)

        failed = (await accept()).json()["id"]
        await wait_for(client, failed)
        deferred = (await accept(**{"Idempotency-Key": "k1"})).json()["id"]
        await accept(**{"Idempotency-Key": "k1"})
        await wait_for(client, deferred, lambda doc: doc["status"] == "deferred")
        # Concurrent duplicates: one 202, and 409s while the first is being stored.
        await asyncio.gather(*(accept(**{"Idempotency-Key": "k2"}) for _ in range(20)))
        await accept(**{"Idempotency-Key": "k" * 300})  # 400
        await accept(authorization="Bearer nope")  # 401
        await accept(**{"content-type": "text/plain"})  # 415
        big = notification(text="x" * 2000)
        seen.saw("post", "/v1/notifications", await client.post("/v1/notifications", json=big))
        bad = await client.post("/v1/notifications", json=notification(to=["not an address"]))
        seen.saw("post", "/v1/notifications", bad)
        stranger = notification(**{"from": "someone@elsewhere.example"})
        seen.saw("post", "/v1/notifications", await client.post("/v1/notifications", json=stranger))

        seen.saw("get", ONE, await client.get(f"/v1/notifications/{deferred}"))
        seen.saw("get", ONE, await client.get(f"/v1/notifications/{UNKNOWN_ID}"))
        seen.saw("get", "/v1/notifications", await client.get("/v1/notifications"))
        seen.saw("get", "/v1/notifications", await client.get("/v1/notifications?limit=0"))
        seen.saw("delete", ONE, await client.delete(f"/v1/notifications/{deferred}"))
        seen.saw("delete", ONE, await client.delete(f"/v1/notifications/{deferred}"))
        seen.saw("post", f"{ONE}/retry", await client.post(f"/v1/notifications/{deferred}/retry"))
        seen.saw("post", f"{ONE}/retry", await client.post(f"/v1/notifications/{failed}/retry"))

        blocker = sqlite3.connect(settings.sqlite_path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # every write waits, then fails
            unavailable = await client.delete(f"/v1/notifications/{failed}")
            assert unavailable.json()["code"] == "store_unavailable"
            seen.saw("delete", ONE, unavailable)
        finally:
            blocker.close()
        begin_shutdown(runner.app)
        closing = await accept()
        assert closing.json()["code"] == "shutting_down"

    accepts = {("post", "/v1/notifications", status) for status in ACCEPT_STATUSES}
    assert set(seen.sent) - {("post", "/v1/notifications", "409")} == accepts | {
        ("get", ONE, "200"),
        ("get", ONE, "404"),
        ("get", "/v1/notifications", "200"),
        ("get", "/v1/notifications", "422"),
        ("delete", ONE, "200"),
        ("delete", ONE, "409"),
        ("delete", ONE, "503"),
        ("post", f"{ONE}/retry", "202"),
        ("post", f"{ONE}/retry", "409"),
    }
    seen.each_declared_header_was_seen()


async def test_a_rate_limited_answer_carries_its_declared_headers(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(rate_limit_requests_per_minute=1)
    seen = Answers(schema_of(settings))
    async with running_app(settings) as client:
        seen.saw("get", "/v1/notifications", await client.get("/v1/notifications"))
        limited = seen.saw("get", "/v1/notifications", await client.get("/v1/notifications"))

    assert limited.status_code == 429
    seen.each_declared_header_was_seen()


# A client generated from the description, against the service over real HTTP.

GENERATED = "generated_notifier_client"
GENERATOR_TIMEOUT = 120.0


def generate_client(schema: dict[str, Any], into: Path) -> None:
    """openapi-python-client's package for ``schema``, as ``into/<GENERATED>``; any
    warning about the description fails the test."""
    (into / "openapi.json").write_text(json.dumps(schema))
    (into / "config.yml").write_text("post_hooks: []\n")
    generator = Path(sys.executable).with_name("openapi-python-client")
    result = subprocess.run(
        [
            str(generator),
            "generate",
            "--path",
            str(into / "openapi.json"),
            "--output-path",
            str(into / GENERATED),
            "--config",
            str(into / "config.yml"),
            "--meta",
            "none",
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
        timeout=GENERATOR_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@contextmanager
def generated_package(into: Path) -> Iterator[Callable[[str], ModuleType]]:
    """Import modules of the generated package; forgotten again afterwards."""
    sys.path.insert(0, str(into))
    try:
        yield lambda name: importlib.import_module(f"{GENERATED}.{name}")
    finally:
        sys.path.remove(str(into))
        for name in [m for m in sys.modules if m == GENERATED or m.startswith(f"{GENERATED}.")]:
            del sys.modules[name]


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` under uvicorn on a loopback port of its own, in a thread; its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", log_config=None, ws="none", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        give_up = time.monotonic() + DEADLINE_SECONDS
        while not server.started:
            assert thread.is_alive(), "uvicorn stopped while starting"
            assert time.monotonic() < give_up, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=DEADLINE_SECONDS)
        sock.close()
    assert not thread.is_alive(), "uvicorn did not stop"


def test_a_generated_client_accepts_reads_and_cancels_a_notification(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler, tmp_path: Path
) -> None:
    smtp_handler.data_replies.append("451 4.3.0 Try later")
    # Retries far apart, so the notification waits deferred until it is cancelled.
    settings = make_settings(
        api_keys=[KEY], auth_disabled=False, retry_initial_delay=60.0, retry_max_delay=60.0
    )
    app = create_app(settings)
    generate_client(app.openapi(), tmp_path)

    with generated_package(tmp_path) as module, serving(app) as url:
        client_module, models = module("client"), module("models")
        create = module("api.notifications.create_notification")
        read = module("api.notifications.get_notification")
        cancel = module("api.notifications.cancel_notification")
        request = models.NotificationRequest(
            to=["ada@example.com"], subject="Hello", text="Hi Ada", reply_to="desk@example.com"
        )
        with client_module.Client(base_url=url) as anonymous:
            refused = create.sync(client=anonymous, body=request)
        with client_module.AuthenticatedClient(base_url=url, token=KEY) as client:
            accepted = create.sync_detailed(client=client, body=request, idempotency_key="gen-1")
            notification_id = accepted.parsed.id
            give_up = time.monotonic() + DEADLINE_SECONDS
            while (status := read.sync(client=client, notification_id=notification_id)).status != (
                models.NotificationStatus.DEFERRED
            ):
                assert time.monotonic() < give_up, f"never deferred: {status.to_dict()}"
                time.sleep(0.01)
            cancelled = cancel.sync(client=client, notification_id=notification_id)

    assert isinstance(refused, models.ErrorBody)
    assert refused.code == "unauthorized"
    assert accepted.status_code == 202
    assert accepted.headers["location"] == f"/v1/notifications/{notification_id}"
    assert isinstance(accepted.parsed, models.NotificationAccepted)
    assert accepted.parsed.status is models.NotificationStatus.QUEUED
    assert status.attempts[0].outcome is models.AttemptOutcome.DEFERRED
    assert status.attempts[0].smtp_code == 451
    assert isinstance(cancelled, models.NotificationOut)
    assert cancelled.status is models.NotificationStatus.CANCELLED
    assert cancelled.id == notification_id
    assert smtp_handler.received == []
