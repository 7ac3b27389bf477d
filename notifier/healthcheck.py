"""``notifier health``: is the ``serve`` process alive, on the port it was started with.

A container's health check runs beside the service with nothing but the image: it
cannot be told the port when a deploy passes ``serve --port 9000`` or an env file. So
it reads the serving process's own command line, environment and working directory
from ``/proc`` and finds the address as ``serve`` found it: ``--host``/``--port``,
then ``NOTIFIER_HOST``/``NOTIFIER_PORT`` from its environment, then its
``--env-file``, then the defaults.
"""

from __future__ import annotations

import argparse
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from notifier.settings import Settings

#: The process a container runs its entry point as.
CONTAINER_MAIN_PID = 1
#: Addresses that mean "every interface": the check goes to loopback instead.
_ANY = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - only compared


@dataclass(frozen=True)
class Served:
    """Where a ``serve`` process listens, as given to it."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = _ANY.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


def served_address(argv: Sequence[str], environ: Mapping[str, str], cwd: Path) -> Served:
    """The address ``notifier serve`` binds, given its arguments, environment and folder.

    The order is the one ``Settings`` applies: arguments, then the environment, then
    the ``--env-file``, then the defaults. ``ValueError`` when ``argv`` is not ``serve``.
    """
    if "serve" not in argv:
        raise ValueError(f"not a `notifier serve` process: {' '.join(argv) or '(no command)'}")
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host")
    parser.add_argument("--port")
    parser.add_argument("--env-file", type=Path)
    args, _ = parser.parse_known_args(list(argv[argv.index("serve") + 1 :]))
    from_file: Mapping[str, str | None] = {}
    if args.env_file is not None:
        path = args.env_file if args.env_file.is_absolute() else cwd / args.env_file
        from_file = dotenv_values(path)
    fields = Settings.model_fields

    def value(name: str, given: str | None) -> str:
        variable = f"NOTIFIER_{name.upper()}"
        found = given or environ.get(variable) or from_file.get(variable)
        return found if found is not None else str(fields[name].default)

    return Served(value("host", args.host), int(value("port", args.port)))


def process_address(pid: int, proc: Path = Path("/proc")) -> Served:
    """:func:`served_address` of the running process ``pid``, read from ``/proc``."""
    root = proc / str(pid)
    argv = [a.decode() for a in (root / "cmdline").read_bytes().split(b"\0") if a]
    environ = {}
    for entry in (root / "environ").read_bytes().split(b"\0"):
        name, sep, value = entry.decode(errors="replace").partition("=")
        if sep:
            environ[name] = value
    return served_address(argv, environ, (root / "cwd").resolve())


def check(url: str, timeout: float) -> str | None:
    """``None`` when ``url``'s ``/healthz`` answers ``200``, else why not."""
    target = f"{url.rstrip('/')}/healthz"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:  # noqa: S310 - http only
            status: int = response.status
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")[:500]
        return f"{target} answered {exc.code}: {body}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{target}: {getattr(exc, 'reason', exc)}"
    return None if status == 200 else f"{target} answered {status}"
