"""``notifier_http_responses_total``: every answer, by route template and status class."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from notifier.api.tally import UNMATCHED
from tests.conftest import MakeSettings, notification, post, running_app

UNKNOWN_ID = "01a1fde9-a2eb-74e1-86b5-597eb64cdee6"
ONE = "/v1/notifications/{notification_id}"


async def answers(client: httpx.AsyncClient) -> dict[tuple[str, str], float]:
    """The counter's samples by (route, status class), as a scrape sees them."""
    text = (await client.get("/metrics")).text
    return {
        (sample.labels["route"], sample.labels["status_class"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "notifier_http_responses"
        for sample in family.samples
        if sample.name == "notifier_http_responses_total"
    }


async def test_answers_are_counted_by_route_template_and_status_class(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings()) as client:
        notification_id = await post(client)
        await post(client)
        invalid = await client.post("/v1/notifications", json=notification(to=[]))
        await client.get(f"/v1/notifications/{notification_id}")
        unknown = await client.get(f"/v1/notifications/{UNKNOWN_ID}")
        nowhere = await client.get(f"/nowhere/{notification_id}")
        counted = await answers(client)

    assert (invalid.status_code, unknown.status_code, nowhere.status_code) == (422, 404, 404)
    assert counted == {
        ("/v1/notifications", "2xx"): 2,
        ("/v1/notifications", "4xx"): 1,
        (ONE, "2xx"): 1,
        (ONE, "4xx"): 1,
        (UNMATCHED, "4xx"): 1,
    }


async def test_rate_limited_and_oversized_answers_are_counted_under_their_route(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(
        rate_limit_requests_per_minute=1, max_request_bytes=1024, max_attachment_bytes=0
    )
    async with running_app(settings) as client:
        first = await client.get("/v1/notifications")
        limited = await client.get("/v1/notifications")
        oversized = await client.post("/v1/notifications", json=notification(text="x" * 2000))
        counted = await answers(client)

    assert (first.status_code, limited.status_code, oversized.status_code) == (200, 429, 413)
    assert counted == {("/v1/notifications", "2xx"): 1, ("/v1/notifications", "4xx"): 2}


async def test_a_failure_no_handler_answers_is_counted_as_5xx(
    make_settings: MakeSettings,
) -> None:
    runner = running_app(make_settings())

    async def broken() -> None:
        raise RuntimeError("a bug")

    runner.app.add_api_route("/broken", broken)
    async with runner as client:
        with pytest.raises(RuntimeError, match="a bug"):
            await client.get("/broken")
        counted = await answers(client)

    assert counted == {("/broken", "5xx"): 1}
