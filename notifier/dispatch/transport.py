"""SMTP over aiosmtplib, with connections reused across messages.

The only module that imports aiosmtplib: its exceptions are translated here, in
:func:`translate`, into transient or permanent ``DeliveryError``s by reply code.

A transaction (MAIL, RCPT, DATA) goes through aiosmtplib's protocol object rather
than ``SMTP.mail``, ``rcpt`` and ``data``: those parse every address again with
``email.utils`` and rescan the message with regular expressions, a third of the
client's CPU per message, for addresses the API has validated and bytes the
renderer wrote with CRLF line ends (``benchmarks/LEVERS.md``). It also tells a
failure before the body went out (known: nothing was delivered) from one after it
(unknown: the relay may hold a copy).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import SMTPProtocol

from notifier.dispatch.classify import connection_error, is_success, reply_error
from notifier.dispatch.outcome import Reply, SendReport
from notifier.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from notifier.settings import Settings

T = TypeVar("T")

#: The relay is closing the channel (RFC 5321 section 3.8): no further command goes through.
CLOSING = 421
#: The relay's go-ahead for the message body.
START_INPUT = 354

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
#: An ASCII address of dot-atoms, which ``quote_address`` returns unchanged in brackets.
_PLAIN_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*")
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

    @classmethod
    def from_settings(cls, settings: Settings) -> RelayConfig:
        if not settings.smtp_host:
            raise ValueError("no SMTP host configured")
        password = settings.smtp_password
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            tls=settings.smtp_tls,
            username=settings.smtp_username,
            password=password.get_secret_value() if password else None,
            timeout=settings.smtp_timeout,
            data_timeout=settings.smtp_data_timeout,
            validate_certs=settings.smtp_validate_certs,
            ca_file=str(settings.smtp_ca_file) if settings.smtp_ca_file else None,
            local_hostname=settings.smtp_local_hostname,
            max_messages_per_connection=settings.smtp_max_messages_per_connection,
        )


class _Connection:
    __slots__ = ("client", "messages")

    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client = client
        self.messages = 0


class SMTPTransport:
    """Sends messages through one relay, keeping idle connections for reuse.

    The pool holds at most as many connections as there are concurrent callers,
    which the dispatcher bounds by ``NOTIFIER_SEND_CONCURRENCY``.
    """

    def __init__(self, config: RelayConfig) -> None:
        self._config = config
        self._idle: list[_Connection] = []

    async def send(
        self, sender: str, recipients: list[str], message: bytes, *, smtputf8: bool = False
    ) -> SendReport:
        """One SMTP transaction; raises ``DeliveryError`` if it fails before RCPT is done.

        ``smtputf8`` sends the envelope in UTF-8 (RFC 6531), refusing relays without it.
        """
        connection = await _translated(self._ready(sender, smtputf8=smtputf8))
        try:
            report = await _translated(
                self._transact(connection, recipients, message, smtputf8=smtputf8)
            )
        except BaseException:
            # Failed or cancelled mid-transaction: this connection's state is unknown.
            connection.client.close()
            raise
        self._release(connection)
        return report

    async def probe(self) -> None:
        """Connect, greet (STARTTLS and AUTH as configured) and quit; raises ``DeliveryError``."""
        client = await _translated(self._connect())
        try:
            await _translated(client.quit(timeout=self._config.timeout))
        finally:
            client.close()

    async def close(self) -> None:
        while self._idle:
            client = self._idle.pop().client
            try:
                await client.quit(timeout=self._config.timeout)
            except (aiosmtplib.SMTPException, OSError):
                client.close()

    async def _transact(
        self, connection: _Connection, recipients: list[str], message: bytes, *, smtputf8: bool
    ) -> SendReport:
        client = connection.client
        report = SendReport()
        encoding = "utf-8" if smtputf8 else "ascii"
        for address in recipients:
            rcpt = b"TO:" + smtp_path(address).encode(encoding)
            reply = await _command(client, b"RCPT", rcpt, limit=self._config.timeout)
            report.recipients[address] = _reply(reply)
        if not any(is_success(r.code) for r in report.recipients.values()):
            await _reset(client)
            return report
        # Up to the go-ahead nothing of the message has gone out: a failure is known.
        reply = await _command(client, b"DATA", limit=self._config.data_timeout)
        if reply.code != START_INPUT:
            return await _refused(client, report, reply)
        protocol = _protocol(client)
        protocol.write(data_block(message))
        try:
            reply = await protocol.read_response(timeout=self._config.data_timeout)
        except aiosmtplib.SMTPException as exc:
            # Lost, timed out or garbled after the body went out: the relay may have it.
            client.close()
            report.data_error = TransientDeliveryError(
                f"DATA: outcome unknown, {_readable(str(exc))}; retrying under the same Message-ID",
                unknown_outcome=True,
            )
            return report
        if not is_success(reply.code):
            return await _refused(client, report, reply)
        report.data = _reply(reply)
        connection.messages += 1
        return report

    async def _ready(self, sender: str, *, smtputf8: bool) -> _Connection:
        """A connection on which MAIL FROM has been accepted.

        An idle connection may have been closed by the relay meanwhile; that costs
        one reconnect, never a failed attempt.
        """
        if self._idle:
            connection = self._idle.pop()
            try:
                await self._mail(connection.client, sender, smtputf8=smtputf8)
            except aiosmtplib.SMTPServerDisconnected:
                connection.client.close()
            except BaseException:
                connection.client.close()
                raise
            else:
                return connection
        connection = _Connection(await self._connect())
        try:
            await self._mail(connection.client, sender, smtputf8=smtputf8)
        except BaseException:
            connection.client.close()
            raise
        return connection

    async def _connect(self) -> aiosmtplib.SMTP:
        c = self._config
        client = aiosmtplib.SMTP(
            hostname=c.host,
            port=c.port,
            username=c.username,
            password=c.password,
            use_tls=c.tls == "tls",
            start_tls=c.tls == "starttls",
            validate_certs=c.validate_certs,
            cert_bundle=c.ca_file,
            timeout=c.timeout,
            local_hostname=c.local_hostname,
        )
        await client.connect()
        try:
            await _greet(client)
        except BaseException:
            client.close()
            raise
        return client

    async def _mail(self, client: aiosmtplib.SMTP, sender: str, *, smtputf8: bool) -> None:
        """MAIL FROM, with the SMTPUTF8 parameter when the envelope needs it."""
        options: tuple[bytes, ...] = ()
        if smtputf8:
            if not client.supports_extension("smtputf8"):
                raise PermanentDeliveryError(
                    "MAIL FROM: the relay does not offer SMTPUTF8, needed for an address with "
                    "non-ASCII characters before the @-sign"
                )
            options = (b"SMTPUTF8",)
        path = b"FROM:" + smtp_path(sender).encode("utf-8" if smtputf8 else "ascii")
        reply = await _command(client, b"MAIL", path, *options, limit=self._config.timeout)
        if not is_success(reply.code):
            raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)

    def _release(self, connection: _Connection) -> None:
        if connection.messages >= self._config.max_messages_per_connection:
            connection.client.close()
        elif connection.client.is_connected:
            self._idle.append(connection)


async def _reset(client: aiosmtplib.SMTP) -> None:
    """RSET after a refusal; a relay that hung up instead just loses the connection."""
    try:
        await client.rset()
    except (aiosmtplib.SMTPException, OSError):
        client.close()


async def _refused(
    client: aiosmtplib.SMTP, report: SendReport, reply: aiosmtplib.SMTPResponse
) -> SendReport:
    """The relay refused the message at DATA: a reply code, so the outcome is known even
    if the relay hangs up next; the session is reset for the next message."""
    report.data_error = reply_error(reply.code, _readable(reply.message), stage="DATA")
    await _reset(client)
    return report


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


def _protocol(client: aiosmtplib.SMTP) -> SMTPProtocol:
    if client.protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Server not connected")
    return client.protocol


async def _command(client: aiosmtplib.SMTP, *args: bytes, limit: float) -> aiosmtplib.SMTPResponse:
    """One command and its reply within ``limit`` seconds; a relay closing loses the connection."""
    reply: aiosmtplib.SMTPResponse = await _protocol(client).execute_command(*args, timeout=limit)
    if reply.code == CLOSING:
        client.close()
    return reply


def _reply(response: aiosmtplib.SMTPResponse) -> Reply:
    return Reply(response.code, _readable(response.message))


def _readable(text: str) -> str:
    """Reply text as stored and shown: bytes that were not UTF-8 become U+FFFD.

    aiosmtplib keeps such bytes as lone surrogates, which neither JSON nor a log file
    can hold: left in, recording the attempt fails and the message is sent again.
    """
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def smtp_path(address: str) -> str:
    """``<address>`` for MAIL and RCPT, as ``aiosmtplib.email.quote_address`` writes it.

    A plain ASCII address (dot-atoms: no quoting, spaces or controls) needs no parsing;
    anything else goes through aiosmtplib, which refuses what could smuggle in parameters.
    """
    if _PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return quote_address(address)


def data_block(message: bytes) -> bytes:
    """``message`` as DATA sends it: CRLF line ends, leading dots doubled, the final dot.

    The same bytes aiosmtplib's ``execute_data_command`` writes, without its two
    regular-expression passes over a message that is already CRLF throughout.
    """
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = _LINE_ENDS.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


async def _translated(step: Awaitable[T]) -> T:
    """Await ``step``, turning aiosmtplib's and the socket's failures into notifier's."""
    try:
        return await step
    except DeliveryError:
        raise
    except (aiosmtplib.SMTPException, OSError, ValueError, UnicodeError) as exc:
        raise translate(exc) from exc


def translate(exc: BaseException) -> DeliveryError:
    """The one place aiosmtplib's failures become notifier's, decided by reply code."""
    match exc:
        case aiosmtplib.SMTPAuthenticationError():
            return reply_error(exc.code, _readable(exc.message), stage="AUTH", relay=True)
        case aiosmtplib.SMTPConnectResponseError():
            return reply_error(exc.code, _readable(exc.message), stage="greeting", relay=True)
        case aiosmtplib.SMTPHeloError():
            return reply_error(exc.code, _readable(exc.message), stage="EHLO", relay=True)
        case aiosmtplib.SMTPSenderRefused():
            return reply_error(exc.code, _readable(exc.message), stage="MAIL FROM")
        case aiosmtplib.SMTPDataError():
            return reply_error(exc.code, _readable(exc.message), stage="DATA")
        case aiosmtplib.SMTPResponseException():
            return reply_error(exc.code, _readable(exc.message), stage="reply")
        case aiosmtplib.SMTPConnectError():
            return connection_error(_readable(str(exc)), stage="connect")
        case aiosmtplib.SMTPTimeoutError():
            return TransientDeliveryError(f"timeout: {exc}")
        case aiosmtplib.SMTPServerDisconnected():
            return TransientDeliveryError(f"connection lost: {exc}")
        case aiosmtplib.SMTPException():
            # STARTTLS refused or not offered, and other relay-level refusals without a code.
            return connection_error(_readable(str(exc)), stage="relay")
        case ssl.SSLError():
            return connection_error(f"TLS failure: {exc}", stage="TLS")
        case UnicodeError() | ValueError():
            return PermanentDeliveryError(f"message could not be encoded for SMTP: {exc}")
        case OSError():
            return connection_error(str(exc), stage="connect")
    return TransientDeliveryError(f"unexpected failure: {exc!r}")
