"""Every setting notifier reads, from ``NOTIFIER_*`` environment variables.

Built once by the entry point and passed down; there is no module-level instance.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from notifier.errors import ConfigError

SQLITE_PREFIX = "sqlite:///"


def redacted_url(url: str) -> str:
    """``url`` with any password masked: for display, logs and error messages."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1********@", url)


CommaList = Annotated[list[str], NoDecode]

DEV_SMTP_HOST = "127.0.0.1"
DEV_MAIL_FROM = "notifier@example.com"


class Settings(BaseSettings):
    """Configuration of one notifier process."""

    model_config = SettingsConfigDict(
        env_prefix="NOTIFIER_",
        extra="ignore",
        hide_input_in_errors=True,
        validate_default=True,
    )

    # Serving
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``json`` (one object a line) or ``text``; unset means text with --dev, else json.
    log_format: Literal["json", "text"] | None = None
    #: Most HTTP connections open at once; past it a new one gets 503 and is closed, so
    #: idle clients cannot use up the open files that SMTP and the store need.
    max_connections: int = Field(default=1024, ge=1)
    #: Seconds a connection may take to send a complete request head, after connecting
    #: or after its previous response; a silent or slow-loris client is then closed.
    request_head_timeout: float = Field(default=5.0, gt=0)

    # SMTP relay
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    #: A file holding the password (a container secret), read at start-up; the file's
    #: last line end is not part of it.
    smtp_password_file: Path | None = None
    smtp_tls: Literal["starttls", "tls", "none"] = "starttls"
    smtp_timeout: float = Field(default=30.0, gt=0)
    smtp_data_timeout: float = Field(default=600.0, gt=0)
    smtp_validate_certs: bool = True
    smtp_ca_file: Path | None = None
    smtp_local_hostname: str = Field(default_factory=socket.gethostname)
    smtp_max_messages_per_connection: int = Field(default=100, ge=1)
    smtp_pipelining: bool = True

    # Senders
    mail_from: str | None = None
    allowed_senders: CommaList = Field(default_factory=list)

    # Addresses
    #: Accept addresses at special-use domains (``.local``, ``localhost``, ``.test``, ...),
    #: which email-validator refuses: internal mail domains such as ``corp.local``.
    allow_special_use_domains: bool = False

    # Storage and acknowledgments
    #: ``sqlite:///path`` (one process) or ``postgresql://user:pass@host/db`` (replicas).
    database_url: str = "sqlite:///./data/notifier.db"
    #: Connections each replica keeps to PostgreSQL at most.
    database_pool_size: int = Field(default=10, ge=2, le=1000)
    #: Server-side prepared statements on PostgreSQL (cheaper claims and writes); off for
    #: a PgBouncer in transaction mode that does not track them (before 1.21, or
    #: ``max_prepared_statements = 0``).
    database_prepared_statements: bool = True
    ack_file: Path = Path("./data/acknowledgments.jsonl")
    #: One folder per template (``subject.txt``, ``body.txt`` and/or ``body.html``).
    template_dir: Path = Path("./config/templates")

    # Delivery
    send_concurrency: int = Field(default=16, ge=1, le=1024)
    retry_max_attempts: int = Field(default=10, ge=1)
    retry_initial_delay: float = Field(default=30.0, gt=0)
    retry_max_delay: float = Field(default=3600.0, gt=0)
    message_lifetime: float = Field(default=3 * 24 * 3600.0, gt=0)
    #: How far ahead ``send_at`` may be.
    max_schedule_ahead: float = Field(default=30 * 24 * 3600.0, gt=0)
    lease_seconds: float = Field(default=900.0, gt=0)
    poll_interval: float = Field(default=1.0, gt=0)
    shutdown_grace: float = Field(default=10.0, ge=0)
    #: /readyz connects to the relay at most this often (seconds); in between it reuses
    #: the last answer.
    relay_check_interval: float = Field(default=30.0, ge=0)

    # Limits
    #: Room for the largest attachments allowed, in base64, and the rest of a request.
    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_recipients: int = Field(default=100, ge=1)
    #: Most notifications in one ``POST /v1/notifications/batch``.
    max_batch: int = Field(default=500, ge=1)
    max_attachments: int = Field(default=10, ge=0)
    #: Decoded bytes of all of one notification's attachments together.
    max_attachment_bytes: int = Field(default=10 * 1024 * 1024, ge=0)
    max_pending: int = Field(default=100_000, ge=1)

    # Storage behaviour
    store_busy_timeout: float = Field(default=5.0, gt=0)
    #: Seconds a finished notification is kept (for status look-ups) before it is purged.
    retention: float = Field(default=30 * 24 * 3600.0, gt=0)

    # Authentication and rate limits
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    api_keys_file: Path | None = None
    auth_disabled: bool = False
    rate_limit_requests_per_minute: int = Field(default=6000, ge=1)
    rate_limit_recipients_per_minute: int = Field(default=60000, ge=1)

    # Development capture server (used with --dev and `notifier dev-smtp`)
    dev_smtp_port: int = Field(default=1025, ge=1, le=65535)
    dev_mail_dir: Path = Path("./data/mail")

    # Development mode is never read from the environment: only `serve --dev` turns it
    # on, so a stray variable cannot quietly open the API or redirect delivery.
    _dev: bool = PrivateAttr(default=False)

    @property
    def dev(self) -> bool:
        return self._dev

    @field_validator("allowed_senders", mode="before")
    @classmethod
    def _split_senders(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        return _split_commas(value)

    @model_validator(mode="after")
    def _plaintext_auth_is_refused(self) -> Settings:
        if self.smtp_username and self.smtp_tls == "none":
            raise ValueError(
                "NOTIFIER_SMTP_USERNAME is set but NOTIFIER_SMTP_TLS=none: "
                "credentials are never sent over an unencrypted connection; "
                "use NOTIFIER_SMTP_TLS=starttls or tls"
            )
        if self.smtp_password is not None and self.smtp_password_file is not None:
            raise ValueError(
                "NOTIFIER_SMTP_PASSWORD and NOTIFIER_SMTP_PASSWORD_FILE are both set: set one"
            )
        if self.retry_initial_delay > self.retry_max_delay:
            raise ValueError("NOTIFIER_RETRY_INITIAL_DELAY exceeds NOTIFIER_RETRY_MAX_DELAY")
        if self.max_request_bytes < attachments_in_base64(self.max_attachment_bytes):
            raise ValueError(
                f"NOTIFIER_MAX_REQUEST_BYTES ({self.max_request_bytes}) cannot hold "
                f"NOTIFIER_MAX_ATTACHMENT_BYTES ({self.max_attachment_bytes}) in base64: raise "
                f"it to at least {attachments_in_base64(self.max_attachment_bytes)}, or lower "
                "NOTIFIER_MAX_ATTACHMENT_BYTES"
            )
        return self

    @property
    def database_kind(self) -> Literal["sqlite", "postgresql"]:
        """Which store ``database_url`` names."""
        if self.database_url.startswith(SQLITE_PREFIX):
            return "sqlite"
        if re.match(r"postgres(ql)?://", self.database_url):
            return "postgresql"
        raise ConfigError(
            f"NOTIFIER_DATABASE_URL must start with {SQLITE_PREFIX!r} (SQLite) or "
            "'postgresql://' or 'postgres://' (PostgreSQL)"
        )

    @property
    def sqlite_path(self) -> Path:
        """The database file named by ``database_url``."""
        if self.database_kind != "sqlite":
            raise ConfigError("NOTIFIER_DATABASE_URL names PostgreSQL, not a SQLite file")
        return Path(self.database_url.removeprefix(SQLITE_PREFIX))

    @property
    def sender(self) -> str:
        """The default From address."""
        if self.mail_from:
            return self.mail_from
        if self.dev:
            return DEV_MAIL_FROM
        raise ConfigError("NOTIFIER_MAIL_FROM is not set: set it to the default sender address")

    def smtp_secret(self) -> str | None:
        """The SMTP password, from ``NOTIFIER_SMTP_PASSWORD`` or read from its file."""
        if self.smtp_password is not None:
            return self.smtp_password.get_secret_value()
        if self.smtp_password_file is None:
            return None
        try:
            text = self.smtp_password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeError) as exc:
            raise ConfigError(
                f"NOTIFIER_SMTP_PASSWORD_FILE: cannot read {self.smtp_password_file}: {exc}"
            ) from None
        return text.removesuffix("\n").removesuffix("\r")

    def for_development(self) -> Settings:
        """These settings with delivery pointed at the embedded capture server."""
        development = self.model_copy(
            update={
                "smtp_host": DEV_SMTP_HOST,
                "smtp_port": self.dev_smtp_port,
                "smtp_tls": "none",
                "smtp_username": None,
                "smtp_password": None,
                "smtp_password_file": None,
                # Callers' test suites send to ``.test``, ``localhost`` and the like.
                "allow_special_use_domains": True,
            }
        )
        development._dev = True
        return development

    def check_startable(self) -> None:
        """Fail fast, naming the variable, on what cannot run in production."""
        if not self.smtp_host:
            raise ConfigError(
                "NOTIFIER_SMTP_HOST is not set: set it to your SMTP relay, "
                "or run `notifier serve --dev` to use the embedded capture server"
            )
        _ = self.sender
        _ = self.database_kind
        if not self.has_keys and not self.auth_disabled and not self.dev:
            raise ConfigError(
                "no API keys: set NOTIFIER_API_KEYS=key1,key2 or NOTIFIER_API_KEYS_FILE "
                "(callers send `Authorization: Bearer <key>`), or "
                "NOTIFIER_AUTH_DISABLED=true to run without authentication on purpose"
            )

    @property
    def idempotency_window(self) -> float:
        """How long an Idempotency-Key is kept: the message lifetime plus a day."""
        return self.message_lifetime + 24 * 3600.0

    @property
    def has_keys(self) -> bool:
        return bool(self.api_keys) or self.api_keys_file is not None

    @property
    def auth_required(self) -> bool:
        return self.has_keys and not self.auth_disabled

    def masked(self) -> dict[str, object]:
        """Effective settings for display, secrets replaced by asterisks."""
        shown: dict[str, object] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = "********"
            elif isinstance(value, list) and value and isinstance(value[0], SecretStr):
                value = [f"******** ({len(value)} keys)"]
            elif name == "database_url":
                value = redacted_url(str(value))
            shown[f"NOTIFIER_{name.upper()}"] = value
        return shown


def attachments_in_base64(size: int) -> int:
    """Request bytes that ``size`` bytes of attachments take in base64, with 64 KiB to
    spare for the rest of the request (none when attachments are off)."""
    return -(-size // 3) * 4 + 64 * 1024 if size else 0


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value
