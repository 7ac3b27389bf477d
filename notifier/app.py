"""``create_app(settings)``: wires the store, the dispatcher and the routes together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from notifier import __version__
from notifier.api import batch, health, metrics, notifications, problem, templates
from notifier.api.backpressure import Backpressure
from notifier.api.idempotency import IdempotencyGuard
from notifier.api.limits import BodySizeLimit
from notifier.api.ratelimit import RateLimiter, RateLimitHeaders
from notifier.api.services import Services
from notifier.api.tally import ResponseTally
from notifier.devsmtp import CaptureServer
from notifier.dispatch.ack import SWEEP_GRACE, SWEEP_INTERVAL, AckWriter
from notifier.dispatch.backoff import exponential
from notifier.dispatch.breaker import RelayBreaker
from notifier.dispatch.dispatcher import Dispatcher
from notifier.dispatch.policy import RetryPolicy
from notifier.dispatch.relay import RelayMonitor
from notifier.dispatch.smtp import RelayConfig, SMTPTransport
from notifier.domain import Notification
from notifier.metrics import Metrics
from notifier.preflight import Prepared, preflight
from notifier.retention import Retention
from notifier.settings import Settings
from notifier.store import Store, store_for
from notifier.templates import Templates

#: Writes of what already happened (acknowledgment lines, attempt outcomes) back off like
#: deliveries when they fail, but never wait longer than this.
WRITE_RETRY_INITIAL = 0.5
WRITE_RETRY_MAX = 30.0
#: A failing relay is probed again after at most this long (and at first after this).
RELAY_PROBE_INITIAL = 2.0
RELAY_PROBE_MAX = 300.0

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, store: Store | None = None) -> FastAPI:
    """The service; everything stateful is created and closed by the lifespan.

    ``store`` is the one named by ``NOTIFIER_DATABASE_URL`` unless given (unopened).
    """
    prepared = preflight(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.services, lifecycle = await _start(settings, prepared, stack, store)
            app.state.begin_shutdown = lifecycle.begin_shutdown
            try:
                yield
            finally:
                lifecycle.begin_shutdown()
                del app.state.services, app.state.begin_shutdown

    app = FastAPI(
        title="notifier",
        version=__version__,
        summary="Accept notifications over HTTP, store them durably, deliver them over SMTP.",
        lifespan=lifespan,
    )
    routers = (batch.router, notifications.router, templates.router, health.router, metrics.router)
    for router in routers:
        _add_routes(app, router)
    # FastAPI put its documentation routes first; every request was matched against them.
    app.router.routes.sort(key=lambda route: not isinstance(route, APIRoute))
    problem.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(ResponseTally)  # outermost: it counts the others' answers too
    return app


def _add_routes(app: FastAPI, router: APIRouter) -> None:
    """Put ``router``'s routes on the app's own router, as they are.

    ``include_router`` (FastAPI 0.165) keeps the router whole and matches through it
    on every request, a measurable share of an accept (``benchmarks/LEVERS.md``).
    Our routers carry their prefix in their routes' paths and have no dependencies of
    their own, so including them would add nothing. Called before the app serves.
    """
    assert not router.dependencies, "include_router applies router dependencies; this does not"
    app.router.routes.extend(router.routes)


def begin_shutdown(app: FastAPI) -> None:
    """Stop taking work at once (POSTs get 503, nothing new is claimed).

    Safe to call from a signal handler: the lifespan's shutdown then lets sends in
    flight finish within ``NOTIFIER_SHUTDOWN_GRACE``.
    """
    hook: Callable[[], None] | None = getattr(app.state, "begin_shutdown", None)
    if hook is not None:
        hook()


class _Lifecycle:
    """Whether this instance still takes work; flipped once, from any thread."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self._loop = asyncio.get_running_loop()
        self.accepting = True

    def begin_shutdown(self) -> None:
        self.accepting = False
        self._loop.call_soon_threadsafe(self._dispatcher.stop_claiming)


async def _start(
    settings: Settings, prepared: Prepared, stack: AsyncExitStack, store: Store | None
) -> tuple[Services, _Lifecycle]:
    """Start every part in dependency order; the stack stops them in reverse."""
    library = Templates(prepared.templates)
    _on_sighup(library.reload, stack)
    if settings.dev:
        capture = CaptureServer(settings.dev_mail_dir, settings.dev_smtp_port)
        capture.start()
        stack.callback(capture.stop)
    if store is None:
        store = store_for(settings)
    await store.open()
    stack.push_async_callback(store.close)
    if store.exclusive:
        # No other process can still be sending: whatever was leased was ours, and died.
        await store.release_leases(now=time.time())
    metrics = Metrics()
    retention = Retention(store, keep=settings.retention, clock=time.time)
    await retention.start()
    stack.push_async_callback(retention.stop)
    write_retry_initial = min(WRITE_RETRY_INITIAL, settings.retry_initial_delay)
    write_retry_max = min(WRITE_RETRY_MAX, settings.retry_max_delay)
    ack = AckWriter(
        settings.ack_file,
        store,
        clock=time.time,
        retry_initial=write_retry_initial,
        retry_max=write_retry_max,
        on_failure=metrics.ack_failures.inc,
        sweep=None if store.exclusive else (SWEEP_INTERVAL, SWEEP_GRACE),
    )
    await ack.start()
    stack.push_async_callback(ack.stop)
    transport = SMTPTransport(RelayConfig.from_settings(settings))
    stack.push_async_callback(transport.close)
    breaker = RelayBreaker(
        initial_delay=min(RELAY_PROBE_INITIAL, settings.retry_initial_delay),
        max_delay=min(RELAY_PROBE_MAX, settings.retry_max_delay),
        clock=time.time,
    )
    dispatcher = Dispatcher(
        store,
        transport,
        ack,
        RetryPolicy.from_settings(settings),
        breaker,
        metrics,
        concurrency=settings.send_concurrency,
        lease_seconds=settings.lease_seconds,
        poll_interval=settings.poll_interval,
        record_wait=exponential(write_retry_initial, write_retry_max),
    )
    await dispatcher.start()
    stack.push_async_callback(dispatcher.stop, settings.shutdown_grace)
    store.listen(dispatcher.wake)  # work other replicas commit
    lifecycle = _Lifecycle(dispatcher)
    relay = RelayMonitor(
        transport, breaker, interval=settings.relay_check_interval, clock=time.monotonic
    )
    stack.push_async_callback(relay.close)

    async def on_accepted(notification: Notification) -> None:
        ack.accepted(notification)
        dispatcher.wake()

    async def on_changed(notification: Notification) -> None:
        dispatcher.changed(notification)

    services = Services(
        settings=settings,
        store=store,
        on_accepted=on_accepted,
        on_changed=on_changed,
        accepting=lambda: lifecycle.accepting,
        relay_problem=breaker.problem,
        relay_check=relay.problem,
        failed_parts=lambda: {
            name: failure
            for name, failure in (
                ("dispatcher", dispatcher.failure()),
                ("acknowledgments", ack.failure()),
            )
            if failure is not None
        },
        backpressure=Backpressure(store, settings.max_pending),
        idempotency=IdempotencyGuard(),
        keys=prepared.keys,
        rate_limiter=RateLimiter(settings),
        metrics=metrics,
        templates=library,
    )
    return services, lifecycle


def _on_sighup(reload: Callable[[], None], stack: AsyncExitStack) -> None:
    """SIGHUP reads the templates again, as daemons reread their files on it.

    Only where the loop can take signals (its thread is the main one): an app run
    in-process by a test in another thread goes without.
    """
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        log.debug("no SIGHUP handler (%s): templates are read at start-up only", exc)
        return
    stack.callback(lambda: _remove_handler(loop, signal.SIGHUP))


def _remove_handler(loop: asyncio.AbstractEventLoop, sig: int) -> None:
    with contextlib.suppress(RuntimeError, ValueError):
        loop.remove_signal_handler(sig)
