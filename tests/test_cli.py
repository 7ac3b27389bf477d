"""The command line, called in-process: configuration errors and check-config."""

from __future__ import annotations

import os

import pytest

from notifier.cli import main


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("NOTIFIER_"):
            monkeypatch.delenv(name)


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


def test_url_must_be_http(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["status", "some-id", "--url", "file:///etc/passwd"])

    assert code == 2
    assert "http://" in capsys.readouterr().err
