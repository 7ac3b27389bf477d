"""Property-based fuzzing of the HTTP API against its own OpenAPI schema (schemathesis).

Bounded and derandomized, so `make test` stays fast and repeatable: no 5xx, every
status code documented, every body matching its documented schema and content type.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok
from schemathesis.python import asgi
from schemathesis.schemas import APIOperation

from notifier.app import create_app
from notifier.settings import Settings
from tests.smtp_server import SMTPServer

EXAMPLES_PER_OPERATION = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    smtp = SMTPServer()
    smtp.start()
    data: Path = tmp_path_factory.mktemp("fuzz")
    app = create_app(
        Settings(
            smtp_host=smtp.host,
            smtp_port=smtp.port,
            smtp_tls="none",
            smtp_local_hostname="notifier.test",
            mail_from="notifier@example.com",
            database_url=f"sqlite:///{data / 'notifier.db'}",
            ack_file=data / "acks.jsonl",
            auth_disabled=True,
            retry_initial_delay=0.01,
            retry_max_delay=0.05,
        )
    )
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        asgi.shutdown_lifespans()
        smtp.stop()


def operations(schema: schemathesis.BaseSchema) -> list[APIOperation[Any, Any, Any, Any]]:
    found = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the schema is invalid: {result}"
        found.append(result.ok())
    return found


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_answers_as_documented(
    api_schema: schemathesis.BaseSchema, mode: GenerationMode
) -> None:
    for operation in operations(api_schema):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def conforms(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(checks=CHECKS)

        try:
            conforms()
        except Unsatisfiable:
            # Nothing to make invalid: the operation takes no parameters and no body.
            assert mode is GenerationMode.NEGATIVE, operation.label
