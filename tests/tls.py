"""Certificates for TLS tests: a trustme authority, its PEM on disk, and server contexts."""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.smtp_server import ScriptedHandler

#: The names a loopback relay answers to; notifier checks the one in NOTIFIER_SMTP_HOST.
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
#: The credentials the TLS relay accepts.
USERNAME = "notifier"
PASSWORD = "relay-secret"


@dataclass(frozen=True)
class Authority:
    """A certificate authority made for one test; ``pem`` is what NOTIFIER_SMTP_CA_FILE names."""

    ca: trustme.CA
    pem: Path

    @classmethod
    def create(cls, directory: Path, name: str) -> Authority:
        ca = trustme.CA(organization_name=name)
        pem = directory / f"{name}-ca.pem"
        ca.cert_pem.write_to_path(str(pem))
        return cls(ca, pem)

    def server_context(self) -> ssl.SSLContext:
        """A server side context presenting a certificate this authority issued for loopback."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*LOOPBACK_NAMES).configure_cert(context)
        return context


@dataclass
class Authenticator:
    """aiosmtpd's AUTH hook: accepts the configured credentials, records each try."""

    #: (mechanism, over TLS, login) per AUTH command.
    tries: list[tuple[str, bool, bytes]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> Any:
        with self._lock:
            self.tries.append((mechanism, session.ssl is not None, auth_data.login))
        expected = LoginPassword(USERNAME.encode(), PASSWORD.encode())
        return AuthResult(success=auth_data == expected, handled=False)


@dataclass
class TLSRelay:
    handler: ScriptedHandler
    authenticator: Authenticator
    port: int
