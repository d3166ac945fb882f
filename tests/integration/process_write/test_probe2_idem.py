"""Idempotency across and within requests: a duplicate inside one batch, one event id
or idempotency key used by two processes (each process has its own), and 8 clients
sending overlapping batches of one process at once: every event once, in one order."""

from __future__ import annotations

import asyncio

import pytest

from jetsource._gen.process.v1 import observer_pb2 as pb
from jetsource._gen.process.v1 import observer_pb2_grpc as pb_grpc
from jetsource._gen.process.v1.events_pb2 import CanonicalEvent
from jetsource.core.ids import uuid7
from tests.integration.process_write.helpers import event

pytestmark = pytest.mark.integration


async def batch(
    stub: pb_grpc.ObserverServiceStub, events: list[CanonicalEvent]
) -> list[tuple[str, int, int, bool]]:
    r = await stub.RecordBatch(pb.RecordBatchRequest(events=events), timeout=30)
    return [(p.process_id, p.process_seq, p.global_seq, p.duplicate) for p in r.positions]


async def test_duplicates_within_a_batch_and_across_processes(
    stub: pb_grpc.ObserverServiceStub,
) -> None:
    a, b = f"a-{uuid7()[-8:]}", f"b-{uuid7()[-8:]}"
    same = uuid7()
    got = await batch(stub, [event(a, event_id=same), event(a, event_id=same)])
    assert got[1] == (*got[0][:3], True) and not got[0][3]
    k1 = [event(a, event_id=uuid7(), idempotency_key="k1") for _ in range(2)]
    got = await batch(stub, k1)
    assert got[1] == (*got[0][:3], True) and got[0][1] == 2
    # the same id and the same key in another process are that process's own
    got = await batch(stub, [event(a, event_id=same), event(b, event_id=same)])
    assert got[0][3] and got[0][1] == 1 and not got[1][3] and got[1][1] == 1
    got = await batch(
        stub,
        [
            event(a, event_id=uuid7(), idempotency_key="k2"),
            event(b, event_id=uuid7(), idempotency_key="k2"),
        ],
    )
    assert not got[0][3] and not got[1][3] and got[0][2] != got[1][2]


async def test_eight_clients_overlapping_batches_record_each_event_once(
    stub: pb_grpc.ObserverServiceStub,
) -> None:
    c = f"c-{uuid7()[-8:]}"
    ids = [uuid7() for _ in range(40)]

    async def one(k: int) -> pb.RecordBatchResponse:
        evs = [event(c, event_id=ids[(k * 5 + j) % 40]) for j in range(20)]
        r: pb.RecordBatchResponse = await stub.RecordBatch(
            pb.RecordBatchRequest(events=evs), timeout=30
        )
        return r

    answers = await asyncio.gather(*(one(k) for k in range(8)))
    seen: dict[str, set[tuple[int, int]]] = {}
    for r in answers:
        for p in r.positions:
            seen.setdefault(p.event_id, set()).add((p.process_seq, p.global_seq))
    assert set(seen) == set(ids)
    assert all(len(v) == 1 for v in seen.values())  # one position per event, everywhere
    assert sorted(next(iter(v))[0] for v in seen.values()) == list(range(1, 41))
    fresh = sum(1 for r in answers for p in r.positions if not p.duplicate)
    assert fresh == 40
