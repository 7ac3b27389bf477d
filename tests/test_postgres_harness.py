"""The suite's PostgreSQL (tests/postgres.py and the fixtures in conftest.py): a fresh
database for each test, a server as durable as production, listening on loopback only,
and one that restarts under a test's feet and is there again afterwards."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.postgres import ExistingServer, PostgresServer, fresh_database

Server = PostgresServer | ExistingServer


def show(url: str, setting: str) -> str:
    with psycopg.connect(url) as connection:
        row = connection.execute(f"SHOW {setting}").fetchone()
    assert row is not None
    value: str = row[0]
    return value


def tables(url: str) -> list[str]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    return [row[0] for row in rows]


def databases(server: Server) -> set[str]:
    with psycopg.connect(server.admin_url) as connection:
        rows = connection.execute("SELECT datname FROM pg_database").fetchall()
    return {row[0] for row in rows}


def throwaway(server: Server) -> PostgresServer:
    if not isinstance(server, PostgresServer):
        pytest.skip("NOTIFIER_TEST_POSTGRES_URL is set: the server is not the suite's own")
    return server


def test_a_test_gets_an_empty_database_of_its_own(postgres_url: str) -> None:
    assert tables(postgres_url) == []
    assert show(postgres_url, "server_encoding") == "UTF8"


def test_each_fresh_database_is_empty_and_gone_afterwards(postgres_server: Server) -> None:
    with fresh_database(postgres_server) as first:
        with psycopg.connect(first) as connection:
            connection.execute("CREATE TABLE marker (id integer)")
        with fresh_database(postgres_server) as second:
            assert second != first
            assert tables(first) == ["marker"]
            assert tables(second) == []

    names = databases(postgres_server)
    assert first.rpartition("/")[2] not in names
    assert second.rpartition("/")[2] not in names


def test_a_database_is_dropped_even_with_a_connection_left_open(postgres_server: Server) -> None:
    with fresh_database(postgres_server) as url:
        left_open = psycopg.connect(url, autocommit=True)
    try:
        with pytest.raises(psycopg.OperationalError):
            left_open.execute("SELECT 1")
    finally:
        left_open.close()

    assert url.rpartition("/")[2] not in databases(postgres_server)


@pytest.mark.parametrize("setting", ["fsync", "synchronous_commit", "full_page_writes"])
def test_the_server_is_as_durable_as_production(postgres_url: str, setting: str) -> None:
    assert show(postgres_url, setting) == "on", f"{setting} is off: durability tests prove nothing"


def test_the_throwaway_server_listens_on_loopback_only(
    postgres_server: Server, postgres_url: str
) -> None:
    server = throwaway(postgres_server)

    assert show(postgres_url, "listen_addresses") == "127.0.0.1"
    assert show(postgres_url, "port") == str(server.port)
    socket_dir = Path(show(postgres_url, "unix_socket_directories"))
    assert server.directory is not None
    assert socket_dir.is_relative_to(server.directory)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_the_server_restarts_and_keeps_what_was_committed(
    postgres_server: Server, postgres_url: str, mode: str
) -> None:
    server = throwaway(postgres_server)
    before = psycopg.connect(postgres_url, autocommit=True)
    try:
        before.execute("CREATE TABLE kept (id integer)")
        before.execute("INSERT INTO kept VALUES (1)")

        server.restart(mode=mode)

        with pytest.raises(psycopg.OperationalError):
            before.execute("SELECT 1")
    finally:
        before.close()
    with psycopg.connect(postgres_url) as after:
        rows = after.execute("SELECT id FROM kept").fetchall()

    assert rows == [(1,)]
