"""A second event for one version is filed once even when the projector that pulled
it was killed before writing it, and the aggregate's next event arrives meanwhile.

The killed worker's deliveries stay in flight until their ack wait ends; a new worker
takes what arrives meanwhile first. Before, it applied the aggregate's next event,
and the poison, redelivered after its ack wait, came from a sequence below the one
applied last: taken for a redelivery, acked in silence, never filed. Now a worker
that starts reads its consumer's in-flight window from the stream and hands it to the
model in stream order before anything new, so the poison is judged (refused,
remembered) before the next event is applied, and filed once when its delivery comes
back. Against the real servers (NATS, Valkey, the graph store), the real worker; the
kill is a worker cancelled while its model's write of the poison's batch hangs
(nothing is written, nothing acked or nak'd). Each chain-checking model: context's
three, the process ledger's three, omni's two; and the context model on a partition
of the stream (its own durable on the partition mirror).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import RecordedEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.omni.models import OMNI_EVENTS, OMNI_IDENTITIES
from jetsource.domains.process.descriptor import DOMAIN as PROCESS_DOMAIN
from jetsource.domains.process.models import MODELS as PROCESS_MODELS
from jetsource.eventstore import jsapi
from jetsource.projection import runtime
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.contract import Outcome
from jetsource.projection.domain import DomainRegistry
from jetsource.projection.partitions import Partition, ensure_mirror, partition_of, wait_mirror
from jetsource.projection.runtime import Worker
from tests.integration.test_poison_after_transient_failure import (
    Case,
    omni_case,
    process_case,
    until,
)
from tests.projector_fixtures import drop_partition_mirrors, projector_settings

pytestmark = pytest.mark.integration

CONTEXT_MODELS = ("context", "timeline", "graph")
PARTITIONED = "context-partitioned"  # the context model, on one partition of PARTS
PARTS = 4
# The poison's delivery comes back this long after the kill: the next event is
# published, delivered to the new worker and applied well before it.
ACK_WAIT_S = 4.0
OPTIONS: dict[str, Any] = {"max_deliver": 3, "max_waits": 3, "ack_wait_s": ACK_WAIT_S}


def context_case(p: Projection, sid: str) -> Case:
    events = [
        ("ContextCreated", ev.ContextCreated(title=f"story {sid}")),
        ("DecisionAdded", ev.DecisionAdded(decision_id="d1", title="one")),
        ("SubtaskAdded", ev.SubtaskAdded(subtask_id="t1", title="task")),
        ("DecisionAdded", ev.DecisionAdded(decision_id="d2", title="two")),
    ]
    return Case(p.store, sid, [(t, m.SerializeToString()) for t, m in events])


async def open_case(name: str, settings: JetsourceSettings, unique: str) -> tuple[Projection, Case]:
    if name in (*CONTEXT_MODELS, PARTITIONED):
        p = await open_projection(projector_settings(settings, unique, **OPTIONS))
        return p, context_case(p, "killed")
    if name in PROCESS_MODELS:
        domain = dataclasses.replace(
            PROCESS_DOMAIN, stream=f"PR_{unique}", subject_prefix=f"pr{unique}.events"
        )
        p = await open_projection(
            projector_settings(settings, unique, **OPTIONS), domains=DomainRegistry([domain])
        )
        return p, process_case(p.domain_store("process"), "killed")
    from jetsource.domains.omni.descriptor import omni_domain
    from tests.integration.omni.harness import omni_settings

    base = omni_settings(settings.nats_url(), str(settings.valkey.url), unique)
    osettings = base.model_copy(update={"projector": base.projector.model_copy(update=OPTIONS)})
    p = await open_projection(osettings, domains=DomainRegistry([omni_domain(osettings.omni)]))
    seed = 0 if name == OMNI_EVENTS else 1
    aggregate_id = "evt-killed" if name == OMNI_EVENTS else "idn-killed"
    return p, omni_case(p.domain_store("omni"), aggregate_id, seed)


# One model of each domain (and the partitioned one) in `make test`; the others, which
# take the same path through the worker, in `make chaos` (each case waits out ack waits).
IN_MAKE_TEST = {"context", "processes", OMNI_IDENTITIES, PARTITIONED}


@pytest.fixture(
    params=[
        name if name in IN_MAKE_TEST else pytest.param(name, marks=pytest.mark.chaos)
        for name in (*CONTEXT_MODELS, *sorted(PROCESS_MODELS), OMNI_EVENTS, OMNI_IDENTITIES)
    ]
    + [PARTITIONED]
)
async def case(
    request: pytest.FixtureRequest, settings: JetsourceSettings, unique: str
) -> AsyncIterator[tuple[str, Projection, Case]]:
    """(model name, its projection, an aggregate of its domain)."""
    name: str = request.param
    p, made = await open_case(name, settings, unique)
    yield name, p, made
    for version in (1, 2):
        await p.model(name.removesuffix("-partitioned"), version).drop()
    if name == PARTITIONED:
        await drop_partition_mirrors(p, PARTS)
    await p.close()


async def test_a_poison_pulled_by_a_killed_projector_is_filed_once(
    case: tuple[str, Projection, Case],
) -> None:
    name, p, aggregate = case
    partitioned = name == PARTITIONED
    name = name.removesuffix("-partitioned")
    store = p.store_for(name)
    options = p.settings.projector
    partition: Partition | None = None
    if partitioned:
        s = store.settings
        await ensure_mirror(store._replies, s.stream, s.subject_prefix, PARTS, 1, 5.0)
        await wait_mirror(store._replies, s.stream, PARTS, 5.0)
        index = partition_of(aggregate.aggregate_id, PARTS)
        partition = Partition(index, PARTS, s.stream, s.subject_prefix)

    def worker(version: int) -> Worker:
        """The live model's workers on the partition (if any); the twin's on the whole."""
        part = partition if version == 1 else None
        return Worker(p.nc, store, p.model(name, version), p.dead_letters, options, part)

    # The reference: a twin version of the model that meets every event in stream
    # order, with no fault (built as far as the live one at each step).
    twin = worker(2)
    await aggregate.good(1)
    await aggregate.good(2)
    await asyncio.wait_for(worker(1).run(until_caught_up=True), 60)
    await asyncio.wait_for(twin.run(until_caught_up=True), 60)

    # A live worker pulls the batch holding the poison and is killed while its
    # model's write of that batch hangs: nothing written, nothing acked.
    killed = worker(1)
    pulled = asyncio.Event()
    real_apply = killed.model.apply

    async def hanging(events: Sequence[RecordedEvent]) -> Outcome:
        if any(e.stream_seq == poison for e in events):
            pulled.set()
            await asyncio.Event().wait()
        return await real_apply(events)

    killed.model.apply = hanging  # type: ignore[method-assign]
    poison = await aggregate.poison()
    task = asyncio.create_task(killed.run())
    await asyncio.wait_for(pulled.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # The aggregate's next event comes while the poison is in flight; a new worker
    # (no memory of the killed one) takes it.
    following = await aggregate.good(3)
    assert following > poison
    live = worker(1)
    run = asyncio.create_task(live.run())
    try:

        async def settled() -> bool:
            info = await jsapi.consumer_info(store._replies, live._stream, live._durable, 5.0)
            assert info is not None
            idle = int(info["num_pending"]) == 0 and int(info["num_ack_pending"]) == 0
            return idle and await live.model.position(aggregate.aggregate_id) == 3

        await until(settled, timeout=ACK_WAIT_S + 30)
    finally:
        live.stop()
        await asyncio.wait_for(run, 30)

    # The next event was applied, once; the poison was filed, once.
    letters = await p.dead_letters.list(live.spec)
    assert [(d.aggregate_id, d.original_seq) for d in letters] == [
        (aggregate.aggregate_id, poison)
    ], [(d.original_seq, d.reason) for d in letters]
    assert live.stats.dead_letters == 1
    assert "version 1" in letters[0].reason, letters[0].reason

    # In stream order the poison is filed too, and the models are equal.
    await asyncio.wait_for(twin.run(until_caught_up=True), 60)
    assert [d.original_seq for d in await p.dead_letters.list(twin.spec)] == [poison]
    assert await twin.model.position(aggregate.aggregate_id) == 3
    checkpoint, reference = await live.model.checkpoint(), await twin.model.checkpoint()
    assert checkpoint.applied == reference.applied == 3, (checkpoint, reference)
    assert await live.model.digest() == await twin.model.digest()


async def test_a_window_of_many_pages_is_judged_in_stream_order(
    settings: JetsourceSettings, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten stories at version 2; then their next events and a poison among them, all
    pulled by the killed worker; the window is read a few messages at a time (pages
    of 4): every event is applied once, the poison filed once, and the model equals a
    build from scratch."""
    p, _ = await open_case("context", settings, unique)
    options = p.settings.projector

    def worker(version: int) -> Worker:
        return Worker(p.nc, p.store, p.model("context", version), p.dead_letters, options)

    try:
        stories = [context_case(p, f"many{i}") for i in range(10)]
        poisoned = stories[4]
        for version in (1, 2):
            for s in stories:
                await s.good(version)
        await asyncio.wait_for(worker(1).run(until_caught_up=True), 60)
        for version in (3, 4):
            for s in stories:
                if s is poisoned and version == 3:
                    poison = await poisoned.poison()
                elif s is not poisoned:
                    await s.good(version)

        killed = worker(1)
        pulled = asyncio.Event()
        real_apply = killed.model.apply

        async def hanging(events: Sequence[RecordedEvent]) -> Outcome:
            if any(e.stream_seq == poison for e in events):
                pulled.set()
                await asyncio.Event().wait()
            return await real_apply(events)

        killed.model.apply = hanging  # type: ignore[method-assign]
        task = asyncio.create_task(killed.run())
        await asyncio.wait_for(pulled.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        await poisoned.good(3)
        monkeypatch.setattr(runtime, "WINDOW_PAGE", 4)
        live = worker(1)
        run = asyncio.create_task(live.run())
        wanted = {s.aggregate_id: 3 if s is poisoned else 4 for s in stories}
        try:

            async def settled() -> bool:
                info = await jsapi.consumer_info(p.store._replies, live._stream, live._durable, 5)
                assert info is not None
                idle = int(info["num_pending"]) == 0 and int(info["num_ack_pending"]) == 0
                got = {a: await live.model.position(a) for a in wanted}
                return idle and got == wanted

            await until(settled, timeout=ACK_WAIT_S + 30)
        finally:
            live.stop()
            await asyncio.wait_for(run, 30)

        letters = await p.dead_letters.list(live.spec)
        assert [(d.aggregate_id, d.original_seq) for d in letters] == [("many4", poison)], [
            (d.original_seq, d.reason) for d in letters
        ]
        # A pull answers as soon as messages arrive, so the killed worker may have
        # applied (and acked) batches before the poison's: at most the 4 events ahead
        # of it. The window is the rest of the 18, every one applied from the stream at
        # start (and the next event too when the killed pull took it), over pages of 4.
        before = killed.stats.applied
        assert before <= 4, killed.stats
        assert live.stats.filled >= 18 - before, (live.stats, killed.stats)
        assert (await live.model.checkpoint()).applied == 39  # 20 + 18 + 1: each once

        twin = worker(2)
        await asyncio.wait_for(twin.run(until_caught_up=True), 60)
        assert [d.original_seq for d in await p.dead_letters.list(twin.spec)] == [poison]
        assert await live.model.digest() == await twin.model.digest()
    finally:
        for version in (1, 2):
            await p.model("context", version).drop()
        await p.close()
