"""Read models converge on their own after their Valkey store lost or refused data.

Faults the chaos table does not inject (it restarts Valkey with its data): Valkey
emptied (FLUSHALL, or restarted without persistence) while the projector runs and
writes, while it is idle, and while it is down; and Valkey at ``maxmemory`` with
``noeviction``, refusing every write with OOM until memory is freed. In every domain
with Valkey models (context, process, omni), each model must come back complete on
its own (the consumer's position in NATS is worthless once the store is emptied) and
equal a clean rebuild, each event applied once (``applied``), with no dead letters.

Before the fix an emptied store stayed silently partial for good (only aggregates
that got a new event came back; `projector status` said live, lag 0), and an OOM
refusal dead-lettered every event of a batch and parked its aggregates.

Each test runs its own Valkey (FLUSHALL and CONFIG SET would hit the session's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from valkey.asyncio import Valkey

from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings, ValkeySettings
from jetsource.domains.context.samples import story_events
from jetsource.eventstore import jsapi
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.domain import DomainRegistry
from jetsource.projection.runtime import MARK_CHECK_S, Worker
from tests.infra import Server, start_valkey
from tests.projector_fixtures import projector_settings, seed, story_ids

pytestmark = pytest.mark.integration

# From the fault to every model equal to a clean rebuild: a few hundred events
# rebuilt, plus the idle check's period for a store emptied while nothing comes.
CONVERGE_S = MARK_CHECK_S + 20.0


@pytest.fixture
def own_valkey(tmp_path: Path) -> Any:
    server = start_valkey(tmp_path)
    yield server
    server.stop()


@dataclasses.dataclass
class Domain:
    p: Projection
    models: list[str]  # its Valkey models
    more: Callable[[], Awaitable[None]]  # append more events to one aggregate
    graphs: list[str] = dataclasses.field(default_factory=list)  # its graph models


async def context_domain(settings: JetsourceSettings, unique: str) -> Domain:
    p = await open_projection(projector_settings(settings, unique))
    stories = story_ids(12)
    await seed(p.store, stories, 10)
    extra = story_events(stories[0], 14, 0)

    async def more() -> None:
        for i in range(10, 14):
            await p.store.append(stories[0], [NewEvent(extra[i])], i)

    return Domain(p, ["context", "timeline"], more, ["graph"])


async def process_domain(settings: JetsourceSettings, unique: str) -> Domain:
    from jetsource.domains.process.descriptor import DOMAIN as PROCESS_DOMAIN
    from tests.integration.test_poison_every_domain import Ledger

    domain = dataclasses.replace(
        PROCESS_DOMAIN, stream=f"PR_{unique}", subject_prefix=f"pr{unique}.events"
    )
    p = await open_projection(
        projector_settings(settings, unique), domains=DomainRegistry([domain])
    )
    ledger = Ledger(p)
    for i in range(8):
        await ledger.started(f"proc-{i}", 4)

    async def more() -> None:
        for n in range(3):
            await ledger.good("proc-0", "step_done", n=10 + n)

    return Domain(p, valkey_models(p), more, valkey_models(p, "graph"))


async def omni_domain(settings: JetsourceSettings, unique: str) -> Domain:
    from jetsource.domains.omni.descriptor import omni_domain as make
    from jetsource.domains.omni.samples import sample_history
    from tests.integration.omni.harness import omni_settings

    s = omni_settings(settings.nats_url(), str(settings.valkey.url), unique)
    p = await open_projection(s, domains=DomainRegistry([make(s.omni)]))
    store = p.domain_store("omni")
    for n, aggregate in enumerate(["evt-a", "evt-b", "idn-a", "idn-b", "evt-c"]):
        for i, message in enumerate(sample_history(aggregate, 4, n)):
            await store.append(aggregate, [NewEvent(message)], i)
    history = sample_history("evt-a", 7, 0)

    async def more() -> None:
        for i in range(4, 7):
            await store.append("evt-a", [NewEvent(history[i])], i)

    return Domain(p, valkey_models(p), more)


def valkey_models(p: Projection, store: str = "valkey") -> list[str]:
    return [
        name
        for name in p.model_names()
        if p.pinned_version(name) is None and p.spec(name, 1).store == store
    ]


DOMAINS = {"context": context_domain, "process": process_domain, "omni": omni_domain}


@pytest.fixture(params=list(DOMAINS))
async def domain(
    request: pytest.FixtureRequest, settings: JetsourceSettings, unique: str, own_valkey: Server
) -> AsyncIterator[Domain]:
    private = settings.model_copy(update={"valkey": ValkeySettings(url=own_valkey.url)})
    d = await DOMAINS[request.param](private, unique)
    assert d.models, request.param
    yield d
    await d.p.close()


class Running:
    """One live worker per model, as the projector service runs them."""

    def __init__(self, d: Domain) -> None:
        self.d = d
        self.workers: list[Worker] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        p = self.d.p
        for name in self.d.models:
            await p.control.ensure(name, 1)
            w = Worker(
                p.nc, p.store_for(name), p.model(name, 1), p.dead_letters, p.settings.projector
            )
            self.workers.append(w)
            self.tasks.append(asyncio.create_task(w.run()))

    async def stop(self) -> None:
        for w in self.workers:
            w.stop()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 30)
        self.workers, self.tasks = [], []


async def applied(p: Projection, name: str, version: int) -> int:
    return (await p.model(name, version).checkpoint()).applied


async def clean_build(p: Projection, name: str) -> None:
    """Version 2 of the model built from nothing to the stream's end: the reference."""
    store, model = p.store_for(name), p.model(name, 2)
    await jsapi.delete_consumer(
        store._replies, store.settings.stream, model.spec.durable, store.settings.request_timeout_s
    )
    await model.drop()
    worker = Worker(p.nc, store, model, p.dead_letters, p.settings.projector)
    await asyncio.wait_for(worker.run(until_caught_up=True), 60)


async def converged(d: Domain, since: float) -> float:
    """Seconds from ``since`` until every model equals a clean rebuild (built here
    once, as version 2) and applied as many events; fails after CONVERGE_S."""
    p = d.p
    for name in d.models:
        await clean_build(p, name)
    deadline = since + CONVERGE_S
    while True:
        behind = []
        for name in d.models:
            live, clean = p.model(name, 1), p.model(name, 2)
            if (
                await applied(p, name, 1) != await applied(p, name, 2)
                or await live.digest() != await clean.digest()
            ):
                behind.append(f"{name} {await applied(p, name, 1)}/{await applied(p, name, 2)}")
        if not behind:
            assert not await admin.dlq_list(p), "a store fault is no poison"
            return time.monotonic() - since
        assert time.monotonic() < deadline, f"not converged in {CONVERGE_S:g} s: {behind}"
        await asyncio.sleep(0.2)


async def test_an_emptied_store_is_rebuilt_whether_writing_idle_or_down(
    domain: Domain, own_valkey: Server
) -> None:
    d, r = domain, Valkey.from_url(own_valkey.url)
    running = Running(d)
    try:
        await running.start()
        await converged(d, time.monotonic())
        # Emptied while writing: the next write finds the store emptied.
        await r.flushall()
        t = time.monotonic()
        await d.more()
        took = [await converged(d, t)]
        # Emptied while idle: nothing comes, the idle check finds it.
        await r.flushall()
        took.append(await converged(d, time.monotonic()))
        # Emptied while the projector is down (a restart without persistence).
        await running.stop()
        await r.flushall()
        t = time.monotonic()
        await running.start()
        took.append(await converged(d, t))
        assert took[1] <= MARK_CHECK_S + 15, took
        rows = {row["model"]: row for row in await admin.status(d.p) if row["version"] == 1}
        for name in d.models:
            assert rows[name]["applied"] == await applied(d.p, name, 2), rows[name]
    finally:
        await running.stop()
        for name in d.models:
            for version in (1, 2):
                await d.p.model(name, version).drop()
        await r.aclose()


async def test_writes_refused_at_maxmemory_wait_for_memory_and_file_no_dead_letters(
    domain: Domain, own_valkey: Server
) -> None:
    d, r = domain, Valkey.from_url(own_valkey.url)
    running = Running(d)
    try:
        await running.start()
        await converged(d, time.monotonic())
        used = int((await r.info("memory"))["used_memory"])
        await r.config_set("maxmemory-policy", "noeviction")
        await r.config_set("maxmemory", used + 1024)
        await d.more()
        await asyncio.sleep(3.0)  # refused for a while: more than max_deliver tries
        assert not await admin.dlq_list(d.p), "an OOM refusal filed dead letters"
        await r.config_set("maxmemory", 0)
        await converged(d, time.monotonic())
    finally:
        await r.config_set("maxmemory", 0)
        await running.stop()
        for name in d.models:
            for version in (1, 2):
                await d.p.model(name, version).drop()
        await r.aclose()


@pytest.fixture(params=["context", "process"])
async def graph_domain(
    request: pytest.FixtureRequest, settings: JetsourceSettings, unique: str
) -> AsyncIterator[Domain]:
    d = await DOMAINS[request.param](settings, unique)
    assert d.graphs, request.param
    yield dataclasses.replace(d, models=d.graphs)
    await d.p.close()


async def test_an_emptied_graph_store_is_rebuilt_whether_writing_idle_or_down(
    graph_domain: Domain,
) -> None:
    """The graph store emptied (the model's nodes gone with its checkpoint node, as a
    database dropped and created again leaves it; the session's store is shared, so
    only this model's nodes go)."""
    d = graph_domain
    running = Running(d)

    async def empty() -> None:
        for name in d.models:
            await d.p.model(name, 1).drop()

    try:
        await running.start()
        await converged(d, time.monotonic())
        await empty()
        t = time.monotonic()
        await d.more()
        await converged(d, t)
        await empty()
        await converged(d, time.monotonic())
        await running.stop()
        await empty()
        t = time.monotonic()
        await running.start()
        await converged(d, t)
    finally:
        await running.stop()
        for name in d.models:
            for version in (1, 2):
                await d.p.model(name, version).drop()


async def test_a_consumer_deleted_under_a_running_worker_is_created_again(
    domain: Domain,
) -> None:
    """The model's durable consumer deleted (`nats consumer rm`, JetStream's state lost)
    while its worker runs: the worker pulled from nothing for good, the model frozen
    (status said "not started"). Now it is created again from the replay start within
    the idle check, and events appended meanwhile reach the model, each applied once."""
    d, p = domain, domain.p
    running = Running(d)
    try:
        await running.start()
        await converged(d, time.monotonic())
        for name in d.models:
            store = p.store_for(name)
            assert await jsapi.delete_consumer(
                store._replies,
                store.settings.stream,
                p.spec(name, 1).durable,
                store.settings.request_timeout_s,
            )
        t = time.monotonic()
        await d.more()
        took = await converged(d, t)
        assert took <= MARK_CHECK_S + 15, took
    finally:
        await running.stop()
        for name in d.models:
            for version in (1, 2):
                await d.p.model(name, version).drop()


async def test_partitioned_replicas_rebuild_every_partition_of_an_emptied_store(
    settings: JetsourceSettings, unique: str, own_valkey: Server
) -> None:
    """With partitions each partition has its own consumer: one partition's worker
    rebuilding after a wipe marks the store again, and every other partition's
    consumer (built under the old mark, in its metadata) must be rebuilt too, not
    take the new mark for its own. Emptied while the service runs, then while it is
    down (FLUSHALL also takes the fence tokens: the workers are fenced, then claim
    their partitions again)."""
    from jetsource.projection.host import ProjectorService
    from tests.integration.test_partitions import partitioned
    from tests.projector_fixtures import drop_partition_mirrors

    private = settings.model_copy(update={"valkey": ValkeySettings(url=own_valkey.url)})
    p = await open_projection(partitioned(private, unique, 4))
    p.settings.projector.models = ["context", "timeline"]
    d = Domain(p, ["context", "timeline"], lambda: asyncio.sleep(0))
    stories = story_ids(16)
    await seed(p.store, stories, 6)
    r = Valkey.from_url(own_valkey.url)

    async def serve() -> tuple[asyncio.Event, asyncio.Task[None]]:
        stop = asyncio.Event()
        return stop, asyncio.create_task(ProjectorService(p, group=f"g{unique}").run(stop))

    stop, task = await serve()
    try:
        await converged(d, time.monotonic())
        await r.flushall()
        await seed(p.store, story_ids(4, "late"), 3)
        await converged(d, time.monotonic())
        stop.set()
        await asyncio.wait_for(task, 30)
        await r.flushall()
        stop, task = await serve()
        await converged(d, time.monotonic())
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        for name in d.models:
            for version in (1, 2):
                await p.model(name, version).drop()
        await drop_partition_mirrors(p, 4)
        await p.close()
        await r.aclose()


async def test_a_valkey_that_evicts_keys_is_named_at_start(
    settings: JetsourceSettings, unique: str, own_valkey: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """An ``allkeys-*`` policy at ``maxmemory`` drops model keys silently (no mark can
    tell): the worker says so at start, naming the setting that prevents it."""
    private = settings.model_copy(update={"valkey": ValkeySettings(url=own_valkey.url)})
    p = await open_projection(projector_settings(private, unique))
    r = Valkey.from_url(own_valkey.url)
    try:
        await r.config_set("maxmemory", 512 * 1024 * 1024)
        await r.config_set("maxmemory-policy", "allkeys-lru")
        await p.control.ensure("context", 1)
        worker = Worker(p.nc, p.store, p.model("context", 1), p.dead_letters, p.settings.projector)
        with caplog.at_level("ERROR", logger="jetsource.projector"):
            await asyncio.wait_for(worker.run(until_caught_up=True), 30)
        assert "maxmemory-policy allkeys-lru" in caplog.text
        assert "set maxmemory-policy noeviction" in caplog.text
        caplog.clear()
        await r.config_set("maxmemory-policy", "noeviction")
        worker = Worker(p.nc, p.store, p.model("context", 1), p.dead_letters, p.settings.projector)
        with caplog.at_level("ERROR", logger="jetsource.projector"):
            await asyncio.wait_for(worker.run(until_caught_up=True), 30)
        assert "maxmemory-policy" not in caplog.text
    finally:
        await r.config_set("maxmemory", 0)
        await p.model("context", 1).drop()
        await p.close()
        await r.aclose()


async def test_a_graph_database_that_is_gone_is_an_outage_not_poison(
    settings: JetsourceSettings, unique: str
) -> None:
    """The graph database missing (dropped, being created again: the graph store
    emptied) answers Neo.ClientError.Database.DatabaseNotFound: a client error, taken
    for a refusal of the events, so every event was dead-lettered and its story
    parked. It is the store's state: the model waits, nothing is filed."""
    from jetsource.projection.contract import TransientError

    gone = settings.model_copy(
        update={"graph": settings.graph.model_copy(update={"database": f"gone{unique}"})}
    )
    p = await open_projection(projector_settings(gone, unique))
    try:
        await seed(p.store, story_ids(3), 4)
        model = p.model("graph", 1)
        # A transient error: the runtime redelivers the batch (never files it), and a
        # worker starting meanwhile fails its start and is started again by the host.
        with pytest.raises(TransientError, match="DatabaseNotFound"):
            await model.apply(await p.store.read_aggregate(story_ids(3)[0]))
        with pytest.raises(TransientError, match="DatabaseNotFound"):
            await model.checkpoint()
        assert not await admin.dlq_list(p)
    finally:
        await p.close()


@pytest.mark.parametrize(
    "error",
    [
        "OOM command not allowed when used memory > 'maxmemory'.",
        "READONLY You can't write against a read only replica.",
        "NOPERM this user has no permissions to run the 'evalsha' command",
        "MISCONF Errors writing to the AOF file: No space left on device",
        "BUSY Valkey is busy running a script.",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "NOREPLICAS Not enough good replicas to write.",
    ],
)
def test_every_valkey_refusal_of_its_own_is_an_outage(error: str) -> None:
    """Each refusal as valkey-py raises it from the server's reply: transient (the
    batch waits for the store), never a refusal of the events."""
    from valkey._parsers.base import BaseParser

    from jetsource.projection.valkey import transient

    assert transient(BaseParser.parse_error(error)), error
    assert not transient(BaseParser.parse_error("ERR user_script:1: Script attempted ..."))
