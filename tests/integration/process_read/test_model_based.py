"""Model-based test of the process read models (#15), on real NATS, Valkey and the
graph store: random concurrent writers record many processes nested several levels
(children often before their parents, several writers on one process, duplicates and
retries after lost acks); then

- every accepted event appears exactly once in the timeline model, process_seq is
  contiguous per process in the log;
- the registry equals a fold of the log written independently here (tests/.../ledger.py);
- each process's timeline and each root's tree timeline equal the log's;
- the graph's CHILD_OF and CAUSED_BY edges equal the parent and causation links.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from nats.aio.client import Client as NATS

from jetsource._gen.process.v1.events_pb2 import CanonicalEvent
from jetsource._gen.process.v1.observer_pb2 import RecordBatchRequest
from jetsource._gen.process.v1.observer_pb2_grpc import ObserverServiceStub
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.process.descriptor import DOMAIN as PROCESS_DOMAIN
from jetsource.domains.process.models import PROCESS_GRAPH, PROCESSES, TIMELINE
from jetsource.domains.process.models.graph import ProcessGraphModel
from jetsource.domains.process.models.registry import ProcessesModel
from jetsource.domains.process.models.timeline import ProcessTimelineModel
from jetsource.observer.server import Observer
from jetsource.observer.server import build as build_observer
from jetsource.observer.settings import ObserverOptions, ObserverSettings
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.domain import DomainRegistry
from jetsource.projection.host import ProjectorService
from tests.integration.process_read.ledger import (
    Ev,
    Writer,
    caught_up,
    fold,
    forest,
    forget_consumers,
    histories,
    process_domain,
    registry_view,
)
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(
        projector_settings(settings, unique), domains=DomainRegistry([process_domain(unique)])
    )
    await p.domain_store("process").ensure_streams()
    yield p
    for name in p.model_names():
        await p.model(name, 1).drop()
    await p.close()


async def project_until_caught_up(p: Projection, timeout: float = 60) -> None:
    store = p.domain_store("process")
    last = (await store.stream_info())["state"]["last_seq"]
    service = ProjectorService(p)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        started = time.monotonic()
        while True:
            done, seen = await caught_up(p, (PROCESSES, TIMELINE, PROCESS_GRAPH), last)
            if done:
                return
            assert time.monotonic() - started < timeout, seen
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await task


async def write_randomly(nc: NATS, p: Projection, seed: int) -> tuple[Writer, dict[str, list[Ev]]]:
    rng = random.Random(seed)
    parents = forest(rng, roots=4, fanout=3, depth=3)
    plan = histories(rng, parents, base_ns=1_700_000_000_000_000_000)
    writer = Writer(nc, p.domains.get("process"))
    # Processes in random order (children often before parents); each process's
    # events split between two writers at a random point, so writers race on it.
    order = list(plan)
    rng.shuffle(order)
    queues: list[list[Ev]] = [[] for _ in range(6)]
    for i, pid in enumerate(order):
        evs = plan[pid]
        cut = rng.randint(0, len(evs))
        queues[i % 6].extend(evs[:cut])
        queues[(i + 1) % 6].extend(evs[cut:])

    async def run(queue: list[Ev]) -> None:
        for ev in queue:
            await writer.record(ev, lose_ack=rng.random() < 0.1)
            if rng.random() < 0.1:
                await writer.record(ev)  # a duplicate

    await asyncio.gather(*(run(q) for q in queues))
    return writer, plan


async def test_random_concurrent_writers_give_models_equal_to_a_fold_of_the_log(
    nc: NATS, projection: Projection
) -> None:
    """The writers append with the ledger's envelope mapping directly (no observer)."""
    p = projection
    writer, plan = await write_randomly(nc, p, seed=15)
    assert writer.duplicates > 0
    sent = {e.event_id for evs in plan.values() for e in evs}
    await project_until_caught_up(p)
    await verify(p, set(plan), sent)


async def verify(p: Projection, processes: set[str], sent: set[str]) -> None:
    store = p.domain_store("process")
    log = [r async for r in store.read_all()]
    mine = [r for r in log if r.aggregate_id in processes]
    # Exactly once: every event the writers sent is in the log once.
    state = (await store.stream_info())["state"]
    seen = f"{len(log)} read, seqs {log[0].stream_seq}..{log[-1].stream_seq}" if log else "none"
    assert sorted(r.event_id for r in mine) == sorted(sent), (
        f"{len(mine)} of {len(sent)} sent found; {seen}; stream state {state}"
    )
    by_process: dict[str, list[int]] = defaultdict(list)
    for r in log:
        by_process[r.aggregate_id].append(r.version)
    for pid, versions in by_process.items():
        assert versions == list(range(1, len(versions) + 1)), pid

    registry = p.model(PROCESSES, 1)
    timeline = p.model(TIMELINE, 1)
    graph = p.model(PROCESS_GRAPH, 1)
    assert isinstance(registry, ProcessesModel)
    assert isinstance(timeline, ProcessTimelineModel)
    assert isinstance(graph, ProcessGraphModel)

    want = fold(log)
    ids = sorted(processes)
    want = {pid: want[pid] for pid in ids}
    rows = await registry.read_many(ids)
    got = {pid: registry_view(row) for pid, row in zip(ids, rows, strict=True) if row}
    assert got == want

    # The indexes agree with the rows: status, kind, root (by first appearance) and
    # start time.
    async def index(name: str) -> dict[str, float]:
        raw = await registry.redis.zrange(f"{registry.ns}:{name}", 0, -1, withscores=True)
        return {m.decode(): s for m, s in raw if m.decode() in processes}

    for pid, w in want.items():
        for name, value in (("status", w["status"]), ("kind", w["kind"]), ("root", w["root"])):
            if value:
                assert (await index(f"idx:{name}:{value}")).get(pid) == w["first"], (pid, name)
    assert await index("idx:started") == {
        pid: w["started_at"] // 1000 for pid, w in want.items() if w["started_at"] is not None
    }
    by_status: dict[str, set[str]] = defaultdict(set)
    for pid, w in want.items():
        by_status[w["status"]].add(pid)
    for status, members in by_status.items():
        assert set(await index(f"idx:status:{status}")) == members, status
    # The nesting the test meant: several levels, and children recorded first.
    assert max(w["depth"] for w in want.values()) >= 3
    assert len({w["status"] for w in want.values()}) >= 4
    assert any(w["first"] < want[w["parent"]]["first"] for w in want.values() if w["parent"])

    # Timelines: per process (process_seq order) and per root tree (global order).
    gseqs_of: dict[str, list[int]] = defaultdict(list)
    for r in log:
        gseqs_of[r.aggregate_id].append(r.stream_seq)
    for pid in ids:
        seqs = await timeline.seqs(timeline.process_key(pid), 0, None, 10_000)
        assert seqs == gseqs_of[pid]
        events = await timeline.events(seqs)
        assert [e.process_seq for e in events] == list(range(1, len(seqs) + 1))
        assert all(e.event.process_id == pid for e in events)
    for root in {w["root"] for w in want.values()}:
        members = {pid for pid, w in want.items() if w["root"] == root}
        expected = [r.stream_seq for r in log if r.aggregate_id in members]
        assert await timeline.seqs(timeline.tree_key(root), 0, None, 10_000) == expected
    all_seqs = await timeline.seqs(timeline.all_key, 0, None, 1_000_000)
    assert all_seqs == [r.stream_seq for r in log]

    # The graph: CHILD_OF per declared parent, CAUSED_BY per causation across processes.
    process_of = {r.event_id: r.aggregate_id for r in log}
    child_of = sorted((pid, w["declared"]) for pid, w in want.items() if w["declared"])
    caused_by = sorted(
        {
            (r.aggregate_id, process_of[r.envelope.causation_id])
            for r in mine
            if r.envelope.causation_id in process_of
            and process_of[r.envelope.causation_id] != r.aggregate_id
        }
    )
    assert caused_by, "the generator made no cross-process causation"
    assert [e for e in await graph.edges("CHILD_OF") if e[0] in processes] == child_of
    assert [e for e in await graph.edges("CAUSED_BY") if e[0] in processes] == caused_by
    assert [e for e in await graph.edges("AWAITS") if e[0] in processes] == []


# -- through the observer -----------------------------------------------------------------


@pytest.fixture
async def ledger(
    settings: JetsourceSettings, unique: str
) -> AsyncIterator[tuple[Projection, Observer]]:
    """The real process domain (stream PROCESS_EVENTS) with its observer, and its
    models under names of this test."""
    base = projector_settings(settings, unique)
    p = await open_projection(base, domains=DomainRegistry([PROCESS_DOMAIN]))
    await forget_consumers(p.nc, PROCESS_DOMAIN.stream)
    shared = {name: getattr(base, name) for name in JetsourceSettings.model_fields}
    observer = await build_observer(
        ObserverSettings(
            **shared,
            # A call cut off mid-append leaves its claims pending: a retry takes them
            # over after this lease.
            observer=ObserverOptions(
                grpc_port=0, metrics_port=0, claims_bucket=f"CL_{unique}", claim_lease_s=0.3
            ),
        )
    )
    yield p, observer
    await observer.stop(0)
    await forget_consumers(p.nc, PROCESS_DOMAIN.stream)
    for name in p.model_names():
        await p.model(name, 1).drop()
    await p.close()


def canonical(e: Ev, unique: str, key: str = "") -> CanonicalEvent:
    out = CanonicalEvent(
        event_id=e.event_id,
        process_id=f"{unique}-{e.process_id}",
        parent_process_id=f"{unique}-{e.parent}" if e.parent else "",
        event_type=e.event_type,
        causation_id=e.causation_id,
        idempotency_key=key,
        source="model-test",
        attributes=e.attributes,
    )
    out.occurred_at.FromNanoseconds(e.occurred_ns)
    out.data.update(e.data)
    return out


async def test_random_writers_through_the_observer_give_models_equal_to_a_fold_of_the_log(
    ledger: tuple[Projection, Observer], unique: str
) -> None:
    """The acceptance run: concurrent writers record through the observer in small
    batches (children before parents, several writers on one process); some calls
    are cut off by a tiny deadline (the ack may be lost after the append) and sent
    again, some are sent twice, some again under their idempotency key with a new id."""
    p, observer = ledger
    rng = random.Random(1515)
    parents = forest(rng, roots=4, fanout=3, depth=4)
    plan = histories(rng, parents, base_ns=1_700_000_000_000_000_000)
    order = list(plan)
    rng.shuffle(order)
    queues: list[list[Ev]] = [[] for _ in range(6)]
    for i, pid in enumerate(order):
        evs = plan[pid]
        cut = rng.randint(0, len(evs))
        queues[i % 6].extend(evs[:cut])
        queues[(i + 1) % 6].extend(evs[cut:])
    keyed = {e.event_id for evs in plan.values() for e in evs if rng.random() < 0.2}
    duplicates = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{observer.port}") as channel:
        stub = ObserverServiceStub(channel)

        async def send(batch: list[CanonicalEvent], timeout: float = 10) -> list[Any]:
            response = await stub.RecordBatch(RecordBatchRequest(events=batch), timeout=timeout)
            return list(response.positions)

        async def run(queue: list[Ev]) -> None:
            nonlocal duplicates
            i = 0
            while i < len(queue):
                n = rng.randint(1, 3)
                chunk = queue[i : i + n]
                i += n
                batch = [
                    canonical(e, unique, f"k-{e.event_id}" if e.event_id in keyed else "")
                    for e in chunk
                ]
                if rng.random() < 0.15:
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await send(batch, timeout=0.002)  # the answer may be lost
                positions = await send(batch)
                duplicates += sum(pos.duplicate for pos in positions)
                if rng.random() < 0.1:
                    again = await send(batch)
                    assert [x.global_seq for x in again] == [x.global_seq for x in positions]
                    assert all(x.duplicate for x in again)
                    duplicates += len(again)
                for e in batch:
                    if e.idempotency_key and rng.random() < 0.5:
                        retry = CanonicalEvent()
                        retry.CopyFrom(e)
                        retry.event_id = ""  # a new id, the same key
                        (pos,) = await send([retry])
                        assert pos.duplicate and pos.event_id == e.event_id
                        duplicates += 1

        await asyncio.gather(*(run(q) for q in queues))
    assert duplicates > 0
    sent = {e.event_id for evs in plan.values() for e in evs}
    await project_until_caught_up(p)
    await verify(p, {f"{unique}-{pid}" for pid in plan}, sent)
