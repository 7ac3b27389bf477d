"""A byte-level scripted SMTP server, for the faults aiosmtpd cannot produce.

It runs in its own thread with its own event loop (like aiosmtpd's ``Controller``) on a
loopback port bound when it is made: the port is its own at once, and refuses connections
until :meth:`RawSMTPServer.start` (an unreachable relay that comes up on demand). It speaks
just enough SMTP for aiosmtplib: greeting, EHLO, HELO, STARTTLS, AUTH PLAIN and LOGIN,
MAIL, RCPT, DATA, RSET, NOOP and QUIT.

Each connection follows the next :class:`Session` queued with :meth:`RawSMTPServer.script`,
or the server's ``fallback`` (normal behaviour by default) once the queue is used up. A
session can replace the greeting, offer or hide STARTTLS and AUTH, present another
certificate, and override the reply to any verb with a reply line, an :class:`Action`
or a :class:`Hangup`. The server records every line it reads outside DATA, per session,
and every message whose final "." it read and did not refuse.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType

from tests.smtp_server import Received

#: The key in :attr:`Session.replies` for the reply to the final "." of DATA.
END_OF_DATA = "."
GARBAGE_LINE = b"hello there\r\n"
START_TIMEOUT_SECONDS = 5.0
#: Where ``split_replies`` cuts a reply (inside the text after its code), and the pause
#: between the pieces: long enough for the first to be read on its own.
SPLIT_AT = 6
SPLIT_PAUSE_SECONDS = 0.005
STOP_TIMEOUT_SECONDS = 5.0
#: How long a stalled session waits at most, and how often it looks for its end.
MAX_STALL_SECONDS = 10.0
STALL_POLL_SECONDS = 0.02


class Action(StrEnum):
    #: Close the connection instead of answering.
    DROP = "drop"
    #: Answer with a line that is not an SMTP reply.
    GARBAGE = "garbage"
    #: At DATA: answer 354, read one line of the body, close before the final ".".
    DROP_AFTER_354 = "drop after 354"
    #: At DATA: answer 354, read the body and its final "." (the message is kept),
    #: then close without replying.
    DROP_AFTER_DOT = "drop after dot"
    #: Never answer: read on until the client hangs up (a relay that froze).
    SILENCE = "silence"
    #: At DATA: answer 354, read one line of the body, then read nothing more (a relay
    #: that froze mid-message) until the connection is closed or the server stops.
    STALL_IN_BODY = "stall in body"


@dataclass(frozen=True)
class Hangup:
    """Answer ``reply``, then close the connection."""

    reply: str


@dataclass(frozen=True)
class Delayed:
    """Answer ``reply`` after ``seconds`` (a relay that makes a refused login wait)."""

    reply: str
    seconds: float


Reply = str | Action | Hangup | Delayed


@dataclass(frozen=True)
class Session:
    """How the server behaves on one connection."""

    #: A reply other than 220 makes every later command but QUIT get a 503.
    greeting: Reply = "220 raw.test ESMTP ready"
    #: Offer STARTTLS in EHLO (when there is a TLS context to offer it with).
    starttls: bool = True
    #: The AUTH mechanisms offered in EHLO; none, no AUTH line.
    auth: tuple[str, ...] = ("PLAIN", "LOGIN")
    #: The certificate presented at STARTTLS, instead of the server's.
    tls_context: ssl.SSLContext | None = None
    #: Offer PIPELINING (RFC 2920) in EHLO.
    pipelining: bool = False
    #: Hold the replies to MAIL and RCPT until another command comes, then send them
    #: all in one write with its reply, as RFC 2920 lets a server do: a client that
    #: waits for a reply before its next command waits forever.
    group_replies: bool = False
    #: Send every reply in two pieces, a pause apart, so that the client reads it in two.
    split_replies: bool = False
    #: Per verb (EHLO, HELO, STARTTLS, AUTH, MAIL, RCPT, DATA, END_OF_DATA, RSET, NOOP, QUIT):
    #: one reply for every such command, or a sequence used one command at a time,
    #: after which the verb behaves normally again. A client that keeps the connection
    #: for its retry meets a single reply again: script ``["451 ..."]`` to refuse once.
    replies: Mapping[str, Reply | Sequence[Reply]] = field(default_factory=dict)


def verbs(lines: Sequence[str]) -> list[str]:
    """The command words of recorded lines: ``["EHLO", "MAIL", ...]``."""
    return [line.partition(" ")[0].upper() for line in lines]


class RawSMTPServer:
    """The server, started and stopped explicitly or as a context manager."""

    def __init__(
        self,
        *,
        port: int | None = None,
        tls_context: ssl.SSLContext | None = None,
        fallback: Session | None = None,
        hostname: str = "raw.test",
    ) -> None:
        self.host = "127.0.0.1"
        # Bound, not listening: no one else can take the port, and connections are refused.
        self._socket = socket.socket()
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((self.host, port or 0))
        except OSError:
            self._socket.close()
            raise
        self.port: int = self._socket.getsockname()[1]
        self.tls_context = tls_context
        self.fallback = fallback or Session()
        self.hostname = hostname
        self._scripts: deque[Session] = deque()
        self._sessions: list[list[str]] = []
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        #: Each open connection's session task and writer; touched on the server's loop only.
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._start_error: BaseException | None = None

    def script(self, *sessions: Session) -> None:
        """Queue behaviours for the next connections, one each."""
        with self._lock:
            self._scripts.extend(sessions)

    @property
    def sessions(self) -> list[list[str]]:
        """The lines read on each connection so far, in order."""
        with self._lock:
            return [list(lines) for lines in self._sessions]

    @property
    def received(self) -> list[Received]:
        """Every message whose final "." was read and not refused."""
        with self._lock:
            return list(self._received)

    def start(self) -> None:
        if self._thread is not None or self._socket.fileno() == -1:
            raise RuntimeError("a raw SMTP server starts once")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"raw-smtp-{self.port}", daemon=True
        )
        self._thread.start()
        if not ready.wait(START_TIMEOUT_SECONDS):
            raise TimeoutError("raw SMTP server did not start")
        if self._start_error is not None:
            self._thread.join(STOP_TIMEOUT_SECONDS)
            self._thread = None
            raise self._start_error

    def stop(self) -> None:
        """Stop listening, close every connection and join the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            self._socket.close()
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_TIMEOUT_SECONDS)
        if thread.is_alive():
            raise RuntimeError("raw SMTP server thread did not stop")
        self._thread = None

    def __enter__(self) -> RawSMTPServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, sock=self._socket)
            )
        except OSError as exc:
            self._start_error = exc
            self._socket.close()
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self) -> None:
        """Stop listening and drop every connection; each session ends at its EOF."""
        if self._server is not None:
            self._server.close()
        for writer in self._connections.values():
            writer.transport.abort()
        if self._connections:
            _, stuck = await asyncio.wait(list(self._connections), timeout=STOP_TIMEOUT_SECONDS)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        # Let the aborted transports run their connection_lost callbacks.
        await asyncio.sleep(0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        # As aiosmtpd's: otherwise replies to pipelined commands wait for delayed ACKs.
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            script = self._scripts.popleft() if self._scripts else self.fallback
            lines: list[str] = []
            self._sessions.append(lines)
        conversation = _Conversation(self, script, lines, reader, writer)
        try:
            await conversation.run()
        except (OSError, EOFError, ValueError):
            # The client went away, failed the TLS handshake, or the server is stopping.
            pass
        finally:
            del self._connections[task]
            writer.close()

    def _record_line(self, lines: list[str], line: str) -> None:
        with self._lock:
            lines.append(line)

    def _record_message(self, message: Received) -> None:
        with self._lock:
            self._received.append(message)


class _Conversation:
    """One SMTP session, following its script."""

    def __init__(
        self,
        server: RawSMTPServer,
        script: Session,
        lines: list[str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._server = server
        self._script = script
        self._lines = lines
        self._reader = reader
        self._writer = writer
        self._queued: dict[str, deque[Reply]] = {}
        self._ready = False
        self._tls = False
        self._mail_from = ""
        self._rcpt_tos: list[str] = []
        #: Replies held back under ``group_replies``.
        self._held = bytearray()

    async def run(self) -> None:
        greeting = self._script.greeting
        self._ready = isinstance(greeting, str) and greeting.startswith("220")
        if not await self._answer(greeting):
            return
        while True:
            line = await self._read_line()
            if line is None:
                return
            verb, _, argument = line.partition(" ")
            if not await self._command(verb.upper(), argument.strip()):
                return

    async def _command(self, verb: str, argument: str) -> bool:
        """Answer one command; False once the connection is closed."""
        if not self._ready:
            if verb == "QUIT":
                return await self._answer(Hangup("221 2.0.0 Bye"))
            return await self._answer("503 5.5.1 No service here")
        match verb:
            case "EHLO":
                self._reset()
                return await self._answer(self._reply("EHLO", self._ehlo()))
            case "HELO":
                self._reset()
                return await self._answer(self._reply("HELO", f"250 {self._server.hostname}"))
            case "STARTTLS":
                return await self._starttls()
            case "AUTH":
                return await self._auth(argument)
            case "MAIL":
                reply = self._reply("MAIL", "250 2.1.0 OK")
                if _accepts(reply):
                    self._mail_from = _address(argument)
                return await self._answer(reply, hold=True)
            case "RCPT":
                reply = self._reply("RCPT", "250 2.1.5 OK")
                if _accepts(reply):
                    self._rcpt_tos.append(_address(argument))
                return await self._answer(reply, hold=True)
            case "DATA":
                return await self._data()
            case "RSET":
                self._reset()
                return await self._answer(self._reply("RSET", "250 2.0.0 OK"))
            case "NOOP":
                return await self._answer(self._reply("NOOP", "250 2.0.0 OK"))
            case "QUIT":
                reply = self._reply("QUIT", "221 2.0.0 Bye")
                return await self._answer(Hangup(reply) if isinstance(reply, str) else reply)
        return await self._answer("500 5.5.2 Command not recognized")

    def _ehlo(self) -> str:
        offers = [f"{self._server.hostname} at your service", "8BITMIME"]
        if self._script.pipelining:
            offers.append("PIPELINING")
        if self._script.starttls and self._tls_context() is not None and not self._tls:
            offers.append("STARTTLS")
        if self._script.auth:
            offers.append("AUTH " + " ".join(self._script.auth))
        *first, last = offers
        return "\r\n".join([*(f"250-{o}" for o in first), f"250 {last}"])

    def _tls_context(self) -> ssl.SSLContext | None:
        return self._script.tls_context or self._server.tls_context

    async def _starttls(self) -> bool:
        context = self._tls_context()
        available = context is not None and not self._tls
        default = "220 2.0.0 Ready to start TLS" if available else "454 4.7.0 TLS not available"
        reply = self._reply("STARTTLS", default)
        if not await self._answer(reply):
            return False
        if context is not None and not self._tls and _accepts(reply):
            await self._writer.start_tls(context)
            self._tls = True
            self._reset()
        return True

    async def _auth(self, argument: str) -> bool:
        scripted = self._scripted("AUTH")
        if scripted is not None:
            return await self._answer(scripted)
        mechanism, _, initial = argument.partition(" ")
        prompts = {"PLAIN": ["334 "], "LOGIN": ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6"]}
        if mechanism.upper() not in prompts:
            return await self._answer("504 5.5.4 Unrecognized authentication type")
        # An initial response answers the first prompt.
        for prompt in prompts[mechanism.upper()][1 if initial else 0 :]:
            if not await self._answer(prompt) or await self._read_line() is None:
                return False
        return await self._answer("235 2.7.0 Authentication successful")

    async def _data(self) -> bool:
        reply = self._reply("DATA", "354 End data with <CR><LF>.<CR><LF>")
        if reply is Action.DROP_AFTER_354:
            await self._answer("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.readline()
            return await self._answer(Action.DROP)
        if reply is Action.STALL_IN_BODY:
            await self._answer("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.readline()
            self._writer.transport.pause_reading()  # type: ignore[attr-defined]
            give_up = asyncio.get_running_loop().time() + MAX_STALL_SECONDS
            while not self._writer.is_closing() and asyncio.get_running_loop().time() < give_up:
                await asyncio.sleep(STALL_POLL_SECONDS)
            return await self._answer(Action.DROP)
        if reply is Action.DROP_AFTER_DOT:
            await self._answer("354 End data with <CR><LF>.<CR><LF>")
            self._keep(await self._body())
            return await self._answer(Action.DROP)
        if not (isinstance(reply, str) and reply.startswith("354")):
            return await self._answer(reply)
        if not await self._answer(reply):
            return False
        body = await self._body()
        final = self._reply(END_OF_DATA, "250 2.0.0 OK: queued")
        if not _refuses(final):
            self._keep(body)
        self._reset()
        return await self._answer(final)

    async def _body(self) -> bytes:
        """The message up to the final ".", dot-unstuffed; EOFError if the client left first."""
        body = bytearray()
        while True:
            raw = await self._reader.readline()
            if not raw.endswith(b"\n"):
                raise EOFError("connection closed during DATA")
            if raw.rstrip(b"\r\n") == b".":
                return bytes(body)
            body += raw[1:] if raw.startswith(b"..") else raw

    def _keep(self, body: bytes) -> None:
        self._server._record_message(Received(self._mail_from, list(self._rcpt_tos), body))

    def _reset(self) -> None:
        self._mail_from, self._rcpt_tos = "", []

    def _reply(self, verb: str, default: str) -> Reply:
        scripted = self._scripted(verb)
        return default if scripted is None else scripted

    def _scripted(self, verb: str) -> Reply | None:
        """The scripted reply to this ``verb`` command, if there is one left."""
        scripted = self._script.replies.get(verb)
        if scripted is None or isinstance(scripted, str | Hangup | Delayed):
            return scripted
        queued = self._queued.setdefault(verb, deque(scripted))
        return queued.popleft() if queued else None

    async def _read_line(self) -> str | None:
        raw = await self._reader.readline()
        if not raw:
            return None
        line = raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
        self._server._record_line(self._lines, line)
        return line

    async def _answer(self, reply: Reply, *, hold: bool = False) -> bool:
        """Send ``reply`` (after any held back); False once the connection is closed.

        ``hold`` holds a plain reply back under the session's ``group_replies``.
        """
        if hold and self._script.group_replies and isinstance(reply, str):
            self._held += _wire(reply)
            return True
        if self._held:
            self._writer.write(bytes(self._held))
            self._held.clear()
        match reply:
            case Action.GARBAGE:
                self._writer.write(GARBAGE_LINE)
            case Action.SILENCE:
                await self._writer.drain()
                while await self._reader.read(4096):
                    pass
                return False
            case Action():
                # DROP, and the DATA actions anywhere but at DATA.
                self._writer.close()
                return False
            case Delayed(line, seconds):
                await asyncio.sleep(seconds)
                self._writer.write(_wire(line))
            case Hangup(line):
                self._writer.write(_wire(line))
                await self._writer.drain()
                self._writer.close()
                return False
            case str():
                wire = _wire(reply)
                if self._script.split_replies:
                    self._writer.write(wire[:SPLIT_AT])
                    await self._writer.drain()
                    await asyncio.sleep(SPLIT_PAUSE_SECONDS)
                    wire = wire[SPLIT_AT:]
                self._writer.write(wire)
        await self._writer.drain()
        return True


def _accepts(reply: Reply) -> bool:
    return isinstance(reply, str) and reply[:1] in ("2", "3")


def _refuses(reply: Reply) -> bool:
    """A 4xx or 5xx reply: the server does not keep the message."""
    line = reply.reply if isinstance(reply, Hangup | Delayed) else reply
    return not isinstance(line, Action) and line[:1] in ("4", "5")


def _address(argument: str) -> str:
    """The mailbox in ``FROM:<a@b> OPTIONS`` or ``TO:<a@b>``."""
    _, _, rest = argument.partition(":")
    rest = rest.strip()
    if rest.startswith("<"):
        return rest[1:].partition(">")[0]
    return rest.partition(" ")[0]


def _wire(line: str) -> bytes:
    """A reply line as sent; lone surrogates (``"\\udcff"``) stand for bytes that are not UTF-8."""
    return line.encode("utf-8", "surrogateescape") + b"\r\n"
