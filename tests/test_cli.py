"""The command line, called in-process: configuration errors and check-config."""

from __future__ import annotations

import gc
import logging
import os
import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from notifier.cli import main
from tests.smtp_server import free_port
from tests.tls import PASSWORD, USERNAME, Authority, TLSRelay


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("NOTIFIER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # the default ./data lands in the test's own folder


@pytest.fixture(autouse=True)
def restored_logging() -> Iterator[None]:
    """``serve`` points the root logger at this test's captured stderr: undo it after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers = handlers
    root.setLevel(level)


def production(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    """The least a production configuration needs, plus ``variables``."""
    values = {
        "NOTIFIER_SMTP_HOST": "relay.example.com",
        "NOTIFIER_MAIL_FROM": "n@example.com",
        "NOTIFIER_API_KEYS": "very-secret-key",
    }
    values.update(variables)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_serve_without_smtp_host_exits_naming_the_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["serve"])

    assert code == 2
    assert "NOTIFIER_SMTP_HOST" in capsys.readouterr().err


def test_invalid_setting_exits_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NOTIFIER_SMTP_TLS", "sometimes")

    code = main(["check-config"])

    assert code == 2
    assert "NOTIFIER_SMTP_TLS" in capsys.readouterr().err


def test_check_config_shows_settings_with_secrets_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NOTIFIER_SMTP_HOST", "relay.example.com")
    monkeypatch.setenv("NOTIFIER_SMTP_USERNAME", "mailer")
    monkeypatch.setenv("NOTIFIER_SMTP_PASSWORD", "hunter2")
    monkeypatch.setenv("NOTIFIER_MAIL_FROM", "n@example.com")
    monkeypatch.setenv("NOTIFIER_API_KEYS", "very-secret-key")

    code = main(["check-config"])

    out, err = capsys.readouterr()
    assert code == 0
    assert "relay.example.com" in out
    assert "hunter2" not in out + err
    assert "very-secret-key" not in out + err
    assert "configuration OK" in err


def test_check_config_reports_what_would_stop_serve(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check-config"])

    assert code == 2
    assert "NOTIFIER_SMTP_HOST" in capsys.readouterr().err


def test_sender_at_a_special_use_domain_needs_the_setting_or_dev(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    production(monkeypatch, NOTIFIER_MAIL_FROM="notifier@corp.local")

    refused = main(["check-config"])
    refused_err = capsys.readouterr().err
    in_development = main(["check-config", "--dev"])
    capsys.readouterr()
    monkeypatch.setenv("NOTIFIER_ALLOW_SPECIAL_USE_DOMAINS", "true")
    allowed = main(["check-config"])

    assert refused == 2
    assert "NOTIFIER_MAIL_FROM" in refused_err
    assert "NOTIFIER_ALLOW_SPECIAL_USE_DOMAINS=true" in refused_err
    assert in_development == 0
    assert allowed == 0
    assert "configuration OK" in capsys.readouterr().err


def test_url_must_be_http(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["status", "some-id", "--url", "file:///etc/passwd"])

    assert code == 2
    assert "http://" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"NOTIFIER_API_KEYS_FILE": "missing-keys.toml"}, "NOTIFIER_API_KEYS_FILE"),
        ({"NOTIFIER_API_KEYS": "sha256:not-hex"}, "64 hex digits"),
        ({"NOTIFIER_MAIL_FROM": "not an address"}, "NOTIFIER_MAIL_FROM"),
        ({"NOTIFIER_DATABASE_URL": "sqlite:///a-file/notifier.db"}, "NOTIFIER_DATABASE_URL"),
        ({"NOTIFIER_ACK_FILE": "."}, "NOTIFIER_ACK_FILE"),
        ({"NOTIFIER_SMTP_PASSWORD_FILE": "no-such-secret"}, "NOTIFIER_SMTP_PASSWORD_FILE"),
    ],
    ids=["keys file", "key digest", "sender", "database location", "ack file", "password file"],
)
def test_check_config_refuses_what_serve_would_refuse(
    variables: dict[str, str],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    (tmp_path / "a-file").write_text("a file where a directory should be")
    production(monkeypatch, **variables)

    checked = main(["check-config"])
    checked_err = capsys.readouterr().err
    assert checked == 2, "check-config approved it"  # else serve below would start serving
    served = main(["serve"])
    served_err = capsys.readouterr().err

    assert served == 2
    assert named in checked_err
    assert named in served_err


def test_a_misspelled_variable_is_named_with_the_setting_it_resembles(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    production(monkeypatch, NOTIFIER_SMPT_PORT="2525")
    env_file = tmp_path / "notifier.env"
    env_file.write_text("NOTIFIER_MAIL_FORM=n@example.com\n")

    code = main(["check-config", "--env-file", str(env_file)])
    err = capsys.readouterr().err
    monkeypatch.delenv("NOTIFIER_SMTP_HOST")
    stopped = main(["serve"])  # stops for want of a relay, but warns first
    served = capsys.readouterr().err

    assert code == 0
    assert "NOTIFIER_SMPT_PORT is not a notifier setting" in err
    assert "did you mean NOTIFIER_SMTP_PORT?" in err
    assert "did you mean NOTIFIER_MAIL_FROM?" in err
    assert stopped == 2
    assert "NOTIFIER_SMPT_PORT is not a notifier setting" in served


def test_the_smtp_password_can_come_from_a_file_and_not_with_the_variable_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text("from-a-file\n")
    production(monkeypatch, NOTIFIER_SMTP_PASSWORD_FILE=str(secret))

    alone = main(["check-config"])
    out = capsys.readouterr().out
    monkeypatch.setenv("NOTIFIER_SMTP_PASSWORD", "from-the-variable")
    both = main(["check-config"])

    assert alone == 0
    assert "from-a-file" not in out
    assert both == 2
    assert "NOTIFIER_SMTP_PASSWORD_FILE" in capsys.readouterr().err


def relay_at(monkeypatch: pytest.MonkeyPatch, port: int, ca: Authority, **variables: str) -> None:
    relay = {
        "NOTIFIER_SMTP_HOST": "127.0.0.1",
        "NOTIFIER_SMTP_PORT": str(port),
        "NOTIFIER_SMTP_USERNAME": USERNAME,
        "NOTIFIER_SMTP_PASSWORD": PASSWORD,
        "NOTIFIER_SMTP_CA_FILE": str(ca.pem),
        "NOTIFIER_SMTP_TIMEOUT": "5",
    }
    production(monkeypatch, **{**relay, **variables})


def test_check_config_connect_says_what_the_relay_session_was_like(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tls_relay: TLSRelay,
    authority: Authority,
) -> None:
    relay_at(monkeypatch, tls_relay.port, authority)

    code = main(["check-config", "--connect"])

    err = capsys.readouterr().err
    assert code == 0, err
    assert f"relay OK: 127.0.0.1:{tls_relay.port}, TLS TLSv1." in err
    assert "AUTH plain" in err
    assert tls_relay.authenticator.tries == [("PLAIN", True, USERNAME.encode())]
    assert tls_relay.handler.received == []


def test_check_config_connect_uses_the_password_file(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tls_relay: TLSRelay,
    authority: Authority,
    tmp_path: Path,
) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text(PASSWORD + "\n")
    relay_at(monkeypatch, tls_relay.port, authority)
    monkeypatch.delenv("NOTIFIER_SMTP_PASSWORD")
    monkeypatch.setenv("NOTIFIER_SMTP_PASSWORD_FILE", str(secret))

    code = main(["check-config", "--connect"])

    assert code == 0, capsys.readouterr().err


def test_check_config_connect_names_the_setting_to_fix(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tls_relay: TLSRelay,
    authority: Authority,
    rogue: Authority,
) -> None:
    outcomes = {}
    for case, variables in {
        "untrusted certificate": {"NOTIFIER_SMTP_CA_FILE": str(rogue.pem)},
        "wrong password": {"NOTIFIER_SMTP_PASSWORD": "not-the-password"},
        "nothing listening": {"NOTIFIER_SMTP_PORT": str(free_port())},
    }.items():
        relay_at(monkeypatch, tls_relay.port, authority, **variables)
        code = main(["check-config", "--connect"])
        outcomes[case] = (code, capsys.readouterr().err)

    assert {case: code for case, (code, _) in outcomes.items()} == dict.fromkeys(outcomes, 2)
    assert "NOTIFIER_SMTP_CA_FILE" in outcomes["untrusted certificate"][1]
    assert "not trusted" in outcomes["untrusted certificate"][1]
    assert "NOTIFIER_SMTP_USERNAME" in outcomes["wrong password"][1]
    assert "not-the-password" not in outcomes["wrong password"][1]
    assert "NOTIFIER_SMTP_PORT" in outcomes["nothing listening"][1]


def test_relay_checks_leave_no_socket_open(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tls_relay: TLSRelay,
    authority: Authority,
    rogue: Authority,
) -> None:
    # A TLS session closes with an exchange of its own, which a check's event loop, ended
    # right after, would never finish: the session must be closed at once instead.
    codes = []
    for variables in (
        {},
        {"NOTIFIER_SMTP_PASSWORD": "wrong"},
        {"NOTIFIER_SMTP_CA_FILE": str(rogue.pem)},
    ):
        relay_at(monkeypatch, tls_relay.port, authority, **variables)
        codes += [main(["check-config", "--connect"]) for _ in range(5)]
    capsys.readouterr()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()

    assert codes == [0] * 5 + [2] * 10
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []


def test_migrate_brings_the_schema_up_to_date_and_refuses_a_newer_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    database = tmp_path / "notifier.db"
    production(monkeypatch, NOTIFIER_DATABASE_URL=f"sqlite:///{database}")

    created = main(["migrate"])
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        connection.execute("PRAGMA user_version = 99")
    capsys.readouterr()
    refused = main(["migrate"])

    assert created == 0
    assert {"notifications", "idempotency_keys"} <= tables
    assert refused == 2
    assert "newer than this notifier" in capsys.readouterr().err
