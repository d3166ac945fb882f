"""Scale-out (#20) against real servers: the server's partitions, replicas sharing
them through leases (join, leave), fencing of a worker that lost its lease (in a
model's atomic write, Valkey and graph, and a process paused past its lease), and a
parallel rebuild equal to a single-worker one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.samples import story_events
from jetsource.eventstore import jsapi
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.host import ProjectorService
from jetsource.projection.partitions import (
    PartitionOptions,
    ensure_mirror,
    mirror_stream,
    part_root,
    partition_of,
)
from jetsource.projection.runtime import Worker
from jetsource.projection.settings import ProjectorSettings
from tests.projector_fixtures import projector_settings, seed, story_ids

pytestmark = pytest.mark.integration

MODELS = ("context", "timeline", "graph")


def partitioned(
    base: JetsourceSettings, unique: str, count: int, **options: Any
) -> ProjectorSettings:
    return projector_settings(
        base,
        unique,
        control_poll_s=0.2,
        partitions=PartitionOptions(
            count=count,
            lease_bucket=f"L_{unique}",
            lease_ttl_s=2.0,
            renew_every_s=0.3,
            group=f"g{unique}",
        ),
        **options,
    )


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(partitioned(settings, unique, 4))
    yield p
    for name in MODELS:
        for version in (1, 2, 3):
            await p.model(name, version).drop()
    await p.close()


async def applied(p: Projection, name: str, version: int = 1) -> int:
    return (await p.model(name, version).checkpoint()).applied


async def converge(p: Projection, total: int, timeout: float = 60) -> None:
    started = time.monotonic()
    while True:
        counts = {m: await applied(p, m) for m in MODELS}
        if all(c == total for c in counts.values()):
            return
        # Never above: an event applied twice would count twice.
        assert all(c <= total for c in counts.values()), counts
        assert time.monotonic() - started < timeout, (counts, total)
        await asyncio.sleep(0.2)


async def clean_digests(p: Projection, version: int = 2) -> dict[str, str]:
    """Each model built again from the stream by one unpartitioned worker."""
    out = {}
    plain = p.settings.projector.model_copy(update={"partitions": PartitionOptions()})
    for name in MODELS:
        model = p.model(name, version)
        await model.drop()
        worker = Worker(p.nc, p.store_for(name), model, p.dead_letters, plain)
        await asyncio.wait_for(worker.run(until_caught_up=True), 120)
        out[name] = await model.digest()
    return out


async def test_the_server_partitions_by_aggregate_and_keeps_sequences(
    projection: Projection,
) -> None:
    p = projection
    store = p.store_for("context")
    await seed(store, story_ids(12), 2)
    s = store.settings
    await ensure_mirror(store._replies, s.stream, s.subject_prefix, 4, 1, 5.0)
    root = part_root(s.stream, 4)
    seen: dict[int, tuple[str, int]] = {}
    for _ in range(50):
        seen = {}
        async for raw in jsapi.direct_get_batch(
            store._replies, mirror_stream(s.stream, 4), f"{root}.>", 1, 5.0
        ):
            seen[raw.seq] = (raw.subject, raw.time_ns)
        if len(seen) == 24:
            break
        await asyncio.sleep(0.1)
    assert len(seen) == 24
    async for raw in jsapi.direct_get_batch(
        store._replies, s.stream, f"{s.subject_prefix}.>", 1, 5.0
    ):
        subject, time_ns = seen[raw.seq]  # same sequence, same time
        assert time_ns == raw.time_ns
        aggregate = raw.subject.split(".")[-2]
        assert (
            subject
            == f"{root}.{partition_of(aggregate, 4)}.{aggregate}.{raw.subject.split('.')[-1]}"
        )


@pytest.mark.chaos  # about 50 s on the shared 2-core machine: `make chaos`
async def test_replicas_share_partitions_join_and_leave_under_writes(
    projection: Projection, settings: JetsourceSettings, unique: str
) -> None:
    """A replica alone takes all 4 partitions; a second joins (2 + 2, handed over
    after the batch in progress); the first leaves (the second takes all). Writes go
    on throughout; every model equals a clean rebuild and counts each event once."""
    p = projection
    store = p.store_for("context")
    stories = story_ids(16)
    histories = {s: story_events(s, 24, 0) for s in stories}
    for s in stories:
        await store.append(s, [NewEvent(m) for m in histories[s][:4]], 0)
    total = 16 * 4

    async def live_writes(stop: asyncio.Event) -> None:
        nonlocal total
        version = 4
        while not stop.is_set() and version < 24:
            for s in stories:
                await store.append(s, [NewEvent(histories[s][version])], version)
                total += 1
            version += 1
            await asyncio.sleep(0.05)

    second = await open_projection(partitioned(settings, unique, 4))
    a, b = ProjectorService(p, group="projector"), ProjectorService(second, group="projector")
    stop_a, stop_b, stop_w = asyncio.Event(), asyncio.Event(), asyncio.Event()
    run_a = asyncio.create_task(a.run(stop_a))
    writes = asyncio.create_task(live_writes(stop_w))
    try:
        # 4 partitions of the Valkey models, and a 5th unit: the graph, kept whole.
        await wait_for(lambda: len(held(a)) == 5, 15, "first replica takes all")
        run_b = asyncio.create_task(b.run(stop_b))
        await wait_for(lambda: {len(held(a)), len(held(b))} == {2, 3}, 15, "balanced 3 + 2")
        assert not set(held(a)) & set(held(b))
        await asyncio.sleep(1.0)
        stop_a.set()
        await run_a
        await wait_for(lambda: len(held(b)) == 5, 10, "the second takes all after a leave")
        await writes
        await converge(p, total)
    finally:
        stop_w.set()
        stop_a.set()
        stop_b.set()
        await asyncio.gather(run_a, writes, return_exceptions=True)
        if "run_b" in locals():
            await run_b
        await second.close()
    digests = {m: await p.model(m, 1).digest() for m in MODELS}
    assert digests == await clean_digests(p)


def held(service: ProjectorService) -> list[int]:
    return sorted(service.membership.leases.held) if service.membership else []


async def wait_for(cond: Any, timeout: float, what: str) -> None:
    started = time.monotonic()
    while not cond():
        assert time.monotonic() - started < timeout, what
        await asyncio.sleep(0.05)


async def test_parallel_rebuild_equals_a_single_worker_rebuild(projection: Projection) -> None:
    """`rebuild --workers 3` (3 processes over the partitions) gives the digest of a
    one-worker build; then the unpartitioned service takes the version over at the
    sequence every partition reached, and keeps it equal under new writes."""
    p = projection
    store = p.store_for("context")
    stories = story_ids(30)
    histories = {s: story_events(s, 12, 1) for s in stories}
    for s in stories:
        await store.append(s, [NewEvent(m) for m in histories[s][:10]], 0)
    single = await admin.rebuild(p, "context", 2)
    parallel = await admin.rebuild(p, "context", 3, workers=3)
    assert single.applied == parallel.applied == 300
    assert await p.model("context", 3).digest() == await p.model("context", 2).digest()
    # The service (unpartitioned) picks both versions up from where they are.
    plain = p.settings.projector.model_copy(update={"partitions": PartitionOptions()})
    for s in stories:
        await store.append(s, [NewEvent(m) for m in histories[s][10:]], 10)
    for version in (2, 3):
        w = Worker(p.nc, store, p.model("context", version), p.dead_letters, plain)
        await asyncio.wait_for(w.run(until_caught_up=True), 60)
    assert await applied(p, "context", 3) == await applied(p, "context", 2) == 360
    assert await p.model("context", 3).digest() == await p.model("context", 2).digest()
