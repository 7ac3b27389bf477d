"""The exceptions notifier raises; every one derives from ``NotifierError``."""

from __future__ import annotations


class NotifierError(Exception):
    """Base of every error notifier raises on purpose."""


class ConfigError(NotifierError):
    """Settings that cannot run; the message names the variable to fix."""


class StoreError(NotifierError):
    """The store could not do what was asked (unreachable, locked, full)."""


class StoreLockedError(StoreError):
    """Another process already serves this database file."""


class DeliveryError(NotifierError):
    """An SMTP transaction failed; ``code`` is the reply code when there was one."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        relay: bool = False,
        unknown_outcome: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        #: The fault is the relay's (down, auth, TLS), not this message's.
        self.relay = relay
        #: The message may have reached the relay (connection lost during DATA).
        self.unknown_outcome = unknown_outcome


class TransientDeliveryError(DeliveryError):
    """Worth retrying later: 4xx replies, dropped connections, timeouts."""


class PermanentDeliveryError(DeliveryError):
    """Retrying cannot help: 5xx replies, a message the relay refuses."""
