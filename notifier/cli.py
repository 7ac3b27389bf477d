"""notifier: serve the API, run the capture SMTP server, send and inspect notifications."""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import json
import logging
import math
import mimetypes
import os
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from dotenv import dotenv_values
from pydantic import ValidationError

from notifier import logs
from notifier.connections import connection_limit, guarded_protocol, raise_open_files_limit
from notifier.errors import ConfigError, NotifierError
from notifier.healthcheck import CONTAINER_MAIN_PID, check, process_address
from notifier.settings import Settings

DEFAULT_URL = "http://127.0.0.1:8000"

log = logging.getLogger("notifier")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except (NotifierError, ValidationError) as exc:
        print(f"notifier: error: {_explain(exc)}", file=sys.stderr)
        return 2
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notifier", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP service and the dispatcher")
    serve.add_argument("--host", help="address to bind (NOTIFIER_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (NOTIFIER_PORT, default 8000)")
    serve.add_argument(
        "--dev", action="store_true", help="deliver to the embedded capture SMTP server"
    )
    serve.add_argument("--env-file", type=Path, help="read NOTIFIER_* settings from this file")
    serve.set_defaults(run=_serve)

    dev_smtp = commands.add_parser("dev-smtp", help="run the capture SMTP server alone")
    dev_smtp.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine)"
    )
    dev_smtp.add_argument("--port", type=int, help="port (NOTIFIER_DEV_SMTP_PORT, default 1025)")
    dev_smtp.add_argument("--mail-dir", type=Path, help="where .eml files go (./data/mail)")
    dev_smtp.set_defaults(run=_dev_smtp)

    send = commands.add_parser("send", help="POST a notification to a running service")
    send.add_argument("--to", action="append", help="recipient (repeatable)")
    send.add_argument("--cc", action="append", default=[])
    send.add_argument("--bcc", action="append", default=[])
    send.add_argument("--from", dest="sender")
    send.add_argument("--subject")
    send.add_argument("--text")
    send.add_argument("--html")
    send.add_argument("--template", help="a template's name, instead of --subject/--text/--html")
    send.add_argument(
        "--data", type=_json_object, help='the template\'s values, as JSON: \'{"name": "Ada"}\''
    )
    send.add_argument(
        "--attach", action="append", type=Path, default=[], help="a file to attach (repeatable)"
    )
    send.add_argument(
        "--batch",
        type=Path,
        metavar="FILE",
        help="JSON Lines, one notification body per line ('-' for standard input), sent "
        "through POST /v1/notifications/batch; prints one result per line",
    )
    send.add_argument(
        "--batch-size", type=int, default=500, help="notifications per request (default 500)"
    )
    _client_options(send)
    send.set_defaults(run=_send)

    status = commands.add_parser("status", help="show the delivery status of a notification")
    status.add_argument("id")
    _client_options(status)
    status.set_defaults(run=_status)

    check = commands.add_parser(
        "check-config", help="show effective settings, secrets masked, and check them"
    )
    mode = check.add_mutually_exclusive_group()
    mode.add_argument("--dev", action="store_true", help="check as `serve --dev` would")
    mode.add_argument(
        "--connect",
        action="store_true",
        help="also connect to the relay: EHLO, STARTTLS and AUTH as configured, QUIT",
    )
    check.add_argument("--env-file", type=Path)
    check.set_defaults(run=_check_config)

    migrate = commands.add_parser(
        "migrate", help="create or upgrade the database schema, then exit (serve does it too)"
    )
    migrate.add_argument("--env-file", type=Path)
    migrate.set_defaults(run=_migrate)

    health = commands.add_parser(
        "health",
        help="exit 0 if a running service's /healthz answers 200, else 1 (a container's "
        "health check)",
    )
    target = health.add_mutually_exclusive_group()
    target.add_argument("--url", help="the service's base URL (default: found from --pid)")
    target.add_argument(
        "--pid",
        type=int,
        default=CONTAINER_MAIN_PID,
        help="the `notifier serve` process whose --port/--host, NOTIFIER_PORT/NOTIFIER_HOST "
        "or --env-file say where it listens (default: 1, a container's main process)",
    )
    health.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    health.set_defaults(run=_health)
    return parser


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("NOTIFIER_URL", DEFAULT_URL))
    parser.add_argument(
        "--api-key",
        default=os.environ.get("NOTIFIER_API_KEY"),
        help="bearer key (default: NOTIFIER_API_KEY)",
    )


def _settings(args: argparse.Namespace) -> Settings:
    env_file: Path | None = getattr(args, "env_file", None)
    if env_file is not None and not env_file.is_file():
        raise ConfigError(f"--env-file {env_file}: no such file")
    # Command-line values go through validation like the environment's, and win over it.
    overrides = {k: v for k in ("host", "port") if (v := getattr(args, k, None)) is not None}
    settings = Settings(_env_file=env_file, **overrides)
    return settings.for_development() if getattr(args, "dev", False) else settings


def _serve(args: argparse.Namespace) -> int:
    from notifier.app import begin_shutdown, create_app

    settings = _settings(args)
    logs.configure(settings)
    for warning in _variable_warnings(args):
        log.warning("%s", warning)
    app = create_app(settings)
    max_connections = connection_limit(settings, raise_open_files_limit())
    if settings.dev:
        print(
            f"notifier (dev): capture SMTP on 127.0.0.1:{settings.dev_smtp_port}, "
            f"mail in {settings.dev_mail_dir}/, API on http://{settings.host}:{settings.port}",
            file=sys.stderr,
        )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
        log_config=None,
        http=guarded_protocol(
            max_connections=max_connections, head_timeout=settings.request_head_timeout
        ),
    )
    GracefulServer(config, on_exit=lambda: begin_shutdown(app)).run()
    return 0


class GracefulServer(uvicorn.Server):
    """uvicorn, telling the app the moment SIGTERM or SIGINT arrives.

    After a graceful stop the process exits 0: unlike uvicorn's own handler, this one
    does not re-raise the signal once shutdown is done. A second Ctrl-C forces the exit.
    """

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # What is alive now lives as long as the process: modules, the app, its schemas,
        # the started services. Frozen, it is left out of every later collection, so
        # the full collections that requests set off stay short (unfrozen, they were
        # most of the accept benchmark's p99: ``benchmarks/LEVERS.md``).
        gc.collect()
        gc.freeze()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def _dev_smtp(args: argparse.Namespace) -> int:
    from notifier.devsmtp import CaptureServer

    settings = Settings()
    mail_dir = args.mail_dir or settings.dev_mail_dir
    port = args.port if args.port is not None else settings.dev_smtp_port
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    # Blocked before the server thread starts, so only sigwait below receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    server = CaptureServer(mail_dir, port, host=args.host)
    server.start()
    print(f"capture SMTP on {args.host}:{port}, writing to {mail_dir}/ (Ctrl-C stops)", flush=True)
    try:
        signal.sigwait(stop_signals)
    finally:
        server.stop()
    return 0


def _migrate(args: argparse.Namespace) -> int:
    """Open the store, which brings its schema up to date, and close it again."""
    from notifier.settings import redacted_url
    from notifier.store import store_for

    settings = _settings(args)

    async def migrate() -> None:
        store = store_for(settings)
        await store.open()
        await store.close()

    asyncio.run(migrate())
    print(f"schema up to date: {redacted_url(settings.database_url)}", file=sys.stderr)
    return 0


def _health(args: argparse.Namespace) -> int:
    """1, never 2, on any failure: a container runtime reserves exit status 2."""
    try:
        url = args.url or process_address(args.pid).url
    except (OSError, ValueError) as exc:
        print(f"notifier: health: cannot tell where process {args.pid} listens: {exc}")
        return 1
    problem = check(url, args.timeout)
    if problem is not None:
        print(f"notifier: health: {problem}")
        return 1
    return 0


def _send(args: argparse.Namespace) -> int:
    if args.batch is not None:
        return _send_batch(args)
    if not args.to:
        print("notifier send: give --to (or --batch FILE)", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"to": args.to, "cc": args.cc, "bcc": args.bcc}
    optional = {
        "from": args.sender,
        "subject": args.subject,
        "text": args.text,
        "html": args.html,
        "template": args.template,
        "data": args.data,
    }
    body.update((key, value) for key, value in optional.items() if value is not None)
    if args.attach:
        try:
            body["attachments"] = [_attachment(path) for path in args.attach]
        except OSError as exc:
            print(f"notifier send: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
            return 2
    return _request(args, "POST", "/v1/notifications", body)


def _attachment(path: Path) -> dict[str, str]:
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    content = base64.b64encode(path.read_bytes()).decode("ascii")
    return {"filename": path.name, "content_type": content_type, "content": content}


def _send_batch(args: argparse.Namespace) -> int:
    """Each line's result as a line of its own (``line``, then ``status`` and ``id`` or
    ``error``); 0 only if every notification was accepted.

    Each request carries an ``Idempotency-Key`` drawn from the file and the request's
    place in it, so running the same file again after a failure sends nothing twice.
    """
    try:
        text = sys.stdin.read() if str(args.batch) == "-" else args.batch.read_text("utf-8")
        lines = _batch_lines(text, args.batch)
    except (OSError, ValueError) as exc:
        print(f"notifier send: {exc}", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print("notifier send: --batch-size must be at least 1", file=sys.stderr)
        return 2
    if _bad_url(args):
        return 2
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    all_accepted = True
    for start in range(0, len(lines), args.batch_size):
        chunk = lines[start : start + args.batch_size]
        batch = {"notifications": [body for _, body in chunk]}
        key = f"notifier-send-{digest}-{start}-{len(chunk)}"
        answer = _call(args, "POST", "/v1/notifications/batch", batch, {"Idempotency-Key": key})
        if answer is None:
            return 1
        for (number, _), item in zip(chunk, answer["items"], strict=True):
            print(json.dumps({"line": number, **item}))
            all_accepted = all_accepted and item["status"] == 202
    return 0 if all_accepted else 1


def _batch_lines(text: str, path: Path) -> list[tuple[int, Any]]:
    """The notification bodies of a JSON Lines text, with their line numbers. Lines end
    at LF alone: JSON may hold other line separators (U+2028) in its strings."""
    bodies = []
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                bodies.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {number}: not JSON: {exc}") from None
    if not bodies:
        raise ValueError(f"{path} holds no notifications")
    return bodies


def _json_object(text: str) -> dict[str, Any]:
    """``--data``: a JSON object, or a usage error saying what is wrong with it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object: {...}")
    return value


def _status(args: argparse.Namespace) -> int:
    return _request(args, "GET", f"/v1/notifications/{args.id}")


def _check_config(args: argparse.Namespace) -> int:
    """Every check ``serve`` runs before it listens, and with ``--connect`` the relay's."""
    from notifier.preflight import preflight

    settings = _settings(args)
    print(json.dumps(settings.masked(), indent=2, default=str))
    for warning in _variable_warnings(args):
        print(f"warning: {warning}", file=sys.stderr)
    preflight(settings)
    connection_limit(settings, raise_open_files_limit())
    if args.connect:
        print(f"relay OK: {_probe_relay(settings)}", file=sys.stderr)
    print("configuration OK", file=sys.stderr)
    return 0


def _probe_relay(settings: Settings) -> str:
    from notifier.dispatch.smtp import RelayConfig, SMTPTransport
    from notifier.dispatch.smtp.diagnosis import diagnose
    from notifier.errors import DeliveryError

    config = RelayConfig.from_settings(settings)
    try:
        shape = asyncio.run(SMTPTransport(config).probe())
    except DeliveryError as exc:
        raise ConfigError(f"relay check failed: {diagnose(exc, config)}") from None
    return f"{config.host}:{config.port}, {shape}"


def _variable_warnings(args: argparse.Namespace) -> list[str]:
    """Unknown ``NOTIFIER_*`` names, from the environment and the ``--env-file``."""
    from notifier.preflight import unknown_variables

    names = set(os.environ)
    env_file: Path | None = getattr(args, "env_file", None)
    if env_file is not None:
        names |= set(dotenv_values(env_file))
    return unknown_variables(names)


def _request(args: argparse.Namespace, method: str, path: str, body: object = None) -> int:
    if _bad_url(args):
        return 2
    answer = _call(args, method, path, body)
    if answer is None:
        return 1
    print(json.dumps(answer, indent=2))
    return 0


def _bad_url(args: argparse.Namespace) -> bool:
    if args.url.startswith(("http://", "https://")):
        return False
    print(f"--url must be an http:// or https:// address, not {args.url!r}", file=sys.stderr)
    return True


def _call(
    args: argparse.Namespace,
    method: str,
    path: str,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """The service's JSON answer, or ``None`` after saying why there is none."""
    data = None if body is None else json.dumps(body).encode()
    url = args.url.rstrip("/") + path
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - scheme checked
    request.add_header("content-type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    if args.api_key:
        request.add_header("authorization", f"Bearer {args.api_key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.load(response)
    except urllib.error.HTTPError as exc:
        print(f"HTTP {exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
    except urllib.error.URLError as exc:
        print(f"cannot reach {args.url}: {exc.reason}", file=sys.stderr)
    return None


def _explain(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"NOTIFIER_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            if e["loc"]
            else e["msg"]
            for e in exc.errors()
        )
    return str(exc)
