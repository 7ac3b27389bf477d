"""A throwaway PostgreSQL server for the tests, and fresh databases on it.

:class:`PostgresServer` runs ``initdb`` into a temporary directory and starts the server
with ``pg_ctl``: listening on 127.0.0.1 only, on a free port, its unix socket inside the
temporary directory, with the durability settings a production server has (``fsync``,
``synchronous_commit``, ``full_page_writes`` on). PostgreSQL refuses to run as root, so
as root the directory belongs to the ``postgres`` user and the programs run as it,
through ``runuser``. :meth:`~PostgresServer.stop` stops the server and removes the
directory; should the test process never get to it, an ``atexit`` hook does, and should
the process die without running even that (SIGTERM, SIGKILL), a guard process does: it
waits, in a session of its own, for the end of a pipe only the test process holds.

:class:`ExistingServer` stands for a server someone else runs (``NOTIFIER_TEST_POSTGRES_URL``).
Either way :func:`fresh_database` makes an empty database and drops it afterwards.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

#: The superuser ``initdb`` creates; the throwaway server trusts it on 127.0.0.1.
SUPERUSER = "postgres"
#: The user the server runs as when the tests run as root.
SERVICE_USER = "postgres"
#: Seconds ``pg_ctl`` waits for the server to start or stop.
PG_CTL_WAIT = 60
#: Seconds a connection attempt may take.
CONNECT_TIMEOUT = 10
#: What the throwaway server is started with, besides its port.
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "max_connections": "200",
    "logging_collector": "off",
}


class PostgresUnavailable(Exception):
    """PostgreSQL's server programs, or a user to run them as, are not on this machine."""


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=30
        )
        if result.returncode == 0:
            candidates.append(result.stdout.strip())
    # Debian puts the server programs in a versioned directory pg_config may not name.
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    for candidate in candidates:
        bindir = Path(candidate)
        if all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    where = ", ".join(candidates) or "no pg_config on PATH and no /usr/lib/postgresql/*/bin"
    raise PostgresUnavailable(f"no initdb, pg_ctl and postgres found (looked in: {where})")


def _version(bindir: str) -> tuple[int, ...]:
    name = Path(bindir).parent.name
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_database(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name``; user, password and options kept."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


class ExistingServer:
    """A server somebody else runs; ``admin_url`` may ``CREATE DATABASE``."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url

    def url(self, dbname: str = "postgres") -> str:
        return with_database(self.admin_url, dbname)

    def check(self) -> None:
        """Connect once, so that a wrong URL fails with a clear message."""
        try:
            with psycopg.connect(self.admin_url, connect_timeout=CONNECT_TIMEOUT):
                pass
        except psycopg.Error as exc:
            raise RuntimeError(f"cannot connect to NOTIFIER_TEST_POSTGRES_URL: {exc}") from exc


class PostgresServer:
    """A PostgreSQL server of its own in a temporary directory; see the module docstring."""

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir if bindir is not None else find_bindir()
        self._as_user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._as_user = pwd.getpwnam(SERVICE_USER)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root and there is no {SERVICE_USER!r} user to run the server as"
                ) from None
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root and runuser is not installed")
        self.directory: Path | None = None
        self.port = 0
        self.started_in = 0.0  # seconds initdb and the first start took
        self._guard: subprocess.Popen[bytes] | None = None

    # Paths inside the temporary directory.

    @property
    def data(self) -> Path:
        return self._dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self._dir / "socket"

    @property
    def log(self) -> Path:
        return self._dir / "postgres.log"

    @property
    def _dir(self) -> Path:
        assert self.directory is not None, "the server is not started"
        return self.directory

    # URLs.

    @property
    def admin_url(self) -> str:
        """The superuser on the ``postgres`` database: CREATE and DROP DATABASE work here."""
        return self.url("postgres")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    # Life cycle.

    def start(self) -> None:
        """``initdb`` and start; a port taken meanwhile by somebody else is tried again."""
        assert self.directory is None, "already started"
        began = time.monotonic()
        self.directory = Path(tempfile.mkdtemp(prefix="notifier-postgres-"))
        atexit.register(self.stop)
        try:
            self._start_guard()
            self.socket_dir.mkdir(mode=0o700)
            self._give_away(self._dir)
            self._give_away(self.socket_dir)
            self._initdb()
            for attempt in range(5):
                self.port = free_port()
                self._configure()
                started = self._pg_ctl("start", "-l", str(self.log))
                if started.returncode == 0:
                    break
                if attempt == 4 or "could not bind" not in self._log_tail():
                    raise RuntimeError(self._failure("pg_ctl start", started))
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m mode``: ``smart``, ``fast``, or ``immediate`` (a crash,
        recovered from the WAL at start); same port, same data."""
        restarted = self._pg_ctl("restart", "-m", mode, "-l", str(self.log))
        if restarted.returncode != 0:
            raise RuntimeError(self._failure(f"pg_ctl restart -m {mode}", restarted))

    def stop(self) -> None:
        """Stop the server (fast, then immediate, then SIGKILL to its postmaster) and remove
        the directory. Does nothing if there is nothing to do."""
        if self.directory is None:
            return
        try:
            if (self.data / "postmaster.pid").exists():
                for mode in ("fast", "immediate"):
                    if self._pg_ctl("stop", "-m", mode).returncode == 0:
                        break
                self._kill_postmaster()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
            atexit.unregister(self.stop)
            self._release_guard()

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Helpers.

    def _start_guard(self) -> None:
        """This file run as ``guard``: see :func:`guard`."""
        self._guard = subprocess.Popen(
            [sys.executable, "-P", __file__, "guard", str(self.bindir), str(self._dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self._dir,
            # Out of the test process's group: a Ctrl-C or a kill of the group spares it.
            start_new_session=True,
        )

    def _release_guard(self) -> None:
        """The server is gone: the guard sees the pipe close, finds nothing to do, exits."""
        if self._guard is None:
            return
        assert self._guard.stdin is not None
        self._guard.stdin.close()
        self._guard.wait(timeout=PG_CTL_WAIT)
        self._guard = None

    def _initdb(self) -> None:
        result = self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            # Only initdb's own files go unsynced; the server syncs as in production.
            "--no-sync",
            "--no-instructions",
        )
        if result.returncode != 0:
            raise RuntimeError(self._failure("initdb", result))
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\ninclude 'notifier-tests.conf'\n")

    def _configure(self) -> None:
        settings = {
            **SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
        }
        quoted = {name: value.replace("'", "''") for name, value in settings.items()}
        lines = [f"{name} = '{value}'" for name, value in quoted.items()]
        conf = self.data / "notifier-tests.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._give_away(conf)

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run(
            "pg_ctl", args[0], "--pgdata", str(self.data), "-w", "-t", str(PG_CTL_WAIT), *args[1:]
        )

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / program), *args]
        if self._as_user is not None:
            command = ["runuser", "-u", self._as_user.pw_name, "--", *command]
        # No PG* variables of the caller's (PGDATA, PGPORT...) reach the server.
        env = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
        env["LC_ALL"] = "C"
        return subprocess.run(
            command,
            cwd=self._dir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=PG_CTL_WAIT + 30,
        )

    def _give_away(self, path: Path) -> None:
        if self._as_user is not None:
            os.chown(path, self._as_user.pw_uid, self._as_user.pw_gid)

    def _kill_postmaster(self) -> None:
        """SIGKILL the postmaster this object started, if ``pg_ctl`` could not stop it."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        give_up = time.monotonic() + 10
        while time.monotonic() < give_up:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _failure(self, what: str, result: subprocess.CompletedProcess[str]) -> str:
        return (
            f"{what} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
            f"server log:\n{self._log_tail()}"
        )


def create_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(admin_url: str, name: str) -> None:
    """Drop ``name``, ending whatever connections to it are left first."""
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as admin:
        # Nobody new may connect, then everybody still connected goes.
        admin.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name))
        )
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        force = sql.SQL(" WITH (FORCE)") if admin.info.server_version >= 130000 else sql.SQL("")
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), force))


@contextmanager
def fresh_database(server: PostgresServer | ExistingServer) -> Iterator[str]:
    """An empty database of its own on ``server``; its URL. Dropped on the way out."""
    name = f"notifier_test_{uuid.uuid4().hex[:16]}"
    create_database(server.admin_url, name)
    try:
        yield server.url(name)
    finally:
        drop_database(server.admin_url, name)


def guard(bindir: str, directory: str) -> None:
    """Wait for standard input to end, which it does once the test process has stopped the
    server or has died; in the second case the directory is still there: stop the server
    and remove it."""
    sys.stdin.buffer.read()
    if Path(directory).exists():
        server = PostgresServer(Path(bindir))
        server.directory = Path(directory)
        server.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["guard"]:
        guard(*sys.argv[2:])
