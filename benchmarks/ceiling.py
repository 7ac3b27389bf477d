"""The ceiling of the accept path: validate notifier's request model, answer 202, store nothing.

    python -m benchmarks.ceiling

Served like ``notifier serve``: one uvicorn worker, uvloop and httptools (uvicorn's
``auto`` choices with ``uvicorn[standard]``), log level ``warning``, port 0 on
127.0.0.1. The answer has the shape and size of notifier's ``202``.
"""

from __future__ import annotations

import logging
import time

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from notifier.domain import new_id
from notifier.records import iso
from notifier.schemas import NotificationRequest

app = FastAPI(title="notifier ceiling")


@app.post("/v1/notifications", status_code=202)
async def accept(body: NotificationRequest) -> JSONResponse:
    notification_id = new_id()
    location = f"/v1/notifications/{notification_id}"
    answer = {
        "id": notification_id,
        "status": "queued",
        "created_at": iso(time.time()),
        "links": {"self": location},
        "metadata": body.metadata,
    }
    return JSONResponse(answer, 202, headers={"Location": location})


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", log_config=None)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
