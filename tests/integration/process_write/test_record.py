"""Record, RecordBatch and RecordStream on a real NATS: positions, order, atomicity,
idempotency (forever, across observers), children before parents, write-only."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from jetsource._gen.process.v1 import events_pb2 as epb
from jetsource._gen.process.v1 import observer_pb2 as pb
from jetsource._gen.process.v1 import observer_pb2_grpc as pb_grpc
from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.observer.server import Observer, build
from tests.infra import Server
from tests.integration.process_write.conftest import observer_settings
from tests.integration.process_write.helpers import event, history, last_seq

pytestmark = pytest.mark.integration


def pid(name: str = "p") -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


async def test_record_assigns_positions_and_stores_the_canonical_event(
    observer: Observer, stub: pb_grpc.ObserverServiceStub
) -> None:
    p, parent = pid(), pid("root")
    e = event(
        p,
        "process_started",
        parent_process_id=parent,
        source="pytest",
        causation_id="cause-1",
        correlation_id="corr-1",
        schema_version=2,
        data={"kind": "pipeline", "name": "generate"},
        attributes={"team": "ml"},
    )
    e.occurred_at.FromSeconds(1_700_000_000)
    first = (await stub.Record(pb.RecordRequest(event=e))).position
    second = (await stub.Record(pb.RecordRequest(event=event(p, "level_started")))).position
    assert (first.process_id, first.process_seq, first.duplicate) == (p, 1, False)
    assert second.process_seq == 2 and second.global_seq > first.global_seq
    assert first.event_id and first.recorded_at.seconds > 1_700_000_000

    stored = await history(observer.store, p)
    assert [r.version for r in stored] == [1, 2]
    assert [r.stream_seq for r in stored] == [first.global_seq, second.global_seq]
    env = stored[0].envelope
    assert (env.event_type, env.aggregate_type, env.aggregate_id) == (
        "process_started",
        "process",
        p,
    )
    assert (env.parent_aggregate_id, env.source, env.causation_id, env.correlation_id) == (
        parent,
        "pytest",
        "cause-1",
        "corr-1",
    )
    assert env.schema_version == 2 and env.event_id == first.event_id
    assert env.occurred_at.seconds == 1_700_000_000
    body = stored[0].event
    assert isinstance(body, ProcessEventBody)
    assert dict(body.data) == {"kind": "pipeline", "name": "generate"}
    assert dict(body.attributes) == {"team": "ml"}


async def test_typed_payload_is_stored_as_bytes_with_its_content_type(
    observer: Observer, stub: pb_grpc.ObserverServiceStub
) -> None:
    p = pid()
    e = epb.CanonicalEvent(
        process_id=p,
        event_type="blob_seen",
        typed=epb.TypedPayload(content_type="application/octet-stream", data=b"\x00\x01\xff"),
    )
    await stub.Record(pb.RecordRequest(event=e))
    [r] = await history(observer.store, p)
    assert isinstance(r.event, ProcessEventBody)
    assert (r.event.typed.content_type, r.event.typed.data) == (
        "application/octet-stream",
        b"\x00\x01\xff",
    )


async def test_batch_across_processes_keeps_each_process_in_order_and_contiguous(
    observer: Observer, stub: pb_grpc.ObserverServiceStub
) -> None:
    a, b = pid("a"), pid("b")
    events = [event(a if i % 3 else b, "step", data={"i": i}) for i in range(30)]
    got = (await stub.RecordBatch(pb.RecordBatchRequest(events=events))).positions
    assert [p.process_id for p in got] == [e.process_id for e in events]
    for proc in (a, b):
        mine = [(p, e) for p, e in zip(got, events, strict=True) if e.process_id == proc]
        assert [p.process_seq for p, _ in mine] == list(range(1, len(mine) + 1))
        stored = await history(observer.store, proc)
        assert [r.event.data["i"] for r in stored] == [e.data["i"] for _, e in mine]  # type: ignore[union-attr]
        # one atomic batch per process: consecutive stream sequences
        seqs = [r.stream_seq for r in stored]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_the_same_event_id_or_key_again_returns_the_original_and_appends_nothing(
    observer: Observer, stub: pb_grpc.ObserverServiceStub
) -> None:
    p = pid()
    with_id = event(p, "step", event_id="evt-1")
    with_key = event(p, "step", idempotency_key="retry key: one")
    first = (await stub.RecordBatch(pb.RecordBatchRequest(events=[with_id, with_key]))).positions
    before = await last_seq(observer.store)
    # a lost ack: the client sends both again, one alone and one with a new event id
    again = (await stub.Record(pb.RecordRequest(event=with_id))).position
    rekeyed = event(p, "step", idempotency_key="retry key: one", event_id="evt-other")
    again_key = (await stub.Record(pb.RecordRequest(event=rekeyed))).position
    assert (again.global_seq, again.process_seq, again.duplicate) == (
        first[0].global_seq,
        first[0].process_seq,
        True,
    )
    assert (again_key.global_seq, again_key.event_id, again_key.duplicate) == (
        first[1].global_seq,
        first[1].event_id,
        True,
    )
    # and within one request: the second occurrence is the first's
    dup = (await stub.RecordBatch(pb.RecordBatchRequest(events=[with_id, with_id]))).positions
    assert {(d.global_seq, d.duplicate) for d in dup} == {(first[0].global_seq, True)}
    assert await last_seq(observer.store) == before
    assert len(await history(observer.store, p)) == 2


async def test_idempotency_outlives_the_duplicate_window_and_the_observer(
    nats_server: Server,
) -> None:
    """A second observer (a restart, or another replica) finds the claim: the stream's
    duplicate window is not what makes it idempotent."""
    p = pid()
    e = event(p, "step", event_id="forever-1", idempotency_key="k-forever")
    one = await build(observer_settings(nats_server))
    try:
        [first] = await one.recorder.record([e])
        await one.recorder.flush()
    finally:
        await one.stop(1.0)
    two = await build(observer_settings(nats_server))
    try:
        # The stream forgets message ids after its window; the claim does not.
        [again] = await two.recorder.record([e])
        assert (again.global_seq, again.process_seq, again.duplicate) == (
            first.global_seq,
            first.process_seq,
            True,
        )
        assert len(await two.store.read_aggregate(p)) == 1
    finally:
        await two.stop(1.0)


async def test_a_claim_left_pending_by_a_crash_resolves_without_loss_or_doubling(
    observer: Observer,
) -> None:
    """Crash between claim and append (nothing stored) and between append and the
    claim's completion (stored): a later retry appends the first once and finds the
    second."""
    from dataclasses import replace

    from jetsource.domains.process.claims import ClaimValue, claim_key

    recorder, claims = observer.recorder, observer.recorder._claims
    p = pid()
    # 1. claimed long ago, never appended (the observer died right after the claim)
    lost = event(p, "step", event_id="crashed-before-append")
    await claims.create(claim_key("e", p, "crashed-before-append"), ClaimValue(lost.event_id, 1))
    # 2. appended, its claim never completed (died right after the append)
    kept = event(p, "step", event_id="crashed-after-append")
    [stored] = await recorder.record([kept])
    await recorder.flush()
    key = claim_key("e", p, "crashed-after-append")
    got = await claims.get(key)
    assert got is not None
    await claims.put(key, replace(got[0], since_ns=1, global_seq=0, process_seq=0))

    before = await last_seq(observer.store)
    [a, b] = await recorder.record([lost, kept])
    assert (a.duplicate, a.process_seq) == (False, 2)
    assert (b.duplicate, b.global_seq, b.process_seq) == (True, stored.global_seq, 1)
    assert await last_seq(observer.store) == before + 1
    [a2, b2] = await recorder.record([lost, kept])
    assert (a2.duplicate, a2.global_seq, b2.global_seq) == (True, a.global_seq, stored.global_seq)
    assert [r.event_id for r in await history(observer.store, p)] == [kept.event_id, lost.event_id]


async def test_concurrent_writers_to_one_process_get_contiguous_process_seq(
    nats_server: Server,
) -> None:
    """Two observers (replicas) and 16 clients each, all on one process: every event
    once, process_seq 1..n without a gap, the store's order is each writer's order."""
    p = pid()
    observers = [await build(observer_settings(nats_server)) for _ in range(2)]
    try:

        async def writer(w: int) -> list[int]:
            rec = observers[w % 2].recorder
            seqs = []
            for i in range(15):
                [r] = await rec.record(
                    [event(p, "step", event_id=f"w{w}-{i}", data={"w": w, "i": i})]
                )
                seqs.append(r.process_seq)
            return seqs

        per_writer = await asyncio.gather(*(writer(w) for w in range(16)))
        stored = await observers[0].store.read_aggregate(p)
        assert [r.version for r in stored] == list(range(1, 16 * 15 + 1))
        assert len({r.event_id for r in stored}) == 16 * 15
        for w, seqs in enumerate(per_writer):
            assert seqs == sorted(seqs), f"writer {w} saw its events out of order"
            mine = [int(r.event.data["i"]) for r in stored if r.event.data["w"] == w]  # type: ignore[union-attr]
            assert mine == list(range(15))
    finally:
        for o in observers:
            await o.stop(1.0)


async def test_a_child_recorded_before_its_parent_is_accepted(
    observer: Observer, stub: pb_grpc.ObserverServiceStub
) -> None:
    parent, child = pid("parent"), pid("child")
    c = await stub.Record(
        pb.RecordRequest(event=event(child, "process_started", parent_process_id=parent))
    )
    p = await stub.Record(pb.RecordRequest(event=event(parent, "process_started")))
    assert c.position.process_seq == 1 and p.position.process_seq == 1
    assert c.position.global_seq < p.position.global_seq
    [stored] = await history(observer.store, child)
    assert stored.envelope.parent_aggregate_id == parent


async def test_record_stream_records_in_arrival_order(
    observer: Observer, stub: pb_grpc.ObserverServiceStub
) -> None:
    p = pid()

    async def requests() -> AsyncIterator[pb.RecordStreamRequest]:
        for i in range(40):
            yield pb.RecordStreamRequest(event=event(p, "tick", event_id=f"t-{i}", data={"i": i}))
            if i % 10 == 0:
                await asyncio.sleep(0.01)

    response = await stub.RecordStream(requests())
    assert [x.process_seq for x in response.positions] == list(range(1, 41))
    stored = await history(observer.store, p)
    assert [r.event_id for r in stored] == [f"t-{i}" for i in range(40)]


async def test_a_refused_event_in_a_stream_names_its_arrival_index(
    observer: Observer, stub: pb_grpc.ObserverServiceStub
) -> None:
    p = pid()

    async def requests() -> AsyncIterator[pb.RecordStreamRequest]:
        for i in range(5):
            yield pb.RecordStreamRequest(event=event(p, "tick", event_id=f"s-{i}"))
            await asyncio.sleep(0.02)
        yield pb.RecordStreamRequest(event=event(p, "BadType"))

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RecordStream(requests())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[5].event_type" in (info.value.details() or "")


async def test_the_observer_answers_no_read_rpc() -> None:
    """Write-only by contract: its service declares only the three writes."""
    service = pb.DESCRIPTOR.services_by_name["ObserverService"]
    assert {m.name for m in service.methods} == {"Record", "RecordBatch", "RecordStream"}
    for m in service.methods:
        assert m.output_type.name.endswith("Response")
        assert {f.name for f in m.output_type.fields} == {
            "position" if m.name == "Record" else "positions"
        }


async def test_a_retry_after_a_deadline_that_fell_right_after_the_append_answers_at_once(
    observer: Observer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller gives up (its deadline) right after its event was appended, while the
    request is completing the claims: the same record sent again (and a new id under
    the same idempotency key) answers at once with the stored event, once. It used to
    wait out the claim's 60 s lease: the claim was left pending, neither in flight nor
    abandoned (a retried RecordBatch past its 10 s deadline under load)."""
    from jetsource.domains.process.recorder import Recorded

    recorder = observer.recorder
    p = pid()
    e = event(p, "step", event_id="deadline-after-append", idempotency_key="k-deadline")
    settle = recorder._settle
    request: asyncio.Task[object] | None = None

    def settle_then_give_up(
        item: object, result: object, stored: bool, done: object = None
    ) -> None:
        settle(item, result, stored, done)  # type: ignore[arg-type]
        if isinstance(result, Recorded) and request is not None:
            request.cancel()  # the deadline falls here: appended, claims not completed

    monkeypatch.setattr(recorder, "_settle", settle_then_give_up)
    request = asyncio.create_task(recorder.record([e]))
    with pytest.raises(asyncio.CancelledError):
        await request
    monkeypatch.undo()
    [first] = await history(observer.store, p)
    async with asyncio.timeout(5):  # the lease is 60 s
        [again] = await recorder.record([e])
        other = epb.CanonicalEvent()
        other.CopyFrom(e)
        other.event_id = ""
        [third] = await recorder.record([other])
    assert (again.duplicate, again.event_id, again.process_seq) == (True, e.event_id, 1)
    assert (third.duplicate, third.event_id, third.process_seq) == (True, e.event_id, 1)
    assert [r.event_id for r in await history(observer.store, p)] == [first.event_id]


async def test_a_retry_after_a_deadline_that_fell_while_a_claim_was_released_finds_the_original(
    observer: Observer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new event id under an idempotency key recorded before: the request releases
    the id's claim it made and answers the original. The caller gives up while that
    release is under way: sent again, it still answers the original at once (it used
    to find the id's claim pending and wait out its lease), and nothing is appended."""
    recorder = observer.recorder
    p = pid()
    [original] = await recorder.record([event(p, "step", event_id="orig", idempotency_key="k")])
    await recorder.flush()
    claims = recorder._claims
    delete = claims.delete
    request: asyncio.Task[object] | None = None

    async def give_up_then_delete(key: str, revision: int) -> None:
        assert request is not None
        request.cancel()  # the deadline falls here, before the release is sent
        await asyncio.sleep(0)
        await delete(key, revision)

    monkeypatch.setattr(claims, "delete", give_up_then_delete)
    late = event(p, "step", event_id="late", idempotency_key="k")
    request = asyncio.create_task(recorder.record([late]))
    with pytest.raises(asyncio.CancelledError):
        await request
    monkeypatch.undo()
    async with asyncio.timeout(5):  # the lease is 60 s
        [again] = await recorder.record([late])
    assert (again.duplicate, again.event_id, again.global_seq) == (
        True,
        "orig",
        original.global_seq,
    )
    assert [r.event_id for r in await history(observer.store, p)] == ["orig"]


async def test_a_key_claim_left_pending_is_resolved_by_its_event_s_id_claim_not_the_history(
    observer: Observer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pending claim of an idempotency key names an event whose id claim is completed
    (the id's claim was settled, the key's was not): a new id under that key is answered
    from the id's claim, without reading the process's whole history (on a long session
    under load that read kept a retry past its deadline)."""
    from dataclasses import replace

    from jetsource.domains.process.claims import claim_key

    recorder, claims = observer.recorder, observer.recorder._claims
    p = pid()
    for i in range(3):
        await recorder.record([event(p, "step", event_id=f"before-{i}")])
    [original] = await recorder.record([event(p, "step", event_id="orig", idempotency_key="k")])
    await recorder.flush()
    key = claim_key("k", p, "k")
    got = await claims.get(key)
    assert got is not None
    # left pending long ago (its lease is over), as a request cut short leaves it
    await claims.put(key, replace(got[0], since_ns=1, global_seq=0, process_seq=0))
    reads: list[str] = []
    read = observer.store.read_aggregate

    async def counted(aggregate_id: str, *args: object, **kw: object) -> object:
        if kw.get("to_version") is None or kw.get("to_version") != kw.get("from_version"):
            reads.append(aggregate_id)  # more than the one version: the check a key's
            # claim naming another event takes (that event carries the key) is one read
        return await read(aggregate_id, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(observer.store, "read_aggregate", counted)
    [again] = await recorder.record([event(p, "step", idempotency_key="k")])
    monkeypatch.undo()
    assert (again.duplicate, again.event_id, again.global_seq, again.process_seq) == (
        True,
        "orig",
        original.global_seq,
        4,
    )
    assert reads == []
    await recorder.flush()
    done = await claims.get(key)
    assert done is not None and done[0].done and done[0].global_seq == original.global_seq
    assert len(await history(observer.store, p)) == 4
