"""A real SMTP server for tests (aiosmtpd on loopback) whose replies each test scripts.

Replies are scripted per stage: queue ``"451 4.3.0 Try later"`` for the next MAIL,
RCPT (per address) or DATA, ``DROP`` to close the connection instead of answering,
or call :meth:`ScriptedHandler.stall` to hold every DATA until :meth:`release`.
Everything the server accepted is recorded in ``received``.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from notifier.devsmtp import OffersPipelining

DROP = "DROP"
#: At DATA: keep the message, then drop the connection before answering.
DROP_AFTER_ACCEPT = "DROP_AFTER_ACCEPT"
OK = "250 2.0.0 OK"
MAX_STALL_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str] = field(default_factory=list)

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])


@dataclass
class ScriptedHandler(OffersPipelining):
    mail_replies: deque[str] = field(default_factory=deque)
    rcpt_replies: defaultdict[str, deque[str]] = field(default_factory=lambda: defaultdict(deque))
    data_replies: deque[str] = field(default_factory=deque)
    received: list[Received] = field(default_factory=list)
    #: Counts every EHLO, i.e. every SMTP session the client opened.
    sessions: int = 0
    data_commands: int = 0
    #: Seconds each DATA takes before it is answered, so sends are in flight for a while.
    data_delay: float = 0.0
    #: Offer PIPELINING (RFC 2920) in EHLO, as production relays do.
    pipelining: bool = True
    _stalled: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def stall(self) -> None:
        """Hold every DATA reply until :meth:`release`."""
        self._stalled.set()

    def release(self) -> None:
        self._stalled.clear()

    def received_by(self, address: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if address in r.rcpt_tos]

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        with self._lock:
            self.sessions += 1
        return await super().handle_EHLO(server, session, envelope, hostname, responses)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self._next(self.mail_replies)
        if reply == DROP:
            return _drop(server)
        if reply.startswith("250"):
            envelope.mail_from = address
            envelope.mail_options.extend(options)
        return reply

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self._next(self.rcpt_replies[address])
        if reply == DROP:
            return _drop(server)
        if reply.startswith("25"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.data_commands += 1
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        deadline = time.monotonic() + MAX_STALL_SECONDS
        while self._stalled.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        reply = self._next(self.data_replies)
        if reply == DROP:
            return _drop(server)
        if reply.startswith("250") or reply == DROP_AFTER_ACCEPT:
            content = envelope.original_content or envelope.content
            with self._lock:
                self.received.append(
                    Received(
                        envelope.mail_from,
                        list(envelope.rcpt_tos),
                        bytes(content),
                        list(envelope.mail_options),
                    )
                )
        if reply == DROP_AFTER_ACCEPT:
            return _drop(server)
        return reply

    def _next(self, replies: deque[str]) -> str:
        with self._lock:
            return replies.popleft() if replies else OK


def _drop(server: Any) -> str:
    server.transport.close()
    return "421 4.3.0 closing"


class SMTPServer:
    """A started :class:`ScriptedHandler` on a free loopback port."""

    def __init__(self, *, smtputf8: bool = False, pipelining: bool = True) -> None:
        self.handler = ScriptedHandler(pipelining=pipelining)
        self.host = "127.0.0.1"
        self.port = free_port()
        self._controller = Controller(
            self.handler, hostname=self.host, port=self.port, enable_SMTPUTF8=smtputf8
        )

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self.handler.release()
        self._controller.stop()

    def __enter__(self) -> SMTPServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
