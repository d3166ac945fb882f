"""WatchProcess of a process the registry shows but the timeline has not applied yet.

The registry (``processes``) and the timeline (``process_timeline``) are two read models,
each on its own consumer: right after a process is recorded, GetProcess may show it while
the timeline does not have it. A watch asked then answered NOT_FOUND (a follower that
starts with the process, like `jetsource process watch` or a bench's probe, died); it is
now watched, and its events come as the timeline applies them.
"""

from __future__ import annotations

import asyncio

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


run = apply_model


async def test_a_process_the_registry_shows_is_watched_before_the_timeline_has_it(
    ledger: Projection,
) -> None:
    p = ledger
    store = p.domain_store("process")
    body = ProcessEventBody(data=struct_pb2.Struct())
    await store.append("run", [NewEvent(body, event_type="process_started")], NO_STREAM)
    await store.append("run", [NewEvent(body, event_type="step_done")], 1)
    await run(p, PROCESSES)  # the registry only
    query = await build(process_query_settings(p.settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{query.port}") as channel:
            reads = q_grpc.ProcessQueryServiceStub(channel)
            shown = await reads.GetProcess(q.GetProcessRequest(process_id="run"), timeout=5)
            assert shown.process.event_count == 2
            with pytest.raises(grpc.aio.AioRpcError) as nobody:
                call = reads.WatchProcess(q.WatchProcessRequest(process_id="nobody"), timeout=5)
                await call.read()
            assert nobody.value.code() == grpc.StatusCode.NOT_FOUND

            call = reads.WatchProcess(q.WatchProcessRequest(process_id="run"), timeout=30)
            first = asyncio.ensure_future(call.read())
            await asyncio.sleep(0.5)
            assert not first.done()  # watching, not refused: nothing in the timeline yet
            await run(p, TIMELINE)
            got = [await asyncio.wait_for(first, 20), await asyncio.wait_for(call.read(), 20)]
            assert [r.event.process_seq for r in got] == [1, 2]
            call.cancel()
    finally:
        await query.stop(0)
