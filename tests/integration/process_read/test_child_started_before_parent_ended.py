"""A child whose start is stored after its parent's ending, but occurred before it, is
`interrupted`, as when the events are stored in the order sent: the observer stores a
request's events process by process, so `RecordBatch([P process_started, C
process_started (parent P), P process_failed])` (an SDK flush of a parent that ended
while its child ran) could store C's start after P's ending, and C then stayed
`running` for good where sent one request at a time it was `interrupted`.

The rule: a child attached to an ancestor that had already ended is interrupted by
that ending if it occurred at or after every start along the chain (each link's time
is the occurred time of the event naming the parent); a child that started after the
ending stays `running`. Whatever the order the registry applies the events in."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from jetsource._gen.process.v1 import events_pb2 as ev
from jetsource._gen.process.v1 import observer_pb2 as ob
from jetsource._gen.process.v1 import query_pb2 as q
from jetsource.core.envelope import RecordedEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.process.models import PROCESSES
from jetsource.domains.process.models.registry import ProcessesModel
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.domain import DomainRegistry
from tests.e2e.test_process_query import Stack, stack  # noqa: F401  (the fixture)
from tests.integration.process_read.ledger import Ev, fold, process_domain, registry_view
from tests.integration.process_read.test_apply_order import recorded
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.integration
T0 = 1_700_000_000_000_000_000
S = 1_000_000_000  # one second in ns


def sent(pid: str, event_type: str, at: int, parent: str = "", **data: Any) -> ev.CanonicalEvent:
    body = Struct()
    body.update(data)
    out = ev.CanonicalEvent(
        process_id=pid, parent_process_id=parent, event_type=event_type, source="t", data=body
    )
    out.occurred_at.FromNanoseconds(at)
    return out


async def test_a_flush_of_start_child_start_failure_interrupts_the_child(
    stack: Stack,  # noqa: F811
    unique: str,
) -> None:
    pairs = [(f"{unique}-p{i}", f"{unique}-c{i}") for i in range(6)]
    for par, kid in pairs:
        batch = [
            sent(par, "process_started", T0, kind="agent"),
            sent(kid, "process_started", T0 + S, parent=par, kind="tool"),
            sent(par, "process_failed", T0 + 2 * S, error="boom"),
        ]
        await stack.record.RecordBatch(ob.RecordBatchRequest(events=batch), timeout=10)

    async def get(pid: str) -> q.ProcessInfo | None:
        try:
            got = await stack.reads.GetProcess(q.GetProcessRequest(process_id=pid), timeout=5)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        info: q.ProcessInfo = got.process
        return info

    counts = {pid: n for par, kid in pairs for pid, n in ((par, 2), (kid, 1))}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:  # until every event is in the registry
        rows = {pid: await get(pid) for pid in counts}
        if all(r is not None and r.event_count == counts[pid] for pid, r in rows.items()):
            break
        assert loop.time() < deadline, rows
        await asyncio.sleep(0.05)
    for par, kid in pairs:
        p, c = rows[par], rows[kid]
        assert p is not None and c is not None
        assert p.status == q.PROCESS_STATUS_FAILED
        assert (c.status, c.ended_at.ToNanoseconds()) == (
            q.PROCESS_STATUS_INTERRUPTED,
            T0 + 2 * S,
        ), kid


# -- stored in the worst order, applied in any --------------------------------------------


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(
        projector_settings(settings, unique), domains=DomainRegistry([process_domain(unique)])
    )
    await p.domain_store("process").ensure_streams()
    yield p
    for version in (1, 2, 3):
        await p.model(PROCESSES, version).drop()
    await p.close()


def stored(events: list[Ev]) -> list[RecordedEvent]:
    """The log, in this order (each process's events numbered in it)."""
    versions: dict[str, int] = {}
    out: list[RecordedEvent] = []
    for e in events:
        versions[e.process_id] = versions.get(e.process_id, 0) + 1
        out.append(recorded(len(out) + 1, versions[e.process_id], e))
    return out


async def registries(p: Projection, log: list[RecordedEvent]) -> list[dict[str, Any]]:
    """The registry applied in the log's order, in reverse (each process's own events
    still in order) and one event at a time shuffled the same way: a rebuild side by
    side and a projector that got the events back out of order."""
    by_process: dict[str, list[RecordedEvent]] = {}
    for r in log:
        by_process.setdefault(r.aggregate_id, []).append(r)
    rng = random.Random(7)
    mixed: list[RecordedEvent] = []
    heads = {pid: list(evs) for pid, evs in by_process.items()}
    while heads:
        pid = rng.choice(sorted(heads))
        mixed.append(heads[pid].pop(0))
        if not heads[pid]:
            del heads[pid]
    orders = [
        [log],
        [[r for pid in reversed(list(by_process)) for r in by_process[pid]]],
        [[r] for r in mixed],
    ]
    ids = sorted(by_process)
    out = []
    for version, batches in enumerate(orders, start=1):
        model = p.model(PROCESSES, version)
        assert isinstance(model, ProcessesModel)
        for batch in batches:
            outcome = await model.apply(batch)
            assert not outcome.waiting and not outcome.failed, outcome
        rows = await model.read_many(ids)
        out.append({pid: registry_view(r) for pid, r in zip(ids, rows, strict=True) if r})
    return out


def status(view: dict[str, Any], pid: str) -> tuple[str, int | None]:
    return view[pid]["status"], view[pid]["ended_at"]


async def test_children_stored_after_the_parents_ending_by_their_start_times(
    projection: Projection,
) -> None:
    """P ends at 30. Stored after its ending: C (started 20: it ran) is interrupted; L
    (started 40: after) stays running; K (started 20) ends itself at 50: its ending
    wins; E started at 30, the ending's own time: interrupted."""
    log = stored(
        [
            Ev("P", "process_started", occurred_ns=10),
            Ev("P", "process_failed", {"error": "boom"}, occurred_ns=30),
            Ev("C", "process_started", parent="P", occurred_ns=20),
            Ev("L", "process_started", parent="P", occurred_ns=40),
            Ev("K", "process_started", parent="P", occurred_ns=20),
            Ev("K", "process_completed", occurred_ns=50),
            Ev("E", "process_started", parent="P", occurred_ns=30),
        ]
    )
    want = fold(log)
    assert status(want, "C") == ("interrupted", 30)
    assert status(want, "L") == ("running", None)
    assert status(want, "K") == ("completed", 50)
    assert status(want, "E") == ("interrupted", 30)
    for got in await registries(projection, log):
        assert got == want


async def test_a_grandchild_recorded_before_its_parent_is_interrupted_with_it(
    projection: Projection,
) -> None:
    """P ends at 30; then G (started 25, parent C) is stored while C is not recorded
    (parent_pending), then C (started 20, parent P): both ran when P ended. H (started
    35, parent C) came after it: running, as is the running child of an interrupted
    one sent one request at a time. A great-grandchild X of G (started 28) before G's
    own start is stored: interrupted too."""
    log = stored(
        [
            Ev("P", "process_started", occurred_ns=10),
            Ev("P", "process_cancelled", occurred_ns=30),
            Ev("X", "process_started", parent="G", occurred_ns=28),
            Ev("G", "process_started", parent="C", occurred_ns=25),
            Ev("H", "process_started", parent="C", occurred_ns=35),
            Ev("C", "process_started", parent="P", occurred_ns=20),
        ]
    )
    want = fold(log)
    assert {pid: status(want, pid) for pid in "CGXH"} == {
        "C": ("interrupted", 30),
        "G": ("interrupted", 30),
        "X": ("interrupted", 30),
        "H": ("running", None),
    }
    for got in await registries(projection, log):
        assert got == want


async def test_the_first_ending_that_came_after_the_start_interrupts(
    projection: Projection,
) -> None:
    """P failed at 10, then (recorded again after a restart) completed at 50; C,
    started at 20 and stored after both, ran only when the second came."""
    log = stored(
        [
            Ev("P", "process_started", occurred_ns=5),
            Ev("P", "process_failed", occurred_ns=10),
            Ev("P", "process_completed", occurred_ns=50),
            Ev("C", "process_started", parent="P", occurred_ns=20),
            Ev("D", "process_started", parent="P", occurred_ns=7),
        ]
    )
    want = fold(log)
    assert status(want, "C") == ("interrupted", 50)
    assert status(want, "D") == ("interrupted", 10)
    for got in await registries(projection, log):
        assert got == want
