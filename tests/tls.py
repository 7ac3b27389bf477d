"""Certificates for TLS tests: a trustme authority, its PEM on disk, and server contexts."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

#: The names a loopback relay answers to; notifier checks the one in NOTIFIER_SMTP_HOST.
LOOPBACK_NAMES = ("127.0.0.1", "localhost")


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
