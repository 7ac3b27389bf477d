"""Section 2: notifier's delivery rate against bare aiosmtplib senders and fastapi-mail."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks import services
from benchmarks.delivery_window import (
    SenderFigures,
    notifier_window,
    ratio_row,
    sender_rows,
    sender_window,
)
from benchmarks.measure import num, ratio, snapshot
from benchmarks.section import Bench, Plan, Row, Section, package_version, table

TITLE = "2. Delivery: notifier against bare aiosmtplib senders and fastapi-mail"

#: The baseline senders, each in its own process (``benchmarks/smtp_sender.py``).
BASELINES = ("prebuilt", "render", "per_message", "fastapi_mail")


@dataclass(frozen=True)
class Delivery:
    #: By kind of sender, in the table's order; those that did not run have no values.
    senders: dict[str, SenderFigures]
    section: Section

    @property
    def notifier(self) -> SenderFigures:
        return self.senders["notifier"]


def measure(b: Bench) -> Delivery:
    p = b.plan
    fastapi_mail_version = package_version("fastapi-mail")
    kinds = _kinds(p, fastapi_mail_version)
    senders = {kind: SenderFigures() for kind in kinds}
    warm = min(1000, p.delivery_backlog // 10)
    _measure_rounds(b, senders, warm, with_fastapi_mail=bool(fastapi_mail_version))
    lines = _lines(p, kinds, senders, warm)
    return Delivery(senders, Section("2", TITLE, tuple(lines), tuple(_rows(senders))))


def _kinds(p: Plan, fastapi_mail_version: str | None) -> dict[str, str]:
    """Each sender's description in the table."""
    c, wide = p.send_concurrency, p.delivery_wide_concurrency
    return {
        "notifier": f"notifier, `NOTIFIER_SEND_CONCURRENCY={c}`",
        "prebuilt": f"bare aiosmtplib, {c} persistent connections, one pre-rendered message",
        "render": f"bare aiosmtplib, {c} persistent connections, rendering each message",
        "per_message": "bare aiosmtplib, a connection per message (fastapi-mail style), "
        f"{c} at once",
        "fastapi_mail": f"fastapi-mail {fastapi_mail_version} itself, "
        f"{c} `send_message` calls at once",
        "wide": f"(informative) notifier, `NOTIFIER_SEND_CONCURRENCY={wide}`",
        "pipelined": "(informative) notifier, the sink offering PIPELINING (RFC 2920)",
    }


def _measure_rounds(
    b: Bench, senders: dict[str, SenderFigures], warm: int, *, with_fastapi_mail: bool
) -> None:
    """Every sender once a round, interleaved; the last run against a pipelining sink."""
    p = b.plan
    b.watch.quiet("delivery", patience=p.quiet_patience)
    sink = services.Sink(b.work)
    pipelining_sink = services.Sink(b.work, pipelining=True)
    try:
        for r in range(p.delivery_rounds):
            _notifier_run(b, senders, "notifier", p.send_concurrency, r, sink, warm)
            for kind in BASELINES:
                if kind == "fastapi_mail" and not with_fastapi_mail:
                    continue
                _baseline_run(b, senders[kind], kind, sink, min(warm, 200))
            if p.delivery_wide_concurrency:
                _notifier_run(b, senders, "wide", p.delivery_wide_concurrency, r, sink, warm)
            _notifier_run(b, senders, "pipelined", p.send_concurrency, r, pipelining_sink, warm)
    finally:
        sink.stop()
        pipelining_sink.stop()


def _notifier_run(
    b: Bench,
    senders: dict[str, SenderFigures],
    kind: str,
    concurrency: int,
    r: int,
    sink: services.Sink,
    warm: int,
) -> None:
    a = snapshot()
    window = notifier_window(
        b, f"delivery-{kind}-{r}", sink, sink.smtp_port, warm=warm, concurrency=concurrency
    )
    senders[kind].foreign.add(100 * b.watch.record("delivery", a, snapshot()))
    senders[kind].add(window)
    b.log(f"  {kind}: {window.rate:,.0f} msg/s, {window.cpu_ms:.2f} CPU ms per message")


def _baseline_run(b: Bench, f: SenderFigures, kind: str, sink: services.Sink, warm: int) -> None:
    a = snapshot()
    window, result = sender_window(b, kind, sink, sink.smtp_port, warm=warm)
    f.foreign.add(100 * b.watch.record("delivery", a, snapshot()))
    f.add(window)
    f.errors.add(float(result.get("errors", 0)))
    b.log(f"  {kind}: {window.rate:,.0f} msg/s")


def _lines(
    p: Plan, kinds: dict[str, str], senders: dict[str, SenderFigures], warm: int
) -> list[str]:
    header = [
        "sender",
        "delivered/s",
        "notifier / this",
        "sender CPU ms per message",
        "sender CPU % of a core",
        "sink CPU ms per message",
        "connections opened in window",
        "other load %",
    ]
    rows = sender_rows(
        senders,
        kinds,
        [
            lambda f: f.cpu_ms.show(3),
            lambda f: f.cpu_pct.show(),
            lambda f: f.sink_ms.show(3),
            lambda f: f.connections.show(),
            lambda f: f.foreign.show(),
        ],
    )
    return [
        "The sink (`benchmarks/sink.py`) is aiosmtpd in its own process, answering `250`",
        "to everything; messages are counted there, over a window of "
        f"{p.delivery_window:g} s that opens once {warm:,} messages have arrived",
        f"(connections warm). {p.delivery_rounds} rounds each, interleaved. notifier starts",
        f"on a store seeded with {p.delivery_backlog:,} queued notifications (through its own",
        '`SQLiteStore.add`, the "accepted" acknowledgment already written) and sends with',
        f"`NOTIFIER_SEND_CONCURRENCY={p.send_concurrency}`; the bare senders "
        "(`benchmarks/smtp_sender.py`) send",
        "the same notification (same envelope, same `render`) from their own process.",
        '"CPU ms per message" is the sending process\'s CPU (all threads) over the window.',
        "",
        *table(header, rows),
        "",
        'The issue\'s baseline is the bare sender "pushing the same messages": the',
        "pre-rendered one is the transport's ceiling; the rendering one does the work any",
        "sender must do per message (build the RFC 5322 bytes) and so isolates notifier's own",
        "overhead (store, claims, leases, acknowledgments, bookkeeping).",
        "",
        *_per_message_note(p, senders),
        *_wide_note(p, senders),
        "",
        "The sink, like aiosmtpd, does not offer PIPELINING, so every row above but the last",
        "waits for each reply; the bare senders cannot pipeline (aiosmtplib has no support",
        "for it). The last row is notifier against a second sink that offers it, as",
        "production relays do: MAIL, RCPT and DATA in one write. On loopback that saves",
        "CPU more than time, as the sink is busy with every command either way; section 2b",
        "shows what it saves once the relay is a network away.",
    ]


def _per_message_note(p: Plan, senders: dict[str, SenderFigures]) -> list[str]:
    """How far any sender over the same connections can get from one that reconnects."""
    persistent = ratio(senders["render"].rate.median, senders["per_message"].rate.median)
    lines = [
        "The connection-per-message sender uses notifier's own `render` and aiosmtplib's",
        "`sendmail`, so it is a lean version of what fastapi-mail does. Against it, the",
        f"bare sender over {p.send_concurrency} persistent connections reaches "
        f"{num(persistent, 2)}x: that is as far as keeping connections open gets here.",
    ]
    if persistent < 3.0:
        lines += [
            "Loopback connections are cheap to open, so a 3x goal against this sender asks",
            "notifier to outrun the bare persistent sender itself.",
        ]
    if not senders["fastapi_mail"].ran:
        return [*lines, "fastapi-mail is not installed (`pip install -e '.[bench]'`): no row."]
    return [
        *lines,
        "The fastapi-mail row is fastapi-mail itself (the `bench` extra installs it): each",
        "message built as a MIME message by the standard library, sent with aiosmtplib's",
        "`send_message` over a connection of its own, then QUIT.",
    ]


def _wide_note(p: Plan, senders: dict[str, SenderFigures]) -> list[str]:
    """What the run at a wider send concurrency says about the limit at the default."""
    wide, base = senders["wide"], senders["notifier"]
    if not wide.ran:
        return []
    gain = ratio(wide.rate.median, base.rate.median)
    cpu = base.cpu_pct.median
    if gain >= 1.25 and cpu < 85:
        verdict = (
            "so at the default, delivery is bound by how long each send slot is held (SMTP "
            "round trips plus waiting for the claim and the finish to be committed), not by CPU."
        )
    else:
        verdict = (
            "so more sends at once barely help: delivery is bound by the CPU of the "
            "machine's two cores, which notifier's event loop, its writer and "
            "acknowledgment threads and the sink share, not by the number of send slots."
        )
    return [
        "",
        f"The informative row at {p.delivery_wide_concurrency} sends at once gives "
        f"{num(gain, 2)}x the rate at {p.send_concurrency}, while at "
        f"{p.send_concurrency} notifier already used {num(cpu)}% of a core; {verdict}",
    ]


def _rows(senders: dict[str, SenderFigures]) -> list[Row]:
    goals = (
        ("prebuilt", "delivered/s vs bare sender, pre-rendered message", 0.80),
        ("render", "delivered/s vs bare sender, rendering each message", 0.80),
        ("per_message", "delivered/s vs a connection per message", 3.0),
        ("fastapi_mail", "delivered/s vs fastapi-mail itself", 3.0),
    )
    return [
        ratio_row("2", figure, senders["notifier"], senders[kind], goal)
        for kind, figure, goal in goals
        if senders[kind].ran  # fastapi-mail may not be installed
    ]
