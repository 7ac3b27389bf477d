"""A relay across a network, on loopback: a TCP proxy that delays every byte it carries.

    python -m benchmarks.latency --to PORT --rtt-ms 5

Prints ``READY port=<port>`` once listening on 127.0.0.1, and forwards each connection
to ``127.0.0.1:PORT``, holding whatever it reads for half the round trip in each
direction (at least: the event loop's timers round up to the millisecond), in order,
with no limit on bandwidth. Opening a connection costs one round
trip before the greeting arrives (the relay's connect, then its greeting, each half a
round trip late): over a real network the handshake adds another half, so this
flatters senders that connect for every message, if anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

import uvloop

#: Bytes read at a time in each direction.
CHUNK = 65536


async def _carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay`` seconds after it was read."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await chunks.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not data:
                break
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    delivering = asyncio.create_task(deliver())
    try:
        while data := await reader.read(CHUNK):
            chunks.put_nowait((loop.time() + delay, data))
        chunks.put_nowait((loop.time() + delay, b""))
        await delivering
    finally:
        delivering.cancel()


async def serve(upstream_port: int, rtt: float) -> None:
    half = rtt / 2

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.sleep(half)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_carry(reader, up_writer, half), _carry(up_reader, writer, half))
        except OSError:
            pass
        finally:
            up_writer.close()
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0, backlog=4096)
    print(f"READY port={server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--to", type=int, required=True, help="the relay's port on 127.0.0.1")
    parser.add_argument("--rtt-ms", type=float, default=5.0, help="round trip, milliseconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uvloop.run(serve(args.to, args.rtt_ms / 1000))


if __name__ == "__main__":
    main()
