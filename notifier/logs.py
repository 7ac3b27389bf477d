"""Logging: one JSON object a line in production, readable lines in development.

Events carry their context as fields (notification id, attempt, SMTP code), never
message bodies or secrets. uvicorn's loggers go through the same handler.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from notifier.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = "%(levelname)s %(name)s %(message)s"
RENAMED = {"levelname": "level", "name": "logger"}
#: Loggers whose own handlers would bypass ours.
ADOPTED = ("uvicorn", "uvicorn.error", "uvicorn.access")


def configure(settings: Settings) -> None:
    fmt = settings.log_format or ("text" if settings.dev else "json")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(JSON_FIELDS, rename_fields=RENAMED, timestamp="time"))
        handler.addFilter(_drop_terminal_colours)
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ADOPTED:
        adopted = logging.getLogger(name)
        adopted.handlers = []
        adopted.propagate = True
    # aiosmtpd logs every SMTP command of the capture server at INFO.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def _drop_terminal_colours(record: logging.LogRecord) -> bool:
    """uvicorn attaches an ANSI-coloured copy of each message; JSON readers want one."""
    record.__dict__.pop("color_message", None)
    return True


def report_crash(task: asyncio.Task[None]) -> None:
    """A background loop that ends other than by cancellation is a bug: say so loudly."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        logging.getLogger(__name__).critical(
            "%s stopped; the process must be restarted (/healthz now fails)",
            task.get_name(),
            exc_info=exc,
        )
