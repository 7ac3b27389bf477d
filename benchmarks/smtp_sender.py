"""The senders notifier's delivery is measured against, the baselines (own process).

    python -m benchmarks.smtp_sender --port P --connections 16 --seconds 8 \
        [--per-message | --fastapi-mail] [--prebuilt]

Sends the benchmark notification's message to the sink until ``--seconds`` are up:
over ``--connections`` persistent connections, or (``--per-message``) with that many
concurrent senders that each open a connection per message and QUIT after it, as
fastapi-mail does. Each message is rendered with notifier's own ``render`` (a new
Message-ID and Date each time) unless ``--prebuilt``, which resends one rendered
message: the transport alone. ``--fastapi-mail`` is fastapi-mail itself, that many
``FastMail.send_message`` calls at once, each building its message with the standard
library and opening its own connection. Prints one JSON line with the count and CPU used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from collections.abc import Callable

import aiosmtplib
import uvloop

from benchmarks import workload


class Counts:
    def __init__(self) -> None:
        self.sent = 0
        self.errors = 0


def _client(port: int) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=port,
        local_hostname="bench",
        use_tls=False,
        start_tls=False,
        timeout=30,
    )


async def persistent(
    port: int, deadline: float, message: Callable[[], bytes], counts: Counts
) -> None:
    sender, recipients = workload.envelope()
    client = _client(port)
    await client.connect()
    try:
        while time.monotonic() < deadline:
            await client.sendmail(sender, recipients, message())
            counts.sent += 1
        await client.quit()
    finally:
        client.close()


async def per_message(
    port: int, deadline: float, message: Callable[[], bytes], counts: Counts
) -> None:
    sender, recipients = workload.envelope()
    while time.monotonic() < deadline:
        client = _client(port)
        try:
            await client.connect()
            await client.sendmail(sender, recipients, message())
            await client.quit()
            counts.sent += 1
        except (aiosmtplib.SMTPException, OSError):
            counts.errors += 1
        finally:
            client.close()


async def fastapi_mail(port: int, deadline: float, counts: Counts) -> None:
    """fastapi-mail's own path: ``MessageSchema``, ``FastMail.send_message``, no TLS, no login."""
    from fastapi_mail import ConnectionConfig, FastMail, MessageSchema, MessageType

    mail = FastMail(
        ConnectionConfig(
            MAIL_USERNAME="",
            MAIL_PASSWORD="",
            MAIL_FROM=workload.SENDER,
            MAIL_SERVER="127.0.0.1",
            MAIL_PORT=port,
            MAIL_STARTTLS=False,
            MAIL_SSL_TLS=False,
            USE_CREDENTIALS=False,
            LOCAL_HOSTNAME="bench",
            TIMEOUT=30,
        )
    )
    body = workload.BODY
    to = [f"{r['name']} <{r['address']}>" for r in body["to"]]
    while time.monotonic() < deadline:
        message = MessageSchema(
            subject=body["subject"], recipients=to, body=body["text"], subtype=MessageType.plain
        )
        try:
            await mail.send_message(message)
            counts.sent += 1
        except Exception:  # noqa: BLE001 - fastapi-mail wraps every failure in its own types
            counts.errors += 1


async def run(args: argparse.Namespace) -> dict[str, object]:
    body = workload.request()
    if args.prebuilt:
        fixed = workload.rendered(workload.notification(time.time(), body))

        def message() -> bytes:
            return fixed
    else:

        def message() -> bytes:
            return workload.rendered(workload.notification(time.time(), body))

    counts = Counts()
    worker = per_message if args.per_message else persistent
    started = time.monotonic()
    deadline = started + args.seconds
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(
        *(
            fastapi_mail(args.port, deadline, counts)
            if args.fastapi_mail
            else worker(args.port, deadline, message, counts)
            for _ in range(args.connections)
        )
    )
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    return {
        "sent": counts.sent,
        "errors": counts.errors,
        "seconds": time.monotonic() - started,
        "cpu_seconds": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--per-message", action="store_true")
    kind.add_argument("--fastapi-mail", action="store_true")
    parser.add_argument("--prebuilt", action="store_true")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
