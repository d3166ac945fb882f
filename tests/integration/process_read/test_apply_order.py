"""The registry does not depend on the order in which it applies different processes'
events (the kill -9 row of `make chaos`, test_projector_kill).

The projector keeps each process's events in order, nothing more: after a crash, the
events the killed projector had received and not acknowledged come back after the ack
wait, behind later events of other processes. The registry's statuses are the log's
order nonetheless ("interrupted": still running when an ancestor ended, by
global_seq), as the fold of the log (ledger.py) says.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import TypeVar

import nats
import pytest
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from nats.aio.client import Client as NATS

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.envelope import RecordedEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.process.models import PROCESSES
from jetsource.domains.process.models.registry import ProcessesModel
from jetsource.eventstore import jsapi
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.domain import DomainRegistry
from jetsource.projection.runtime import Worker
from tests.infra import Server
from tests.integration.process_read.ledger import (
    Ev,
    Writer,
    fold,
    forest,
    histories,
    process_domain,
    registry_view,
)
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.integration
T = TypeVar("T")


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    # A short ack wait: what a "killed" puller held comes back within a second.
    p = await open_projection(
        projector_settings(settings, unique, ack_wait_s=1.0),
        domains=DomainRegistry([process_domain(unique)]),
    )
    await p.domain_store("process").ensure_streams()
    yield p
    for version in (1, 2):
        await p.model(PROCESSES, version).drop()
    await p.close()


def recorded(seq: int, version: int, e: Ev) -> RecordedEvent:
    body = ProcessEventBody(attributes=e.attributes)
    body.data.CopyFrom(json_format.ParseDict(e.data, Struct()))
    env = EventEnvelope(
        event_id=e.event_id,
        event_type=e.event_type,
        aggregate_type="process",
        aggregate_id=e.process_id,
        aggregate_version=version,
        parent_aggregate_id=e.parent,
        causation_id=e.causation_id,
        payload=body.SerializeToString(deterministic=True),
    )
    env.occurred_at.FromNanoseconds(e.occurred_ns)
    return RecordedEvent(env, body, seq, 1_800_000_000_000_000_000 + seq)


def interleave(rng: random.Random, queues: dict[str, list[T]]) -> list[T]:
    """Each process's items in order, the processes mixed at random: how concurrent
    writers record, and one of the orders the projector may apply in."""
    heads = {pid: 0 for pid in queues}
    out: list[T] = []
    while heads:
        pid = rng.choice(sorted(heads))
        out.append(queues[pid][heads[pid]])
        heads[pid] += 1
        if heads[pid] == len(queues[pid]):
            del heads[pid]
    return out


async def apply_in_batches(
    rng: random.Random, model: ProcessesModel, events: list[RecordedEvent]
) -> None:
    i = 0
    while i < len(events):
        n = rng.randint(1, 6)
        outcome = await model.apply(events[i : i + n])
        assert not outcome.waiting and not outcome.failed, outcome
        i += n


@pytest.mark.parametrize("seed", range(8))
async def test_any_order_of_the_processes_gives_the_registry_of_the_log(
    projection: Projection, seed: int
) -> None:
    rng = random.Random(seed)
    plan = histories(rng, forest(rng, 3, 3, 4), base_ns=1_700_000_000_000_000_000)
    # The log: processes interleaved as concurrent writers would (children often before
    # their parents), each process's events in order.
    log: list[RecordedEvent] = []
    versions: dict[str, int] = {}
    for e in interleave(rng, plan):
        versions[e.process_id] = versions.get(e.process_id, 0) + 1
        log.append(recorded(len(log) + 1, versions[e.process_id], e))
    in_order = projection.model(PROCESSES, 1)
    reordered = projection.model(PROCESSES, 2)
    assert isinstance(in_order, ProcessesModel) and isinstance(reordered, ProcessesModel)
    by_process: dict[str, list[RecordedEvent]] = {}
    for r in log:
        by_process.setdefault(r.aggregate_id, []).append(r)
    await apply_in_batches(rng, in_order, log)
    await apply_in_batches(rng, reordered, interleave(rng, by_process))

    want = fold(log)
    ids = sorted(want)
    assert "interrupted" in {w["status"] for w in want.values()}
    for model in (in_order, reordered):
        rows = await model.read_many(ids)
        got = {pid: registry_view(row) for pid, row in zip(ids, rows, strict=True) if row}
        assert got == want
    assert await reordered.digest() == await in_order.digest()


async def test_a_child_event_redelivered_after_its_parent_ended_is_interrupted(
    projection: Projection, nc: NATS, nats_server: Server
) -> None:
    """A projector receives a parent's and its child's first events and dies before
    acknowledging them; the parent's ending comes next. The next projector reads that
    in-flight window from the stream when it starts, before anything new, so it applies
    both first events, then the parent's ending; their redeliveries after the ack wait
    are duplicates. The child was running when its parent ended, so it is interrupted,
    as a fold of the stream says."""
    p = projection
    domain = p.domains.get("process")
    writer = Writer(nc, domain)
    await writer.record(Ev("par", "process_started", {"kind": "agent"}, occurred_ns=10))
    await writer.record(Ev("kid", "process_started", {"kind": "tool"}, "par", occurred_ns=20))

    worker = Worker(
        p.nc, p.store_for(PROCESSES), p.model(PROCESSES, 1), p.dead_letters, p.settings.projector
    )
    await worker.ensure_consumer()
    killed = await nats.connect(nats_server.url)
    held = jsapi.PullConsumer(killed, domain.stream, worker.spec.durable, 10, 1.0)
    got: list[jsapi.Delivery] = []
    while len(got) < 2:
        got += await held.next_batch(10, 1.0)
    assert [d.stream_seq for d in got] == [1, 2]
    await killed.close()  # kill -9: nothing acknowledged

    await writer.record(Ev("par", "process_completed", occurred_ns=30))
    await worker.run(until_caught_up=True)
    # Both first events, from the in-flight window read at start (before the in-flight
    # window was read, only par's was filled, when its ending came first).
    assert worker.stats.filled == 2

    log = [r async for r in p.domain_store("process").read_all()]
    registry = p.model(PROCESSES, 1)
    assert isinstance(registry, ProcessesModel)
    rows = await registry.read_many(["par", "kid"])
    got_rows = {pid: registry_view(row) for pid, row in zip(["par", "kid"], rows, strict=True)}
    want = fold(log)
    assert want["kid"]["status"] == "interrupted"
    assert got_rows == want
