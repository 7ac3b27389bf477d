"""Bounds on the HTTP connections uvicorn serves: how many, and how long before a request.

uvicorn keeps every accepted connection until the client sends something, so clients
that connect and stay silent can use up the process's open files, and with them the
SMTP connections and the store. Here a connection is refused with ``503`` once
``max_connections`` are open, and closed if no complete request head arrives within
``head_timeout`` seconds of connecting or of the previous response.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import TYPE_CHECKING, Any

import orjson

from notifier.errors import ConfigError
from notifier.settings import Settings

if TYPE_CHECKING:
    # AutoHTTPProtocol is this class or the h11 one; both have what is used below.
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as HTTPProtocol
else:
    from uvicorn.protocols.http.auto import AutoHTTPProtocol as HTTPProtocol

log = logging.getLogger(__name__)

#: Open files kept for everything but HTTP clients, besides two per SMTP sender.
FIXED_RESERVE = 64
#: Fewer HTTP connections than this and the service is not worth starting.
MIN_CONNECTIONS = 16
#: The soft limit to aim for when the hard limit is unlimited.
UNLIMITED_CAP = 65536
#: Seconds between two warnings about refused connections.
WARNING_INTERVAL = 1.0

REFUSAL_BODY = orjson.dumps(
    {
        "detail": "too many open connections to this instance; retry shortly",
        "code": "too_many_connections",
    }
)


def reserved_files(send_concurrency: int) -> int:
    """Open files kept out of reach of HTTP clients: ``2 * send_concurrency + 64``.

    Two per SMTP sender (its relay connection, and room for a replacement that opens
    while the old one is still closing), and 64 for the rest: the SQLite writer and
    readers with their WAL, shm and lock files, the acknowledgment file, the listening
    socket, the event loop's epoll and pipes, the relay probe of ``/readyz``, the
    capture server with ``--dev``, standard streams and logging.
    """
    return 2 * send_concurrency + FIXED_RESERVE


def connection_limit(settings: Settings, open_files: int) -> int:
    """How many HTTP connections to allow: ``max_connections``, or fewer if files are short.

    The bound is ``min(max_connections, open_files - reserved_files(send_concurrency))``.
    """
    available = open_files - reserved_files(settings.send_concurrency)
    if available < MIN_CONNECTIONS:
        raise ConfigError(
            f"the open-files limit (ulimit -n) is {open_files}: with "
            f"NOTIFIER_SEND_CONCURRENCY={settings.send_concurrency} that leaves {available} "
            f"HTTP connections, fewer than {MIN_CONNECTIONS}; raise the limit to at least "
            f"{reserved_files(settings.send_concurrency) + MIN_CONNECTIONS}"
        )
    if settings.max_connections > available:
        log.warning(
            "NOTIFIER_MAX_CONNECTIONS=%d lowered to %d: the open-files limit is %d and %d "
            "files are kept for SMTP and the store",
            settings.max_connections,
            available,
            open_files,
            reserved_files(settings.send_concurrency),
        )
        return available
    log.info(
        "at most %d HTTP connections (open-files limit %d)", settings.max_connections, open_files
    )
    return settings.max_connections


def raise_open_files_limit() -> int:
    """Raise this process's soft open-files limit to the hard limit; return the soft limit.

    An unlimited hard limit is taken as ``UNLIMITED_CAP``. A limit the system refuses
    to raise is kept as it is.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return UNLIMITED_CAP
    target = UNLIMITED_CAP if hard == resource.RLIM_INFINITY else hard
    if soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("open-files limit kept at %d: raising it to %d failed: %s", soft, target, exc)
        return soft
    return target


def guarded_protocol(*, max_connections: int, head_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, bounded in connection count and in time to a request head.

    Pass the class as ``uvicorn.Config(http=...)``.
    """

    refusals = RefusalWarnings(max_connections)

    class GuardedHTTPProtocol(HTTPProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.head_timer: asyncio.TimerHandle | None = None
            self.admitted = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= max_connections:
                self.refuse(transport)
                return
            self.admitted = True
            super().connection_made(transport)
            self.arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.admitted:
                return
            self.disarm_head_timer()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self.arm_head_timer()

        def refuse(self, transport: asyncio.Transport) -> None:
            head = [b"HTTP/1.1 503 Service Unavailable\r\n"]
            defaults = self.server_state.default_headers
            head += [name + b": " + value + b"\r\n" for name, value in defaults]
            head += [
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(REFUSAL_BODY),
                b"retry-after: 1\r\n",
                b"connection: close\r\n\r\n",
            ]
            transport.write(b"".join(head) + REFUSAL_BODY)
            transport.close()
            refusals.refused(self.loop)

        def arm_head_timer(self) -> None:
            self.disarm_head_timer()
            self.head_timer = self.loop.call_later(head_timeout, self.head_timed_out, self.cycle)

        def disarm_head_timer(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def head_timed_out(self, cycle_when_armed: object) -> None:
            """Close the connection if no request head has completed since the timer was armed."""
            self.head_timer = None
            waiting = self.cycle is None or self.cycle.response_complete
            upgraded = self.transport.get_protocol() is not self
            if self.cycle is cycle_when_armed and waiting and not upgraded:
                self.transport.close()

    return GuardedHTTPProtocol


class RefusalWarnings:
    """Warnings about refused connections: the first at once, then a count at most once a second."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.unreported = 0
        self.quiet = True

    def refused(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.quiet:
            self.unreported += 1
            return
        self.quiet = False
        log.warning(
            "refusing new HTTP connections with 503: %d are open, the most allowed "
            "(NOTIFIER_MAX_CONNECTIONS, lowered to fit the open-files limit if need be)",
            self.max_connections,
        )
        loop.call_later(WARNING_INTERVAL, self.report, loop)

    def report(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.unreported:
            self.quiet = True
            return
        log.warning(
            "refused %d more HTTP connections with 503 in the last %g s",
            self.unreported,
            WARNING_INTERVAL,
        )
        self.unreported = 0
        loop.call_later(WARNING_INTERVAL, self.report, loop)
