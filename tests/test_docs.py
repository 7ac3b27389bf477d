"""The documentation says what the code does: the settings it names, its links, the error
codes of the API, and the README's Python example, run against a real service."""

from __future__ import annotations

import ast
import difflib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
import yaml
from starlette.types import ASGIApp, Receive, Scope, Send

from notifier.api.problem import _CODES
from notifier.app import create_app
from notifier.preflight import OTHER_VARIABLES
from notifier.settings import Settings
from tests.conftest import DEADLINE_SECONDS, MakeSettings

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
API_DOC = DOCS / "api.md"
CONFIGURATION_DOC = DOCS / "configuration.md"
PACKAGE = ROOT / "notifier"
DOCUMENTS = [README, *sorted(DOCS.glob("*.md"))]

#: A variable name; with a trailing ``*`` it stands for every setting it begins.
VARIABLE = re.compile(r"\bNOTIFIER_[A-Z0-9_]+\*?")
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
#: The calls whose second argument, or ``code=``, is the ``code`` of an error answer.
ERROR_BUILDERS = frozenset({"ApiError", "error_response"})
#: Errors whose code comes first (``TemplateError(code, message)``); the API answers it.
CODE_FIRST_ERRORS = frozenset({"TemplateError"})

KEY = "k-readme"
AUTH = {"authorization": f"Bearer {KEY}"}
EXAMPLE_OUTPUT = re.compile(
    r"(\d{3}) ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
)
BUSY_BODY = b'{"detail":"this instance is shutting down; retry shortly","code":"shutting_down"}'
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n"
    b"\r\n" % len(BUSY_BODY)
) + BUSY_BODY


def settings_variables() -> set[str]:
    return {"NOTIFIER_" + name.upper() for name in Settings.model_fields}


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


# 1. Settings


def test_the_configuration_reference_names_every_setting() -> None:
    named = set(VARIABLE.findall(CONFIGURATION_DOC.read_text(encoding="utf-8")))

    missing = sorted(settings_variables() - named)

    assert not missing, f"{relative(CONFIGURATION_DOC)} does not describe {missing}"


def test_every_variable_the_documentation_names_is_read_by_notifier() -> None:
    known = settings_variables() | OTHER_VARIABLES
    unknown = []
    for document in DOCUMENTS:
        for name in sorted(set(VARIABLE.findall(document.read_text(encoding="utf-8")))):
            if name.endswith("*"):
                if not any(variable.startswith(name[:-1]) for variable in known):
                    unknown.append(f"{relative(document)}: {name} matches no setting")
            elif name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                unknown.append(f"{relative(document)}: {name}{hint}")

    assert not unknown, "names no setting or client reads:\n" + "\n".join(unknown)


def test_the_compose_example_sets_only_settings_and_gives_each_replica_its_own_files() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text(encoding="utf-8"))
    replicas = {
        name: service
        for name, service in compose["services"].items()
        if "NOTIFIER_DATABASE_URL" in service.get("environment", {})
    }

    assert len(replicas) >= 2
    for name, service in replicas.items():
        unknown = set(service["environment"]) - settings_variables()
        assert not unknown, f"{name} sets {unknown}"
        assert service["environment"]["NOTIFIER_DATABASE_URL"].startswith("postgresql://")
    data = [v for s in replicas.values() for v in s["volumes"] if v.split(":")[1] == "/data"]
    assert len(set(data)) == len(replicas), "replicas share an acknowledgment file"


# 2. Links


def prose(markdown: str) -> str:
    """``markdown`` without code blocks and code spans, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", markdown))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(document: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", document.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_every_relative_link_points_at_a_file_and_heading_that_exist() -> None:
    broken = []
    for document in DOCUMENTS:
        text = prose(document.read_text(encoding="utf-8"))
        targets = INLINE_LINK.findall(text) + REFERENCE_DEFINITION.findall(text)
        for target in targets:
            if SCHEME.match(target):
                continue
            path, _, anchor = target.partition("#")
            linked = (document.parent / path).resolve() if path else document
            if not linked.exists():
                broken.append(f"{relative(document)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{relative(document)}: {target} (no such heading)")

    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_link_check_knows_github_anchors() -> None:
    assert slug("5. Graceful shutdown (SIGTERM, or the first Ctrl-C)") == (
        "5-graceful-shutdown-sigterm-or-the-first-ctrl-c"
    )
    assert slug("`notifier check-config`") == "notifier-check-config"
    assert "connections-and-open-files" in anchors(DOCS / "operations.md")


# 3. Error codes


def answerable_codes() -> set[str]:
    """Every ``code`` an error answer can carry, read from the source.

    The framework's own errors get theirs from ``problem._CODES`` (or its fallback); the
    rest are the codes given to :class:`ApiError` and ``error_response``, and the
    ``"code"`` of error bodies written by hand. A code passed on in a variable is
    followed to the keyword arguments and assignments of that name in the same module;
    one that cannot be followed fails the test rather than going unchecked.
    """
    codes = set(_CODES.values())
    unresolved = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        passed_on: dict[str, int] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                code = _code_argument(node)
                if isinstance(code, ast.Constant) and isinstance(code.value, str):
                    codes.add(code.value)
                elif isinstance(code, ast.Name):
                    passed_on.setdefault(code.id, node.lineno)
                elif isinstance(code, ast.Attribute) and code.attr == "code":
                    pass  # an ApiError's code passed on: each ApiError is read where made
                elif code is not None:
                    unresolved.append(f"{relative(path)}:{node.lineno}")
                if _is_codes_lookup(node) and len(node.args) > 1:
                    fallback = node.args[1]
                    if isinstance(fallback, ast.Constant) and isinstance(fallback.value, str):
                        codes.add(fallback.value)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "code"
                        and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)
                    ):
                        codes.add(value.value)
        for name, line in passed_on.items():
            given = _values_of(tree, name)
            if given is None:
                unresolved.append(f"{relative(path)}:{line} ({name})")
            else:
                codes |= given
    assert not unresolved, f"cannot tell which codes these errors carry: {unresolved}"
    return codes


def _code_argument(call: ast.Call) -> ast.expr | None:
    function = call.func
    name = function.id if isinstance(function, ast.Name) else getattr(function, "attr", None)
    if name in CODE_FIRST_ERRORS and call.args:
        return call.args[0]
    if name not in ERROR_BUILDERS:
        return None
    if len(call.args) > 1:
        return call.args[1]
    return next((k.value for k in call.keywords if k.arg == "code"), None)


def _values_of(tree: ast.Module, name: str) -> set[str] | None:
    """The strings ``name`` can hold: from keyword arguments ``name=...`` and assignments
    ``name = ...`` in ``tree`` (a ``_CODES`` lookup is counted already); ``None`` if
    anything else may be given to it, or nothing is."""
    values: set[str] = set()
    found = False
    for node in ast.walk(tree):
        given = _given_to(name, node)
        if given is None:
            continue
        found = True
        if isinstance(given, ast.Constant) and isinstance(given.value, str):
            values.add(given.value)
        elif not (isinstance(given, ast.Call) and _is_codes_lookup(given)):
            return None
    return values if found else None


def _given_to(name: str, node: ast.AST) -> ast.expr | None:
    """What ``node`` gives ``name``, as a keyword argument ``name=...`` or by assignment."""
    if isinstance(node, ast.keyword) and node.arg == name:
        return node.value
    if isinstance(node, ast.Assign) and any(
        isinstance(target, ast.Name) and target.id == name for target in node.targets
    ):
        return node.value
    return None


def _is_codes_lookup(call: ast.Call) -> bool:
    function = call.func
    return (
        isinstance(function, ast.Attribute)
        and function.attr == "get"
        and isinstance(function.value, ast.Name)
        and function.value.id == "_CODES"
    )


def documented_codes() -> set[str]:
    """The codes in the second column of the error table of ``docs/api.md``."""
    text = API_DOC.read_text(encoding="utf-8")
    section = text.partition("\n## Errors\n")[2].partition("\n## ")[0]
    row = re.compile(r"^\|\s*(?:`\d{3}`|other)\s*\|\s*`([a-z_]+)`\s*\|", re.MULTILINE)
    return set(row.findall(section))


def test_the_code_enumeration_finds_the_codes_of_every_kind_of_error() -> None:
    codes = answerable_codes()

    # From ApiError, error_response, a variable, hand-written bodies, the framework's map.
    assert {"unauthorized", "store_unavailable", "not_cancellable", "not_retryable"} <= codes
    assert {"payload_too_large", "too_many_connections", "method_not_allowed"} <= codes


def test_every_error_code_the_api_can_answer_is_documented() -> None:
    missing = sorted(answerable_codes() - documented_codes())

    assert not missing, f"the error table of {relative(API_DOC)} lacks {missing}"


def test_every_error_code_documented_is_one_the_api_can_answer() -> None:
    documented = documented_codes()
    assert len(documented) >= 10, "the error table of docs/api.md was not found"

    stale = sorted(documented - answerable_codes())

    assert not stale, f"{relative(API_DOC)} lists codes the code never answers: {stale}"


# 4. The README's Python example


def readme_example() -> str:
    blocks = re.findall(
        r"^```python[ \t]*\n(.*?)^```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL
    )
    assert len(blocks) == 1, "the README should hold exactly one Python example"
    example: str = blocks[0]
    return example


def start_example(url: str, key: str, tmp_path: Path) -> subprocess.Popen[str]:
    """The README's example as a script of its own, told where notifier is as it says."""
    script = tmp_path / "send_example.py"
    script.write_text(readme_example(), encoding="utf-8")
    env = {name: value for name, value in os.environ.items() if not name.startswith("NOTIFIER_")}
    env.update({"NOTIFIER_URL": url, "NOTIFIER_API_KEY": key})
    return subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(example: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        stdout, stderr = example.communicate(timeout=DEADLINE_SECONDS * 2)
    finally:
        stop(example)
    return example.returncode, stdout, stderr


def stop(example: subprocess.Popen[str]) -> None:
    if example.poll() is None:
        example.kill()
        example.communicate()


def accepted_id(returncode: int, stdout: str, stderr: str) -> str:
    """The id the example printed after its ``202``."""
    assert returncode == 0, stderr
    match = EXAMPLE_OUTPUT.fullmatch(stdout.strip())
    assert match is not None, f"unexpected output: {stdout!r}"
    assert match.group(1) == "202"
    return match.group(2)


@contextmanager
def listening() -> Iterator[tuple[socket.socket, str]]:
    """A loopback socket already listening (connections wait in its backlog); its URL."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock, f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@contextmanager
def serving(app: ASGIApp, sock: socket.socket) -> Iterator[None]:
    """``app`` under uvicorn on ``sock``, in a thread (as in ``tests/test_openapi.py``)."""
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
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=DEADLINE_SECONDS)
    assert not thread.is_alive(), "uvicorn did not stop"


@dataclass(frozen=True)
class Request:
    headers: dict[str, str]
    body: bytes
    #: ``time.monotonic()`` when the connection was accepted, and when it was done with.
    arrived: float
    left: float


def take_request(listener: socket.socket, answer: bytes | None = None) -> Request:
    """Accept one connection, read one request from it, then answer ``answer`` or hang up."""
    listener.settimeout(DEADLINE_SECONDS)
    connection, _ = listener.accept()
    arrived = time.monotonic()
    with connection:
        connection.settimeout(DEADLINE_SECONDS)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            assert chunk, "the example hung up before its request head was complete"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        fields = (line.partition(":") for line in head.decode("latin-1").split("\r\n")[1:])
        headers = {name.strip().lower(): value.strip() for name, _, value in fields}
        while len(body) < int(headers.get("content-length", "0")):
            chunk = connection.recv(65536)
            assert chunk, "the example hung up before its request body was complete"
            body += chunk
        if answer is not None:
            connection.sendall(answer)
    return Request(headers, body, arrived, time.monotonic())


class CountingPosts:
    """Passes everything on to ``app``, counting the POST requests."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.posts = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            self.posts += 1
        await self.app(scope, receive, send)


def test_the_readme_python_example_gets_a_202_with_an_id(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    app = create_app(make_settings(api_keys=[KEY], auth_disabled=False))

    with listening() as (sock, url), serving(app, sock):
        notification_id = accepted_id(*finish(start_example(url, KEY, tmp_path)))

        give_up = time.monotonic() + DEADLINE_SECONDS
        while True:
            response = httpx.get(f"{url}/v1/notifications/{notification_id}", headers=AUTH)
            assert response.status_code == 200, response.text
            if response.json()["status"] == "sent" or time.monotonic() > give_up:
                break
            time.sleep(0.02)

    assert response.json()["status"] == "sent"


def test_the_readme_python_example_retries_with_the_same_idempotency_key(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    """A ``503`` with ``Retry-After``, then a dropped connection, then the service."""
    app = create_app(make_settings(api_keys=[KEY], auth_disabled=False))

    with listening() as (sock, url):
        example = start_example(url, KEY, tmp_path)
        try:
            refused = take_request(sock, answer=BUSY)
            dropped = take_request(sock)
            with serving(app, sock):
                notification_id = accepted_id(*finish(example))
                # The key the service stored is the one of the first two attempts.
                again = httpx.post(
                    f"{url}/v1/notifications",
                    content=refused.body,
                    headers={
                        **AUTH,
                        "content-type": "application/json",
                        "idempotency-key": refused.headers["idempotency-key"],
                    },
                )
        finally:
            stop(example)

    assert refused.headers["authorization"] == f"Bearer {KEY}"
    assert refused.headers["idempotency-key"]
    assert dropped.headers["idempotency-key"] == refused.headers["idempotency-key"]
    assert dropped.body == refused.body
    # Retry-After said 1 s, more than the example's first backoff.
    assert dropped.arrived - refused.left >= 1.0, "the example did not wait for Retry-After"
    assert again.status_code == 202, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == notification_id


def test_the_readme_python_example_does_not_retry_a_refusal(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    counting = CountingPosts(create_app(make_settings(api_keys=[KEY], auth_disabled=False)))

    with listening() as (sock, url), serving(counting, sock):
        returncode, _, stderr = finish(start_example(url, "not-a-key", tmp_path))

    assert returncode != 0
    assert "401" in stderr
    assert counting.posts == 1
