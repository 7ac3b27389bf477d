"""``create_app(settings)``: wires the store, the dispatcher and the routes together."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from notifier import __version__
from notifier.api import health, notifications, problem
from notifier.api.limits import BodySizeLimit
from notifier.api.services import Services
from notifier.devsmtp import CaptureServer
from notifier.dispatch.ack import AckWriter
from notifier.dispatch.dispatcher import Dispatcher
from notifier.dispatch.policy import RetryPolicy
from notifier.dispatch.transport import RelayConfig, SMTPTransport
from notifier.domain import Notification
from notifier.errors import ConfigError
from notifier.schemas import normalize_address
from notifier.settings import Settings
from notifier.store import SQLiteStore

#: The acknowledgment write backs off like deliveries, but never waits longer than this.
ACK_RETRY_INITIAL = 0.5
ACK_RETRY_MAX = 30.0


def create_app(settings: Settings) -> FastAPI:
    """The service; everything stateful is created and closed by the lifespan."""
    settings.check_startable()
    try:
        normalize_address(settings.sender)
    except ValueError as exc:
        raise ConfigError(f"NOTIFIER_MAIL_FROM: {exc}") from None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.services = await _start(settings, stack)
            try:
                yield
            finally:
                del app.state.services

    app = FastAPI(
        title="notifier",
        version=__version__,
        summary="Accept notifications over HTTP, store them durably, deliver them over SMTP.",
        lifespan=lifespan,
    )
    app.include_router(notifications.router)
    app.include_router(health.router)
    problem.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    return app


async def _start(settings: Settings, stack: AsyncExitStack) -> Services:
    """Start every part in dependency order; the stack stops them in reverse."""
    if settings.dev:
        capture = CaptureServer(settings.dev_mail_dir, settings.dev_smtp_port)
        capture.start()
        stack.callback(capture.stop)
    store = SQLiteStore(settings.sqlite_path)
    await store.open()
    stack.push_async_callback(store.close)
    # One process owns the database file, so nothing else can still be sending.
    await store.release_leases(now=time.time())
    ack = AckWriter(
        settings.ack_file,
        store,
        clock=time.time,
        retry_initial=min(ACK_RETRY_INITIAL, settings.retry_initial_delay),
        retry_max=min(ACK_RETRY_MAX, settings.retry_max_delay),
    )
    await ack.start()
    stack.push_async_callback(ack.stop)
    transport = SMTPTransport(RelayConfig.from_settings(settings))
    stack.push_async_callback(transport.close)
    dispatcher = Dispatcher(
        store,
        transport,
        ack,
        RetryPolicy.from_settings(settings),
        concurrency=settings.send_concurrency,
        lease_seconds=settings.lease_seconds,
        poll_interval=settings.poll_interval,
    )
    await dispatcher.start()
    stack.push_async_callback(dispatcher.stop)

    async def on_accepted(notification: Notification) -> None:
        ack.accepted(notification)
        dispatcher.wake()

    return Services(settings=settings, store=store, on_accepted=on_accepted)
