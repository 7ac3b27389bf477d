"""The development capture server: every message it receives becomes an ``.eml`` file.

Runs aiosmtpd in its own thread and event loop, so writing files never touches the
service's loop. For development and tests only: it binds to loopback and relays nothing.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from notifier.errors import ConfigError


class OffersPipelining:
    """An aiosmtpd handler that offers PIPELINING (RFC 2920) in EHLO, as production relays do.

    aiosmtpd reads commands one after another from its stream, so it serves pipelined
    ones, but does not offer the extension itself. ``pipelining = False`` offers what
    aiosmtpd does.
    """

    pipelining: bool = True

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if not self.pipelining:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


class CaptureHandler(OffersPipelining):
    """Files every message; offers PIPELINING, so ``--dev`` sends the way production does."""

    def __init__(self, mail_dir: Path) -> None:
        self.mail_dir = mail_dir

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        path = self.save(envelope)
        return f"250 OK captured as {path.name}"

    def save(self, envelope: Envelope) -> Path:
        """Write the message atomically, the envelope recorded in ``X-Envelope-*`` headers."""
        content = envelope.original_content or b""
        header = (
            f"X-Envelope-From: {envelope.mail_from}\r\n"
            f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
        temporary = self.mail_dir / f".{name}.tmp"
        temporary.write_bytes(header + content)
        final = self.mail_dir / name
        os.replace(temporary, final)
        return final


class CaptureServer:
    """An SMTP server on ``127.0.0.1:port`` that files every message under ``mail_dir``."""

    def __init__(self, mail_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        self.mail_dir = mail_dir
        self._controller = Controller(CaptureHandler(mail_dir), hostname=host, port=port)

    @property
    def address(self) -> tuple[str, int]:
        return self._controller.hostname, self._controller.port

    def start(self) -> None:
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._controller.start()
        except OSError as exc:
            host, port = self.address
            raise ConfigError(
                f"the capture SMTP server cannot listen on {host}:{port} ({exc.strerror or exc}); "
                "set NOTIFIER_DEV_SMTP_PORT to a free port"
            ) from exc

    def stop(self) -> None:
        self._controller.stop()
