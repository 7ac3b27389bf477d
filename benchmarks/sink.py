"""An SMTP sink in its own process: aiosmtpd on loopback that accepts and counts everything.

    python -m benchmarks.sink [--delay SECONDS] [--pipelining]

Prints ``READY smtp=<port> control=<port>`` once listening. ``--delay`` holds every
reply to DATA that long (a slow relay). ``--pipelining`` offers PIPELINING (RFC 2920) in
EHLO, as production relays do. The control port answers one line per command:
``count`` gives ``<messages> <connections opened> <open now> <DATA held now>``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

import uvloop
from aiosmtpd.smtp import SMTP, Envelope, Session

from notifier.devsmtp import OffersPipelining


class Stats:
    def __init__(self) -> None:
        self.messages = 0
        self.connections = 0
        #: Connections open now, and DATA replies being held (``--delay``) now.
        self.open = 0
        self.held = 0


class Handler(OffersPipelining):
    def __init__(self, stats: Stats, delay: float, pipelining: bool) -> None:
        self.stats = stats
        self.delay = delay
        self.pipelining = pipelining

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.delay:
            self.stats.held += 1
            try:
                await asyncio.sleep(self.delay)
            finally:
                self.stats.held -= 1
        self.stats.messages += 1
        return "250 OK queued"


class CountingSMTP(SMTP):
    """aiosmtpd's SMTP protocol, keeping count of open connections."""

    stats: Stats

    def connection_made(self, transport: Any) -> None:
        self.stats.open += 1
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.stats.open -= 1
        super().connection_lost(error)


async def serve(delay: float, pipelining: bool) -> None:
    stats = Stats()
    handler = Handler(stats, delay, pipelining)
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
            if line.strip() == b"count":
                counts = f"{stats.messages} {stats.connections} {stats.open} {stats.held}"
                writer.write(f"{counts}\n".encode())
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
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uvloop.run(serve(args.delay, args.pipelining))


if __name__ == "__main__":
    main()
