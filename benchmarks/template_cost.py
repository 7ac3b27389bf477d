"""Section 8a: what a template costs when a notification is accepted.

The same message either way: a request naming a template and its data, and the same
request with the subject and bodies that template gives written out. Measured twice:
in-process (the render alone, and the request's own work without HTTP or the store),
and as accept throughput of a real ``notifier serve``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import procs, services, workload
from benchmarks.accept import AppFigures
from benchmarks.measure import Figure, num, ratio, snapshot
from benchmarks.section import Bench, Plan, Row, paragraph, table
from notifier.api.templates import render_or_refuse
from notifier.domain import Address
from notifier.schemas import NotificationRequest
from notifier.templates import TemplateLibrary, Templates

TITLE = "8a. Templates: rendering at accept time against the message written out"

#: The example template notifier ships, and the data it reads.
EXAMPLE_DIR = procs.REPO / "config" / "templates"
WELCOME = "welcome"
WELCOME_DATA: dict[str, Any] = {
    "name": "Ada Lovelace",
    "product": "Acme Reports",
    "login_url": "https://reports.example.com/login?user=ada",
}

#: A heavier template of the benchmark's own: a receipt with a loop over its lines,
#: filters, a condition, and an HTML body of the usual table layout.
RECEIPT = "receipt"
RECEIPT_FILES = {
    "subject.txt": "Your {{ shop }} receipt {{ order_id }}\n",
    "body.txt": (
        "Hello {{ name }},\n\n"
        "thank you for your order {{ order_id }} of {{ date }}.\n\n"
        "{% for line in lines %}"
        "{{ '%-40s' | format(line.item) }} {{ line.quantity }} x "
        "{{ '%.2f' | format(line.price) }}\n"
        "{% endfor %}\n"
        "Total: {{ '%.2f' | format(total) }} {{ currency }}\n"
        "{% if note %}\nNote: {{ note }}\n{% endif %}\n"
        "-- \n{{ shop }}\n"
    ),
    "body.html": (
        '<html><body style="font-family: sans-serif">\n'
        "<p>Hello {{ name }},</p>\n"
        "<p>thank you for your order <b>{{ order_id }}</b> of {{ date }}.</p>\n"
        '<table cellpadding="4">\n'
        '<tr><th align="left">item</th><th>quantity</th><th align="right">price</th></tr>\n'
        "{% for line in lines %}"
        '<tr><td>{{ line.item }}</td><td align="center">{{ line.quantity }}</td>'
        "<td align=\"right\">{{ '%.2f' | format(line.price) }}</td></tr>\n"
        "{% endfor %}"
        '<tr><td colspan="2"><b>Total</b></td>'
        "<td align=\"right\"><b>{{ '%.2f' | format(total) }} {{ currency }}</b></td></tr>\n"
        "</table>\n"
        "{% if note %}<p><i>{{ note }}</i></p>\n{% endif %}"
        "<p>&mdash; {{ shop }}</p>\n"
        "</body></html>\n"
    ),
}
RECEIPT_DATA: dict[str, Any] = {
    "name": "Ada Lovelace",
    "shop": "Analytical Supplies",
    "order_id": "A-2026-04217",
    "date": "2026-03-14",
    "currency": "EUR",
    "lines": [
        {"item": f"Punched card set no. {i} <blank>", "quantity": i % 3 + 1, "price": 4.5 * i}
        for i in range(1, 11)
    ],
    "total": sum((i % 3 + 1) * 4.5 * i for i in range(1, 11)),
    "note": "Delivered to the Difference Engine room & signed for.",
}
#: The templates, their data, in the tables' order.
TEMPLATES: dict[str, dict[str, Any]] = {WELCOME: WELCOME_DATA, RECEIPT: RECEIPT_DATA}


@dataclass(frozen=True)
class InProcess:
    """One template's in-process figures, µs of this thread's CPU per message, by round."""

    render: Figure = field(default_factory=Figure)
    written: Figure = field(default_factory=Figure)
    templated: Figure = field(default_factory=Figure)
    foreign: Figure = field(default_factory=Figure)
    #: Bytes of the request body, each way.
    written_bytes: int = 0
    templated_bytes: int = 0


@dataclass(frozen=True)
class TemplateCost:
    in_process: dict[str, InProcess]
    #: Accept through ``notifier serve``: the message written out, and by template.
    written: AppFigures
    templated: AppFigures
    title: str
    lines: tuple[str, ...]
    rows: tuple[Row, ...]


def measure(b: Bench) -> TemplateCost:
    directory = _template_dir(b.work)
    library = Templates(TemplateLibrary.load(directory))
    bodies = {name: _bodies(library, name, data) for name, data in TEMPLATES.items()}
    b.watch.quiet("features", patience=b.plan.quiet_patience)
    in_process = _measure_in_process(b, library, bodies)
    written, templated = AppFigures(), AppFigures()
    _measure_accept(b, directory, bodies[WELCOME], written, templated)
    lines = _lines(b.plan, in_process, written, templated)
    rows = _rows(in_process, written, templated)
    return TemplateCost(in_process, written, templated, TITLE, tuple(lines), tuple(rows))


def _template_dir(work: Path) -> Path:
    """The example template and the benchmark's receipt, in one directory."""
    directory = work / "templates"
    shutil.copytree(EXAMPLE_DIR / WELCOME, directory / WELCOME)
    (directory / RECEIPT).mkdir(parents=True)
    for name, text in RECEIPT_FILES.items():
        (directory / RECEIPT / name).write_text(text, encoding="utf-8")
    return directory


def _bodies(library: Templates, name: str, data: dict[str, Any]) -> tuple[bytes, bytes]:
    """The request written out, and by template: the same message either way."""
    rendered = render_or_refuse(library, name, data, unknown=422)
    common = {"to": workload.BODY["to"], "metadata": workload.BODY["metadata"]}
    written = {**common, "subject": rendered.subject, "text": rendered.text}
    if rendered.html is not None:
        written["html"] = rendered.html
    templated = {**common, "template": name, "data": data}
    return _json(written), _json(templated)


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _measure_in_process(
    b: Bench, library: Templates, bodies: dict[str, tuple[bytes, bytes]]
) -> dict[str, InProcess]:
    """Rounds of ``render_loops`` renders and requests of each kind, interleaved."""
    p = b.plan
    figures = {
        name: InProcess(written_bytes=len(written), templated_bytes=len(templated))
        for name, (written, templated) in bodies.items()
    }
    for _ in range(p.rounds):
        for name, data in TEMPLATES.items():
            written, templated = bodies[name]
            f = figures[name]
            a = snapshot()
            render = partial(render_or_refuse, library, name, data, unknown=422)
            f.render.add(_per_call(render, p))
            f.written.add(_per_call(partial(_request_work, written, library), p))
            f.templated.add(_per_call(partial(_request_work, templated, library), p))
            f.foreign.add(100 * b.watch.record("features", a, snapshot()))
        b.log(
            "  in-process: "
            + ", ".join(f"{n} render {f.render.values[-1]:.1f} µs" for n, f in figures.items())
        )
    return figures


def _per_call(call: Callable[[], object], p: Plan) -> float:
    """µs of this thread's CPU per call, over ``render_loops`` calls after a few unmeasured."""
    for _ in range(min(100, p.render_loops)):
        call()
    start = time.thread_time_ns()
    for _ in range(p.render_loops):
        call()
    return (time.thread_time_ns() - start) / 1000 / p.render_loops


def _request_work(raw: bytes, library: Templates) -> object:
    """What the POST route does with a body before it goes to the store: parse and
    validate it, render its template if it names one, and build the notification."""
    body = NotificationRequest.model_validate_json(raw)
    rendered = None
    if body.template is not None:
        rendered = render_or_refuse(library, body.template, body.data or {}, unknown=422)
    return body.to_notification(
        Address(workload.SENDER), now=time.time(), lifetime=workload.LIFETIME, rendered=rendered
    )


def _measure_accept(
    b: Bench,
    directory: Path,
    bodies: tuple[bytes, bytes],
    written: AppFigures,
    templated: AppFigures,
) -> None:
    """Alternating rounds of both bodies against one ``notifier serve``, delivery kept out
    of the way by a closed port as in section 1."""
    p = b.plan
    files = [b.work / f"body-{kind}.json" for kind in ("written", "templated")]
    for path, content in zip(files, bodies, strict=True):
        path.write_bytes(content)
    closed = procs.ClosedPort()
    services.name_port(closed.port, "closed-port")
    notifier = services.start_notifier(
        b.work,
        b.work / "templates-accept.db",
        closed.port,
        concurrency=p.send_concurrency,
        extra_env={"NOTIFIER_TEMPLATE_DIR": str(directory)},
    )
    try:
        for body in files:
            b.loader.python(notifier.port, p.connections, seconds=p.warmup_seconds, body=body)
        for _ in range(p.rounds):
            for body, f in zip(files, (written, templated), strict=True):
                a = snapshot()
                result = b.loader.python(
                    notifier.port,
                    p.connections,
                    seconds=p.round_seconds,
                    body=body,
                    server=notifier.proc,
                )
                f.add(result, result.server_cores, b.watch.record("features", a, snapshot()))
            b.log(
                f"  accept round: written out {written.rps.values[-1]:,.0f} req/s, "
                f"template {templated.rps.values[-1]:,.0f} req/s"
            )
    finally:
        notifier.stop()
        closed.close()


def _lines(
    p: Plan, in_process: dict[str, InProcess], written: AppFigures, templated: AppFigures
) -> list[str]:
    in_process_rows = [
        [
            f"`{name}`",
            f"{f.written_bytes:,} / {f.templated_bytes:,}",
            f.render.show(1),
            f.written.show(1),
            f.templated.show(1),
            num(f.templated.median - f.written.median, 1),
            f.foreign.show(),
        ]
        for name, f in in_process.items()
    ]
    accept_rows = [
        [
            label,
            f.rps.show(),
            f.p50.show(1),
            f.p99.show(1),
            f.cpu.show(),
            f.cpu_ms.show(3),
            f.errors.show(),
            f.foreign.show(),
        ]
        for label, f in (("written out", written), ("template + data", templated))
    ]
    paired = Figure(
        [ratio(t, w) for t, w in zip(templated.rps.values, written.rps.values, strict=True)]
    )
    extra_us = 1000 * (templated.cpu_ms.median - written.cpu_ms.median)
    in_process_extra = in_process[WELCOME].templated.median - in_process[WELCOME].written.median
    return [
        *paragraph(
            "The same message two ways: a request naming a template and its `data`, and the "
            "same request with the subject, text and HTML that template gives written out, "
            f"so both store and send the same content. `{WELCOME}` is the example in "
            f"`config/templates/` (three variables, a few lines); `{RECEIPT}` is the "
            "benchmark's own (ten order lines in a loop, number formatting, a condition, an "
            "HTML table)."
        ),
        "",
        *paragraph(
            "**In-process**, in the runner itself, without HTTP or the store: the CPU time of "
            f"the calling thread over {p.render_loops:,} calls, {p.rounds} rounds, "
            "interleaved. The render is `render_or_refuse`, as POST calls it (Jinja2's "
            "sandbox, then the checks a written subject and body get); the request's work is "
            "what the POST route does with a body before the store: `model_validate_json`, "
            "the render if there is one, `to_notification`."
        ),
        "",
        *table(
            [
                "template",
                "request bytes, written out / template",
                "render µs",
                "request's work µs, written out",
                "request's work µs, template",
                "template's extra µs",
                "other load %",
            ],
            in_process_rows,
        ),
        "",
        *paragraph(
            f"**Through `notifier serve`**: the Python raw-socket generator at {p.connections} "
            f"connections posts one body or the other, {p.rounds} rounds of "
            f"{p.round_seconds:g} s alternating after a {p.warmup_seconds:g} s warm-up each, "
            "against one service with section 1's environment (delivery parked on a closed "
            f"port) and `NOTIFIER_TEMPLATE_DIR` holding both templates; the `{WELCOME}` "
            "bodies."
        ),
        "",
        *table(
            [
                "request",
                "req/s",
                "p50 ms",
                "p99 ms",
                "server CPU % of a core",
                "CPU ms per request",
                "errors",
                "other load %",
            ],
            accept_rows,
        ),
        "",
        *paragraph(
            f"Throughput with a template: {num(_rps_ratio(written, templated), 3)} of the "
            f"message written out (per-round pairs {paired.show(3)}). The template's extra "
            f"server CPU: {num(extra_us)} µs a request, against {num(in_process_extra)} µs "
            "in-process."
        ),
    ]


def _rps_ratio(written: AppFigures, templated: AppFigures) -> float:
    return ratio(templated.rps.median, written.rps.median)


def _rows(
    in_process: dict[str, InProcess], written: AppFigures, templated: AppFigures
) -> list[Row]:
    renders = " / ".join(f.render.show(1) for f in in_process.values())
    return [
        Row(
            "8",
            "template render µs per message (" + " / ".join(f"`{n}`" for n in in_process) + ")",
            renders,
            "",
            "",
            "report",
            None,
        ),
        Row(
            "8",
            f"accept req/s, template + data vs written out (`{WELCOME}`)",
            templated.rps.show(),
            written.rps.show(),
            num(_rps_ratio(written, templated), 3),
            "report",
            None,
        ),
    ]
