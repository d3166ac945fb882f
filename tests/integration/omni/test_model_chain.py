"""The omni read models check each aggregate's chain (versions 1, 2, 3, ...) and
stay idempotent: a batch applied twice changes nothing; events delivered out of order
(after a crash, redelivery comes in any order) are completed from the stream, never
left waiting or applied twice; a version again from a later sequence is refused and
stays refused; rows written before the version was kept go on as they did.
(Dead-lettering and voids through the runtime: tests/integration/test_poison_every_domain.py.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.envelope import NewEvent, RecordedEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.omni.descriptor import omni_domain
from jetsource.domains.omni.models import OMNI_EVENTS, OMNI_IDENTITIES
from jetsource.domains.omni.samples import sample_history
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import OutMessage
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.contract import ReadModel
from jetsource.projection.domain import DomainRegistry
from tests.integration.omni.harness import omni_settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def omni(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    isettings = omni_settings(settings.nats_url(), str(settings.valkey.url), unique)
    p = await open_projection(isettings, domains=DomainRegistry([omni_domain(isettings.omni)]))
    yield p
    for name in p.model_names():
        for version in (1, 2, 3):
            await p.model(name, version).drop()
    await p.close()


async def history(p: Projection, aggregate_id: str, n: int, seed: int = 0) -> list[RecordedEvent]:
    store = p.domain_store("omni")
    for i, message in enumerate(sample_history(aggregate_id, n, seed)):
        await store.append(aggregate_id, [NewEvent(message)], i)
    return await store.read_aggregate(aggregate_id)


async def fresh(p: Projection, name: str, version: int) -> ReadModel:
    model = p.model(name, version)
    await model.setup()
    return model


async def test_a_batch_applied_twice_changes_nothing(omni: Projection) -> None:
    p = omni
    records = [*await history(p, "evt-a", 4), *await history(p, "evt-b", 3, seed=2)]
    model = await fresh(p, OMNI_EVENTS, 1)
    first = await model.apply(records)
    assert first.applied == 7 and sorted(first.done) == sorted(r.stream_seq for r in records)
    digest = await model.digest()
    again = await model.apply(records)
    assert again.applied == 0 and not again.failed and not again.waiting
    assert sorted(again.done) == sorted(first.done)
    assert await model.digest() == digest
    assert await model.position("evt-a") == 4


@pytest.mark.parametrize(("name", "seed"), [(OMNI_EVENTS, 0), (OMNI_IDENTITIES, 1)])
async def test_events_delivered_out_of_order_are_completed_from_the_stream(
    omni: Projection, name: str, seed: int
) -> None:
    p = omni
    aggregate = "evt-r" if seed % 2 == 0 else "idn-r"
    records = await history(p, aggregate, 5, seed)
    in_order = await fresh(p, name, 2)
    await in_order.apply(records)

    model = await fresh(p, name, 1)
    late = await model.apply(records[3:])  # 1..3 held by a projector that died
    assert sorted(late.done) == [r.stream_seq for r in records[3:]], late
    assert late.applied == 2 and not late.waiting and not late.failed
    back = await model.apply(records[:3])  # their redelivery: nothing applied twice
    assert back.applied == 0 and sorted(back.done) == [r.stream_seq for r in records[:3]]
    assert await model.digest() == await in_order.digest()


async def test_a_version_again_from_a_later_sequence_is_refused_and_stays_refused(
    omni: Projection,
) -> None:
    p = omni
    store = p.domain_store("omni")
    records = await history(p, "evt-v", 2)
    model = await fresh(p, OMNI_EVENTS, 1)
    await model.apply(records)

    async def raw(envelope: EventEnvelope) -> RecordedEvent:
        """Published as a client with publish rights can (no expected sequence)."""
        subject = f"{store.settings.subject_prefix}.evt-v.{envelope.event_type}"
        message = OutMessage(subject, envelope.SerializeToString(), {})
        ack = await jsapi.publish(store._replies, message, 5.0)
        return RecordedEvent(envelope, records[1].event, int(ack.seq), 0)

    # Version 2 again (a copy of the real one at a new sequence), then version 3.
    copy = EventEnvelope()
    copy.CopyFrom(records[1].envelope)
    poison = await raw(copy)
    third = EventEnvelope()
    third.CopyFrom(records[1].envelope)
    third.aggregate_version, third.event_id = 3, "third"
    next_one = await raw(third)

    refused = await model.apply([poison])
    assert list(refused.failed) == [poison.stream_seq]
    assert "where 3 belongs" in refused.failed[poison.stream_seq]
    behind = await model.apply([poison, next_one])
    assert behind.waiting == {next_one.stream_seq: f"behind refused sequence {poison.stream_seq}"}
    # Version 3 comes alone (the runtime retries the poison with backoff) and is
    # applied; retried after it, below the sequence version 3 came from, the copy is
    # still refused, while the true events stay redeliveries.
    assert (await model.apply([next_one])).applied == 1
    assert list((await model.apply([poison])).failed) == [poison.stream_seq]
    again = await model.apply([*records, next_one])
    assert again.applied == 0 and not again.failed and len(again.done) == 3


async def test_rows_written_before_the_version_was_kept_go_on_as_they_did(
    omni: Projection,
) -> None:
    p = omni
    records = await history(p, "evt-l", 4)
    model = await fresh(p, OMNI_EVENTS, 1)
    await model.apply(records[:2])
    # What the previous code stored: the stream sequence, no version.
    await p.redis.hdel(f"{model.ns}:ver", "evt-l")  # type: ignore[attr-defined]
    assert await model.position("evt-l") == 0
    old = await model.apply(records[:2])  # redelivered: by sequence, as before
    assert old.applied == 0 and not old.failed and not old.waiting
    on = await model.apply(records[2:])
    assert on.applied == 2 and not on.failed and not on.waiting
    assert await model.position("evt-l") == 4  # known again: checked from here on
    clean = await fresh(p, OMNI_EVENTS, 2)
    await clean.apply(records)
    assert await model.digest() == await clean.digest()
