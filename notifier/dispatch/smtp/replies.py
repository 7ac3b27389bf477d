"""Reading the replies to pipelined SMTP commands (RFC 2920).

aiosmtplib's protocol parses one reply per read from the socket and drops whatever
arrives while a parsed reply waits to be picked up, so it cannot read a group of
replies, which a relay may send in one segment or in several. While a pipelined
transaction runs, :class:`ReplyReader` is the transport's protocol instead
(``BaseTransport.set_protocol``): it keeps every reply, in order, until it is asked
for. It raises aiosmtplib's own exceptions, so failures translate as they do elsewhere.
"""

from __future__ import annotations

import asyncio
from collections import deque

from aiosmtplib import (
    SMTPReadTimeoutError,
    SMTPResponse,
    SMTPResponseException,
    SMTPServerDisconnected,
)
from aiosmtplib.protocol import MAX_LINE_LENGTH, MAX_RESPONSE_LENGTH

#: aiosmtplib's code for a reply it could not parse.
MALFORMED = -1


class ReplyReader(asyncio.Protocol):
    """Collects complete replies; :meth:`next` hands them out in the order they came."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._replies: deque[SMTPResponse] = deque()
        #: Why no further reply can come: the connection ended, or a reply was garbled.
        self._failure: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        #: Clear while the transport's write buffer is over its high-water mark.
        self._writable = asyncio.Event()
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        if self._failure is not None:
            return
        self._buffer += data
        try:
            self._parse()
        except SMTPResponseException as exc:
            self._fail(exc)
        else:
            if self._replies:
                self._wake()

    def eof_received(self) -> bool:
        self._fail(SMTPServerDisconnected("Unexpected EOF received"))
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(SMTPServerDisconnected(f"Connection lost: {exc}" if exc else "Connection lost"))

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def drained(self) -> None:
        """Return once the transport takes more writes (or the connection has ended)."""
        await self._writable.wait()

    async def next(self, limit: float) -> SMTPResponse:
        """The next reply, waiting up to ``limit`` seconds for it (however many reads it takes)."""
        if not self._replies and self._failure is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, limit)
            except TimeoutError as exc:
                raise SMTPReadTimeoutError("Timed out waiting for server response") from exc
            finally:
                self._waiter = None
        if self._replies:
            return self._replies.popleft()
        assert self._failure is not None  # the waiter is woken by nothing else
        raise self._failure

    def _parse(self) -> None:
        """Move every complete reply out of the buffer: lines ``250-...`` up to ``250 ...``."""
        while (end := self._buffer.find(b"\n")) != -1:
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            if len(line) > MAX_LINE_LENGTH or not line[:3].isdigit():
                raise SMTPResponseException(
                    MALFORMED, f"Malformed SMTP response line: {line[:80]!r}"
                )
            self._lines.append(line)
            if line[3:4] != b"-":
                self._replies.append(_reply(self._lines))
                self._lines = []
        if len(self._buffer) + sum(map(len, self._lines)) > MAX_RESPONSE_LENGTH:
            raise SMTPResponseException(MALFORMED, "Response too long")

    def _fail(self, exc: Exception) -> None:
        if self._failure is None:
            self._failure = exc
        self._writable.set()  # a writer waiting for room finds the connection gone
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _reply(lines: list[bytes]) -> SMTPResponse:
    """The reply as aiosmtplib reads it: the code, and the lines' texts joined by newlines."""
    text = b"\n".join(line[4:].strip(b" \t\r\n") for line in lines)
    return SMTPResponse(int(lines[-1][:3]), text.decode("utf-8", "surrogateescape"))
