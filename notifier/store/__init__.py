"""Durable storage of notifications: the Store protocol and its backends."""

from notifier.store.base import Store
from notifier.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store"]
