"""Section 2b: the senders of section 2 against a relay a network round trip away."""

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
from benchmarks.section import Bench, Plan, Row, Section, package_version, table

#: The round trip to the relay: a relay in the same region, not the same host.
NETWORK_RTT_MS = 5.0

#: Messages the sink holds before a window opens.
WARM = 200

#: notifier's runs: with PIPELINING, and in lock-step.
NOTIFIER_RUNS: tuple[tuple[str, dict[str, str]], ...] = (
    ("notifier", {}),
    ("lock_step", {"NOTIFIER_SMTP_PIPELINING": "false"}),
)


@dataclass(frozen=True)
class RelayLatency:
    #: By kind of sender, in the table's order; those that did not run have no values.
    senders: dict[str, SenderFigures]
    section: Section


def measure(b: Bench) -> RelayLatency:
    p = b.plan
    fastapi_mail_version = package_version("fastapi-mail")
    kinds = _kinds(p, fastapi_mail_version)
    senders = {kind: SenderFigures() for kind in kinds}
    _measure_rounds(b, senders, with_fastapi_mail=bool(fastapi_mail_version))
    title = f"2b. Delivery to a relay {NETWORK_RTT_MS:g} ms away"
    lines = _lines(p, kinds, senders)
    return RelayLatency(senders, Section("2b", title, tuple(lines), tuple(_rows(senders))))


def _kinds(p: Plan, fastapi_mail_version: str | None) -> dict[str, str]:
    c = p.send_concurrency
    return {
        "notifier": f"notifier, `NOTIFIER_SEND_CONCURRENCY={c}` (PIPELINING)",
        "lock_step": f"notifier, `NOTIFIER_SEND_CONCURRENCY={c}`, `NOTIFIER_SMTP_PIPELINING=false`",
        "render": f"bare aiosmtplib, {c} persistent connections, rendering each message",
        "per_message": f"bare aiosmtplib, a connection per message, {c} at once",
        "fastapi_mail": f"fastapi-mail {fastapi_mail_version} itself, {c} `send_message` at once",
    }


def _measure_rounds(
    b: Bench, senders: dict[str, SenderFigures], *, with_fastapi_mail: bool
) -> None:
    p = b.plan
    b.watch.quiet("delivery", patience=p.quiet_patience)
    sink = services.Sink(b.work, pipelining=True)
    proxy = services.LatencyProxy(b.work, sink.smtp_port, NETWORK_RTT_MS)
    try:
        for r in range(p.delivery_rounds):
            for kind, env in NOTIFIER_RUNS:
                window = notifier_window(
                    b,
                    f"network-{kind}-{r}",
                    sink,
                    proxy.port,
                    warm=WARM,
                    concurrency=p.send_concurrency,
                    extra_env=env,
                )
                _add(b, senders[kind], kind, window.rate, window.cpu_ms)
            for kind in ("render", "per_message", "fastapi_mail"):
                if kind == "fastapi_mail" and not with_fastapi_mail:
                    continue
                window, _ = sender_window(b, kind, sink, proxy.port, warm=WARM)
                _add(b, senders[kind], kind, window.rate, window.cpu_ms)
    finally:
        proxy.stop()
        sink.stop()


def _add(b: Bench, f: SenderFigures, kind: str, rate: float, cpu_ms: float) -> None:
    f.rate.add(rate)
    f.cpu_ms.add(cpu_ms)
    b.log(f"  {kind}: {rate:,.0f} msg/s")


def _lines(p: Plan, kinds: dict[str, str], senders: dict[str, SenderFigures]) -> list[str]:
    rtt, c = NETWORK_RTT_MS, p.send_concurrency
    rows = sender_rows(senders, kinds, [lambda f: f.cpu_ms.show(3)])
    return [
        "Section 2's senders, each through `benchmarks/latency.py`: a proxy on loopback that",
        f"holds every byte for half of a {rtt:g} ms round trip each way (or a little more:",
        "its timers round up to the millisecond), in front of a sink",
        "that offers PIPELINING, as production relays do. Opening a connection costs one",
        "round trip here, half a round trip less than over a real network, which if anything",
        f"flatters the senders that connect for every message. {p.delivery_rounds} rounds of",
        f"{p.delivery_window:g} s each, counted at the sink once {WARM} messages have arrived.",
        "",
        *table(["sender", "delivered/s", "notifier / this", "sender CPU ms per message"], rows),
        "",
        f"In lock-step a message costs four round trips (MAIL, RCPT, DATA, the body), so {c}",
        f"connections carry at most {c * 1000 / (4 * rtt):,.0f} a second at exactly {rtt:g} ms; "
        "pipelined, two, so",
        f"{c * 1000 / (2 * rtt):,.0f} (fewer here: the proxy's rounding, and the relay's own "
        "time). A connection per",
        "message adds the greeting, EHLO and QUIT. This is what decides delivery rates once",
        "the relay is not on the same host. notifier's CPU per message is higher than on",
        "loopback because each commit, claim and wake-up now serves fewer messages.",
    ]


def _rows(senders: dict[str, SenderFigures]) -> list[Row]:
    rtt = NETWORK_RTT_MS
    reported = (
        ("render", f"delivered/s over {rtt:g} ms vs bare sender, rendering each message"),
        ("fastapi_mail", f"delivered/s over {rtt:g} ms vs fastapi-mail itself"),
    )
    return [
        ratio_row("2b", figure, senders["notifier"], senders[kind], None)
        for kind, figure in reported
        if senders[kind].ran
    ]
