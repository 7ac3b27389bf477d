"""Standard headers a sender may set: each allowed one checked, everything else refused."""

from __future__ import annotations

import pytest

from notifier.headers import checked_headers
from tests.conftest import STORES, MakeSettings, notification, running_app, wait_for
from tests.smtp_server import ScriptedHandler

GOOD = {
    "List-Unsubscribe": "<https://acme.example/u/1>, <mailto:unsubscribe@acme.example?subject=1>",
    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    "List-Id": "Acme news <news.acme.example>",
    "In-Reply-To": "<01a1@acme.example>",
    "References": "<00ff@acme.example> <01a1@acme.example>",
    "Auto-Submitted": "auto-generated",
}


def test_the_standard_headers_pass_and_are_spelled_as_the_rfcs_do() -> None:
    given = {name.lower(): value for name, value in GOOD.items()} | {"X-Trace": "t-1"}

    assert checked_headers(given) == GOOD | {"X-Trace": "t-1"}


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("List-Unsubscribe", "https://acme.example/u/1", "<https:...> or <mailto:...>"),
        ("List-Unsubscribe", "<http://acme.example/u/1>", "<https:...> or <mailto:...>"),
        ("List-Unsubscribe", "<javascript:alert(1)>", "<https:...> or <mailto:...>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=Yes", "List-Unsubscribe=One-Click"),
        ("List-Id", "news.acme.example", "<list-label.domain>"),
        ("In-Reply-To", "01a1@acme.example", "message ids"),
        ("References", "<a@b> junk", "message ids"),
        ("Auto-Submitted", "yes", "auto-generated"),
    ],
)
def test_a_standard_header_out_of_its_syntax_is_refused(
    name: str, value: str, expected: str
) -> None:
    extra = {"List-Unsubscribe": GOOD["List-Unsubscribe"]} if name.endswith("-Post") else {}
    with pytest.raises(ValueError, match=f"header '{name}': expected .*{expected[:12]}"):
        checked_headers(extra | {name: value})


@pytest.mark.parametrize("name", ["From", "To", "Sender", "Reply-To", "Return-Path", "Bcc"])
def test_headers_that_change_who_it_is_from_or_to_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="only custom `X-` headers and List-Unsubscribe"):
        checked_headers({name: "eve@evil.example"})


def test_one_click_needs_an_https_unsubscribe_and_no_header_comes_twice() -> None:
    with pytest.raises(ValueError, match="needs a List-Unsubscribe header with an <https"):
        checked_headers(
            {
                "List-Unsubscribe": "<mailto:u@acme.example>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            }
        )
    with pytest.raises(ValueError, match="given twice"):
        checked_headers({"List-Id": "<a.b>", "list-id": "<c.d>"})


@pytest.mark.parametrize("database_url", STORES, indirect=True)
async def test_the_standard_headers_reach_the_relay_and_bad_ones_are_a_422(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    async with running_app(make_settings()) as client:
        response = await client.post("/v1/notifications", json=notification(headers=GOOD))
        assert response.status_code == 202, response.text
        await wait_for(client, response.json()["id"])
        refused = await client.post(
            "/v1/notifications", json=notification(headers={"Reply-To": "eve@evil.example"})
        )

    (received,) = smtp_handler.received
    message = received.message
    # A long value may be folded onto the next line, which leaves its leading space.
    assert {name: str(message[name]).strip() for name in GOOD} == GOOD
    assert (refused.status_code, refused.json()["code"]) == (422, "invalid_request")
