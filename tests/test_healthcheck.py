"""``notifier health``: a container's health check finds the port ``serve`` was given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from notifier.healthcheck import Served, served_address
from tests.service import ServiceProcess, spawn
from tests.smtp_server import free_port

SERVE = ["/opt/venv/bin/notifier", "serve"]


def test_arguments_win_over_the_environment_and_the_env_file(tmp_path: Path) -> None:
    (tmp_path / "serve.env").write_text("NOTIFIER_PORT=7003\nNOTIFIER_HOST=10.0.0.3\n")
    with_file = [*SERVE, "--env-file", "serve.env"]
    environment = {"NOTIFIER_PORT": "7002"}

    assert served_address([*with_file, "--port", "7001"], environment, tmp_path).port == 7001
    assert served_address([*with_file, "--port=7001"], environment, tmp_path).port == 7001
    assert served_address(with_file, environment, tmp_path) == Served("10.0.0.3", 7002)
    assert served_address(with_file, {}, tmp_path) == Served("10.0.0.3", 7003)
    assert served_address(SERVE, {}, tmp_path) == Served("127.0.0.1", 8000)


def test_a_wrapped_serve_is_found_behind_an_init_process(tmp_path: Path) -> None:
    argv = ["/sbin/docker-init", "--", *SERVE, "--dev", "--port", "9000"]

    assert served_address(argv, {}, tmp_path).port == 9000


def test_any_interface_is_checked_on_loopback() -> None:
    assert Served("0.0.0.0", 80).url == "http://127.0.0.1:80"
    assert Served("::", 80).url == "http://[::1]:80"
    assert Served("192.0.2.1", 80).url == "http://192.0.2.1:80"


def test_a_process_that_is_not_serve_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a `notifier serve` process"):
        served_address(["/bin/sh", "-c", "sleep 1"], {}, tmp_path)


def health(*arguments: str) -> subprocess.CompletedProcess[str]:
    """The command as a container runs it, with a NOTIFIER_PORT of its own that is wrong."""
    command = [sys.executable, "-m", "notifier", "health", *arguments]
    env = {**os.environ, "NOTIFIER_PORT": str(free_port())}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("given_by", ["--port", "--env-file"])
def test_health_follows_the_port_the_process_was_started_with(
    given_by: str,
    service_env: dict[str, str],
    tmp_path: Path,
    processes: list[ServiceProcess],
) -> None:
    port = free_port()
    env = dict(service_env)
    if given_by == "--port":
        env["NOTIFIER_PORT"] = str(free_port())  # which --port overrides
        arguments: tuple[str, ...] = ("--port", str(port))
    else:
        (tmp_path / "serve.env").write_text(f"NOTIFIER_PORT={port}\n")
        arguments = ("--env-file", "serve.env")
    service = spawn(processes, env, tmp_path, arguments=arguments)
    assert service.process is not None
    assert service.url.endswith(f":{port}")

    alive = health("--pid", str(service.process.pid))
    service.kill()
    dead = health("--pid", str(service.process.pid))

    assert (alive.returncode, alive.stdout) == (0, "")
    assert dead.returncode == 1
    assert "cannot tell where process" in dead.stdout


def test_health_fails_with_status_1_when_nothing_answers() -> None:
    result = health("--url", f"http://127.0.0.1:{free_port()}")

    assert result.returncode == 1
    assert "/healthz" in result.stdout
