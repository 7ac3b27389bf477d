"""A keep-alive HTTP/1.1 load generator on raw asyncio sockets, run in its own process.

    python -m benchmarks.loadgen --port P [--port P2 ...] --connections 64
        (--seconds S | --count N) [--post-body FILE] [--path /v1/notifications]
        [--paths-file FILE] [--rate PER_CONNECTION_PER_SECOND] [--warmup S]
        [--record-ids FILE [--record-sent]] --out FILE

With several ``--port``, the connections are dealt out over them in turn (a round-robin
balancer in front of replicas). Each connection sends one request, reads the whole
response (status line, ``content-length``), and sends the next: no pipelining, no HTTP
library. With ``--rate`` each connection paces itself instead of going flat out (a
probe, not a load). ``--record-ids`` writes ``<id>\\t<epoch seconds>`` for every
``202``, taken when the answer arrived (with ``--record-sent``: when the request was
sent). It prints ``GO`` when the measured window opens and ``END`` when it closes; the
result is one JSON object written to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import resource
import time
from collections import Counter
from pathlib import Path
from typing import cast

import uvloop

_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")
_ID = re.compile(rb'"id":"([0-9a-f-]{36})"')


class Shared:
    """What all connections of one run count together."""

    def __init__(
        self,
        requests: list[bytes],
        *,
        count: int | None,
        measure_from: float,
        deadline: float | None,
        record: bool,
        record_sent: bool = False,
    ) -> None:
        self.requests = requests
        self.count = count
        self.measure_from = measure_from
        self.deadline = deadline
        self.issued = 0
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors = 0
        self.records: list[tuple[str, float]] | None = [] if record else None
        self.record_sent = record_sent
        self.first_send_wall: float | None = None
        self.last_receive_wall = 0.0
        self.last_receive = 0.0
        self.open = 0
        self.all_closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def next_request(self, now: float) -> bytes | None:
        if self.count is not None and self.issued >= self.count:
            return None
        if self.deadline is not None and now >= self.deadline:
            return None
        request = self.requests[self.issued % len(self.requests)]
        self.issued += 1
        if self.first_send_wall is None:
            self.first_send_wall = time.time()
        return request

    def completed(self, sent_at: float, now: float, status: int, body: bytes) -> None:
        in_window = sent_at >= self.measure_from and (self.deadline is None or now <= self.deadline)
        if in_window:
            self.latencies.append(now - sent_at)
            self.statuses[status] += 1
            self.last_receive = now
        wall = time.time()
        self.last_receive_wall = wall
        if self.records is not None and status == 202 and (match := _ID.search(body)):
            at = wall - (now - sent_at) if self.record_sent else wall
            self.records.append((match.group(1).decode(), at))

    def closed(self) -> None:
        self.open -= 1
        if self.open == 0 and not self.all_closed.done():
            self.all_closed.set_result(None)


class Connection(asyncio.Protocol):
    def __init__(self, shared: Shared, interval: float | None) -> None:
        self.shared = shared
        self.interval = interval
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent_at: float | None = None
        self.next_at = 0.0
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.shared.open += 1

    def begin(self, at: float) -> None:
        self.next_at = at
        self.send_next()

    def send_next(self) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        now = time.perf_counter()
        request = self.shared.next_request(now)
        if request is None:
            self.transport.close()
            return
        self.sent_at = now
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        match = _CONTENT_LENGTH.search(self.buffer, 0, end + 2)
        total = end + 4 + (int(match.group(1)) if match else 0)
        if len(self.buffer) < total:
            return
        status = int(self.buffer[9:12])
        body = bytes(self.buffer[end + 4 : total]) if self.shared.records is not None else b""
        del self.buffer[:total]
        now = time.perf_counter()
        assert self.sent_at is not None
        self.shared.completed(self.sent_at, now, status, body)
        self.sent_at = None
        if self.interval is None:
            self.send_next()
            return
        self.next_at += self.interval
        delay = self.next_at - now
        if delay <= 0:
            self.next_at = now
            self.send_next()
        else:
            self.loop.call_later(delay, self.send_next)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sent_at is not None:
            self.shared.errors += 1
        self.shared.closed()


def _mark(word: str) -> None:
    print(word, flush=True)


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def build_requests(args: argparse.Namespace) -> list[bytes]:
    host = f"Host: 127.0.0.1:{args.port[0]}\r\n".encode()
    if args.post_body:
        body = Path(args.post_body).read_bytes()
        head = (
            f"POST {args.path} HTTP/1.1\r\n".encode()
            + host
            + b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        return [head + body]
    paths = [args.path]
    if args.paths_file:
        paths = [p for p in Path(args.paths_file).read_text().split() if p]
        random.Random(7).shuffle(paths)
    return [f"GET {p} HTTP/1.1\r\n".encode() + host + b"\r\n" for p in paths]


async def run(args: argparse.Namespace) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    requests = build_requests(args)
    interval = 1.0 / args.rate if args.rate else None
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter() + 0.05 * args.connections / 64 + 0.05
    measure_from = start + args.warmup
    deadline = None if args.seconds is None else measure_from + args.seconds
    shared = Shared(
        requests,
        count=args.count,
        measure_from=measure_from,
        deadline=deadline,
        record=args.record_ids is not None,
        record_sent=args.record_sent,
    )
    connections: list[Connection] = []
    for i in range(args.connections):
        _, protocol = await loop.create_connection(
            lambda: Connection(shared, interval), "127.0.0.1", args.port[i % len(args.port)]
        )
        connections.append(protocol)
    start = max(start, time.perf_counter())
    # Markers for whoever measures the server over exactly the measured window.
    loop.call_later(max(0.0, measure_from - time.perf_counter()), _mark, "GO")
    if deadline is not None:
        loop.call_later(max(0.0, deadline - time.perf_counter()), _mark, "END")
    for i, connection in enumerate(connections):
        offset = (i / len(connections)) * interval if interval else 0.0
        loop.call_at(loop.time() + offset, connection.begin, start + offset)
    give_up = (args.timeout or 600.0) + (0.0 if deadline is None else deadline - start)
    try:
        async with asyncio.timeout(give_up):
            await shared.all_closed
    except TimeoutError:
        for connection in connections:
            if connection.transport is not None:
                connection.transport.abort()
        shared.errors += sum(1 for c in connections if c.sent_at is not None)
    if deadline is None:
        _mark("END")
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    latencies = sorted(shared.latencies)
    if deadline is not None:
        seconds = deadline - measure_from
    else:
        seconds = max(shared.last_receive - measure_from, 1e-9)
    if args.record_ids and shared.records is not None:
        Path(args.record_ids).write_text("".join(f"{i}\t{t:.6f}\n" for i, t in shared.records))
    return {
        "tool": "python-raw-socket",
        "connections": args.connections,
        "requests": len(latencies),
        "seconds": seconds,
        "rps": len(latencies) / seconds,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p90_ms": _percentile(latencies, 0.90) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] if latencies else math.nan) * 1000,
        "mean_ms": (sum(latencies) / len(latencies) if latencies else math.nan) * 1000,
        "errors": shared.errors,
        "statuses": {str(k): v for k, v in sorted(shared.statuses.items())},
        "client_cpu_seconds": (cpu_after.ru_utime + cpu_after.ru_stime)
        - (cpu_before.ru_utime + cpu_before.ru_stime),
        "first_send_wall": shared.first_send_wall,
        "last_receive_wall": shared.last_receive_wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--connections", type=int, default=64)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--seconds", type=float)
    mode.add_argument("--count", type=int)
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--path", default="/v1/notifications")
    parser.add_argument("--post-body", help="file with the JSON body to POST")
    parser.add_argument("--paths-file", help="GET these paths (whitespace-separated), cycling")
    parser.add_argument("--rate", type=float, help="requests per second per connection")
    parser.add_argument("--record-ids", help="write `id<TAB>epoch` of each 202 here")
    parser.add_argument(
        "--record-sent", action="store_true", help="record when each request was sent instead"
    )
    parser.add_argument("--timeout", type=float, help="seconds to wait for stragglers")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = uvloop.run(run(args))
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
