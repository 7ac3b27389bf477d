"""Section 6: notifier's CPU per message (from sections 1 to 3), and where it goes."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmarks import procs, profile, services, workload
from benchmarks.measure import Figure
from benchmarks.section import Bench, Row, Section, table

TITLE = "6. CPU per message, and where it goes"


@dataclass(frozen=True)
class CpuPerMessage:
    """notifier's CPU ms per message, as measured by earlier sections (empty if not run)."""

    #: Section 1, per request accepted.
    accept: Figure = field(default_factory=Figure)
    #: Section 2, per message delivered.
    delivery: Figure = field(default_factory=Figure)
    #: Section 3, per notification accepted and delivered.
    end_to_end: Figure = field(default_factory=Figure)


@dataclass(frozen=True)
class CpuProfile:
    cpu: CpuPerMessage
    accept: profile.Profile
    delivery: profile.Profile
    section: Section


def measure(b: Bench, cpu: CpuPerMessage) -> CpuProfile:
    b.out.mkdir(parents=True, exist_ok=True)
    b.watch.quiet("profile", patience=b.plan.quiet_patience)
    accept = _profile_accept(b)
    delivery = _profile_delivery(b)
    section = Section("6", TITLE, tuple(_lines(b, cpu, accept, delivery)), (_row(cpu),))
    return CpuProfile(cpu, accept, delivery, section)


def _profile_accept(b: Bench) -> profile.Profile:
    """notifier under the target-1 POST load (SMTP on a closed port), sampled."""
    p = b.plan
    closed = procs.ClosedPort()
    services.name_port(closed.port, "closed-port")
    notifier = services.start_notifier(b.work, b.work / "profile-accept.db", closed.port)
    try:
        b.loader.post(notifier.port, p.connections, p.warmup_seconds)
        sampler = profile.Sampler(
            notifier.proc.pid, p.profile_seconds, b.out / "profile-accept.txt"
        )
        b.loader.post(notifier.port, p.connections, p.profile_seconds + 2)
        return sampler.finish()
    finally:
        notifier.stop()
        closed.close()


def _profile_delivery(b: Bench) -> profile.Profile:
    """notifier delivering a seeded backlog into the sink, sampled."""
    p = b.plan
    db = b.work / "profile-delivery.db"
    workload.seed_queued(db, max(p.delivery_backlog, int(p.profile_seconds * 2500)))
    sink = services.Sink(b.work)
    try:
        notifier = services.start_notifier(
            b.work, db, sink.smtp_port, concurrency=p.send_concurrency
        )
        try:
            sink.wait_for(500, timeout=60)
            return profile.record(
                notifier.proc.pid, p.profile_seconds, b.out / "profile-delivery.txt"
            )
        finally:
            notifier.stop()
    finally:
        sink.stop()


def _lines(
    b: Bench, cpu: CpuPerMessage, accept: profile.Profile, delivery: profile.Profile
) -> list[str]:
    cpu_rows = [
        ["accept only (target 1), per request", cpu.accept.show(3)],
        ["delivery only (target 2), per message", cpu.delivery.show(3)],
        ["end to end (target 3), per notification", cpu.end_to_end.show(3)],
    ]
    lines = [
        "CPU is the service process's user + system time from `/proc/<pid>/stat` (every",
        "thread: event loop, SQLite writer, readers, acknowledgment writer), divided by the",
        "requests answered or messages delivered in the same window.",
        "",
        *table(["notifier CPU ms", "median (min-max)"], cpu_rows),
        "",
        f"Profiles: while notifier runs the target-1 POST load, and again while it delivers a "
        f"seeded backlog into the sink, the runner samples it for {b.plan.profile_seconds:g} s:",
        "",
        "- CPU per thread from `/proc/<pid>/task/*/stat` (thread names from `py-spy dump`;",
        "  pools such as the SQLite readers merged);",
        "- `py-spy record --gil --threads --function --format raw` at 100 Hz: the stack of",
        "  whichever thread holds the GIL, i.e. where Python code runs. C code that releases",
        "  the GIL (SQLite statements, fsync, uvloop waiting in epoll) is not in these samples",
        "  but is in the per-thread CPU. Raw stacks: `benchmarks/out/profile-*.txt` (not",
        "  committed; `flamegraph.pl` or speedscope read them).",
        "",
    ]
    for title, prof in (("Accept", accept), ("Delivery", delivery)):
        lines += _profile_lines(title, prof)
    return lines


def _profile_lines(title: str, prof: profile.Profile) -> list[str]:
    return [
        f"#### {title} profile ({prof.samples:,} GIL samples in {prof.seconds:.1f} s)",
        "",
        *profile.thread_table(prof),
        "",
        "Charged to the innermost `notifier/` frame on the stack; `-> library` when the",
        "sample was in a library that frame called (`BodySizeLimit.__call__ -> fastapi`",
        "is FastAPI's routing and dependency machinery running under notifier's",
        "outermost middleware):",
        "",
        *profile.table(prof, prof.attributed, 12, "notifier function"),
        "",
        "Inclusive: functions anywhere on the stack, leaving out the trunk every request or",
        "send runs through (frames on more than 75% of samples: the event loop, the ASGI",
        "middleware chain):",
        "",
        *profile.table(prof, prof.inclusive, 16, "function", below=0.75),
        "",
        "By library of the innermost frame:",
        "",
        *profile.table(prof, prof.packages, 10, "library"),
        "",
        "Hottest innermost frames:",
        "",
        *profile.table(prof, prof.own, 12, "frame"),
        "",
    ]


def _row(cpu: CpuPerMessage) -> Row:
    return Row(
        "6",
        "notifier CPU ms per delivered notification",
        cpu.delivery.show(3),
        "",
        "",
        "report + profile",
        None,
    )
