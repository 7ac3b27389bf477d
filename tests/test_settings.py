"""Settings: read from NOTIFIER_* variables, fail fast with a message naming the variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from notifier.errors import ConfigError
from notifier.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("NOTIFIER_"):
            monkeypatch.delenv(name)


def test_defaults_match_the_documented_ones() -> None:
    settings = Settings()

    assert settings.smtp_port == 587
    assert settings.smtp_tls == "starttls"
    assert settings.smtp_validate_certs is True
    assert settings.database_url == "sqlite:///./data/notifier.db"
    assert str(settings.ack_file) == "data/acknowledgments.jsonl"


def test_environment_variables_are_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFIER_SMTP_HOST", "relay.example.com")
    monkeypatch.setenv("NOTIFIER_SMTP_PORT", "2525")
    monkeypatch.setenv("NOTIFIER_RETRY_INITIAL_DELAY", "0.5")
    monkeypatch.setenv("NOTIFIER_API_KEYS", "one, two,,three")
    monkeypatch.setenv("NOTIFIER_ALLOWED_SENDERS", "a@example.com,@example.org")

    settings = Settings()

    assert settings.smtp_host == "relay.example.com"
    assert settings.smtp_port == 2525
    assert settings.retry_initial_delay == 0.5
    assert [k.get_secret_value() for k in settings.api_keys] == ["one", "two", "three"]
    assert settings.allowed_senders == ["a@example.com", "@example.org"]


def test_missing_smtp_host_names_the_variable() -> None:
    settings = Settings(mail_from="n@example.com", auth_disabled=True)

    with pytest.raises(ConfigError, match="NOTIFIER_SMTP_HOST"):
        settings.check_startable()


def test_missing_api_keys_says_how_to_set_them_or_run_open() -> None:
    settings = Settings(smtp_host="relay.example.com", mail_from="n@example.com")

    with pytest.raises(ConfigError, match="NOTIFIER_API_KEYS") as raised:
        settings.check_startable()

    assert "NOTIFIER_AUTH_DISABLED=true" in str(raised.value)


def test_missing_sender_names_the_variable() -> None:
    settings = Settings(smtp_host="relay.example.com", auth_disabled=True)

    with pytest.raises(ConfigError, match="NOTIFIER_MAIL_FROM"):
        settings.check_startable()


def test_development_mode_points_at_the_capture_server_and_needs_no_keys() -> None:
    settings = Settings(smtp_username="u", smtp_password="p").for_development()

    settings.check_startable()
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_tls) == (
        "127.0.0.1",
        1025,
        "none",
    )
    assert settings.smtp_username is None
    assert settings.auth_required is False


def test_special_use_domains_are_refused_unless_the_setting_or_development_mode_allows_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().allow_special_use_domains is False
    assert Settings().for_development().allow_special_use_domains is True

    monkeypatch.setenv("NOTIFIER_ALLOW_SPECIAL_USE_DOMAINS", "true")

    assert Settings().allow_special_use_domains is True


def test_credentials_over_plaintext_are_refused_without_echoing_them() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(smtp_username="user", smtp_password="hunter2", smtp_tls="none")

    assert "never sent over an unencrypted connection" in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_invalid_value_error_does_not_echo_the_input() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(smtp_port="secret-looking-value")

    assert "secret-looking-value" not in str(raised.value)


def test_masked_settings_hide_every_secret() -> None:
    settings = Settings(smtp_password="hunter2", api_keys=["key-one", "key-two"])

    shown = str(settings.masked())

    assert "hunter2" not in shown
    assert "key-one" not in shown
    assert "NOTIFIER_SMTP_PASSWORD" in shown


def test_only_sqlite_urls_are_accepted_for_now() -> None:
    settings = Settings(database_url="postgresql://db/notifier")

    with pytest.raises(ConfigError, match="NOTIFIER_DATABASE_URL"):
        _ = settings.sqlite_path


def test_development_mode_cannot_be_switched_on_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOTIFIER_DEV", "true")
    settings = Settings(smtp_host="relay.example.com", mail_from="n@example.com")

    assert settings.dev is False
    with pytest.raises(ConfigError, match="NOTIFIER_API_KEYS"):
        settings.check_startable()


def setting_variables() -> set[str]:
    return {"NOTIFIER_" + name.upper() for name in Settings.model_fields}


def test_the_example_environment_file_lists_every_setting_and_nothing_else() -> None:
    example = Path(__file__).parent.parent / "config" / "notifier.env.example"
    named = set(re.findall(r"^#? ?(NOTIFIER_[A-Z0-9_]+)=", example.read_text(), re.MULTILINE))

    assert named == setting_variables()
