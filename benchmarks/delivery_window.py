"""Delivery counted at the sink over a window, and senders compared by their windows.

Sections 2 and 2b both measure this way: a sender (notifier or a baseline) delivers
into the sink, and the window opens once the sink holds a few messages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from benchmarks import services, workload
from benchmarks.load import CpuSource
from benchmarks.measure import Figure, num, ratio
from benchmarks.section import Bench, Row


@dataclass(frozen=True)
class Window:
    """What one window measured."""

    #: Delivered/s.
    rate: float
    #: CPU of the sending process and of the sink, ms per message.
    cpu_ms: float
    sink_ms: float
    #: Connections the sink saw opened in the window.
    connections: int
    #: CPU of each of the ``meters`` given, ms per message.
    meters_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SenderFigures:
    """One sender's windows, over the rounds."""

    rate: Figure = field(default_factory=Figure)
    cpu_ms: Figure = field(default_factory=Figure)
    #: Sender CPU, % of a core.
    cpu_pct: Figure = field(default_factory=Figure)
    sink_ms: Figure = field(default_factory=Figure)
    connections: Figure = field(default_factory=Figure)
    foreign: Figure = field(default_factory=Figure)
    errors: Figure = field(default_factory=Figure)

    @property
    def ran(self) -> bool:
        return bool(self.rate.values)

    def add(self, window: Window) -> None:
        self.rate.add(window.rate)
        self.cpu_ms.add(window.cpu_ms)
        self.cpu_pct.add(window.rate * window.cpu_ms / 10)
        self.sink_ms.add(window.sink_ms)
        self.connections.add(window.connections)


def measure_window(
    sink: services.Sink,
    proc: CpuSource,
    *,
    start_after: int,
    seconds: float,
    stop_at: int | None = None,
    timeout: float = 120.0,
    meters: Mapping[str, CpuSource] | None = None,
) -> Window:
    """The window opens once the sink holds ``start_after`` messages and lasts ``seconds``.

    It closes early at ``stop_at`` messages, if the backlog would run out first. ``proc``
    is the sender; ``meters`` are other processes whose CPU is shared out per message.
    """
    meters = meters or {}
    base, t0 = sink.wait_for(start_after, timeout)
    if base < start_after:
        raise RuntimeError(f"deliveries did not start: {base} of {start_after} after {timeout} s")
    _, conns0 = sink.count()
    cpu0, sink_cpu0 = proc.cpu_seconds(), sink.proc.cpu_seconds()
    meters0 = {name: meter.cpu_seconds() for name, meter in meters.items()}
    give_up = t0 + seconds
    count, now = base, t0
    while now < give_up and (stop_at is None or count < stop_at):
        time.sleep(0.05)
        count, _ = sink.count()
        now = time.monotonic()
    cpu1, sink_cpu1 = proc.cpu_seconds(), sink.proc.cpu_seconds()
    meters1 = {name: meter.cpu_seconds() for name, meter in meters.items()}
    _, conns1 = sink.count()
    delivered = count - base
    if delivered <= 0:
        return Window(0.0, math.nan, math.nan, conns1 - conns0)
    return Window(
        delivered / (now - t0),
        1000 * (cpu1 - cpu0) / delivered,
        1000 * (sink_cpu1 - sink_cpu0) / delivered,
        conns1 - conns0,
        {name: 1000 * (meters1[name] - meters0[name]) / delivered for name in meters},
    )


def notifier_window(
    b: Bench,
    name: str,
    sink: services.Sink,
    smtp_port: int,
    *,
    warm: int,
    concurrency: int,
    extra_env: dict[str, str] | None = None,
) -> Window:
    """notifier delivering a freshly seeded backlog through ``smtp_port`` into ``sink``."""
    p = b.plan
    db = b.work / f"{name}.db"
    workload.seed_queued(db, p.delivery_backlog)
    # Counted from before the start: sends begin while the start-up is still checked.
    base, _ = sink.count()
    notifier = services.start_notifier(
        b.work, db, smtp_port, concurrency=concurrency, extra_env=extra_env
    )
    try:
        return measure_window(
            sink,
            notifier.proc,
            start_after=base + warm,
            seconds=p.delivery_window,
            stop_at=base + int(p.delivery_backlog * 0.95),
        )
    finally:
        notifier.stop()


def sender_window(
    b: Bench, kind: str, sink: services.Sink, smtp_port: int, *, warm: int
) -> tuple[Window, dict[str, float]]:
    """A baseline sender (``render``, ``prebuilt``, ``per_message`` or ``fastapi_mail``)."""
    p = b.plan
    base, _ = sink.count()
    sender = services.start_sender(
        b.work,
        smtp_port,
        connections=p.send_concurrency,
        seconds=p.delivery_window + 2.5,
        per_message=kind == "per_message",
        prebuilt=kind == "prebuilt",
        fastapi_mail=kind == "fastapi_mail",
    )
    try:
        window = measure_window(sink, sender, start_after=base + warm, seconds=p.delivery_window)
        return window, services.sender_result(sender, timeout=p.delivery_window + 60)
    finally:
        sender.stop()


def sender_rows(
    senders: Mapping[str, SenderFigures],
    kinds: Mapping[str, str],
    columns: Sequence[Callable[[SenderFigures], str]],
) -> list[list[str]]:
    """A table row for each sender that ran: its rate, notifier's ratio to it, ``columns``."""
    n = senders["notifier"].rate.median
    return [
        [
            text,
            senders[kind].rate.show(),
            num(ratio(n, senders[kind].rate.median), 3),
            *(column(senders[kind]) for column in columns),
        ]
        for kind, text in kinds.items()
        if senders[kind].ran
    ]


def ratio_row(
    target: str, figure: str, notifier: SenderFigures, other: SenderFigures, goal: float | None
) -> Row:
    """The summary row of notifier's rate against ``other``'s; ``goal`` None only reports."""
    got = ratio(notifier.rate.median, other.rate.median)
    return Row(
        target,
        figure,
        notifier.rate.show(),
        other.rate.show(),
        num(got, 3),
        "report" if goal is None else f">= {goal:.2f}" if goal < 1 else f">= {goal:.1f}",
        None if goal is None else got >= goal,
    )
