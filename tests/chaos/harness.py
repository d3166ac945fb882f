"""Chaos scenarios on a running stack under load.

A scenario starts the four services as processes on its own stream and read-model
names, drives commands through the publisher's gRPC API (each command retried with
its idempotency key until acknowledged), injects its fault, then checks the
invariants and returns one row of the table:

  appended      commands sent (each at least once)
  acknowledged  commands the publisher confirmed
  readable      confirmed commands found in the stream at their confirmed version
  digest equal  every read model equals a clean rebuild of the stream
  duplicates    events stored twice (same idempotency key) + effects applied twice
  dead letters  messages in the dead-letter stream (poison only where injected)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from valkey.asyncio import Valkey

from jetsource.client import ContextClient
from jetsource.core.settings import JetsourceSettings
from jetsource.devstack.servers import NatsServer, ValkeyServer, free_port
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.settings import ProjectorSettings
from tests.infra import Server, track
from tests.projector_fixtures import projector_settings, start_projector
from tests.stack import Services

MODELS = ("context", "timeline", "graph")
RETRY = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}


@dataclass
class Row:
    scenario: str
    appended: int = 0
    acknowledged: int = 0
    readable: int = 0
    digest_equal: bool = False
    duplicates: int = 0
    dead_letters: int = 0
    expected_dead_letters: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # a row's own checks that failed
    rates: dict[str, float] = field(default_factory=dict)  # clean rebuild, events/s

    @property
    def passed(self) -> bool:
        return (
            not self.failures
            and self.acknowledged == self.appended
            and self.readable == self.acknowledged
            and self.digest_equal
            and self.duplicates == 0
            and self.dead_letters == self.expected_dead_letters
        )


HEADER = (
    f"{'scenario':<24} {'appended':>8} {'acked':>6} {'readable':>8} {'digest=':>7} "
    f"{'dup':>4} {'dlq':>4} {'secs':>5}  result"
)


def line(r: Row) -> str:
    return (
        f"{r.scenario:<24} {r.appended:>8} {r.acknowledged:>6} {r.readable:>8} "
        f"{'yes' if r.digest_equal else 'NO':>7} {r.duplicates:>4} {r.dead_letters:>4} "
        f"{r.seconds:>5.0f}  {'pass' if r.passed else 'FAIL'}  {'; '.join(r.notes + r.failures)}"
    )


@dataclass
class Cluster:
    """One NATS server, or three in a cluster on loopback."""

    nodes: list[NatsServer]
    procs: list[Any]

    @property
    def url(self) -> str:
        return ",".join(n.address() for n in self.nodes)

    def kill(self, i: int) -> None:
        self.procs[i].kill()
        self.procs[i].wait(timeout=10)

    def start(self, i: int) -> None:
        self.procs[i] = self.nodes[i].start()
        self.nodes[i].wait_ready(self.procs[i], 60)

    def restart(self, i: int = 0) -> None:
        self.procs[i].terminate()
        self.procs[i].wait(timeout=30)
        self.start(i)

    def stop(self) -> None:
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(timeout=30)

    def leader_of(self, stream: str) -> int:
        for node in self.nodes:
            try:
                info = httpx.get(
                    f"http://{node.host}:{node.monitor_port}/jsz?streams=true", timeout=2
                ).json()
            except httpx.HTTPError:
                continue
            for account in info.get("account_details", []):
                for s in account.get("stream_detail", []):
                    if s["name"] == stream and s.get("cluster", {}).get("leader"):
                        name = s["cluster"]["leader"]
                        return [n.server_name for n in self.nodes].index(name)
        raise AssertionError(f"no leader known for {stream}")

    def wait_meta_leader(self, timeout: float = 60) -> None:
        """Until the JetStream meta group has a leader that sees every other server as
        a current peer (only the leader tracks them all): an R3 stream created before
        that was refused "no suitable peers for placement, peer offline"."""
        deadline = time.monotonic() + timeout
        others = len(self.nodes) - 1
        while time.monotonic() < deadline:
            for node in self.nodes:
                try:
                    jsz = httpx.get(f"http://127.0.0.1:{node.monitor_port}/jsz", timeout=2).json()
                except httpx.HTTPError:
                    continue
                meta = jsz.get("meta_cluster", {})
                if meta.get("leader") != node.server_name:
                    continue
                current = [
                    r
                    for r in meta.get("replicas") or []
                    if r.get("current") and not r.get("offline")
                ]
                if len(current) >= others:
                    return
            time.sleep(0.2)
        raise AssertionError("no JetStream meta leader that sees every server as current")


def start_cluster(home: Path, size: int) -> Cluster:
    cluster = make_cluster(home, size)
    cluster.procs = [n.start() for n in cluster.nodes]
    for i, n in enumerate(cluster.nodes):
        n.wait_ready(cluster.procs[i], 60)
    if size > 1:
        cluster.wait_meta_leader()
    return cluster


def make_cluster(home: Path, size: int) -> Cluster:
    """The servers of a cluster on loopback, none started (``Cluster.start(i)``)."""
    ports = [(free_port(), free_port(), free_port()) for _ in range(size)]
    nodes = []
    for i, (client, monitor, route) in enumerate(ports):
        extra = ""
        if size > 1:
            routes = ", ".join(f'"nats-route://127.0.0.1:{r}"' for _, _, r in ports)
            extra = (
                "cluster {\n  name: jetsource-chaos\n"
                f'  listen: "127.0.0.1:{route}"\n  routes: [{routes}]\n}}\n'
            )
        nodes.append(
            NatsServer(
                home / f"nats{i}",
                port=client,
                monitor_port=monitor,
                server_name=f"n{i}",
                extra_config=extra,
            )
        )
    return Cluster(nodes, [None] * size)


@dataclass
class Stack:
    """Servers for one chaos run: NATS (one or three), Valkey and the graph store."""

    home: Path
    nats: Cluster
    valkey: ValkeyServer
    valkey_proc: Any
    graph: Server

    def restart_valkey(self) -> None:
        self.valkey_proc.terminate()
        self.valkey_proc.wait(timeout=30)
        self.valkey_proc = self.valkey.start()
        self.valkey.wait_ready(self.valkey_proc, 60)

    def stop(self) -> None:
        self.nats.stop()
        if self.valkey_proc.poll() is None:
            self.valkey_proc.terminate()
            self.valkey_proc.wait(timeout=30)

    def settings(self, base: JetsourceSettings, unique: str, replicas: int) -> ProjectorSettings:
        s = projector_settings(
            base,
            unique,
            ack_wait_s=2.0,
            pull_batch=200,
            backoff_s=[0.1, 0.2, 0.5],
        )
        # Copies: the base's server settings are the session's, shared by other tests.
        s.nats = s.nats.model_copy(update={"url": self.nats.url})
        s.valkey = s.valkey.model_copy(update={"url": self.valkey.address()})
        s.eventstore.replicas = replicas
        s.snapshots.replicas = replicas
        s.snapshots.every = 10
        s.eventstore.retry_attempts = 3
        return s


def start_stack(home: Path, graph: Server, nats_nodes: int = 1) -> Stack:
    cluster = start_cluster(home, nats_nodes)
    valkey = ValkeyServer(home / "valkey", port=free_port())
    proc = valkey.start()
    valkey.wait_ready(proc, 60)
    return Stack(home, cluster, valkey, proc, graph)


@dataclass
class Command:
    story: str
    key: str
    version: int  # the version it makes (expected version + 1)


@dataclass
class Load:
    """Writers through the publisher until stopped: each takes the next story and sends
    its ``events`` commands in order. Every command is retried with its idempotency key
    (and expected version) until acknowledged."""

    target: str
    prefix: str
    events: int
    writers: int = 8
    # Writers that all append to one story (``<prefix>-hot``) without an expected
    # version, each command still retried with its idempotency key until confirmed.
    hot_writers: int = 0
    stories: list[str] = field(default_factory=list)
    sent: list[Command] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)  # key -> version
    retries: int = 0

    async def _send(self, client: ContextClient, c: Command) -> None:
        self.sent.append(c)
        while True:
            try:
                if c.version == 1:
                    r = await client.create_context(
                        c.story, title=f"Story {c.story}", idempotency_key=c.key
                    )
                elif c.version % 3 == 0:
                    r = await client.add_subtask(
                        c.story,
                        f"t{c.version}",
                        title=f"Task {c.version}",
                        idempotency_key=c.key,
                        expected_version=c.version - 1,
                    )
                else:
                    r = await client.add_decision(
                        c.story,
                        f"d{c.version}",
                        f"Decision {c.version}",
                        idempotency_key=c.key,
                        expected_version=c.version - 1,
                    )
                self.acked[c.key] = r.version
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRY:
                    raise
                self.retries += 1
                await asyncio.sleep(0.2)

    @property
    def hot(self) -> str:
        return f"{self.prefix}-hot"

    async def _send_hot(self, client: ContextClient, writer: int, n: int) -> None:
        """The ``n``-th command of a hot writer: its first 15 decisions, then
        revisions of them (the story stays a bounded size, like a long-lived one)."""
        key = f"{self.hot}:w{writer}:{n}"
        self.sent.append(Command(self.hot, key, 0))
        decision = f"w{writer}d{n % 15}"
        while True:
            try:
                if n < 15:
                    r = await client.add_decision(
                        self.hot, decision, f"Decision {n}", idempotency_key=key
                    )
                else:
                    r = await client.revise_decision(
                        self.hot, decision, title=f"Revision {n}", idempotency_key=key
                    )
                self.acked[key] = r.version
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRY:
                    raise
                self.retries += 1
                await asyncio.sleep(0.2)

    async def run(self, stop: asyncio.Event) -> None:
        if self.hot_writers:
            async with ContextClient(self.target, timeout=5) as client:
                self.stories.append(self.hot)
                await self._send(client, Command(self.hot, f"{self.hot}:1", 1))

        async def hot_writer(w: int) -> None:
            async with ContextClient(self.target, timeout=5) as client:
                n = 0
                while not stop.is_set():
                    await self._send_hot(client, w, n)
                    n += 1

        async def writer() -> None:
            async with ContextClient(self.target, timeout=5) as client:
                while not stop.is_set():
                    story = f"{self.prefix}-{len(self.stories):04d}"
                    self.stories.append(story)
                    for v in range(1, self.events + 1):
                        await self._send(client, Command(story, f"{story}:{v}", v))

        await asyncio.gather(
            *(writer() for _ in range(self.writers)),
            *(hot_writer(w) for w in range(self.hot_writers)),
        )


Fault = Callable[["Run"], Awaitable[str]]


@dataclass
class Run:
    """One scenario in progress: its stack, settings, services and load."""

    name: str
    stack: Stack
    settings: ProjectorSettings
    services: Services
    load: Load
    projection: Projection
    expected_dead_letters: int = 0
    poison: int = 0  # messages injected that no model can apply
    # What a fault measured, for the checks after the load (hot-story row).
    restarted_at: float = 0.0  # monotonic time of the projector's last restart
    since: str = "last restart"  # what restarted_at is, for the row's note
    # The share of its clean rebuild rate a model must catch up at (the time-to-head bound).
    rate_share: float = 0.5
    applied_at_restart: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    converge_timeout: float = 180.0


async def applied(run: Run) -> dict[str, int]:
    return {m: (await run.projection.model(m, 1).checkpoint()).applied for m in MODELS}


async def _converged(run: Run, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        applied = [(await run.projection.model(m, 1).checkpoint()).applied for m in MODELS]
        if all(a >= total for a in applied):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{run.name}: read models did not converge ({applied} of {total})")


async def time_to_head(run: Run, total: int, timeout: float) -> dict[str, float]:
    """Seconds from ``run.restarted_at`` until each model had applied ``total``
    events (the stream head); models still behind after ``timeout`` are missing."""
    reached: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(reached) < len(MODELS):
        for m, n in (await applied(run)).items():
            if m not in reached and n >= total:
                reached[m] = time.monotonic() - run.restarted_at
        await asyncio.sleep(0.2)
    return reached


async def check(run: Run, row: Row) -> None:
    p, load = run.projection, run.load
    row.appended = len({c.key for c in load.sent})
    row.acknowledged = len(load.acked)
    keys_seen: dict[str, int] = {}
    total = 0
    for story in load.stories:
        events = await p.store.read_aggregate(story)
        total += len(events)
        assert [e.version for e in events] == list(range(1, len(events) + 1)), story
        for e in events:
            key = e.envelope.idempotency_key
            keys_seen[key] = keys_seen.get(key, 0) + 1
            if load.acked.get(key) == e.version:
                row.readable += 1
    row.duplicates = sum(n - 1 for n in keys_seen.values() if n > 1)
    good = (await p.store.stream_info())["state"]["messages"] - run.poison
    row.failures += run.failures
    if run.restarted_at:
        await _bound_time_to_head(run, row, good)
    await _converged(run, good, run.converge_timeout)
    row.dead_letters = await _dead_letters(p, run.expected_dead_letters, run.converge_timeout)
    equal = True
    for name in MODELS:
        model = p.model(name, 1)
        # Exactly once: each event applied once (poison never).
        row.duplicates += max(0, (await model.checkpoint()).applied - good)
        report = await admin.rebuild(p, name, 2)
        row.rates[name] = report.rate
        clean = p.model(name, 2)
        equal = equal and await model.digest() == await clean.digest()
    row.digest_equal = equal
    if run.restarted_at and "head" in run.applied_at_restart:
        _judge_time_to_head(run, row, good)


async def _dead_letters(p: Projection, expected: int, timeout: float) -> int:
    """The dead letters filed, once the expected ones are in (within ``timeout``) and a
    second more has brought no others. The models converging says nothing of the
    snapshotter, which reaches an injected poison message later the more events came
    before it (a second after convergence was not always enough)."""
    deadline = time.monotonic() + timeout
    count = len(await admin.dlq_list(p))
    while count < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        count = len(await admin.dlq_list(p))
    await asyncio.sleep(1.0)  # one more would be a letter too many: give it time to show
    return len(await admin.dlq_list(p))


async def _bound_time_to_head(run: Run, row: Row, total: int) -> None:
    """After the load stopped: how long from the last restart until every model was
    at the stream head (kept in ``run.applied_at_restart`` under "t:<model>")."""
    reached = await time_to_head(run, total, run.converge_timeout)
    run.applied_at_restart["head"] = total
    for m in MODELS:
        run.applied_at_restart[f"t:{m}"] = int(reached.get(m, -1) * 1000)
    if len(reached) < len(MODELS):
        now = await applied(run)
        row.failures.append(
            f"not at the head {run.converge_timeout:.0f}s after the load: "
            + ", ".join(f"{m} {now[m]}/{total}" for m in MODELS)
        )
        run.converge_timeout = 1.0  # check() need not wait again: the row failed


def _judge_time_to_head(run: Run, row: Row, total: int) -> None:
    """Bound per model: backlog at the last restart / (``run.rate_share``, half by
    default, of the model's clean rebuild rate, measured in this row) + 10 s."""
    parts = []
    for m in MODELS:
        backlog = total - run.applied_at_restart[m]
        rate = row.rates.get(m, 0.0)
        bound = backlog / (rate * run.rate_share) + 10 if rate else float("inf")
        took = run.applied_at_restart[f"t:{m}"] / 1000
        parts.append(f"{m} {took:.1f}s<={bound:.1f}s ({backlog} @ {rate:.0f}/s)")
        if took < 0 or took > bound:
            row.failures.append(f"{m} took {took:.1f}s to the head, bound {bound:.1f}s")
    row.notes.append(f"to head after {run.since}: " + "; ".join(parts))


async def scenario(
    name: str,
    stack: Stack,
    base: JetsourceSettings,
    fault: Fault,
    writers: int = 8,
    events: int = 20,
    replicas: int = 1,
    expected_dead_letters: int = 0,
    poison: int = 0,
    hot_writers: int = 0,
) -> Row:
    started = time.monotonic()
    unique = f"{name.replace('-', '')[:10]}{random.randrange(10**6):06d}"
    s = stack.settings(base, unique, replicas)
    home = stack.home / unique
    options = {
        k: getattr(s.projector, k)
        for k in (
            "dlq_stream",
            "dlq_subject_prefix",
            "control_bucket",
            "valkey_prefix",
            "graph_label_prefix",
            "ack_wait_s",
            "pull_batch",
            "backoff_s",
        )
    }
    shared = JetsourceSettings(
        **{k: getattr(s, k) for k in JetsourceSettings.model_fields if k != "log_level"},
        log_level="WARNING",
    )
    services = Services.configure(
        home,
        shared,
        options={
            "projector": {**options, "models": list(MODELS)},
            "snapshotter": options,
            "query": {},
        },
    )
    row = Row(name, expected_dead_letters=expected_dead_letters)
    projection = await open_projection(s)
    try:
        await asyncio.to_thread(services.start_all)
        load = Load(services.address("publisher"), unique, events, writers, hot_writers)
        run = Run(name, stack, s, services, load, projection, expected_dead_letters, poison)
        stop = asyncio.Event()
        writing = asyncio.create_task(load.run(stop))
        row.notes.append(await fault(run))
        await asyncio.sleep(1.0)  # the load goes on a little after the fault
        stop.set()
        await writing
        if load.retries:
            row.notes.append(f"{load.retries} retried")
        for svc in ("publisher", "projector", "snapshotter", "query"):
            if not services.alive(svc):
                await asyncio.to_thread(services.start, svc)
        await check(run, row)
    finally:
        row.seconds = time.monotonic() - started
        await asyncio.to_thread(services.stop_all)
        for m in MODELS:
            for v in (1, 2):
                with contextlib.suppress(Exception):
                    await projection.model(m, v).drop()
        await projection.close()
    return row


# -- server faults under the read models (the process and omni models' tests) ---------


def start_synced_nats(home: Path) -> Server:
    """An embedded nats-server of the test's own that syncs every write to disk
    (``sync_interval: always``): killed with SIGKILL, it keeps each acknowledged event."""
    nats_server = NatsServer(
        home, port=free_port(), monitor_port=free_port(), sync_interval="always"
    )
    proc = nats_server.start()
    nats_server.wait_ready(proc, 30)
    return track(Server("embedded", nats_server.address(), nats_server, proc))


def kill9(server: Server, away_s: float = 0.0) -> None:
    """SIGKILL of an embedded server, then (``away_s`` later) started again on its
    ports and data."""
    assert server.proc is not None and server.embedded is not None
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    time.sleep(away_s)
    server.proc = server.embedded.start()
    track(server)
    server.embedded.wait_ready(server.proc, 60)


class Projector:
    """The projector as its own process on ``env``, its output appended to ``log``."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc = start_projector(env, log)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def start(self) -> None:
        self.proc = start_projector(self.env, self.log)

    def restart(self) -> None:
        """SIGKILL, then started again at once."""
        self.kill9()
        self.start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)

    def tail(self) -> str:
        return self.log.read_text()[-3000:]


async def wipe_valkey(url: str) -> None:
    """FLUSHALL: a Valkey restarted without persistence."""
    client = Valkey.from_url(url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


async def stream_head(p: Projection, domain: str) -> int:
    """The domain's stream's last sequence, asked again until NATS answers."""
    while True:
        with contextlib.suppress(Exception):
            return int((await p.domain_store(domain).stream_info())["state"]["last_seq"])
        await asyncio.sleep(0.2)


async def seconds_to(
    name: str,
    started: float,
    head: int,
    there: Callable[[int], Awaitable[tuple[bool, Any]]],
    within: float,
    projector: Projector,
) -> float:
    """Seconds from ``started`` (the server back) until ``there(head)`` says every
    model is at ``head`` (with what it saw); a failure after ``within`` seconds names
    what was seen last and the projector's log."""
    seen: Any = None
    while time.monotonic() - started < within:
        with contextlib.suppress(Exception):
            ok, seen = await there(head)
            if ok:
                return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name}: not at {head} ({seen}); {projector.tail()}")


async def strike(fault: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """The fault, with when the server was back and how long it was away."""
    started = time.monotonic()
    await fault()
    back = time.monotonic()
    return back, back - started


def converged(what: str, took: dict[str, float], down: dict[str, float], bound: float) -> None:
    """Prints the seconds to the head after each fault (and how long the server was
    away); each within ``bound``."""
    print(
        f"\n{what}; to the head after "
        + ", ".join(f"{k} {v:.1f}s (away {down.get(k, 0):.1f}s)" for k, v in took.items())
    )
    slow = {k: v for k, v in took.items() if v > bound}
    assert not slow, f"over {bound}s: {slow}"
