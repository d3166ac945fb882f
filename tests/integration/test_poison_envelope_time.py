"""Poison with a time no Timestamp holds: an envelope published straight onto the stream
(by someone with publish rights) whose ``occurred_at`` is before year 1, after year 9999
or has nanos outside 0..999999999. No writer stores such a time (each checks it); read as
it came, it made ``ctx events`` fail INTERNAL ("unexpected ValueError: year 0 is out of
range") and ListEvents hand clients a timestamp no JSON time parser takes
("2023-11-14T22:13:20.1500000000Z"). Like any envelope that is not whole, it is named
(CorruptEventError with its sequence) and dead-lettered once by every read model, and the
other stories flow on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.errors import CorruptEventError
from jetsource.core.settings import JetsourceSettings
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import OutMessage
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import projector_settings, seed

pytestmark = pytest.mark.integration

MODELS = ("context", "timeline", "graph")
TIMES = {
    "year-10000": (253_402_300_800, 0),
    "year-0": (-62_135_596_801, 0),
    "nanos-over": (1_700_000_000, 1_000_000_000),
    "nanos-negative": (1_700_000_000, -1),
}


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(projector_settings(settings, unique, max_deliver=2))
    yield p
    for name in MODELS:
        await p.model(name, 1).drop()
    await p.close()


async def test_an_envelope_time_out_of_range_is_named_and_dead_lettered(
    projection: Projection,
) -> None:
    p = projection
    prefix = p.store.settings.subject_prefix
    poison = {}
    for story, (seconds, nanos) in TIMES.items():
        envelope = EventEnvelope(
            aggregate_version=1,
            schema_version=1,
            payload=ev.ContextCreated(title="t", created_by="me").SerializeToString(),
        )
        envelope.occurred_at.seconds, envelope.occurred_at.nanos = seconds, nanos
        out = OutMessage(f"{prefix}.{story}.ContextCreated", envelope.SerializeToString(), {})
        poison[story] = int((await jsapi.publish(p.store._replies, out, 5.0)).seq)
    # The edges themselves are times: read as any event.
    edge = EventEnvelope(aggregate_version=1, schema_version=1)
    edge.payload = ev.ContextCreated(title="edge").SerializeToString()
    edge.occurred_at.seconds, edge.occurred_at.nanos = 253_402_300_799, 999_999_999
    out = OutMessage(f"{prefix}.edge.ContextCreated", edge.SerializeToString(), {})
    await jsapi.publish(p.store._replies, out, 5.0)
    await seed(p.store, ["after"], 3)

    for story, seq in poison.items():
        with pytest.raises(CorruptEventError) as caught:
            await p.store.read_aggregate(story)
        assert caught.value.stream_seq == seq, story
        assert "occurred_at is no time" in str(caught.value), story
    [read] = await p.store.read_aggregate("edge")
    assert read.envelope.occurred_at.ToJsonString() == "9999-12-31T23:59:59.999999999Z"
    assert len(await p.store.read_aggregate("after")) == 3

    for name in MODELS:
        worker = Worker(p.nc, p.store, p.model(name, 1), p.dead_letters, p.settings.projector)
        await asyncio.wait_for(worker.run(until_caught_up=True), 30)
        letters = await p.dead_letters.list(worker.spec)
        assert sorted(d.original_seq for d in letters) == sorted(poison.values()), name
