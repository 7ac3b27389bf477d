"""Section 8, attachments: what a 10 MiB attachment costs in memory, at accept and per
attempt to send it, against the same message joined and written at once (see
:mod:`benchmarks.attachment_memory`, which measures it)."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.attachment_memory import MIB, MemoryFigures, measure_memory
from benchmarks.measure import num
from benchmarks.section import Bench, Row, paragraph, table

TITLE = "Attachments: memory"
SIZE_MIB = 10


@dataclass(frozen=True)
class AttachmentCost:
    figures: MemoryFigures
    title: str
    lines: tuple[str, ...]
    rows: tuple[Row, ...]


def measure(b: Bench) -> AttachmentCost:
    f = measure_memory(SIZE_MIB, attempts=3)
    b.log(f"  attachment of {SIZE_MIB} MiB: {f.times(max(f.in_pieces)):.2f}x per attempt")
    worst, joined = max(f.in_pieces), max(f.joined)
    lines = [
        *paragraph(
            f"One notification with a {SIZE_MIB} MiB attachment of random bytes, Python's "
            "allocations traced (`tracemalloc`), peaks above what was held before: accepted "
            "(the request parsed, the base64 decoded and checked, the MIME part encoded), "
            "then sent "
            f"{f.attempts} times as the dispatcher sends it (its part read from a SQLite "
            "store, wrapped around the rendered message, written to a sink relay in 256 KiB "
            "chunks as the connection takes them); the baseline, in the same run, writes the "
            "same message joined into one `bytes` at once, as a message without attachments "
            "is. `python -m benchmarks.attachment_memory` runs this alone."
        ),
        "",
        *table(
            ["step", "peak MiB", "times the attachment"],
            [
                ["accept", num(f.accept / MIB, 1), num(f.times(f.accept), 2)],
                ["an attempt, in pieces", num(worst / MIB, 1), num(f.times(worst), 2)],
                ["an attempt, joined (baseline)", num(joined / MIB, 1), num(f.times(joined), 2)],
                ["held after the attempts", num(f.left / MIB, 1), num(f.times(f.left), 2)],
            ],
        ),
    ]
    row = Row(
        "8",
        f"memory per attempt to send a {SIZE_MIB} MiB attachment, in pieces vs joined (MiB)",
        num(worst / MIB, 1),
        num(joined / MIB, 1),
        num(worst / joined, 3),
        "report",
        None,
    )
    return AttachmentCost(f, TITLE, tuple(lines), (row,))
