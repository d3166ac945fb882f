"""Replay and drop while the projector writes the same model (issue 22, items 2, 7, 8).

Real NATS, Valkey and graph store. A replay writes each aggregate whole in one
guarded atomic step, so a live worker writing the same story at the same time never
sees (nor leaves) a half-replayed story, and a replay that fails changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from neo4j import exceptions as neo4j_errors

from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.graph_model import GraphModel
from jetsource.domains.context.samples import story_events
from jetsource.eventstore import jsapi
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from jetsource.projection.control import DROPPED, version_dropped
from jetsource.projection.host import ProjectorService
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import projection_of, seed, story_ids

pytestmark = pytest.mark.integration

MODELS = ("context", "timeline", "graph")
HOT = "hot-story"


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with projection_of(settings, unique, models=MODELS, versions=(1, 2, 3)) as p:
        yield p


async def build(p: Projection, name: str, version: int = 1) -> Worker:
    worker = Worker(p.nc, p.store, p.model(name, version), p.dead_letters, p.settings.projector)
    await worker.run(until_caught_up=True)
    return worker


async def write_hot(p: Projection, stop: asyncio.Event, start: int, limit: int) -> int:
    """Append the hot story's history three events at a time until stopped; returns
    its length."""
    history = story_events(HOT, limit, max_nodes=30)
    i = start
    while not stop.is_set() and i < len(history):
        chunk = history[i : i + 3]
        await p.store.append(HOT, [NewEvent(m) for m in chunk], i)
        i += len(chunk)
        await asyncio.sleep(0.001)
    return i


@pytest.mark.parametrize("name", MODELS)
async def test_replay_of_a_hot_story_while_it_is_written(projection: Projection, name: str) -> None:
    p = projection
    await seed(p.store, story_ids(5), 20)
    history = story_events(HOT, 60, max_nodes=30)
    await p.store.append(HOT, [NewEvent(m) for m in history[:60]], 0)
    built = (await build(p, name)).stats.applied
    worker = Worker(p.nc, p.store, p.model(name, 1), p.dead_letters, p.settings.projector)
    live = asyncio.create_task(worker.run())
    stop = asyncio.Event()
    writing = asyncio.create_task(write_hot(p, stop, 60, 3000))
    reports = []
    try:
        for _ in range(12):
            reports.append(await admin.replay(p, name, aggregate_id=HOT))
            reports.append(await admin.replay(p, name, from_seq=50, to_seq=200))
        stop.set()
        length = await writing
        total = 5 * 20 + length
        model = p.model(name, 1)
        for _ in range(400):
            if (await model.checkpoint()).applied >= total and await model.position(HOT) == length:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        worker.stop()
        await live
    assert all(not r.failed for r in reports), [r.failed for r in reports if r.failed]
    assert sum(r.reapplied for r in reports) > 0
    assert await model.position(HOT) == length
    # Each event applied once: by the live worker or moved forward by a replay.
    assert (await model.checkpoint()).applied == total, name
    if name != "context":  # the context model's count is fixed in apply() (runtime work)
        live_applied = worker.stats.applied + sum(r.advanced for r in reports)
        assert built + live_applied == total, name
    await build(p, name, 2)
    clean = p.model(name, 2)
    if isinstance(model, GraphModel) and isinstance(clean, GraphModel):
        a, b = set(map(repr, await model.dump())), set(map(repr, await clean.dump()))
        assert sorted(a - b)[:3] == sorted(b - a)[:3], name
    assert await model.digest() == await clean.digest(), name


async def test_a_failed_graph_replay_leaves_the_story_as_it_was(
    projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = projection
    await seed(p.store, story_ids(3), 30)
    await build(p, "graph")
    graph = p.model("graph", 1)
    assert isinstance(graph, GraphModel)
    before = await graph.dump()
    real = GraphModel._write_nodes
    calls = {"n": 0}

    async def failing(self: GraphModel, tx: Any, writes: Any, ok: set[str]) -> None:
        calls["n"] += 1
        await real(self, tx, writes, ok)  # the deletes and the writes happened...
        raise RuntimeError("the store fell over mid-transaction")  # ...and roll back

    monkeypatch.setattr(GraphModel, "_write_nodes", failing)
    report = await admin.replay(p, "graph", aggregate_id="s0001")
    assert calls["n"] >= 1
    assert [r.split(":")[0] for r in report.failed.values()] == ["s0001"]
    assert report.reapplied == 0
    assert await graph.dump() == before

    # Transient trouble (a deadlock, the store restarting) is retried with backoff.
    flaky = {"n": 0}

    async def deadlocked(self: GraphModel, tx: Any, writes: Any, ok: set[str]) -> None:
        flaky["n"] += 1
        if flaky["n"] <= 2:
            raise neo4j_errors.TransientError("DeadlockDetected: concurrent change")
        await real(self, tx, writes, ok)

    monkeypatch.setattr(GraphModel, "_write_nodes", deadlocked)
    monkeypatch.setattr(admin, "RETRY_FIRST_S", 0.01)
    report = await admin.replay(p, "graph", aggregate_id="s0001")
    assert not report.failed and report.reapplied == 30
    assert flaky["n"] >= 3
    assert await graph.dump() == before


async def test_rewind_guard_writes_nothing_when_the_version_moved(projection: Projection) -> None:
    p = projection
    await seed(p.store, ["g1"], 12)
    events = await p.store.read_aggregate("g1")
    for name in MODELS:
        await build(p, name)
        model: Any = p.model(name, 1)
        digest = await model.digest()
        # Stored at 12: a write computed for version 10 and guarded at 10 is refused.
        assert await model.rewind("g1", 10, events=events[:10], guard=(10, 10)) == 12
        assert await model.digest() == digest, name
        # Guarded at 12, written at 12: the same content, nothing counted twice.
        assert await model.rewind("g1", 12, events=events, guard=(12, 12)) == 12
        assert await model.digest() == digest, name
        assert (await model.checkpoint()).applied == 12


async def test_graph_applied_counts_only_what_the_transaction_wrote(
    projection: Projection,
) -> None:
    p = projection
    await seed(p.store, ["x", "y"], 4)
    x, y = await p.store.read_aggregate("x"), await p.store.read_aggregate("y")
    stale = p.model("graph", 1)
    other = p.model("graph", 1)
    assert isinstance(stale, GraphModel) and isinstance(other, GraphModel)
    assert (await stale.apply(x[:1])).applied == 1  # caches x at version 1
    assert (await other.apply(x[1:3])).applied == 2  # x moves to 3 behind its back
    before = (await stale.checkpoint()).applied
    outcome = await stale.apply([*x[1:4], *y])  # x conflicts, y applies
    after = (await stale.checkpoint()).applied
    assert outcome.applied == after - before == 4
    assert set(outcome.waiting) == {e.stream_seq for e in x[1:4]}


async def _leftovers(p: Projection, name: str, version: int) -> tuple[bool, int]:
    return await admin._leftovers(p, name, version)


async def test_drop_right_after_rebuild_under_traffic_leaves_nothing(
    projection: Projection,
) -> None:
    p = projection
    p.settings.projector.models = ["context"]
    p.settings.projector.control_poll_s = 0.5
    stories = story_ids(4)
    await seed(p.store, stories, 10)
    service = ProjectorService(p)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    writing_stop = asyncio.Event()
    writing = asyncio.create_task(write_hot(p, writing_stop, 0, 100_000))
    try:
        await admin.rebuild(p, "context", 2)
        for _ in range(40):  # the service runs v2 now and writes it live
            if ("context", 2) in service.workers:
                break
            await asyncio.sleep(0.05)
        assert ("context", 2) in service.workers
        with pytest.raises(admin.AdminError, match="active"):
            await admin.drop(p, "context", 1)
        assert await admin.drop(p, "context", 2) > 0
        # Long enough for any straggler to write or to recreate its consumer.
        await asyncio.sleep(2.0)
        assert await _leftovers(p, "context", 2) == (False, 0)
        control = await p.control.get("context")
        assert control is not None and 2 not in control.versions
        assert ("context", 2) not in service.workers
        assert (await p.model("context", 1).checkpoint()).applied > 0
    finally:
        writing_stop.set()
        await writing
        stop.set()
        await running


async def test_drop_marks_the_version_so_its_worker_stops_before_writing(
    projection: Projection,
) -> None:
    """The fence a worker asks before each batch (`version_dropped`) says yes as soon
    as drop has marked the version, before the consumer and keys go."""
    p = projection
    await seed(p.store, ["a"], 5)
    await admin.rebuild(p, "context", 2)
    bucket = p.settings.projector.control_bucket
    assert not await version_dropped(p.nc, bucket, "context", 2)
    dropping = asyncio.create_task(admin.drop(p, "context", 2, settle_s=1.0))
    for _ in range(40):
        control = await p.control.get("context")
        if control is not None and control.versions.get(2) == DROPPED:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # the fence reads at most every quarter second
    assert await version_dropped(p.nc, bucket, "context", 2)
    info = await jsapi.consumer_info(
        p.store._replies, p.store.settings.stream, "jetsource-context-v2", 5
    )
    assert info is not None  # the worker is told to stop before anything is deleted
    await dropping
    assert await _leftovers(p, "context", 2) == (False, 0)
    # Version 1 was never dropped.
    assert not await version_dropped(p.nc, bucket, "context", 1)
