"""Durable storage of notifications: the Store protocol and its backends."""

from notifier.settings import Settings
from notifier.store.base import PageFilter, Store
from notifier.store.sqlite import SQLiteStore


def store_for(settings: Settings) -> Store:
    """The (unopened) store ``NOTIFIER_DATABASE_URL`` names."""
    if settings.database_kind == "postgresql":
        from notifier.store.postgres import PostgresStore  # psycopg only when used

        return PostgresStore(
            settings.database_url,
            pool_size=settings.database_pool_size,
            prepared_statements=settings.database_prepared_statements,
            timeout=settings.store_busy_timeout,
        )
    return SQLiteStore(settings.sqlite_path, busy_timeout=settings.store_busy_timeout)


__all__ = ["PageFilter", "SQLiteStore", "Store", "store_for"]
