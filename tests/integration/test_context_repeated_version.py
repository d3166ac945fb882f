"""Every context read model tells a redelivery from a second event for one version.

A version a model applied already is a redelivery when it comes from the stream
sequence it was applied from (or an earlier one): nothing changes, it is acked. From
a later sequence it is a second event claiming that version: only a writer that
bypasses the store's optimistic concurrency (a raw publish) can put it there, and the
stream's readers (time travel, the publisher's fold) name it as corrupt. The models
(context, timeline, graph) refuse it too, so it is dead-lettered once and the story
parked; the query service then answers DATA_LOSS naming its sequence, as the other
readers do; ``repair void`` brings every reader back to agreement and the live models
equal a rebuild. Against the real servers (NATS, Valkey, the graph store).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.context.v1 import query_pb2 as qpb
from jetsource._gen.context.v1 import query_pb2_grpc as qgrpc
from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.envelope import NO_STREAM, NewEvent, RecordedEvent
from jetsource.core.errors import CorruptEventError
from jetsource.core.settings import JetsourceSettings
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import OutMessage
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.repair import void_sequence
from jetsource.projection.runtime import Worker
from jetsource.query.server import build as build_query
from jetsource.query.settings import QueryOptions, QuerySettings
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.integration

MODELS = ("context", "timeline", "graph")


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(projector_settings(settings, unique, max_deliver=3))
    yield p
    for name in MODELS:
        for version in (1, 2):
            await p.model(name, version).drop()
    await p.close()


async def raw_publish(p: Projection, subject: str, data: bytes) -> int:
    """A publish as a client with publish rights can make it: no expected sequence."""
    ack = await jsapi.publish(p.store._replies, OutMessage(subject, data, {}), 5.0)
    return int(ack.seq)


async def run_until_caught_up(p: Projection, name: str, version: int = 1) -> Worker:
    worker = Worker(p.nc, p.store, p.model(name, version), p.dead_letters, p.settings.projector)
    await asyncio.wait_for(worker.run(until_caught_up=True), 60)
    return worker


async def story(p: Projection, sid: str) -> list[RecordedEvent]:
    """Versions 1..3 appended as the publisher appends them."""
    await p.store.append(sid, [NewEvent(ev.ContextCreated(title=f"story {sid}"))], NO_STREAM)
    await p.store.append(sid, [NewEvent(ev.DecisionAdded(decision_id="d1", title="one"))], 1)
    await p.store.append(sid, [NewEvent(ev.SubtaskAdded(subtask_id="t1", title="task"))], 2)
    return await p.store.read_aggregate(sid)


def second_version_2(first: RecordedEvent) -> EventEnvelope:
    """Another event claiming version 2 (a decision of its own, a new event id)."""
    envelope = EventEnvelope()
    envelope.CopyFrom(first.envelope)
    envelope.event_id = f"{first.envelope.event_id}-again"
    envelope.event_type = "DecisionAdded"
    envelope.aggregate_version = 2
    envelope.payload = ev.DecisionAdded(decision_id="d-poison", title="no").SerializeToString()
    return envelope


async def test_a_second_event_for_a_version_is_dead_lettered_named_and_voided(
    projection: Projection, settings: JetsourceSettings, unique: str
) -> None:
    p = projection
    prefix = p.store.settings.subject_prefix
    records = await story(p, "twice")
    await story(p, "other")
    poison = await raw_publish(
        p, f"{prefix}.twice.DecisionAdded", second_version_2(records[1]).SerializeToString()
    )
    # The stream's readers name it.
    with pytest.raises(CorruptEventError) as caught:
        await p.store.read_aggregate("twice")
    assert caught.value.stream_seq == poison

    # Each model files it once, within its retry budget; the story stays at version 3.
    for name in MODELS:
        await p.control.ensure(name, 1)
        worker = await run_until_caught_up(p, name)
        letters = await p.dead_letters.list(worker.spec)
        assert [(d.aggregate_id, d.original_seq) for d in letters] == [("twice", poison)], name
        assert worker.stats.dead_letters == 1, name
        assert "version 2" in letters[0].reason and "not a redelivery" in letters[0].reason
        assert await worker.model.position("twice") == 3, name
        assert await worker.model.position("other") == 3, name
        again = await run_until_caught_up(p, name)  # nothing more is filed
        assert again.stats.dead_letters == 0, name
        assert len(await p.dead_letters.list(worker.spec)) == 1, name

    base = projector_settings(settings, unique)
    shared = {name: getattr(base, name) for name in JetsourceSettings.model_fields}
    query = await build_query(
        QuerySettings(
            **shared,
            projector=base.projector,
            query=QueryOptions(grpc_port=0, metrics_port=0, dead_letter_ttl_s=0),
        )
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{query.port}")
    stub = qgrpc.ContextQueryServiceStub(channel)
    try:
        # Every reader of the story says DATA_LOSS naming the sequence: the model
        # reads (current state, the graph) as the stream's readers (time travel past
        # the poison, the history).
        calls: list[Any] = [
            lambda: stub.GetContext(qpb.GetContextRequest(context_id="twice")),
            lambda: stub.GetDecisionGraph(qpb.GetDecisionGraphRequest(context_id="twice")),
            # A malformed root too: the parked story answers first (a681b7e said
            # INVALID_ARGUMENT for it, before the model was asked).
            lambda: stub.GetDecisionGraph(
                qpb.GetDecisionGraphRequest(context_id="twice", root_id="bad id!")
            ),
            lambda: stub.GetContextAtVersion(
                qpb.GetContextAtVersionRequest(context_id="twice", version=4)
            ),
            lambda: stub.ListEvents(qpb.ListEventsRequest(context_id="twice")),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call()
            assert failed.value.code() == grpc.StatusCode.DATA_LOSS, failed.value
            assert str(poison) in (failed.value.details() or "")
            status = rpc_status.from_call(failed.value)
            assert status is not None
            info = error_details_pb2.ErrorInfo()
            assert status.details[0].Unpack(info)
            assert info.reason == "CORRUPT_EVENT"
            assert info.metadata["stream_sequence"] == str(poison), info
            assert info.metadata["context_id"] == "twice", info
        # Another story answers.
        other = await stub.GetContext(qpb.GetContextRequest(context_id="other"))
        assert other.context.version == 3

        # Repair: every reader steps over it, and agrees again.
        report = await void_sequence(p, poison, "a second event for version 2", "tester")
        assert report.aggregate_id == "twice"
        assert all(not e["failed"] for e in report.models.values()), report.models
        assert await p.dead_letters.list() == []
        assert [e.version for e in await p.store.read_aggregate("twice")] == [1, 2, 3]
        current = await stub.GetContext(qpb.GetContextRequest(context_id="twice"))
        at = await stub.GetContextAtVersion(
            qpb.GetContextAtVersionRequest(context_id="twice", version=3)
        )
        assert current.context == at.context
        assert current.context.version == 3
        history = await stub.ListEvents(qpb.ListEventsRequest(context_id="twice"))
        assert [e.version for e in history.events] == [1, 2, 3]
        with pytest.raises(grpc.aio.AioRpcError) as past:
            await stub.GetContextAtVersion(
                qpb.GetContextAtVersionRequest(context_id="twice", version=4)
            )
        assert past.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert [d.id for d in current.context.decisions] == ["d1"]
        await stub.GetDecisionGraph(qpb.GetDecisionGraphRequest(context_id="twice"))
    finally:
        await channel.close()
        await query.stop(0)

    # The story goes on; the live models take it and each equals a rebuild.
    await p.store.append("twice", [NewEvent(ev.DecisionAdded(decision_id="d2", title="x"))], 3)
    for name in MODELS:
        live = await run_until_caught_up(p, name)
        assert live.stats.dead_letters == 0, name
        assert await live.model.position("twice") == 4, name
        rebuilt = await admin.rebuild(p, name, 2)
        assert rebuilt.applied == 7, (name, rebuilt)  # 4 + 3: the poison is no event
        assert await p.dead_letters.list(p.spec(name, 2)) == [], name
        assert await p.model(name, 2).digest() == await live.model.digest(), name


def at(record: RecordedEvent, seq: int) -> RecordedEvent:
    return RecordedEvent(record.envelope, record.event, seq, record.recorded_at_ns)


def poisoned(record: RecordedEvent, seq: int) -> RecordedEvent:
    envelope = second_version_2(record)
    return RecordedEvent(
        envelope,
        ev.DecisionAdded.FromString(envelope.payload),
        seq,
        record.recorded_at_ns + 1,
    )


def cold(model: Any) -> None:
    """Forget what the model keeps in memory: what it decides comes from its store."""
    for attribute in ("_cache",):
        if hasattr(model, attribute):
            getattr(model, attribute).clear()


@pytest.mark.parametrize("name", MODELS)
async def test_a_redelivery_is_a_silent_no_op_and_a_refusal_is_remembered(
    projection: Projection, name: str
) -> None:
    p = projection
    records = await story(p, "s")
    await p.store.append("s", [NewEvent(ev.DecisionAdded(decision_id="d2", title="four"))], 3)
    # Version 4 as the model will meet it, from a sequence above the poison's below.
    v4 = at((await p.store.read_aggregate("s", from_version=4))[0], 1000)
    model = p.model(name, 1)
    await model.setup()
    first = await model.apply(records)
    assert sorted(first.done) == [r.stream_seq for r in records] and first.applied == 3
    before = await model.digest()

    # A redelivery (after a nak, or a worker killed before its ack): the very same
    # messages, warm and cold, in one batch or several. Acked, nothing changes.
    for batch in (records, records[1:], [records[2]], [records[0], records[2]]):
        for forget in (False, True):
            if forget:
                cold(model)
            again = await model.apply(batch)
            assert sorted(again.done) == sorted(r.stream_seq for r in batch), (name, again)
            assert again.applied == 0 and not again.failed and not again.waiting, again
    assert await model.digest() == before
    assert await model.position("s") == 3

    # A second event for version 2 from a later sequence is refused, version 4
    # behind it waits.
    seq = 500
    out = await model.apply([poisoned(records[1], seq), v4])
    assert list(out.failed) == [seq], out
    assert "where 4 belongs" in out.failed[seq]
    assert out.waiting == {v4.stream_seq: f"behind refused sequence {seq}"}
    assert out.applied == 0 and await model.position("s") == 3
    assert list((await model.apply([poisoned(records[1], seq)])).failed) == [seq]

    # Version 4 applied meanwhile (it is the next one; the runtime retries the poison
    # after a backoff): the retried poison, now below the sequence version 4 came
    # from, is still refused (remembered), warm or cold; the real events stay
    # redeliveries.
    assert (await model.apply([v4])).applied == 1
    for forget in (False, True):
        if forget:
            cold(model)
        retried = await model.apply([poisoned(records[1], seq)])
        assert list(retried.failed) == [seq], (name, forget, retried)
        redelivered = await model.apply([*records, v4])
        assert redelivered.applied == 0 and not redelivered.failed, redelivered
        assert not redelivered.waiting, redelivered


async def test_a_timeline_row_without_a_sequence_takes_a_repeat_for_a_redelivery(
    projection: Projection,
) -> None:
    """Rows the timeline wrote before it kept the sequence (no ``pseq``): a repeated
    version reads as a redelivery, as before (no rebuild on upgrade), until the story's
    next event is applied; from then on it is checked."""
    p = projection
    records = await story(p, "s")
    model = p.model("timeline", 1)
    await model.apply(records[:2])
    await p.redis.hdel(f"{model.ns}:pseq", "s")  # type: ignore[attr-defined]
    old = await model.apply([poisoned(records[1], 900)])
    assert old.done == [900] and old.applied == 0 and not old.failed
    assert (await model.apply([records[2]])).applied == 1
    assert list((await model.apply([poisoned(records[1], 901)])).failed) == [901]
    assert (await model.apply(records)).applied == 0


@pytest.mark.parametrize("name", MODELS)
async def test_a_discarded_second_event_takes_no_place(projection: Projection, name: str) -> None:
    """`projector dlq discard` of a second event for a version: the model stepped past it
    with a stand-in at the story's next version, so the story's real next event came as
    a second one for that version (refused, or skipped in silence before the models told
    the two apart), while a rebuild steps over the discarded message with no place. Now
    a discarded message that is not the story's next version writes nothing."""
    p = projection
    prefix = p.store.settings.subject_prefix
    records = await story(p, "gone")
    poison = await raw_publish(
        p, f"{prefix}.gone.DecisionAdded", second_version_2(records[1]).SerializeToString()
    )
    await p.control.ensure(name, 1)
    worker = await run_until_caught_up(p, name)
    (letter,) = await p.dead_letters.list(worker.spec)
    assert letter.original_seq == poison
    report = await admin.dlq_discard(p, name, dlq_seqs=[letter.dlq_seq])
    assert report.done == [letter.dlq_seq], report
    assert await worker.model.position("gone") == 3
    # The story's next event (raw: the poison is the subject's last message, so an
    # append's concurrency check reads version 2).
    fourth = EventEnvelope()
    fourth.CopyFrom(records[2].envelope)
    fourth.event_id = f"{records[2].envelope.event_id}-4"
    fourth.event_type = "DecisionAdded"
    fourth.aggregate_version = 4
    fourth.payload = ev.DecisionAdded(decision_id="d2", title="two").SerializeToString()
    await raw_publish(p, f"{prefix}.gone.DecisionAdded", fourth.SerializeToString())
    live = await run_until_caught_up(p, name)
    assert await live.model.position("gone") == 4
    assert live.stats.dead_letters == 0 and await p.dead_letters.list(worker.spec) == []
    rebuilt = await admin.rebuild(p, name, 2)
    assert await p.dead_letters.list(p.spec(name, 2)) == [], rebuilt
    assert await p.model(name, 2).digest() == await live.model.digest()
