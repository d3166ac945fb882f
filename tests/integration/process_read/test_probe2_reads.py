"""Reads over odd times and shapes (probed: no defect; kept as a regression guard).

Times: occurred_at far in the future, out of order and equal within a process; every
timeline read orders by sequence, never by time. Equal start times page through the
start-time index once each. A cycle of declared parents, a parent named later, an
ending recorded twice and events after an ending read back as the registry's rules say.
Bad filters are INVALID_ARGUMENT naming the field."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from jetsource._gen.process.v1 import query_pb2 as q
from jetsource._gen.process.v1 import query_pb2_grpc as q_grpc
from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.envelope import ANY, NewEvent
from jetsource.domains.process.models import PROCESSES, TIMELINE
from jetsource.processquery.server import build
from jetsource.projection.bootstrap import Projection
from tests.integration.process_read.ledger import apply_model
from tests.projector_fixtures import process_query_settings

pytestmark = pytest.mark.integration
S = 10**9
FUTURE = 250_000_000_000 * S  # year 9892


async def append(
    p: Projection, pid: str, typ: str, *, parent: str = "", occ: int | None = None
) -> None:
    body = ProcessEventBody(data=struct_pb2.Struct())
    body.data.update({"kind": "job"})
    new = NewEvent(body, event_type=typ, parent_aggregate_id=parent, occurred_at_ns=occ)
    await p.domain_store("process").append(pid, [new], ANY)


def ts(s: int) -> Timestamp:
    return Timestamp(seconds=s)


async def test_odd_times_and_shapes_read_back_by_sequence(ledger: Projection) -> None:
    p = ledger
    await append(p, "root", "process_started", occ=FUTURE)
    await append(p, "kid", "process_started", parent="root", occ=2_000_000_000 * S)
    await append(p, "kid", "step", occ=1_000_000_000 * S)  # earlier than the start
    await append(p, "kid", "step", occ=1_000_000_000 * S)  # the same time again
    await append(p, "kid", "step", parent="other")  # a parent named later: ignored
    await append(p, "x", "process_started", parent="y")
    await append(p, "y", "process_started", parent="x")  # would close a cycle
    await append(p, "root", "process_completed", occ=5 * S)
    await append(p, "root", "process_failed")  # ended twice: the last ending wins
    await append(p, "root", "after_end")
    for i in range(5):  # equal start times
        await append(p, f"same-{i}", "process_started", occ=1_700_000_000 * S)
    await apply_model(p, PROCESSES)
    await apply_model(p, TIMELINE)
    svc = await build(process_query_settings(p.settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as ch:
            s = q_grpc.ProcessQueryServiceStub(ch)

            async def get(pid: str) -> q.ProcessInfo:
                r: q.GetProcessResponse = await s.GetProcess(
                    q.GetProcessRequest(process_id=pid), timeout=10
                )
                return r.process

            root, kid, x, y = [await get(i) for i in ("root", "kid", "x", "y")]
            assert root.status == q.PROCESS_STATUS_FAILED and root.event_count == 4
            assert root.started_at.seconds == FUTURE // S
            assert kid.status == q.PROCESS_STATUS_INTERRUPTED and kid.parent_process_id == "root"
            assert kid.ended_at.seconds == 5  # the first ending of the root
            assert (x.root_process_id, x.depth, y.parent_pending) == ("y", 1, True)

            tl = await s.GetProcessTimeline(
                q.GetProcessTimelineRequest(process_id="kid"), timeout=10
            )
            assert [e.process_seq for e in tl.events] == [1, 2, 3, 4]
            sub = await s.GetProcessTimeline(
                q.GetProcessTimelineRequest(process_id="root", subtree=True), timeout=10
            )
            seqs = [e.global_seq for e in sub.events]
            assert seqs == sorted(seqs) and len(seqs) == 8
            asof = await s.GetProcessTimeline(
                q.GetProcessTimelineRequest(process_id="kid", as_of=ts(1_500_000_000)),
                timeout=10,
            )
            assert [e.process_seq for e in asof.events] == [2, 3]
            watched = []
            async for m in s.WatchProcess(
                q.WatchProcessRequest(process_id="root", subtree=True), timeout=2
            ):
                watched.append(m.event.global_seq)
                if len(watched) == len(seqs):
                    break
            assert watched == seqs

            window = q.TimeWindow(**{"from": ts(1_699_999_999), "to": ts(1_700_000_001)})
            seen: list[str] = []
            token = ""
            while True:
                r = await s.ListProcesses(
                    q.ListProcessesRequest(started=window, page_size=2, page_token=token),
                    timeout=10,
                )
                seen += [i.process_id for i in r.processes]
                token = r.next_page_token
                if not token:
                    break
            assert sorted(seen) == [f"same-{i}" for i in range(5)] and len(seen) == 5

            bad: list[tuple[str, Any, str]] = [
                (
                    "ListProcesses",
                    q.ListProcessesRequest(statuses=[q.ProcessStatus.ValueType(99)]),
                    "statuses[0]",
                ),
                ("ListProcesses", q.ListProcessesRequest(kind="k" * 200), "kind"),
                (
                    "ListProcesses",
                    q.ListProcessesRequest(started=q.TimeWindow(**{"from": ts(20), "to": ts(1)})),
                    "started",
                ),
                ("ListProcesses", q.ListProcessesRequest(parent_process_id="a b"), "parent"),
                (
                    "GetProcessTree",
                    q.GetProcessTreeRequest(
                        process_id="r", statuses=[q.ProcessStatus.ValueType(42)]
                    ),
                    "st",
                ),
                (
                    "GetProcessTimeline",
                    q.GetProcessTimelineRequest(process_id="root", as_of=ts(10**13)),
                    "as_of",
                ),
                ("ListEvents", q.ListEventsRequest(from_global_seq=9, to_global_seq=5), "to_g"),
            ]
            for name, request, field in bad:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await getattr(s, name)(request, timeout=10)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert (refused.value.details() or "").startswith(field), name
    finally:
        await svc.stop(0)
