"""API keys (plain, hashed, from a file), per-key senders, scoping and rate limits."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from notifier.errors import ConfigError
from notifier.keys import KeyRing, load_key_file, parse_key
from notifier.settings import Settings
from tests.conftest import MakeSettings, notification, running_app
from tests.smtp_server import ScriptedHandler


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sha256(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


KEY_FILE = """
[[keys]]
name = "billing"
key = "{billing}"
senders = ["invoices@billing.example.com", "@receipts.example.com"]

[[keys]]
name = "slow"
key = "slow-key"
requests_per_minute = 2
recipients_per_minute = 3
"""


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(KEY_FILE.format(billing=sha256("billing-key")))
    return path


def test_plain_and_hashed_keys_match_the_same_caller() -> None:
    ring = KeyRing.from_settings(Settings(api_keys=["plain-key", sha256("hashed-key")]))

    plain, hashed = ring.match("plain-key"), ring.match("hashed-key")

    assert plain is not None
    assert hashed is not None
    assert plain.owner != hashed.owner
    assert ring.match("sha256:" + hashlib.sha256(b"hashed-key").hexdigest()) is None
    assert ring.match("other") is None


def test_malformed_hash_is_a_config_error_that_hides_the_value() -> None:
    with pytest.raises(ConfigError, match="64 hex digits") as raised:
        parse_key("sha256:not-hex-secret", "NOTIFIER_API_KEYS")

    assert "not-hex-secret" not in str(raised.value)


def test_key_file_gives_names_senders_and_limits(key_file: Path) -> None:
    billing, slow = load_key_file(key_file)

    assert billing.name == "billing"
    assert billing.may_send_as("INVOICES@billing.example.com") is True
    assert billing.may_send_as("x@receipts.example.com") is True
    assert billing.may_send_as("x@example.com") is False
    assert slow.may_send_as("x@example.com") is None
    assert (slow.requests_per_minute, slow.recipients_per_minute) == (2, 3)


def test_invalid_key_file_names_the_problem_without_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"keys": [{"name": "a", "key": "secret-value", "colour": "red"}]}')

    with pytest.raises(ConfigError, match="NOTIFIER_API_KEYS_FILE") as raised:
        load_key_file(path)

    assert "colour" in str(raised.value)
    assert "secret-value" not in str(raised.value)


async def test_per_key_senders_are_enforced_with_403(
    make_settings: MakeSettings, key_file: Path, smtp_handler: ScriptedHandler
) -> None:
    settings = make_settings(api_keys_file=key_file, auth_disabled=False)
    async with running_app(settings) as client:
        allowed = await client.post(
            "/v1/notifications",
            json=notification(**{"from": "invoices@billing.example.com"}),
            headers=bearer("billing-key"),
        )
        refused = await client.post(
            "/v1/notifications",
            json=notification(**{"from": "ceo@example.com"}),
            headers=bearer("billing-key"),
        )
        default_sender = await client.post(
            "/v1/notifications", json=notification(), headers=bearer("billing-key")
        )

    assert allowed.status_code == 202
    assert refused.status_code == 403
    assert refused.json()["code"] == "sender_not_allowed"
    # The service's default sender is not one of this key's, so it must name one.
    assert default_sender.status_code == 403


async def test_a_key_sees_only_its_own_notifications(make_settings: MakeSettings) -> None:
    settings = make_settings(api_keys=["alice", "bob"], auth_disabled=False)
    async with running_app(settings) as client:
        mine = (
            await client.post("/v1/notifications", json=notification(), headers=bearer("alice"))
        ).json()["id"]
        await client.post("/v1/notifications", json=notification(), headers=bearer("bob"))

        as_bob = await client.get(f"/v1/notifications/{mine}", headers=bearer("bob"))
        bob_cancels = await client.delete(f"/v1/notifications/{mine}", headers=bearer("bob"))
        bob_retries = await client.post(f"/v1/notifications/{mine}/retry", headers=bearer("bob"))
        alice_list = await client.get("/v1/notifications", headers=bearer("alice"))
        as_alice = await client.get(f"/v1/notifications/{mine}", headers=bearer("alice"))

    assert as_bob.status_code == bob_cancels.status_code == bob_retries.status_code == 404
    assert as_bob.json() == {"detail": f"no notification {mine}", "code": "not_found"}
    assert [item["id"] for item in alice_list.json()["items"]] == [mine]
    assert as_alice.status_code == 200


async def test_request_rate_limit_answers_429_with_retry_after(
    make_settings: MakeSettings, key_file: Path
) -> None:
    settings = make_settings(api_keys_file=key_file, auth_disabled=False)
    async with running_app(settings) as client:
        first = await client.get("/v1/notifications", headers=bearer("slow-key"))
        second = await client.get("/v1/notifications", headers=bearer("slow-key"))
        third = await client.get("/v1/notifications", headers=bearer("slow-key"))
        other_key = await client.get("/v1/notifications", headers=bearer("billing-key"))

    assert [first.status_code, second.status_code, third.status_code] == [200, 200, 429]
    assert first.headers["ratelimit-limit"] == "2"
    assert first.headers["ratelimit-remaining"] == "1"
    assert second.headers["ratelimit-remaining"] == "0"
    assert third.json()["code"] == "rate_limited"
    assert int(third.headers["retry-after"]) >= 1
    assert third.headers["ratelimit-remaining"] == "0"
    assert other_key.status_code == 200


async def test_recipient_rate_limit_is_checked_before_anything_is_stored(
    make_settings: MakeSettings, key_file: Path, smtp_handler: ScriptedHandler
) -> None:
    settings = make_settings(api_keys_file=key_file, auth_disabled=False)
    many = notification(to=["a@example.com", "b@example.com"], cc=["c@example.com"])
    async with running_app(settings) as client:
        first = await client.post("/v1/notifications", json=many, headers=bearer("slow-key"))
        second = await client.post("/v1/notifications", json=many, headers=bearer("slow-key"))

    assert first.status_code == 202
    assert second.status_code == 429
    assert "recipients" in second.json()["detail"]


async def test_every_v1_response_carries_rate_limit_headers(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as client:
        accepted = await client.post("/v1/notifications", json=notification())
        missing = await client.get("/v1/notifications/01a1fde9-a2eb-74e1-86b5-597eb64cdee6")
        invalid = await client.post("/v1/notifications", json=notification(to=[]))

    for response in (accepted, missing, invalid):
        assert response.headers["ratelimit-limit"] == "6000"
        assert "ratelimit-remaining" in response.headers
        assert "ratelimit-reset" in response.headers
