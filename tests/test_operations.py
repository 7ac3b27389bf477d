"""What operators see: Prometheus metrics, JSON logs without secrets, readiness of the relay."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from notifier import logs
from tests.conftest import MakeSettings, post, running_app, wait_for
from tests.smtp_server import DROP_AFTER_ACCEPT, ScriptedHandler, free_port


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_count_acceptance_attempts_and_outcomes(
    client: httpx.AsyncClient, smtp_handler: ScriptedHandler
) -> None:
    smtp_handler.data_replies.extend(["451 4.3.0 Later", DROP_AFTER_ACCEPT])
    await wait_for(client, await post(client))
    smtp_handler.data_replies.append("554 5.7.1 No")
    await wait_for(client, await post(client))

    response = await client.get("/metrics")
    found = samples(response.text)

    assert response.headers["content-type"].startswith("text/plain")
    assert found[("notifier_notifications_accepted_total", (("priority", "normal"),))] == 2
    finished = "notifier_notifications_finished_total"
    normal = ("priority", "normal")
    assert found[(finished, (normal, ("reason", "delivered"), ("status", "sent")))] == 1
    assert found[(finished, (normal, ("reason", "refused"), ("status", "failed")))] == 1
    attempts = "notifier_attempts_total"
    assert found[(attempts, (("code_class", "4xx"), ("outcome", "deferred")))] == 1
    assert found[(attempts, (("code_class", "none"), ("outcome", "deferred")))] == 1
    assert found[(attempts, (("code_class", "5xx"), ("outcome", "failed")))] == 1
    assert found[(attempts, (("code_class", "2xx"), ("outcome", "sent")))] == 1
    assert found[("notifier_possible_duplicates_total", ())] == 1
    assert found[("notifier_send_duration_seconds_count", ())] == 4
    assert found[("notifier_delivery_latency_seconds_count", ())] == 1
    assert found[("notifier_queue_depth", ())] == 0
    assert found[("notifier_relay_circuit_open", ())] == 0


async def test_metrics_show_the_queue_and_an_open_circuit(make_settings: MakeSettings) -> None:
    async with running_app(make_settings(smtp_port=free_port())) as client:
        notification_id = await post(client)
        await wait_for(client, notification_id, lambda d: len(d["attempts"]) >= 1)
        found = samples((await client.get("/metrics")).text)

    assert found[("notifier_queue_depth", ())] == 1
    assert found[("notifier_relay_circuit_open", ())] == 1


async def test_readyz_probes_the_relay_and_says_when_it_is_down_but_stays_ready(
    make_settings: MakeSettings,
) -> None:
    async with running_app(make_settings(smtp_port=free_port())) as client:
        response = await client.get("/readyz")

    assert response.status_code == 200
    assert "probe failed" in response.json()["checks"]["relay"]
    assert response.json()["checks"]["store"] == "ok"


async def test_readyz_probe_greets_the_relay_and_caches_the_answer(
    make_settings: MakeSettings, smtp_handler: ScriptedHandler
) -> None:
    async with running_app(make_settings(relay_check_interval=3600)) as client:
        first = await client.get("/readyz")
        second = await client.get("/readyz")

    assert first.status_code == second.status_code == 200
    assert first.json()["checks"] == {"store": "ok", "dispatcher": "ok", "relay": "ok"}
    assert smtp_handler.sessions == 1
    assert smtp_handler.received == []


async def test_json_logs_carry_the_delivery_context_and_no_secrets(
    make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(log_format="json", smtp_password="hunter2-secret")
    logs.configure(settings)
    try:
        async with running_app(settings) as client:
            notification_id = await post(client, text="private body text")
            await wait_for(client, notification_id)
    finally:
        logging.getLogger().handlers.clear()

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    (event,) = [line for line in lines if line.get("notification_id") == notification_id]
    assert event["status"] == "sent"
    assert event["attempt"] == 1
    assert event["smtp_code"] == 250
    assert event["level"] == "INFO"
    assert "time" in event
    everything = json.dumps(lines)
    assert "private body text" not in everything
    assert "hunter2-secret" not in everything
