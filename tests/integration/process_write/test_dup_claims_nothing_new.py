"""A duplicate answer claims nothing new (differential probe, observer gRPC on a real
NATS). Event a recorded under key K1; then (a, K3) is answered as a duplicate of a.
It also claimed K3 for a (the recovery of an event stopped between its id's claim and
its key's keeps the key's claim it makes), though a never carried K3: the distinct
event (d, K3) was then answered as a duplicate of a and never recorded. The key's
claim is now kept only when the event as stored carries that key; the retry of an
event whose key claim is missing still claims it (tests/.../test_claims_key_absent)."""

from __future__ import annotations

import pytest

from jetsource._gen.process.v1 import observer_pb2 as pb
from jetsource._gen.process.v1 import observer_pb2_grpc as pb_grpc
from jetsource._gen.process.v1.events_pb2 import CanonicalEvent, Position
from jetsource.core.ids import uuid7
from jetsource.domains.process.claims import claim_key
from jetsource.observer.server import Observer
from tests.integration.process_write.helpers import event

pytestmark = pytest.mark.integration


async def record(stub: pb_grpc.ObserverServiceStub, e: CanonicalEvent) -> Position:
    r: pb.RecordResponse = await stub.Record(pb.RecordRequest(event=e), timeout=10)
    return r.position


async def test_a_shared_id_under_a_new_key_claims_no_key_and_loses_no_event(
    observer: Observer, stub: pb_grpc.ObserverServiceStub
) -> None:
    p = f"dup-{uuid7()[-8:]}"
    a = await record(stub, event(p, event_id="a", idempotency_key="K1"))
    assert not a.duplicate
    c_k1 = await record(stub, event(p, event_id="c", idempotency_key="K1"))
    assert c_k1.duplicate and c_k1.global_seq == a.global_seq
    c = await record(stub, event(p, event_id="c"))  # id c was never claimed
    assert not c.duplicate and c.process_seq == 2
    a_k3 = await record(stub, event(p, event_id="a", idempotency_key="K3"))
    assert a_k3.duplicate and a_k3.global_seq == a.global_seq
    await observer.recorder.flush()
    claims = observer.recorder._claims
    assert await claims.get(claim_key("k", p, "K3")) is None  # before: claimed for a
    d = await record(stub, event(p, event_id="d", idempotency_key="K3"))
    assert not d.duplicate and d.process_seq == 3  # before: a duplicate of a, d lost
    again = await record(stub, event(p, event_id="a", idempotency_key="K3"))
    assert again.duplicate and again.global_seq == a.global_seq  # the id decides
    assert (await record(stub, event(p, event_id="e", idempotency_key="K3"))).global_seq == (
        d.global_seq
    )
    await observer.recorder.flush()
    got = await claims.get(claim_key("k", p, "K3"))
    assert got is not None and got[0].event_id == "d" and got[0].done
    store = observer.store
    history = await store.read_aggregate(p)
    assert [(r.event_id, r.envelope.idempotency_key) for r in history] == [
        ("a", "K1"),
        ("c", ""),
        ("d", "K3"),
    ]


async def test_a_shared_key_under_a_new_id_claims_no_id(
    observer: Observer, stub: pb_grpc.ObserverServiceStub
) -> None:
    """The symmetric case: (c, K1) with K1 a's claims not the id c."""
    p = f"dup-{uuid7()[-8:]}"
    a = await record(stub, event(p, event_id="a", idempotency_key="K1"))
    c_k1 = await record(stub, event(p, event_id="c", idempotency_key="K1"))
    assert c_k1.duplicate and c_k1.global_seq == a.global_seq
    await observer.recorder.flush()
    assert await observer.recorder._claims.get(claim_key("e", p, "c")) is None
    c = await record(stub, event(p, event_id="c", idempotency_key="K2"))
    assert not c.duplicate and c.process_seq == 2
