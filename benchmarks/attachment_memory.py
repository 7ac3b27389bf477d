"""What one large attachment costs in memory: at accept, and per attempt to send it.

    python -m benchmarks.attachment_memory [--mib 10] [--attempts 3]

Python's own allocations are traced (``tracemalloc``) while a notification with one
attachment of ``--mib`` MiB is accepted (parsed, checked, encoded) and then sent
``--attempts`` times the way the dispatcher sends it: its parts read from a SQLite
store, wrapped around the rendered message, written to a sink relay (in its own
process, on loopback) as the connection takes them. The baseline, measured in the same
run: the same message joined into one ``bytes`` and written at once, as a message
without attachments is. Figures are peaks above what was held before, in MiB and in
multiples of the attachment.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from notifier.attachments import with_attachments
from notifier.dispatch.smtp import RelayConfig, SMTPTransport
from notifier.domain import Address
from notifier.message import render
from notifier.schemas import NotificationRequest
from notifier.store import SQLiteStore

MIB = 1024 * 1024
SINK_START_SECONDS = 10.0


@dataclass(frozen=True)
class MemoryFigures:
    """Peaks above what was held before, in bytes, for an attachment of ``size`` bytes."""

    size: int
    attempts: int
    accept: float
    #: Per attempt: written in pieces as the connection takes them, and joined at once.
    in_pieces: tuple[float, ...]
    joined: tuple[float, ...]
    #: Held once the attempts in pieces were over.
    left: float

    def times(self, peak: float) -> float:
        return peak / self.size


def measure_memory(mib: int = 10, attempts: int = 3) -> MemoryFigures:
    """Start a sink, measure, stop the sink."""
    sink = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.sink", "--pipelining"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        return asyncio.run(_measure(mib, min(attempts, 10), _sink_port(sink)))
    finally:
        sink.terminate()
        sink.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=10)
    parser.add_argument("--attempts", type=int, default=3)
    args = parser.parse_args()
    f = measure_memory(args.mib, args.attempts)
    print(f"attachment: {args.mib} MiB ({f.size:,} bytes), {f.attempts} attempts each")
    steps = [("accept (parse, check, encode): peak", f.accept)]
    steps += [("send, baseline, joined: peak per attempt", max(f.joined))]
    steps += [("send, notifier, in pieces: peak per attempt", max(f.in_pieces))]
    for name, peak in steps:
        print(f"{name} {peak / MIB:.1f} MiB = {f.times(peak):.2f}x")
    print(f"in pieces / joined: {max(f.in_pieces) / max(f.joined):.3f}")
    print(f"held after the attempts in pieces: {f.left / MIB:.1f} MiB")
    return 0


def _sink_port(sink: subprocess.Popen[str]) -> int:
    assert sink.stdout is not None
    give_up = time.monotonic() + SINK_START_SECONDS
    while time.monotonic() < give_up:
        line = sink.stdout.readline()
        if line.startswith("READY"):
            return int(line.split()[1].removeprefix("smtp="))
    raise RuntimeError("the sink did not start")


async def _peak(step: Callable[[], Awaitable[object]]) -> tuple[float, object]:
    """Bytes allocated at the peak of ``step`` above what was held before it."""
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    result = await step()
    return tracemalloc.get_traced_memory()[1] - held, result


async def _measure(mib: int, attempts: int, port: int) -> MemoryFigures:
    size = mib * MIB
    request = orjson.dumps(
        {
            "to": ["ada@example.com"],
            "subject": "Report",
            "text": "Attached.",
            "attachments": [
                {
                    "filename": "report.bin",
                    "content_type": "application/octet-stream",
                    "content": base64.b64encode(os.urandom(size)).decode(),
                }
            ],
        }
    )
    sender = Address("notifier@example.com")
    tracemalloc.start()

    async def accept() -> object:
        body = NotificationRequest.model_validate_json(request)
        return body.to_notification(sender, now=time.time(), lifetime=3600.0)

    accepted, notification = await _peak(accept)
    transport = SMTPTransport(
        RelayConfig(
            host="127.0.0.1",
            port=port,
            tls="none",
            username=None,
            password=None,
            timeout=30.0,
            data_timeout=60.0,
            validate_certs=False,
            ca_file=None,
            local_hostname="bench.test",
            max_messages_per_connection=100,
        )
    )
    with tempfile.TemporaryDirectory() as directory:
        store = SQLiteStore(Path(directory) / "notifier.db")
        await store.open()
        try:
            await store.add(notification)  # type: ignore[arg-type]
            n = await store.get(notification.id)  # type: ignore[attr-defined]
            assert n is not None
            del notification

            async def pieces() -> list[bytes]:
                parts = await store.attachment_parts(n.id)
                message = render(n.content, message_id=n.message_id, created_at=n.created_at)
                return with_attachments(message, parts, seed=n.message_id)

            async def attempt() -> object:
                return await transport.send(sender.address, ["ada@example.com"], await pieces())

            async def joined() -> object:
                message = b"".join(await pieces())
                return await transport.send(sender.address, ["ada@example.com"], message)

            before = tracemalloc.get_traced_memory()[0]
            chunked = [(await _peak(attempt))[0] for _ in range(attempts)]
            left = tracemalloc.get_traced_memory()[0] - before
            baseline = [(await _peak(joined))[0] for _ in range(attempts)]
        finally:
            await store.close()
            await transport.close()
    tracemalloc.stop()
    return MemoryFigures(size, attempts, accepted, tuple(chunked), tuple(baseline), left)


if __name__ == "__main__":
    sys.exit(main())
