"""API keys: who may call, which senders each may use, and how fast.

Keys are held only as SHA-256 digests. ``NOTIFIER_API_KEYS`` lists keys, plain or as
``sha256:<hex>``; ``NOTIFIER_API_KEYS_FILE`` (TOML or JSON) adds a name, allowed
senders and rate limits per key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from notifier.errors import ConfigError
from notifier.settings import Settings

DIGEST_PREFIX = "sha256:"


@dataclass(frozen=True, slots=True)
class ApiKey:
    digest: bytes
    name: str
    #: Addresses or ``@domain``s this key may send from; empty means the global rules.
    senders: tuple[str, ...] = ()
    requests_per_minute: int | None = None
    recipients_per_minute: int | None = None

    @property
    def owner(self) -> str:
        """Stable id of the key, stored with each notification it creates."""
        return self.digest.hex()[:16]

    def may_send_as(self, address: str) -> bool | None:
        """Whether this key may use ``address`` as From; ``None`` when it sets no rule."""
        if not self.senders:
            return None
        return sender_allowed(address, self.senders)


def sender_allowed(address: str, allowed: tuple[str, ...] | list[str]) -> bool:
    """``address`` is listed, or its domain is (as ``example.com`` or ``@example.com``)."""
    wanted = address.lower()
    domain = wanted.rpartition("@")[2]
    rules = {rule.lower() for rule in allowed}
    return wanted in rules or domain in rules or f"@{domain}" in rules


class KeyRing:
    """The configured keys; matching is by digest, in constant time per key."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def match(self, presented: str) -> ApiKey | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        keys = [
            ApiKey(
                digest=parse_key(secret.get_secret_value(), "NOTIFIER_API_KEYS"), name=f"key-{i}"
            )
            for i, secret in enumerate(settings.api_keys, start=1)
        ]
        if settings.api_keys_file is not None:
            keys += load_key_file(settings.api_keys_file)
        return cls(keys)


def parse_key(value: str, source: str) -> bytes:
    """The digest of a key given plain or as ``sha256:<64 hex digits>``."""
    if not value.startswith(DIGEST_PREFIX):
        return hashlib.sha256(value.encode()).digest()
    hexdigest = value.removeprefix(DIGEST_PREFIX)
    try:
        digest = bytes.fromhex(hexdigest)
    except ValueError:
        digest = b""
    if len(digest) != hashlib.sha256().digest_size:
        raise ConfigError(f"{source}: a `sha256:` key must be followed by 64 hex digits")
    return digest


class _KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    key: str = Field(min_length=1)
    senders: list[str] = Field(default_factory=list)
    requests_per_minute: int | None = Field(default=None, ge=1)
    recipients_per_minute: int | None = Field(default=None, ge=1)


class _KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[_KeyEntry]


def load_key_file(path: Path) -> list[ApiKey]:
    """Keys from a TOML (``[[keys]]``) or JSON (``{"keys": [...]}``) file."""
    source = f"NOTIFIER_API_KEYS_FILE ({path})"
    try:
        raw = path.read_bytes()
        data = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
        parsed = _KeyFile.model_validate(data)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        errors = exc.errors() if isinstance(exc, ValidationError) else None
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors or [])
        raise ConfigError(f"{source}: invalid: {where or exc}") from None
    names = [entry.name for entry in parsed.keys]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: key names must be unique")
    return [
        ApiKey(
            digest=parse_key(entry.key, f"{source} key {entry.name!r}"),
            name=entry.name,
            senders=tuple(entry.senders),
            requests_per_minute=entry.requests_per_minute,
            recipients_per_minute=entry.recipients_per_minute,
        )
        for entry in parsed.keys
    ]
