"""``/metrics``: Prometheus text format, with queue gauges sampled from the store per scrape."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from notifier.api.services import ServicesDep

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    operation_id="get_metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Metrics."}},
)
async def metrics(services: ServicesDep) -> Response:
    """Counters and histograms of delivery, plus queue depth and age sampled now."""
    m = services.metrics
    m.queue_depth.set(await services.store.count_pending())
    oldest = await services.store.oldest_due()
    m.oldest_due_age.set(max(0.0, time.time() - oldest) if oldest is not None else 0.0)
    m.relay_circuit_open.set(0 if services.relay_problem() is None else 1)
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
