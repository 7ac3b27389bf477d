"""``Idempotency-Key``: one notification per key and caller, however often it is sent."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable

from notifier.api.problem import ApiError
from notifier.api.responses import RawJSON
from notifier.domain import IdempotencyRecord
from notifier.store import Store

HEADER = "Idempotency-Key"
_VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")
RETRY_AFTER_IN_PROGRESS = "1"


def checked_key(value: str | None) -> str | None:
    """The header's key, or ``400`` if it is not 1 to 255 printable ASCII characters."""
    if value is None:
        return None
    if not _VALID_KEY.fullmatch(value):
        raise ApiError(
            400, "invalid_idempotency_key", f"{HEADER} must be 1 to 255 printable characters"
        )
    return value


def request_hash(canonical_body: str) -> str:
    return hashlib.sha256(canonical_body.encode()).hexdigest()


class IdempotencyGuard:
    """Keys whose first request is still being stored, in this process.

    The store's unique (owner, key) constraint is the final word; this set turns a
    concurrent duplicate into a quick ``409`` instead of a wait.
    """

    def __init__(self) -> None:
        self._in_progress: set[tuple[str, str]] = set()

    def claim(self, owner: str, key: str) -> None:
        if (owner, key) in self._in_progress:
            raise ApiError(
                409,
                "idempotency_key_in_use",
                f"a request with this {HEADER} is still being stored; retry shortly",
                {"Retry-After": RETRY_AFTER_IN_PROGRESS},
            )
        self._in_progress.add((owner, key))

    def release(self, owner: str, key: str) -> None:
        self._in_progress.discard((owner, key))


async def once_per_key(
    guard: IdempotencyGuard,
    store: Store,
    key: tuple[str, str, str],
    replay: Callable[[IdempotencyRecord, str], RawJSON],
    admit: Callable[[tuple[str, str, str]], Awaitable[RawJSON]],
) -> RawJSON:
    """The answer to a request with ``key`` (owner, key, request hash): the original
    one again if the key was used, else ``admit``'s, which stores the key with what it
    stores. The key is looked up before the request is checked again, so a replay
    answers what was stored then even if the request would be refused now."""
    owner, name, digest = key
    guard.claim(owner, name)
    try:
        existing = await store.find_idempotency(owner, name)
        if existing is not None:
            return replay(existing, digest)
        return await admit(key)
    finally:
        guard.release(owner, name)
