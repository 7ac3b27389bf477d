"""Section 8: what the senders' features of issue 16 cost and buy, one part each.

Each part is a module whose ``measure(bench)`` returns its figures with a ``title``, its
Markdown ``lines`` and its summary ``rows``; this section runs them in order and puts
their parts of the report together. A further measurement is one more module of that
shape added to :data:`PARTS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from benchmarks import attachment_cost, batch_accept, priority_latency, template_cost
from benchmarks.section import Bench, Row, Section

TITLE = "8. Senders' features: templates, priority, batches and attachments"


class Part(Protocol):
    """What each part returns."""

    @property
    def title(self) -> str: ...

    @property
    def lines(self) -> tuple[str, ...]: ...

    @property
    def rows(self) -> tuple[Row, ...]: ...


#: The parts, in the report's order.
PARTS: tuple[Callable[[Bench], Part], ...] = (
    template_cost.measure,
    priority_latency.measure,
    batch_accept.measure,
    attachment_cost.measure,
)


@dataclass(frozen=True)
class Features:
    parts: tuple[Part, ...]
    section: Section


def measure(b: Bench) -> Features:
    parts = tuple(measure_part(b) for measure_part in PARTS)
    return Features(parts, section(parts))


def section(parts: Sequence[Part]) -> Section:
    lines: list[str] = []
    for part in parts:
        lines += ["", f"#### {part.title}", "", *part.lines]
    rows = tuple(row for part in parts for row in part.rows)
    return Section("8", TITLE, tuple(lines[1:]), rows)
