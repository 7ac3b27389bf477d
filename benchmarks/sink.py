"""An SMTP sink in its own process: aiosmtpd on loopback that accepts and counts everything.

    python -m benchmarks.sink [--delay SECONDS] [--pipelining] [--record]

Prints ``READY smtp=<port> control=<port>`` once listening. ``--delay`` holds every
reply to DATA that long (a slow relay). ``--pipelining`` offers PIPELINING (RFC 2920) in
EHLO, as production relays do. ``--record`` notes when each message's DATA arrived, by
its Message-ID. The control port answers one line per command: ``count`` gives
``<messages> <connections opened> <open now> <DATA held now>``; ``arrivals <path>``
writes ``<Message-ID without brackets>\\t<epoch seconds>`` lines for the messages noted
since the last ``arrivals`` to the file ``path``, forgets them, and gives their number.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any

import uvloop
from aiosmtpd.smtp import SMTP, Envelope, Session

from notifier.devsmtp import OffersPipelining

_MESSAGE_ID = re.compile(rb"(?im)^message-id:[ \t]*<([^>\r\n]+)>")


class Stats:
    def __init__(self) -> None:
        self.messages = 0
        self.connections = 0
        #: Connections open now, and DATA replies being held (``--delay``) now.
        self.open = 0
        self.held = 0
        #: Message-ID and arrival time of each message, with ``--record``.
        self.arrivals: list[tuple[str, float]] = []


class Handler(OffersPipelining):
    def __init__(self, stats: Stats, delay: float, pipelining: bool, record: bool) -> None:
        self.stats = stats
        self.delay = delay
        self.pipelining = pipelining
        self.record = record

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.record:
            self._note(envelope)
        if self.delay:
            self.stats.held += 1
            try:
                await asyncio.sleep(self.delay)
            finally:
                self.stats.held -= 1
        self.stats.messages += 1
        return "250 OK queued"

    def _note(self, envelope: Envelope) -> None:
        at = time.time()
        content = envelope.original_content or b""
        end = content.find(b"\r\n\r\n")
        if match := _MESSAGE_ID.search(content if end < 0 else content[:end]):
            self.stats.arrivals.append((match.group(1).decode(errors="replace"), at))


class CountingSMTP(SMTP):
    """aiosmtpd's SMTP protocol, keeping count of open connections."""

    stats: Stats

    def connection_made(self, transport: Any) -> None:
        self.stats.open += 1
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.stats.open -= 1
        super().connection_lost(error)


async def serve(delay: float, pipelining: bool, record: bool) -> None:
    stats = Stats()
    handler = Handler(stats, delay, pipelining, record)
    CountingSMTP.stats = stats

    def smtp_protocol() -> Any:
        stats.connections += 1
        # A fixed hostname: otherwise aiosmtpd looks up the FQDN on every connection.
        return CountingSMTP(
            handler, hostname="sink.bench", ident="bench sink", enable_SMTPUTF8=True
        )

    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(smtp_protocol, "127.0.0.1", 0, backlog=4096)

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            command, _, argument = line.strip().partition(b" ")
            if command == b"count":
                counts = f"{stats.messages} {stats.connections} {stats.open} {stats.held}"
                writer.write(f"{counts}\n".encode())
            elif command == b"arrivals" and argument:
                noted, stats.arrivals = stats.arrivals, []
                text = "".join(f"{mid}\t{at:.6f}\n" for mid, at in noted)
                Path(argument.decode()).write_text(text)
                writer.write(f"{len(noted)}\n".encode())
            else:
                writer.write(b"?\n")
            await writer.drain()
        writer.close()

    control_server = await asyncio.start_server(control, "127.0.0.1", 0)
    smtp_port = smtp.sockets[0].getsockname()[1]
    control_port = control_server.sockets[0].getsockname()[1]
    print(f"READY smtp={smtp_port} control={control_port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each DATA reply")
    parser.add_argument("--pipelining", action="store_true", help="offer PIPELINING in EHLO")
    parser.add_argument("--record", action="store_true", help="note arrivals by Message-ID")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uvloop.run(serve(args.delay, args.pipelining, args.record))


if __name__ == "__main__":
    main()
