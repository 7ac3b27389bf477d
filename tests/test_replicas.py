"""Replicas on one PostgreSQL database (issue 15), as real processes.

Three ``notifier serve`` processes share one database, each with its own acknowledgment
file, behind a round-robin "load balancer" made of the test's HTTP client. The relay is
the aiosmtpd server of the other tests, injecting faults as in ``test_crash.py``.

- Crash safety: one replica is killed with ``kill -9`` mid-delivery and started again,
  another is stopped with SIGTERM; then the ledger audit of ``test_crash.py``, over the
  union of the replicas' acknowledgment files. Without kills, no message reaches the
  relay twice.
- One ``Idempotency-Key`` sent to all replicas at once makes one notification.
- PostgreSQL restarted under load: ``503 store_unavailable`` (never a 500), nothing
  half-stored, ``/readyz`` says why, and delivery resumes by itself.
- Any replica answers for, cancels and retries what another accepted.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

import tests.postgres as pg
from tests.conftest import notification
from tests.service import TERMINAL, ServiceProcess, spawn
from tests.smtp_server import DROP, DROP_AFTER_ACCEPT, OK, SMTPServer

pytestmark = pytest.mark.slow

REPLICAS = 3
#: The issue's figure: notifications posted over the three replicas.
TOTAL = 3000
#: Client POSTs in flight at once, over all replicas.
IN_FLIGHT = 24
#: Tries of one POST (each on the next replica) before the test gives up on it.
POST_TRIES = 50
#: Seconds for anything the test waits for: deliveries, a stopped process, a file line.
DEADLINE = 60.0
#: Seconds between two looks at something the test waits for.
POLL = 0.02
PAGE = 200
UNKNOWN_ID = "00000000-0000-7000-8000-000000000000"
#: Clients posting all the time while PostgreSQL restarts.
POSTERS = 3

FAULTS = [OK] * 40 + ["451 4.3.0 Try later"] * 4 + [DROP] * 2 + [DROP_AFTER_ACCEPT] * 2
#: Faults that never leave a copy at the relay: a message can only arrive twice if two
#: replicas sent it.
CALM_FAULTS = [OK] * 40 + ["451 4.3.0 Try later"] * 4 + [DROP] * 2


def replica_env(
    service_env: dict[str, str], postgres_url: str, tmp_path: Path, index: int, **extra: str
) -> dict[str, str]:
    """Replica ``index``'s environment: the shared database, an acknowledgment file of its
    own, and a short lease so a killed replica's claims are taken over quickly."""
    return {
        **service_env,
        "NOTIFIER_DATABASE_URL": postgres_url,
        "NOTIFIER_ACK_FILE": str(tmp_path / f"acks-{index}.jsonl"),
        "NOTIFIER_LEASE_SECONDS": "2",
        "NOTIFIER_POLL_INTERVAL": "0.05",
        "NOTIFIER_SHUTDOWN_GRACE": "0.5",
        "NOTIFIER_RATE_LIMIT_REQUESTS_PER_MINUTE": "10000000",
        "NOTIFIER_RATE_LIMIT_RECIPIENTS_PER_MINUTE": "10000000",
        **extra,
    }


class Cluster:
    """Replicas behind a round-robin balancer; slot ``i`` is ``None`` while replica ``i`` is
    down. Every process goes into ``processes``, so the fixture kills whatever is left."""

    def __init__(
        self, envs: list[dict[str, str]], processes: list[ServiceProcess], cwd: Path
    ) -> None:
        self.envs = envs
        self.processes = processes
        self.cwd = cwd
        self.replicas: list[ServiceProcess | None] = [None] * len(envs)
        self._lock = threading.Lock()

    def start(self) -> Cluster:
        """All replicas at once: they create the schema together, under its lock."""
        with ThreadPoolExecutor(len(self.envs)) as pool:
            started = list(pool.map(self._spawn, self.envs))
        with self._lock:
            self.replicas = list(started)
        return self

    def _spawn(self, env: dict[str, str]) -> ServiceProcess:
        return spawn(self.processes, env, self.cwd)

    def url(self, index: int) -> str | None:
        with self._lock:
            replica = self.replicas[index % len(self.replicas)]
        return None if replica is None else replica.url

    def kill(self, index: int) -> None:
        """``kill -9``: no shutdown code runs; its claims wait for their lease to run out."""
        self._take(index).kill()

    def restart(self, index: int) -> None:
        """A new process on replica ``index``'s environment (so, its acknowledgment file)."""
        restarted = self._spawn(self.envs[index])
        with self._lock:
            self.replicas[index] = restarted

    def terminate(self, index: int) -> int:
        """SIGTERM; the balancer stops sending it requests once it has exited."""
        with self._lock:
            replica = self.replicas[index]
        assert replica is not None
        assert replica.process is not None
        replica.process.send_signal(signal.SIGTERM)
        code = replica.process.wait(timeout=DEADLINE)
        self._take(index)
        return code

    def _take(self, index: int) -> ServiceProcess:
        with self._lock:
            replica = self.replicas[index]
            self.replicas[index] = None
        assert replica is not None
        return replica


def start_cluster(
    service_env: dict[str, str],
    postgres_url: str,
    tmp_path: Path,
    processes: list[ServiceProcess],
    **extra: str,
) -> Cluster:
    envs = [
        replica_env(service_env, postgres_url, tmp_path, index, **extra)
        for index in range(REPLICAS)
    ]
    return Cluster(envs, processes, tmp_path).start()


async def post_anywhere(
    client: httpx.AsyncClient,
    cluster: Cluster,
    first: int,
    body: dict[str, Any],
    key: str,
    refusals: list[str],
) -> str:
    """POST on replica ``first``; on a refused connection, ``503 shutting_down`` or ``409``,
    the same request (same key) on the next one. The id of the ``202``; each refusal is
    added to ``refusals``."""
    for attempt in range(POST_TRIES):
        url = cluster.url(first + attempt)
        if url is not None:
            try:
                response = await client.post(
                    f"{url}/v1/notifications", json=body, headers={"Idempotency-Key": key}
                )
            except httpx.TransportError as exc:  # the replica was killed or has stopped
                refusals.append(f"{key}: {exc!r}")
            else:
                if response.status_code == 202:
                    notification_id: str = response.json()["id"]
                    return notification_id
                # From a replica being stopped, or while the first try of this key (cut
                # off by a kill) is still being stored.
                expected = {(503, "shutting_down"), (409, "idempotency_key_in_use")}
                assert (response.status_code, response.json().get("code")) in expected, (
                    response.status_code,
                    response.text,
                )
                refusals.append(f"{key}: {response.status_code} {response.text}")
        await asyncio.sleep(POLL)  # the client's own back-off between tries
    pytest.fail(f"no replica accepted {key}: {refusals[-POST_TRIES:]}")


async def post_round_robin(
    client: httpx.AsyncClient, cluster: Cluster, total: int, tag: str, refusals: list[str]
) -> list[str]:
    """``total`` notifications, POST ``i`` on replica ``i % 3``, ``IN_FLIGHT`` at once."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> str:
        async with gate:
            body = notification(subject=f"{tag}-{i}", metadata={"i": i})
            return await post_anywhere(client, cluster, i, body, f"{tag}-{i}", refusals)

    return list(await asyncio.gather(*(one(i) for i in range(total))))


async def metric(client: httpx.AsyncClient, url: str, name: str) -> float:
    """The sum of the replica's samples of ``name`` (over all labels)."""
    response = await client.get(f"{url}/metrics")
    assert response.status_code == 200, response.text
    samples = [
        float(line.rsplit(" ", 1)[1])
        for line in response.text.splitlines()
        if line.startswith((f"{name} ", f"{name}{{"))
    ]
    assert samples, f"no {name} in /metrics:\n{response.text}"
    return sum(samples)


async def until(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    give_up = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < give_up, f"gave up waiting: {what}"
        await asyncio.sleep(POLL)


async def all_docs(client: httpx.AsyncClient, url: str) -> dict[str, dict[str, Any]]:
    """Every status document in the database, through one replica's list endpoint."""
    docs: dict[str, dict[str, Any]] = {}
    params: dict[str, Any] = {"limit": PAGE}
    for _ in range(TOTAL):  # pages; far more than there can be
        response = await client.get(f"{url}/v1/notifications", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        docs.update((doc["id"], doc) for doc in page["items"])
        if page["next_cursor"] is None:
            return docs
        params["cursor"] = page["next_cursor"]
    pytest.fail("the list never ended")


async def settled(
    client: httpx.AsyncClient, url: str, ids: list[str], deadline: float = DEADLINE
) -> dict[str, dict[str, Any]]:
    """Poll until nothing in the database is undelivered and every id in ``ids`` is there;
    the documents of ``ids``."""
    give_up = time.monotonic() + deadline
    while True:
        docs = await all_docs(client, url)
        missing = [i for i in ids if i not in docs]
        assert not missing, f"accepted but not in the store: {missing[:10]}"
        open_ = [d for d in docs.values() if d["status"] not in TERMINAL or not d["acknowledged"]]
        if not open_:
            return {i: docs[i] for i in ids}
        if time.monotonic() > give_up:
            summary = Counter(d["status"] for d in open_)
            pytest.fail(f"not settled in time: {summary}; e.g. {open_[0]}")
        await asyncio.sleep(POLL * 5)


def error_code(response: httpx.Response) -> str:
    """The ``code`` of an error answer, or its text when it is not the JSON error body."""
    try:
        code: str = response.json()["code"]
    except (ValueError, KeyError, TypeError):
        return f"not an error body: {response.text[:200]}"
    return code


def read_acks(files: list[Path]) -> Counter[tuple[str, str]]:
    """(id, event) over the union of the replicas' acknowledgment files."""
    acks: Counter[tuple[str, str]] = Counter()
    for path in files:
        if path.exists():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                acks[(record["id"], record["event"])] += 1
    return acks


async def wait_for_acks(
    files: list[Path], ids: list[str], final: str, deadline: float = DEADLINE
) -> Counter[tuple[str, str]]:
    """Poll the files until every id has an ``accepted`` and a ``final`` line in one of them."""
    give_up = time.monotonic() + deadline
    while True:
        acks = read_acks(files)
        missing = [
            (i, event) for i in ids for event in ("accepted", final) if acks[(i, event)] == 0
        ]
        if not missing:
            return acks
        if time.monotonic() > give_up:
            pytest.fail(f"{len(missing)} acknowledgment lines never written: {missing[:10]}")
        await asyncio.sleep(POLL * 5)


def check_ledger(smtp: SMTPServer, docs: dict[str, dict[str, Any]]) -> Counter[str]:
    """``test_crash.check_ledger`` without the file: every id sent, each message at the relay
    at least once, every extra copy matched by an attempt flagged ``possible_duplicate``,
    and nothing at the relay that was not accepted. The copies per Message-ID."""
    assert Counter(doc["status"] for doc in docs.values()) == {"sent": len(docs)}
    copies = Counter(r.message_id for r in smtp.handler.received)
    for doc in docs.values():
        held = copies[doc["message_id"]]
        assert held >= 1, f"never reached the relay: {doc}"
        flagged = sum(a["possible_duplicate"] for a in doc["attempts"])
        assert held - 1 <= flagged, f"unexplained duplicate ({held} copies): {doc}"
    assert set(copies) <= {doc["message_id"] for doc in docs.values()}
    return copies


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stops", [True, False], ids=["kill-and-sigterm", "no-stops"])
async def test_three_replicas_lose_nothing_and_duplicate_only_in_the_documented_window(
    stops: bool,
    smtp: SMTPServer,
    service_env: dict[str, str],
    postgres_url: str,
    tmp_path: Path,
    processes: list[ServiceProcess],
) -> None:
    rng = random.Random(15)
    faults = FAULTS if stops else CALM_FAULTS
    smtp.handler.data_replies.extend(rng.choice(faults) for _ in range(TOTAL))
    smtp.handler.data_delay = 0.01
    cluster = await asyncio.to_thread(start_cluster, service_env, postgres_url, tmp_path, processes)
    received = smtp.handler.received

    async def stop_some(client: httpx.AsyncClient) -> None:
        # Mid-delivery: a kill -9 and a restart, then a SIGTERM (exit 0, not restarted).
        kill_at = rng.randint(TOTAL // 10, TOTAL // 4)
        await until(lambda: len(received) >= kill_at, f"{kill_at} deliveries")
        # Hold the relay's answers until the victim has sends in flight, so the kill
        # surely cuts some short (some after the relay kept the message).
        smtp.handler.stall()
        victim = cluster.url(0)
        assert victim is not None
        give_up = time.monotonic() + DEADLINE
        while await metric(client, victim, "notifier_sends_in_flight") < 2:
            assert time.monotonic() < give_up, "replica 0 never had sends in flight"
            await asyncio.sleep(POLL)
        await asyncio.to_thread(cluster.kill, 0)
        smtp.handler.release()
        await asyncio.to_thread(cluster.restart, 0)
        term_at = len(received) + rng.randint(TOTAL // 10, TOTAL // 4)
        await until(lambda: len(received) >= term_at, f"{term_at} deliveries")
        assert await asyncio.to_thread(cluster.terminate, 1) == 0

    began = time.monotonic()
    refusals: list[str] = []
    async with httpx.AsyncClient(timeout=10) as client:
        posting = post_round_robin(client, cluster, TOTAL, "load", refusals)
        if stops:
            ids, _ = await asyncio.gather(posting, stop_some(client))
        else:
            ids = await posting
        posted = time.monotonic() - began
        survivor = cluster.url(2)
        assert survivor is not None
        docs = await settled(client, survivor, ids)
        delivered = time.monotonic() - began
        # What each replica accepted, and the attempts it made.
        shares = [
            (
                await metric(client, url, "notifier_notifications_accepted_total"),
                await metric(client, url, "notifier_attempts_total"),
            )
            for url in (cluster.url(i) for i in range(REPLICAS))
            if url is not None
        ]
    files = [Path(env["NOTIFIER_ACK_FILE"]) for env in cluster.envs]
    acks = await wait_for_acks(files, ids, final="sent")

    assert len(set(ids)) == TOTAL  # one notification per key, whichever replica took it
    copies = check_ledger(smtp, docs)
    outcomes = Counter(a["outcome"] for doc in docs.values() for a in doc["attempts"])
    print(
        f"posted in {posted:.1f} s, settled in {delivered:.1f} s; relay copies "
        f"{len(received)} for {TOTAL}; outcomes {dict(outcomes)}; ack lines {acks.total()}; "
        f"(accepted, attempts) by replica {shares}; {len(refusals)} POSTs tried again"
    )
    if stops:
        # The faults really happened: copies kept by the relay, and sends cut short by
        # the kill and taken over by another replica after the lease.
        assert len(received) > TOTAL
        assert outcomes["interrupted"] >= 1
    else:
        assert max(copies.values()) == 1, [m for m, n in copies.items() if n > 1][:10]
        assert len(received) == TOTAL
        # Round robin with nobody stopped: a third each, and all three delivered.
        assert refusals == []
        assert [accepted for accepted, _ in shares] == [TOTAL / REPLICAS] * REPLICAS
        assert all(attempts > 0 for _, attempts in shares), shares


@pytest.mark.timeout(60)
async def test_one_key_sent_to_every_replica_at_once_makes_one_notification(
    smtp: SMTPServer,
    service_env: dict[str, str],
    postgres_url: str,
    tmp_path: Path,
    processes: list[ServiceProcess],
) -> None:
    cluster = await asyncio.to_thread(start_cluster, service_env, postgres_url, tmp_path, processes)
    urls = [cluster.url(i) for i in range(REPLICAS)]
    body = notification(subject="Once only")
    headers = {"Idempotency-Key": "burst-15"}
    async with httpx.AsyncClient(timeout=10) as client:
        # Twenty requests, spread over the three, all sent before any is answered.
        answers = await asyncio.gather(
            *(
                client.post(f"{urls[i % REPLICAS]}/v1/notifications", json=body, headers=headers)
                for i in range(20)
            )
        )
        statuses = Counter(a.status_code for a in answers)
        assert set(statuses) <= {202, 409}, [a.text for a in answers]
        ids = {a.json()["id"] for a in answers if a.status_code == 202}
        assert len(ids) == 1, ids
        for conflict in (a for a in answers if a.status_code == 409):
            assert conflict.json()["code"] == "idempotency_key_in_use"
            assert conflict.headers["retry-after"] == "1"
        (notification_id,) = ids
        # Once stored, every replica replays the same answer.
        replays = [
            await client.post(f"{url}/v1/notifications", json=body, headers=headers) for url in urls
        ]
        assert [(r.status_code, r.json()["id"]) for r in replays] == [
            (202, notification_id)
        ] * REPLICAS
        assert all(r.headers["idempotent-replayed"] == "true" for r in replays)
        assert urls[0] is not None
        docs = await settled(client, urls[0], [notification_id])
        everything = await all_docs(client, urls[0])

    assert list(everything) == [notification_id]
    assert docs[notification_id]["status"] == "sent"
    assert [r.message_id for r in smtp.handler.received] == [docs[notification_id]["message_id"]]
    print(f"answers: {dict(statuses)}")


@pytest.mark.timeout(120)
async def test_postgresql_restarted_under_load_gives_503_then_delivery_resumes(
    smtp: SMTPServer,
    service_env: dict[str, str],
    postgres_server: pg.PostgresServer | pg.ExistingServer,
    postgres_url: str,
    tmp_path: Path,
    processes: list[ServiceProcess],
) -> None:
    if not isinstance(postgres_server, pg.PostgresServer):
        pytest.skip("the server is NOTIFIER_TEST_POSTGRES_URL's: the tests may not restart it")
    smtp.handler.data_delay = 0.01
    cluster = await asyncio.to_thread(
        start_cluster,
        service_env,
        postgres_url,
        tmp_path,
        processes,
        NOTIFIER_LEASE_SECONDS="5",
    )
    urls = [url for url in (cluster.url(i) for i in range(REPLICAS)) if url is not None]
    stop = asyncio.Event()
    # (marker, keyed, status code, code) of every POST; the readiness answers seen.
    posts: list[tuple[str, bool, int, str]] = []
    ready: list[tuple[int, dict[str, Any]]] = []
    accepted: dict[str, str] = {}  # marker -> id

    async def post_until_stopped(client: httpx.AsyncClient, worker: int) -> None:
        # Keyed and unkeyed POSTs (the two insert paths), round-robin, until told to stop.
        for n in range(100_000):
            if stop.is_set():
                return
            marker = f"w{worker}-{n}"
            keyed = n % 2 == 0
            headers = {"Idempotency-Key": marker} if keyed else {}
            body = notification(subject=marker, metadata={"marker": marker})
            response = await client.post(
                f"{urls[(worker + n) % len(urls)]}/v1/notifications", json=body, headers=headers
            )
            code = "" if response.status_code == 202 else error_code(response)
            posts.append((marker, keyed, response.status_code, code))
            if response.status_code == 202:
                accepted[marker] = response.json()["id"]
            elif response.status_code == 503:
                assert response.headers.get("retry-after"), response.headers
        pytest.fail("the posting loop ran out")

    async def watch_readiness(client: httpx.AsyncClient, url: str) -> None:
        # The outage may be brief: each replica is asked all the time.
        for _ in range(1_000_000):
            if stop.is_set():
                return
            response = await client.get(f"{url}/readyz")
            ok = response.status_code in (200, 503)
            ready.append((response.status_code, response.json() if ok else {"text": response.text}))
            await asyncio.sleep(0.002)
        pytest.fail("the readiness loop ran out")

    async def restart_database() -> None:
        await until(lambda: len(smtp.handler.received) >= 100, "deliveries before the restart")
        before = len(posts)
        began = time.monotonic()
        await asyncio.to_thread(postgres_server.restart, "fast")
        print(f"restart took {time.monotonic() - began:.2f} s")
        # Posting goes on until a hundred more have been accepted after the restart.
        target = len(accepted) + 100
        await until(lambda: len(accepted) >= target, "POSTs accepted after the restart")
        assert len(posts) > before
        stop.set()

    async with httpx.AsyncClient(timeout=15) as client:
        await asyncio.gather(
            *(post_until_stopped(client, worker) for worker in range(POSTERS)),
            *(watch_readiness(client, url) for url in urls for _ in range(2)),
            restart_database(),
        )
        ids = list(accepted.values())
        docs = await settled(client, urls[0], ids)
        everything = await all_docs(client, urls[0])

    codes = Counter((status, code) for _, _, status, code in posts)
    print(f"POST answers: {dict(codes)}; readiness: {Counter(s for s, _ in ready)}")
    # Never a 500: accepted, or 503 store_unavailable while the database was away.
    assert set(codes) <= {(202, ""), (503, "store_unavailable")}, codes
    # /readyz said why while the database was down.
    assert {status for status, _ in ready} <= {200, 503}, ready
    down = [body for status, body in ready if status == 503]
    assert down, "the outage was never seen by /readyz"
    assert all(body["checks"]["store"].startswith("failing: ") for body in down), down
    # Nothing half-stored: the database holds exactly the POSTs answered 202.
    stored = {doc["metadata"]["marker"]: doc["id"] for doc in everything.values()}
    assert stored == accepted
    # A keyed POST that got 503 used up no key: sent again, it is new, not a replay.
    refused_keyed = [m for m, keyed, status, _ in posts if keyed and status == 503]
    async with httpx.AsyncClient(timeout=15) as client:
        for marker in refused_keyed[:20]:
            again = await client.post(
                f"{urls[0]}/v1/notifications",
                json=notification(subject=marker, metadata={"marker": marker}),
                headers={"Idempotency-Key": marker},
            )
            assert again.status_code == 202, again.text
            assert "idempotent-replayed" not in again.headers
            ids.append(again.json()["id"])
        docs = await settled(client, urls[0], ids)
    # Delivery resumed by itself: everything accepted ended sent, nothing left sending.
    check_ledger(smtp, docs)
    files = [Path(env["NOTIFIER_ACK_FILE"]) for env in cluster.envs]
    await wait_for_acks(files, ids, final="sent")


async def wait_status(
    client: httpx.AsyncClient, url: str, notification_id: str, status: str
) -> dict[str, Any]:
    """Poll one replica until the notification has ``status`` and its accepted line."""
    give_up = time.monotonic() + DEADLINE
    while True:
        response = await client.get(f"{url}/v1/notifications/{notification_id}")
        assert response.status_code == 200, response.text
        doc: dict[str, Any] = response.json()
        if doc["status"] == status and doc["acknowledged"]:
            return doc
        assert doc["status"] not in TERMINAL - {status}, doc
        assert time.monotonic() < give_up, f"never {status}: {doc}"
        await asyncio.sleep(POLL)


@pytest.mark.timeout(60)
async def test_any_replica_answers_for_cancels_and_retries_what_another_accepted(
    smtp: SMTPServer,
    service_env: dict[str, str],
    postgres_url: str,
    tmp_path: Path,
    processes: list[ServiceProcess],
) -> None:
    # Retries 30 s apart: a deferred notification stays deferred while the test cancels it.
    cluster = await asyncio.to_thread(
        start_cluster,
        service_env,
        postgres_url,
        tmp_path,
        processes,
        NOTIFIER_RETRY_INITIAL_DELAY="30",
        NOTIFIER_RETRY_MAX_DELAY="60",
    )
    a, b, c = (cluster.url(i) or "" for i in range(REPLICAS))
    smtp.handler.rcpt_replies["later@example.com"].append("451 4.2.1 Mailbox busy, try later")
    smtp.handler.rcpt_replies["refused@example.com"].append("550 5.1.1 No such user")
    async with httpx.AsyncClient(timeout=10) as client:
        # Status: each replica accepts one; every replica gives the same document for each.
        accepted = []
        for url in (a, b, c):
            response = await client.post(f"{url}/v1/notifications", json=notification())
            assert response.status_code == 202, response.text
            accepted.append(response.json()["id"])
        for i, notification_id in enumerate(accepted):
            await wait_status(client, (b, c, a)[i], notification_id, "sent")
            answers = [
                await client.get(f"{url}/v1/notifications/{notification_id}") for url in (a, b, c)
            ]
            assert [r.status_code for r in answers] == [200] * REPLICAS
            assert answers[0].json() == answers[1].json() == answers[2].json()

        # Cancel: accepted by a, deferred as b sees it, cancelled by c.
        response = await client.post(
            f"{a}/v1/notifications", json=notification(to=["later@example.com"])
        )
        assert response.status_code == 202, response.text
        deferred_id = response.json()["id"]
        await wait_status(client, b, deferred_id, "deferred")
        cancelled = await client.delete(f"{c}/v1/notifications/{deferred_id}")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert (await client.get(f"{a}/v1/notifications/{deferred_id}")).json()[
            "status"
        ] == "cancelled"
        again = await client.delete(f"{b}/v1/notifications/{deferred_id}")
        assert (again.status_code, again.json()["code"]) == (409, "not_cancellable")

        # Retry: accepted by b, failed as c sees it, queued again by a, sent.
        response = await client.post(
            f"{b}/v1/notifications", json=notification(to=["refused@example.com"])
        )
        assert response.status_code == 202, response.text
        failed_id = response.json()["id"]
        await wait_status(client, c, failed_id, "failed")
        retried = await client.post(f"{a}/v1/notifications/{failed_id}/retry")
        assert retried.status_code == 202, retried.text
        assert retried.json()["status"] == "queued"
        assert retried.headers["location"].endswith(f"/v1/notifications/{failed_id}")
        doc = await wait_status(client, b, failed_id, "sent")
        assert [attempt["outcome"] for attempt in doc["attempts"]] == ["failed", "sent"]
        not_again = await client.post(f"{c}/v1/notifications/{failed_id}/retry")
        assert (not_again.status_code, not_again.json()["code"]) == (409, "not_retryable")
        unknown = [await client.get(f"{url}/v1/notifications/{UNKNOWN_ID}") for url in (a, b, c)]
        assert {r.status_code for r in unknown} == {404}

    # The relay got each delivered message once, and the cancelled one never.
    assert len(smtp.handler.received_by("ada@example.com")) == REPLICAS
    assert len(smtp.handler.received_by("refused@example.com")) == 1
    assert smtp.handler.received_by("later@example.com") == []
    files = [Path(env["NOTIFIER_ACK_FILE"]) for env in cluster.envs]
    await wait_for_acks(files, [deferred_id], final="cancelled")
    acks = await wait_for_acks(files, [failed_id], final="sent")
    assert acks[(failed_id, "failed")] >= 1
