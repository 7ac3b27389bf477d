"""Every HTTP answer counted by route and status class (``notifier_http_responses_total``)."""

from __future__ import annotations

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The route label of answers to paths that no route serves.
UNMATCHED = "unmatched"


class ResponseTally:
    """Counts each answer once, as it starts: those of the routes (the accept route's own
    included), of the middleware inside this one (``413``, ``429``) and of failures that
    reach the server (``500``).

    The route is the one the router matched, by its path template, never the raw path,
    so the labels stay few. Answers given before routing (a ``413``) are matched here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def counting_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                _count(scope, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            if not started:
                _count(scope, 500)
            raise


def _count(scope: Scope, status: int) -> None:
    services = getattr(scope["app"].state, "services", None)
    if services is None:  # the lifespan is not running
        return
    route = scope.get("route")
    services.metrics.answered(route.path if route is not None else _route_of(scope), status)


def _route_of(scope: Scope) -> str:
    """The template of the route ``scope`` is for, when the router has not been reached."""
    for route in scope["app"].router.routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            path: str = route.path
            return path
    return UNMATCHED
