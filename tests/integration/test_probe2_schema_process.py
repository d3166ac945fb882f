"""Process events stored raw with envelope times no writer stores (before 1970, far
past any clock, negative nanos): every process model applies or files them, never a
batch failing for good; the process query service answers about them. A time a
protobuf Timestamp cannot hold (years 1 to 9999, nanos 0 to 999999999) is a corrupt
event since 6333a13: read as CorruptEventError and dead-lettered, never applied; one it
can hold (before 1970) is applied."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from jetsource._gen.process.v1 import query_pb2
from jetsource._gen.process.v1 import query_pb2_grpc as query_grpc
from jetsource.core.errors import CorruptEventError
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.process.models import MODELS as PROCESS_MODELS
from jetsource.processquery.server import build as build_query
from jetsource.projection.bootstrap import Projection
from jetsource.projection.runtime import Worker
from tests.integration.test_poison_every_domain import Ledger, envelope, ledger  # noqa: F401
from tests.projector_fixtures import process_query_settings

pytestmark = pytest.mark.integration

TIMES = {
    "before1970": Timestamp(seconds=-(10**10)),
    "farfuture": Timestamp(seconds=10**12),
    "negnanos": Timestamp(seconds=1_700_000_000, nanos=-5),
    "bignanos": Timestamp(seconds=1_700_000_000, nanos=2_000_000_000),
}
# The times no Timestamp holds: their events are corrupt, filed, never applied.
NO_TIME = {"farfuture", "negnanos", "bignanos"}


async def test_odd_envelope_times(ledger: Projection, settings: JetsourceSettings) -> None:  # noqa: F811
    p = ledger
    w = Ledger(p)
    for pid, ts in TIMES.items():
        await w.started(pid, 1)  # versions 1..2
        await w.raw(pid, "process_completed", envelope(pid, "process_completed", 3, occurred_at=ts))
    await w.started("after", 1)
    for pid in TIMES:
        if pid in NO_TIME:
            with pytest.raises(CorruptEventError, match="occurred_at is no time"):
                await w.store.read_aggregate(pid)
        else:
            records = await w.store.read_aggregate(pid)
            assert len(records) == 3
    out: dict[str, Any] = {}
    for name in PROCESS_MODELS:
        await p.control.ensure(name, 1)
        worker = Worker(
            p.nc, p.store_for(name), p.model(name, 1), p.dead_letters, p.settings.projector
        )
        await asyncio.wait_for(worker.run(until_caught_up=True), 90)
        out[name] = (worker.stats.applied, worker.stats.dead_letters)
        letters = await p.dead_letters.list(worker.spec)
        out[name + "_letters"] = [(d.aggregate_id, d.reason[:200]) for d in letters]
    filed: set[str] = set()
    for name in PROCESS_MODELS:
        letters = out[name + "_letters"]
        assert {a for a, _ in letters} <= NO_TIME, out
        assert all("occurred_at is no time" in r for _, r in letters), out
        filed |= {a for a, _ in letters}
    assert filed == NO_TIME, out
    query = await build_query(process_query_settings(p.settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{query.port}") as channel:
            stub = query_grpc.ProcessQueryServiceStub(channel)
            for pid in TIMES:
                calls: list[Any] = [
                    stub.GetProcess(query_pb2.GetProcessRequest(process_id=pid)),
                    stub.GetProcessTimeline(query_pb2.GetProcessTimelineRequest(process_id=pid)),
                    stub.ListEvents(query_pb2.ListEventsRequest()),
                    stub.GetProcessTree(query_pb2.GetProcessTreeRequest(process_id=pid)),
                ]
                for call in calls:
                    try:
                        await call
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() not in (
                            grpc.StatusCode.INTERNAL,
                            grpc.StatusCode.UNKNOWN,
                        ), (pid, exc.details())
            listed = await stub.ListProcesses(query_pb2.ListProcessesRequest())
            assert len(listed.processes) == len(TIMES) + 1
    finally:
        await query.stop(0)
