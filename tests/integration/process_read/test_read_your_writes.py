"""Read your writes on the process ledger: ``min_process_seq``.

The observer answers each event's Position (``process_seq``); the read models apply it a
little later, on the projector's consumers. A read with ``min_process_seq`` waits, within
its deadline, until the model it reads has applied the process that far: GetProcess and
GetProcessTree on the registry, GetProcessTimeline on the timeline. Not by the deadline
(less a margin, so the answer is the service's and not DEADLINE_EXCEEDED), it is
FAILED_PRECONDITION naming ``min_process_seq``; a pruned process is NOT_FOUND; out of
range is INVALID_ARGUMENT. No projector runs here until the test says so: every wait is
for something the test controls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
import pytest
from google.protobuf import struct_pb2

from jetsource._gen.process.v1 import query_pb2 as q
from jetsource._gen.process.v1 import query_pb2_grpc as q_grpc
from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.envelope import NO_STREAM, NewEvent
from jetsource.domains.process.models import PROCESSES, TIMELINE
from jetsource.processquery.server import build
from jetsource.projection.bootstrap import Projection
from tests.integration.process_read.ledger import apply_model
from tests.projector_fixtures import process_query_settings

pytestmark = pytest.mark.integration
Code = grpc.StatusCode


run = apply_model


async def record(p: Projection, process_id: str, types: list[str], after: int = 0) -> None:
    store = p.domain_store("process")
    body = ProcessEventBody(data=struct_pb2.Struct())
    expected = NO_STREAM if after == 0 else after
    for t in types:
        await store.append(process_id, [NewEvent(body, event_type=t)], expected)
        expected = after = after + 1


async def test_a_read_waits_for_the_process_seq_it_names_then_answers_it(
    ledger: Projection,
) -> None:
    p = ledger
    await record(p, "run", ["process_started", "step_done", "step_done"])
    query = await build(process_query_settings(p.settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{query.port}") as channel:
            reads = q_grpc.ProcessQueryServiceStub(channel)
            # Without it: what the registry has now (nothing yet).
            with pytest.raises(grpc.aio.AioRpcError) as now:
                await reads.GetProcess(q.GetProcessRequest(process_id="run"), timeout=5)
            assert now.value.code() == Code.NOT_FOUND

            shown = asyncio.ensure_future(
                reads.GetProcess(
                    q.GetProcessRequest(process_id="run", min_process_seq=3), timeout=20
                )
            )
            tree = asyncio.ensure_future(
                reads.GetProcessTree(
                    q.GetProcessTreeRequest(process_id="run", min_process_seq=2), timeout=20
                )
            )
            timeline = asyncio.ensure_future(
                reads.GetProcessTimeline(
                    q.GetProcessTimelineRequest(process_id="run", min_process_seq=3), timeout=20
                )
            )
            await asyncio.sleep(0.5)
            assert not shown.done() and not tree.done() and not timeline.done()

            await run(p, PROCESSES)  # the registry only
            got = await asyncio.wait_for(shown, 15)
            assert (got.process.last_process_seq, got.process.event_count) == (3, 3)
            assert (await asyncio.wait_for(tree, 15)).root.process.last_process_seq == 3
            await asyncio.sleep(0.3)
            assert not timeline.done()  # the timeline is a model of its own, not applied yet

            await run(p, TIMELINE)
            events = (await asyncio.wait_for(timeline, 15)).events
            assert [e.process_seq for e in events] == [1, 2, 3]
            # Reached already: answered at once, from the model as it is.
            again = await reads.GetProcess(
                q.GetProcessRequest(process_id="run", min_process_seq=1), timeout=5
            )
            assert again.process.last_process_seq == 3
    finally:
        await query.stop(0)


async def test_a_process_seq_not_reached_by_the_deadline_is_failed_precondition(
    ledger: Projection,
) -> None:
    p = ledger
    await record(p, "run", ["process_started"])
    await run(p, PROCESSES)
    await run(p, TIMELINE)
    query = await build(process_query_settings(p.settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{query.port}") as channel:
            reads = q_grpc.ProcessQueryServiceStub(channel)
            calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                (
                    "GetProcess",
                    lambda: reads.GetProcess(
                        q.GetProcessRequest(process_id="run", min_process_seq=2), timeout=1.0
                    ),
                ),
                (
                    "GetProcessTree",
                    lambda: reads.GetProcessTree(
                        q.GetProcessTreeRequest(process_id="run", min_process_seq=2), timeout=1.0
                    ),
                ),
                (
                    "GetProcessTimeline",
                    lambda: reads.GetProcessTimeline(
                        q.GetProcessTimelineRequest(process_id="run", min_process_seq=2),
                        timeout=1.0,
                    ),
                ),
                # never recorded: the caller says it wrote it, so it is waited for too
                (
                    "GetProcess",
                    lambda: reads.GetProcess(
                        q.GetProcessRequest(process_id="ghost", min_process_seq=1), timeout=1.0
                    ),
                ),
            ]
            for method, call in calls:
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call()
                waited = time.monotonic() - started
                assert refused.value.code() == Code.FAILED_PRECONDITION, method
                message = refused.value.details() or ""
                assert "min_process_seq" in message and "not reached" in message, message
                # it waited for the model, and answered before the caller's deadline
                assert 0.5 < waited < 1.0, (method, waited)

            with pytest.raises(grpc.aio.AioRpcError) as out_of_range:
                await reads.GetProcess(
                    q.GetProcessRequest(process_id="run", min_process_seq=2**53 + 1), timeout=5
                )
            assert out_of_range.value.code() == Code.INVALID_ARGUMENT
            assert "min_process_seq" in (out_of_range.value.details() or "")

            # A later event arrives while a read waits: it answers as soon as it is applied.
            waiting = asyncio.ensure_future(
                reads.GetProcess(
                    q.GetProcessRequest(process_id="run", min_process_seq=2), timeout=20
                )
            )
            await record(p, "run", ["process_completed"], after=1)
            await run(p, PROCESSES)
            done = await asyncio.wait_for(waiting, 15)
            assert done.process.status == q.PROCESS_STATUS_COMPLETED
    finally:
        await query.stop(0)
