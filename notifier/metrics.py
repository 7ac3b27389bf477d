"""Prometheus metrics: one registry per app, created by its lifespan (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from notifier.domain import Attempt, Notification, Priority

#: Seconds; SMTP transactions on loopback take milliseconds, slow relays seconds.
SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: Seconds from 202 to sent; retries stretch this to hours.
END_TO_END_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.accepted = Counter(
            "notifier_notifications_accepted",
            "Notifications accepted (202), by priority.",
            ["priority"],
            registry=r,
        )
        # Looked up once: labels() takes a lock and a dict lookup on every accept.
        self._accepted_by = {p: self.accepted.labels(p.value) for p in Priority}
        self.finished = Counter(
            "notifier_notifications_finished",
            "Notifications that reached a terminal status, by status, reason and priority.",
            ["status", "reason", "priority"],
            registry=r,
        )
        self.attempts = Counter(
            "notifier_attempts",
            "Delivery attempts by outcome and SMTP reply class.",
            ["outcome", "code_class"],
            registry=r,
        )
        self.possible_duplicates = Counter(
            "notifier_possible_duplicates",
            "Attempts whose outcome is unknown: the relay may hold a copy.",
            registry=r,
        )
        self.send_seconds = Histogram(
            "notifier_send_duration_seconds",
            "Duration of one SMTP transaction.",
            buckets=SEND_BUCKETS,
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "notifier_delivery_latency_seconds",
            "Time from acceptance to sent (or partially sent).",
            buckets=END_TO_END_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "notifier_queue_depth", "Notifications not yet in a terminal status.", registry=r
        )
        self.oldest_due_age = Gauge(
            "notifier_oldest_due_age_seconds",
            "How long the oldest due notification has been waiting to be claimed.",
            registry=r,
        )
        self.in_flight = Gauge(
            "notifier_sends_in_flight", "SMTP transactions in progress.", registry=r
        )
        self.ack_failures = Counter(
            "notifier_ack_write_failures",
            "Failed writes of the acknowledgment file (each is retried).",
            registry=r,
        )
        self.relay_circuit_open = Gauge(
            "notifier_relay_circuit_open",
            "1 while the relay circuit breaker holds deliveries back.",
            registry=r,
        )
        self.http_responses = Counter(
            "notifier_http_responses",
            "HTTP answers by route (its path template, or `unmatched`) and status class.",
            ["route", "status_class"],
            registry=r,
        )
        self._http_children: dict[tuple[str, int], Counter] = {}

    def accepted_one(self, priority: Priority, count: int = 1) -> None:
        self._accepted_by[priority].inc(count)

    def attempted(self, attempt: Attempt) -> None:
        self.attempts.labels(attempt.outcome, code_class(attempt.smtp_code)).inc()
        if attempt.possible_duplicate:
            self.possible_duplicates.inc()

    def ended(self, n: Notification, reason: str, *, now: float) -> None:
        self.finished.labels(n.status.value, reason, n.priority.value).inc()
        if n.status.value in ("sent", "partially_sent"):
            self.delivery_seconds.observe(max(0.0, now - n.created_at))

    def answered(self, route: str, status: int) -> None:
        """Count one HTTP answer: a dict lookup and an increment once the pair was seen."""
        child = self._http_children.get((route, status))
        if child is None:
            child = self.http_responses.labels(route, code_class(status))
            self._http_children[route, status] = child
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def code_class(code: int | None) -> str:
    """``2xx``, ``4xx``, ``5xx``, or ``none`` when there was no reply."""
    if code is None or not 200 <= code < 600:
        return "none"
    return f"{code // 100}xx"
