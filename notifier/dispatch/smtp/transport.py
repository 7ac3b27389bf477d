"""SMTP over aiosmtplib, with connections reused across messages and PIPELINING.

Part of :mod:`notifier.dispatch.smtp`, the only package that imports aiosmtplib; its
failures become notifier's in :mod:`~notifier.dispatch.smtp.translate`.

A transaction (MAIL, RCPT, DATA) goes through aiosmtplib's protocol object rather
than ``SMTP.mail``, ``rcpt`` and ``data``: those parse every address again with
``email.utils`` and rescan the message with regular expressions, a large share of the
client's CPU per message (``benchmarks/LEVERS.md``), for addresses the API has
validated and bytes the renderer wrote with CRLF line ends. It also tells a
failure before the body went out (known: nothing was delivered) from one after it
(unknown: the relay may hold a copy). To a relay offering PIPELINING (RFC 2920), MAIL,
RCPT and DATA go out in one write: two round trips a message instead of four, which
is what bounds a connection's rate to a relay across a network.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import COMMAND_INJECTION_REGEX, SMTPProtocol

from notifier.dispatch.smtp.classify import is_success, reply_error
from notifier.dispatch.smtp.replies import ReplyReader
from notifier.dispatch.smtp.report import Reply, SendReport
from notifier.dispatch.smtp.translate import readable, relay_silent, translated
from notifier.errors import PermanentDeliveryError, TransientDeliveryError
from notifier.settings import Settings

T = TypeVar("T")

log = logging.getLogger(__name__)

#: The relay is closing the channel (RFC 5321 section 3.8): no further command goes through.
CLOSING = 421
#: The relay's go-ahead for the message body.
START_INPUT = 354

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
#: An ASCII address of dot-atoms, which ``quote_address`` returns unchanged in brackets.
_PLAIN_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*")
#: A message in pieces (one with attachments) goes out in writes of at most this many
#: bytes, each once the transport has room: the pieces are never copied whole.
WRITE_CHUNK = 256 * 1024
#: Line ends DATA turns into CRLF (aiosmtplib's ``LINE_ENDINGS_REGEX``).
_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")


@dataclass(frozen=True, slots=True)
class RelayConfig:
    host: str
    port: int
    tls: str
    username: str | None
    password: str | None
    timeout: float
    data_timeout: float
    validate_certs: bool
    ca_file: str | None
    local_hostname: str
    max_messages_per_connection: int
    #: Pipeline MAIL, RCPT and DATA (RFC 2920) when the relay offers PIPELINING.
    pipelining: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> RelayConfig:
        if not settings.smtp_host:
            raise ValueError("no SMTP host configured")
        password = settings.smtp_secret()
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            tls=settings.smtp_tls,
            username=settings.smtp_username,
            password=password,
            timeout=settings.smtp_timeout,
            data_timeout=settings.smtp_data_timeout,
            validate_certs=settings.smtp_validate_certs,
            ca_file=str(settings.smtp_ca_file) if settings.smtp_ca_file else None,
            local_hostname=settings.smtp_local_hostname,
            max_messages_per_connection=settings.smtp_max_messages_per_connection,
            pipelining=settings.smtp_pipelining,
        )


class _Connection:
    __slots__ = ("client", "messages", "reused")

    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client = client
        self.messages = 0
        #: Taken from the idle pool: the relay may have closed it meanwhile.
        self.reused = False


class SMTPTransport:
    """Sends messages through one relay, keeping idle connections for reuse.

    The pool holds at most as many connections as there are concurrent callers,
    which the dispatcher bounds by ``NOTIFIER_SEND_CONCURRENCY``.
    """

    def __init__(self, config: RelayConfig) -> None:
        self._config = config
        self._idle: list[_Connection] = []

    async def send(
        self,
        sender: str,
        recipients: list[str],
        message: bytes | Sequence[bytes],
        *,
        smtputf8: bool = False,
    ) -> SendReport:
        """One SMTP transaction; raises ``DeliveryError`` if it fails before RCPT is done.

        ``message`` in pieces, each ending in CRLF, is written piece by piece as the
        connection takes it, so a large one is never copied whole.

        ``smtputf8`` sends the envelope in UTF-8 (RFC 6531), refusing relays without it.
        An idle connection may have been closed by the relay meanwhile, or be answered
        with its idle timeout's 421; that costs one reconnect, never a failed attempt.
        """

        def transaction(connection: _Connection) -> Awaitable[SendReport]:
            return self._transact(connection, sender, recipients, message, smtputf8)

        if self._idle:
            try:
                return await self._send_on(self._idle.pop(), transaction)
            except _Stale:
                pass
        client, _ = await translated(self._connect())
        connection = _Connection(client)
        return await self._send_on(connection, transaction)

    async def _send_on(
        self, connection: _Connection, transaction: Callable[[_Connection], Awaitable[SendReport]]
    ) -> SendReport:
        """``transaction`` on ``connection``, closed unless the transaction ends cleanly."""
        try:
            report = await translated(transaction(connection))
        except BaseException:
            # Failed or cancelled mid-transaction: this connection's state is unknown.
            connection.client.close()
            raise
        self._release(connection)
        return report

    async def probe(self) -> str:
        """Connect, greet (STARTTLS and AUTH as configured) and quit; raises ``DeliveryError``.

        Returns what the session was like: TLS version, AUTH mechanism, extensions.
        """
        client, mechanism = await translated(self._connect())
        try:
            shape = _shape(client, mechanism)
            await translated(client.quit(timeout=self._config.timeout))
        finally:
            client.close()
        return shape

    async def close(self) -> None:
        while self._idle:
            client = self._idle.pop().client
            try:
                await client.quit(timeout=self._config.timeout)
            except (aiosmtplib.SMTPException, OSError):
                client.close()

    async def _transact(
        self,
        connection: _Connection,
        sender: str,
        recipients: list[str],
        message: bytes | Sequence[bytes],
        smtputf8: bool,
    ) -> SendReport:
        """MAIL, each RCPT, DATA and the body: a refusal is reported, a failure raised.

        To a relay offering PIPELINING (RFC 2920), MAIL, every RCPT and DATA go out in
        one write, which saves two round trips a message; their replies are read
        afterwards and each is judged as if its command had waited for it, so the
        transaction ends as it would have in lock-step.
        """
        client = connection.client
        if connection.reused and not client.is_connected:
            raise _Stale  # before anything reads the extensions it has forgotten
        timeout, data_timeout = self._config.timeout, self._config.data_timeout
        encoding = "utf-8" if smtputf8 else "ascii"
        mail = _mail_command(client, sender, smtputf8=smtputf8)
        rcpts = [(b"RCPT", b"TO:" + smtp_path(a).encode(encoding)) for a in recipients]
        pipelined = self._config.pipelining and client.supports_extension("pipelining")
        with _Exchange(client, [mail, *rcpts, (b"DATA",)] if pipelined else []) as exchange:
            try:
                reply = await exchange.answer(*mail, limit=timeout)
            except aiosmtplib.SMTPServerDisconnected:
                if connection.reused:
                    raise _Stale from None
                raise
            except aiosmtplib.SMTPTimeoutError as exc:
                # A relay that greets and then hangs is down, whatever the message.
                raise relay_silent(exc, stage="MAIL FROM") from exc
            if reply.code == CLOSING and connection.reused:
                # Most likely the relay's idle timeout, sent before this MAIL arrived.
                raise _Stale
            if not is_success(reply.code):
                raise reply_error(reply.code, readable(reply.message), stage="MAIL FROM")
            report = SendReport()
            for address, rcpt in zip(recipients, rcpts, strict=True):
                report.recipients[address] = _reply(await exchange.answer(*rcpt, limit=timeout))
            if not any(is_success(r.code) for r in report.recipients.values()):
                await exchange.abandon(timeout, data_timeout)
                return report
            # Up to the go-ahead nothing of the message has gone out: a failure is known.
            reply = await exchange.answer(b"DATA", limit=data_timeout)
            if reply.code != START_INPUT:
                return await _refused(exchange, report, reply, timeout)
            if isinstance(message, bytes):
                exchange.write(data_block(message))
            else:
                try:
                    await exchange.write_all(data_pieces(message), data_timeout)
                except (aiosmtplib.SMTPException, OSError) as exc:
                    # Before the final dot: the relay cannot have taken the message.
                    # Aborted, not closed: closing waits to flush what the relay
                    # stopped reading, which may be forever.
                    _discard(client)
                    report.data_error = TransientDeliveryError(
                        f"DATA: the message body could not be sent, {readable(str(exc))}"
                    )
                    return report
            try:
                reply = await exchange.reply(data_timeout)
            except aiosmtplib.SMTPException as exc:
                # Lost, timed out or garbled after the body went out: the relay may have it.
                client.close()
                report.data_error = TransientDeliveryError(
                    f"DATA: outcome unknown, {readable(str(exc))}; "
                    "retrying under the same Message-ID",
                    unknown_outcome=True,
                )
                return report
            if not is_success(reply.code):
                return await _refused(exchange, report, reply, timeout)
        report.data = _reply(reply)
        connection.messages += 1
        return report

    async def _connect(self) -> tuple[aiosmtplib.SMTP, str | None]:
        """A greeted (and authenticated) session, and the AUTH mechanism it used."""
        c = self._config
        client = aiosmtplib.SMTP(
            hostname=c.host,
            port=c.port,
            use_tls=c.tls == "tls",
            start_tls=c.tls == "starttls",
            validate_certs=c.validate_certs,
            cert_bundle=c.ca_file,
            timeout=c.timeout,
            local_hostname=c.local_hostname,
        )
        try:
            await client.connect()
            await _greet(client)
            mechanism = None
            if c.username is not None:
                mechanism = await _login(client, c.username, c.password or "")
        except (aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPServerDisconnected) as exc:
            # Silent or gone before the message was even named: the relay's fault.
            _discard(client)
            raise relay_silent(exc, stage="session set-up") from exc
        except BaseException:
            _discard(client)
            raise
        if log.isEnabledFor(logging.DEBUG):
            log.debug("SMTP session opened to %s:%d: %s", c.host, c.port, _shape(client, mechanism))
        return client, mechanism

    def _release(self, connection: _Connection) -> None:
        if connection.messages >= self._config.max_messages_per_connection:
            connection.client.close()
        elif connection.client.is_connected:
            connection.reused = True
            self._idle.append(connection)


def _discard(client: aiosmtplib.SMTP) -> None:
    """Close a session that failed, at once.

    A plain close of a TLS session waits for the TLS close exchange, which a relay that
    refused us may never finish; an event loop that ends next (``check-config``) would
    leave the socket open until the process exits.
    """
    transport = client.transport
    client.close()
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()


class _Stale(Exception):
    """A reused connection turned out to be closed before its first reply: nothing was sent."""


class _Exchange:
    """Commands and their replies on one connection, in order.

    In lock-step each command waits for its reply. Given ``ahead``, those commands go
    out at once and a :class:`ReplyReader`, the transport's protocol until the
    exchange ends, keeps their replies; each :meth:`answer` then takes the next.
    """

    def __init__(self, client: aiosmtplib.SMTP, ahead: list[tuple[bytes, ...]]) -> None:
        self._client = client
        self._protocol = _protocol(client)
        self._ahead = len(ahead)
        self._pipelined = bool(ahead)
        #: Each command's verb and its reply code, for the debug log.
        self.trace: list[tuple[bytes, int]] = []
        #: Closed by this exchange, on the relay's 421.
        self._closed = False
        self._reader: ReplyReader | None = None
        self._transport: asyncio.BaseTransport | None = None
        lines = [b" ".join(command) for command in ahead]
        if any(COMMAND_INJECTION_REGEX.search(line) for line in lines):
            # What aiosmtplib's execute_command refuses in lock-step.
            raise ValueError("Command arg contains a prohibited control character")
        self._group = b"".join(line + b"\r\n" for line in lines)

    def __enter__(self) -> _Exchange:
        if self._ahead:
            transport = self._protocol.transport
            if transport is None:
                raise aiosmtplib.SMTPServerDisconnected("Server not connected")
            self._transport, self._reader = transport, ReplyReader()
            transport.set_protocol(self._reader)
            self._protocol.write(self._group)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.set_protocol(self._protocol)
        if log.isEnabledFor(logging.DEBUG):
            steps = ", ".join(f"{verb.decode()} {code}" for verb, code in self.trace)
            shape = "pipelined" if self._pipelined else "lock-step"
            log.debug("SMTP transaction, %s: %s", shape, steps or "no reply")

    async def answer(self, *command: bytes, limit: float) -> aiosmtplib.SMTPResponse:
        """``command``'s reply within ``limit`` seconds; a relay closing loses the connection."""
        if self._closed:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        if self._reader is None:
            reply: aiosmtplib.SMTPResponse = await self._protocol.execute_command(
                *command, timeout=limit
            )
        else:
            if self._ahead:
                self._ahead -= 1  # written with the group
            else:
                self.write(b" ".join(command) + b"\r\n")
            reply = await self._reader.next(limit)
        self.trace.append((command[0], reply.code))
        self._closing(reply)
        return reply

    def write(self, data: bytes) -> None:
        self._protocol.write(data)

    async def write_all(self, pieces: Iterator[bytes], limit: float) -> None:
        """Write ``pieces`` in chunks, each once the transport has room for it; raise
        ``SMTPTimeoutError`` if the relay takes nothing for ``limit`` seconds."""
        for piece in pieces:
            view = memoryview(piece)
            for start in range(0, len(view), WRITE_CHUNK):
                self._protocol.write(view[start : start + WRITE_CHUNK])  # type: ignore[arg-type]
                try:
                    await asyncio.wait_for(self._drained(), limit)
                except TimeoutError:
                    raise aiosmtplib.SMTPTimeoutError(
                        f"the relay took no data for {limit:g} s"
                    ) from None

    async def _drained(self) -> None:
        if self._reader is not None:
            await self._reader.drained()
        else:
            # aiosmtplib's protocol keeps the transport's pause and resume for this.
            await self._protocol._drain_helper()

    async def reply(self, limit: float) -> aiosmtplib.SMTPResponse:
        """The reply to what :meth:`write` sent; a relay closing loses the connection."""
        if self._reader is None:
            reply: aiosmtplib.SMTPResponse = await self._protocol.read_response(timeout=limit)
        else:
            reply = await self._reader.next(limit)
        self.trace.append((b".", reply.code))
        self._closing(reply)
        return reply

    def _closing(self, reply: aiosmtplib.SMTPResponse) -> None:
        if reply.code == CLOSING:
            self._closed = True
            self._client.close()

    async def abandon(self, limit: float, data_limit: float) -> None:
        """End a transaction without recipients, so the connection can carry the next one.

        RFC 2920 section 3.1: the relay may still accept a pipelined DATA, which then
        gets a lone dot; then RSET. A relay that hangs up instead loses the connection.
        """
        try:
            if self._ahead and (await self.answer(b"DATA", limit=data_limit)).code == START_INPUT:
                self.write(b".\r\n")
                await self.reply(data_limit)
            await self.reset(limit)
        except (aiosmtplib.SMTPException, OSError):
            self._client.close()

    async def reset(self, limit: float) -> None:
        """RSET after a refusal; a relay that refuses it or hangs up loses the connection."""
        try:
            if not is_success((await self.answer(b"RSET", limit=limit)).code):
                self._client.close()
        except (aiosmtplib.SMTPException, OSError):
            self._client.close()


async def _refused(
    exchange: _Exchange, report: SendReport, reply: aiosmtplib.SMTPResponse, limit: float
) -> SendReport:
    """The relay refused the message at DATA: a reply code, so the outcome is known even
    if the relay hangs up next; the session is reset for the next message."""
    report.data_error = reply_error(reply.code, readable(reply.message), stage="DATA")
    await exchange.reset(limit)
    return report


def _mail_command(client: aiosmtplib.SMTP, sender: str, *, smtputf8: bool) -> tuple[bytes, ...]:
    """MAIL FROM, with the SMTPUTF8 parameter when the envelope needs it."""
    if not smtputf8:
        return (b"MAIL", b"FROM:" + smtp_path(sender).encode("ascii"))
    if not client.supports_extension("smtputf8"):
        raise PermanentDeliveryError(
            "MAIL FROM: the relay does not offer SMTPUTF8, needed for an address with "
            "non-ASCII characters before the @-sign"
        )
    return (b"MAIL", b"FROM:" + smtp_path(sender).encode("utf-8"), b"SMTPUTF8")


#: aiosmtplib's method for each AUTH mechanism it offers, in its order of preference.
_AUTH_METHODS = {"cram-md5": "auth_crammd5", "plain": "auth_plain", "login": "auth_login"}


async def _login(client: aiosmtplib.SMTP, username: str, password: str) -> str:
    """AUTH once, with the relay's first mechanism that aiosmtplib prefers; returns it.

    A refusal is final for the session: trying the next mechanism, as aiosmtplib's
    ``login`` does, costs a second failed login, and relays lock accounts and ban
    hosts for those.
    """
    mechanisms = [m for m in client.supported_auth_methods if m in _AUTH_METHODS]
    if not mechanisms:
        offered = " ".join(client.server_auth_methods) or "none"
        raise aiosmtplib.SMTPException(
            f"AUTH: the relay offers no mechanism notifier can use (offered: {offered})"
        )
    authenticate = getattr(client, _AUTH_METHODS[mechanisms[0]])
    await authenticate(username, password)
    return mechanisms[0]


async def _greet(client: aiosmtplib.SMTP) -> None:
    """EHLO, or HELO from a relay that refuses it, unless STARTTLS or AUTH greeted already."""
    if not client.is_ehlo_or_helo_needed:
        return
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError:
        if not client.is_connected:
            raise
        await client.helo()


def _shape(client: aiosmtplib.SMTP, mechanism: str | None) -> str:
    """A session's shape, for the debug log and ``check-config --connect``; no secrets."""
    return (
        f"TLS {_tls_version(client)}, AUTH {mechanism or 'none'}, "
        f"PIPELINING {_yes(client.supports_extension('pipelining'))}, "
        f"SMTPUTF8 {_yes(client.supports_extension('smtputf8'))}"
    )


def _tls_version(client: aiosmtplib.SMTP) -> str:
    ssl_object = client.get_transport_info("ssl_object")
    return str(ssl_object.version()) if ssl_object is not None else "none"


def _yes(offered: bool) -> str:
    return "offered" if offered else "not offered"


def _protocol(client: aiosmtplib.SMTP) -> SMTPProtocol:
    if client.protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    return client.protocol


def _reply(response: aiosmtplib.SMTPResponse) -> Reply:
    return Reply(response.code, readable(response.message))


def smtp_path(address: str) -> str:
    """``<address>`` for MAIL and RCPT, as ``aiosmtplib.email.quote_address`` writes it.

    A plain ASCII address (dot-atoms: no quoting, spaces or controls) needs no parsing;
    anything else goes through aiosmtplib, which refuses what could smuggle in parameters.
    """
    if _PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return quote_address(address)


def _crlf_lines(data: bytes) -> bytes:
    """``data`` with a bare CR or LF made a CRLF line end, as DATA takes it; the same
    object when every line already ends in CRLF (counted, not copied)."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        return _LINE_ENDS.sub(b"\r\n", data)
    return data


def data_pieces(pieces: Sequence[bytes]) -> Iterator[bytes]:
    """``pieces`` as DATA sends them: :func:`data_block` without joining them first.

    Each piece ends in CRLF, so dots are doubled piece by piece; a piece without a line
    starting with a dot or a bare CR or LF (an attachment's base64) goes out as it is,
    uncopied.
    """
    for piece in pieces:
        piece = _crlf_lines(piece)
        if not piece.endswith(b"\r\n"):
            raise ValueError("a message piece must end in CRLF")
        if piece.startswith(b".") or b"\r\n." in piece:
            piece = (b"." if piece.startswith(b".") else b"") + piece.replace(b"\r\n.", b"\r\n..")
        yield piece
    yield b".\r\n"


def data_block(message: bytes) -> bytes:
    """``message`` as DATA sends it: CRLF line ends, leading dots doubled, the final dot.

    The same bytes aiosmtplib's ``execute_data_command`` writes, without its two
    regular-expression passes over a message that is already CRLF throughout.
    """
    message = _crlf_lines(message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"
