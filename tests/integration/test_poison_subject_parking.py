"""A message on <prefix>.a%b.<Type> names no aggregate: its dead letter parks no story.
Its letters were filed under the token 'a_b' (deadletters._token), and a worker that
started again parked the real story 'a_b' behind it: every event of a_b was
dead-lettered 'parked behind dead letter of sequence N'."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.valkey_models import ContextModel
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import OutMessage, RawMessage
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.deadletters import NO_STORY, aggregate_of
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import projector_settings, seed

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(projector_settings(settings, unique, max_deliver=2))
    yield p
    await p.model("context", 1).drop()
    await p.close()


def envelope() -> bytes:
    e = EventEnvelope(aggregate_version=1, schema_version=1)
    e.payload = ev.ContextCreated(title="hostile").SerializeToString()
    return e.SerializeToString()


async def poison(p: Projection) -> int:
    prefix = p.store.settings.subject_prefix
    subject = f"{prefix}.a%b.ContextCreated"
    ack = await jsapi.publish(p.store._replies, OutMessage(subject, envelope(), {}), 5.0)
    return int(ack.seq)


def test_a_subject_naming_no_aggregate_names_none() -> None:
    assert aggregate_of("p.a%b.ContextCreated", "p") == "_"
    assert aggregate_of(f"p.{'a' * 2000}.ContextCreated", "p") == "_"
    assert aggregate_of("p.a_b.ContextCreated", "p") == "a_b"


async def test_a_poison_id_parks_no_story_after_a_restart(projection: Projection) -> None:
    p = projection
    seq = await poison(p)
    model = p.model("context", 1)
    assert isinstance(model, ContextModel)
    first = Worker(p.nc, p.store, model, p.dead_letters, p.settings.projector)
    await asyncio.wait_for(first.run(until_caught_up=True), 30)
    await seed(p.store, ["a_b", "other"], 3)
    again = Worker(p.nc, p.store, model, p.dead_letters, p.settings.projector)
    await asyncio.wait_for(again.run(until_caught_up=True), 30)
    letters = await p.dead_letters.list(again.spec)
    assert [d.original_seq for d in letters] == [seq]
    assert sorted(await model.recent(None, 0, 100)) == ["a_b", "other"]


async def test_a_letter_filed_under_the_old_token_parks_no_story(projection: Projection) -> None:
    """A letter filed before (under 'a_b', its event's subject a%b) parks no story either,
    and dlq discard (by its sequence) still clears it."""
    p = projection
    seq = await poison(p)
    model = p.model("context", 1)
    assert isinstance(model, ContextModel)
    w = Worker(p.nc, p.store, model, p.dead_letters, p.settings.projector)
    await p.dead_letters.ensure_stream()
    prefix = p.store.settings.subject_prefix
    raw = RawMessage(f"{prefix}.a%b.ContextCreated", seq, 0, {}, envelope())
    await p.dead_letters.publish(w.spec, "a%b", raw, "its subject names no aggregate", 2)
    [old] = await p.dead_letters.list(w.spec)
    assert old.aggregate_id == "a_b"  # as filed before
    await seed(p.store, ["a_b"], 3)
    await asyncio.wait_for(w.run(until_caught_up=True), 30)
    assert await model.recent(None, 0, 100) == ["a_b"]
    assert [d.original_seq for d in await p.dead_letters.list(w.spec)] == [seq]
    assert await p.dead_letters.delete(old.dlq_seq)
    assert await p.dead_letters.list(w.spec) == []


async def test_the_letters_of_no_story_are_selected_by_aggregate_underscore(
    projection: Projection,
) -> None:
    """dlq list shows such a letter under aggregate '_' (deadletters.NO_STORY), and
    dlq list/retry/discard --aggregate _ select it: 9a0a370 refused '_' as no story's
    id, so those letters could be selected only by sequence."""
    p = projection
    seq = await poison(p)
    model = p.model("context", 1)
    w = Worker(p.nc, p.store, model, p.dead_letters, p.settings.projector)
    await asyncio.wait_for(w.run(until_caught_up=True), 30)
    [letter] = await admin.dlq_list(p, "context")
    assert (letter.aggregate_id, letter.original_seq) == (NO_STORY, seq)
    assert [d.original_seq for d in await admin.dlq_list(p, "context", NO_STORY)] == [seq]
    planned = await admin.dlq_discard(p, "context", NO_STORY, dry_run=True)
    assert [d.original_seq for d in await admin.dlq_list(p, "context", NO_STORY)] == [seq]
    await admin.dlq_discard(p, "context", NO_STORY)
    assert await admin.dlq_list(p, "context") == [], planned
