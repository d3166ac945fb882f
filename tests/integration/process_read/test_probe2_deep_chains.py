"""Very deep process chains: the registry applies them in time linear in the chain per
event, and a tree answer stays decodable.

- A chain recorded leaf first (each child before its parent, as a batch importer or a
  replay of nested spans may deliver it): every parent's arrival attached the chain
  below it and walked up to the root from each of its nodes, so applying a chain of
  150 took 3 s of Valkey and one of 1,000 blocked Valkey for minutes (BUSY for every
  other client). A root ending over a deep chain likewise walked up from every node.
- ``GetProcessTree`` nests one message level per generation, and protobuf decoders
  refuse more than 100: a chain of 98 levels or more reached the client as INTERNAL
  ("Exceeded upb_DecodeOptions_MaxDepth"). The tree now stops above that depth with
  ``truncated`` (the deepest node shown is where to read on from).
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource._gen.process.v1 import query_pb2 as q
from jetsource._gen.process.v1 import query_pb2_grpc as q_grpc
from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.envelope import RecordedEvent
from jetsource.domains.process.models import PROCESSES, TIMELINE
from jetsource.processquery.server import build
from jetsource.projection.bootstrap import Projection
from tests.projector_fixtures import process_query_settings

pytestmark = pytest.mark.integration


def event(
    pid: str,
    version: int,
    seq: int,
    *,
    parent: str = "",
    typ: str = "process_started",
    data: Any = None,
) -> RecordedEvent:
    body = ProcessEventBody(data=struct_pb2.Struct())
    body.data.update(data or {"kind": "stage", "name": pid})
    envelope = EventEnvelope(
        event_id=f"{pid}-{seq}",
        event_type=typ,
        schema_version=1,
        aggregate_type="process",
        aggregate_id=pid,
        aggregate_version=version,
        parent_aggregate_id=parent,
        payload=body.SerializeToString(),
    )
    envelope.occurred_at.FromSeconds(1_800_000_000 + seq)
    return RecordedEvent(envelope, body, seq, 1_000_000 * seq)


def chain_leaf_first(n: int) -> list[RecordedEvent]:
    """c0 <- c1 <- ... <- c(n-1), recorded from c(n-1) up to c0."""
    return [event(f"c{i}", 1, n - i, parent=f"c{i - 1}" if i else "") for i in range(n - 1, -1, -1)]


async def test_a_deep_chain_recorded_leaf_first_applies_quickly_and_ends_as_one(
    ledger: Projection,
) -> None:
    n = 300
    model = ledger.model(PROCESSES, 1)
    await model.setup()
    events = chain_leaf_first(n)
    started = time.monotonic()
    for k in range(0, n, 50):
        await model.apply(events[k : k + 50])
    # The old code took about 25 s here (cubic in the chain), this about 1 s.
    assert time.monotonic() - started < 8
    # c150 completes: c151.. are interrupted by it; then the root fails (c1..c149 are
    # interrupted by it, c151.. keep the earlier ending), then is cancelled too.
    started = time.monotonic()
    await model.apply([event("c150", 2, n + 1, typ="process_completed")])
    await model.apply([event("c0", 2, n + 2, typ="process_failed", data={"error": "boom"})])
    await model.apply([event("c0", 3, n + 3, typ="process_cancelled")])  # ended twice
    assert time.monotonic() - started < 4
    rows = await model.read_many([f"c{i}" for i in range(n)])  # type: ignore[attr-defined]
    status = {r.process_id: r.status for r in rows if r is not None}
    ended = {r.process_id: r.ended_at for r in rows if r is not None}
    assert status["c0"] == "cancelled" and status["c150"] == "completed"
    assert all(status[f"c{i}"] == "interrupted" for i in range(1, n) if i != 150)
    # below c150: its own ending (the earlier), above it: the root's first ending
    assert ended["c151"] == ended["c299"] == ended["c150"] != ended["c1"]
    assert ended["c1"] == ended["c149"] != ended["c0"]  # the failure's, not the cancel's
    assert {r.depth for r in rows if r is not None} == set(range(n))
    assert {r.root for r in rows if r is not None} == {"c0"}


async def test_a_deep_tree_answer_stays_decodable_and_says_truncated(ledger: Projection) -> None:
    n = 150
    model = ledger.model(PROCESSES, 1)
    await model.setup()
    events = [event(f"c{i}", 1, i + 1, parent=f"c{i - 1}" if i else "") for i in range(n)]
    await model.apply(events)
    # A failure with a nested error deep down: its Value nests too.
    nested: dict[str, Any] = {"x": 1}
    for _ in range(10):
        nested = {"inner": nested}
    await model.apply([event("c80", 2, n + 1, typ="process_failed", data={"error": nested})])
    await ledger.control.ensure(PROCESSES, 1)
    service = await build(process_query_settings(ledger.settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = q_grpc.ProcessQueryServiceStub(channel)
            answer = await stub.GetProcessTree(q.GetProcessTreeRequest(process_id="c0"), timeout=10)
            assert answer.truncated
            node, shown = answer.root, [answer.root.process.process_id]
            while node.children:
                node = node.children[0]
                shown.append(node.process.process_id)
            # c80's nested error makes it too deep: the tree stops above it
            assert shown == [f"c{i}" for i in range(80)]
            # read on from the deepest node shown, and from below the failed one
            more = await stub.GetProcessTree(q.GetProcessTreeRequest(process_id="c81"), timeout=10)
            assert more.truncated is False
            node, depth = more.root, 0
            while node.children:
                node, depth = node.children[0], depth + 1
            assert node.process.process_id == f"c{n - 1}" and depth == n - 1 - 81
            # a max_depth within reach answers as before
            short = await stub.GetProcessTree(
                q.GetProcessTreeRequest(process_id="c0", max_depth=5), timeout=10
            )
            assert short.truncated
    finally:
        await service.stop(0)


async def test_a_parent_arriving_after_ten_thousand_children_merges_their_timelines_quickly(
    ledger: Projection,
) -> None:
    """The timeline model merged each attached child's tree into the parent's with
    ZUNIONSTORE, which rewrites the whole (growing) destination: 10,000 children
    recorded before their parent made one script quadratic, and Valkey BUSY."""
    n = 10_000
    model = ledger.model(TIMELINE, 1)
    await model.setup()
    kids = [event(f"k{i}", 1, i + 1, parent="root") for i in range(n)]
    for k in range(0, n, 1000):
        await model.apply(kids[k : k + 1000])
    started = time.monotonic()
    await model.apply([event("root", 1, n + 1)])
    assert time.monotonic() - started < 3  # the old code: BUSY (over 5 s in one script)
    ns = model.ns  # type: ignore[attr-defined]
    assert await ledger.redis.zcard(f"{ns}:tree:root") == n + 1
    assert await ledger.redis.exists(f"{ns}:tree:k0") == 0
    # a big subtree joining a small tree merges the other way, same result
    await model.apply([event("top", 1, n + 2)])
    await model.apply([event("root", 2, n + 3, typ="step", parent="top")])
    assert await ledger.redis.zcard(f"{ns}:tree:top") == n + 3
    assert await ledger.redis.exists(f"{ns}:tree:root") == 0
    members = await ledger.redis.zrange(f"{ns}:tree:top", 0, -1, withscores=True)
    assert [int(s) for _, s in members] == list(range(1, n + 4))
    assert all(int(m) == int(s) for m, s in members)
