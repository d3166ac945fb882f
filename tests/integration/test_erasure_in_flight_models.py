"""The projector's context models keep no story state folded from events opened before
an erasure that was heard while their write was in flight: the write itself goes
through (the erasure's own rewrite of the aggregate follows, under the same version
guard), but the next batch reads the story again instead of folding onto the state
held before; a replay's rewind keeps no fold of events read before an erasure heard
while it was in flight. The publisher's, the snapshotter's and time travel's caches:
tests/unit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from jetsource._gen.context.v1 import events_pb2 as pb
from jetsource.core import crypto
from jetsource.core.envelope import RecordedEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.graph_model import GraphModel
from jetsource.domains.context.valkey_models import ContextModel
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from tests.projector_fixtures import projection_of, seed, story_ids

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with projection_of(settings, unique, models=("context", "graph")) as p:
        yield p


@pytest.mark.parametrize("name", ["context", "graph"])
async def test_a_write_in_flight_across_an_erasure_leaves_nothing_cached(
    projection: Projection, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    [story] = story_ids(1, tag=f"erase-{name}-")
    await seed(projection.store, [story], 12)
    records = [r async for r in projection.store.read_all()]
    records = [r for r in records if r.aggregate_id == story]
    model = projection.model(name, 1)
    assert isinstance(model, ContextModel | GraphModel)
    await model.setup()
    assert not (await model.apply(records[:6])).waiting
    assert story in model._cache

    if isinstance(model, ContextModel):
        script = model._apply

        async def erase_while_writing(*args: Any, **kwargs: Any) -> Any:
            out = await script(*args, **kwargs)
            crypto.note_erasure()  # heard before the write's answer is used
            return out

        monkeypatch.setattr(model, "_apply", erase_while_writing)
    else:
        write = model._write

        async def erase_while_writing(*args: Any, **kwargs: Any) -> Any:
            out = await write(*args, **kwargs)
            crypto.note_erasure()
            return out

        monkeypatch.setattr(model, "_write", erase_while_writing)
    outcome = await model.apply(records[6:9])
    assert sorted(outcome.done) == [r.stream_seq for r in records[6:9]]
    assert story not in model._cache  # the state folded before the erasure is not kept
    monkeypatch.undo()
    outcome = await model.apply(records[9:])  # read again from the model, and kept
    assert sorted(outcome.done) == [r.stream_seq for r in records[9:]]
    assert story in model._cache
    assert (await model.checkpoint()).applied == 12


def erased_copy(records: list[RecordedEvent]) -> list[RecordedEvent]:
    """The same events at the same places as a read after the erasure gives them: the
    story's title (in its first event) closed."""
    assert isinstance(records[0].event, pb.ContextCreated)
    first = pb.ContextCreated()
    first.CopyFrom(records[0].event)
    first.title = "<erased>"
    return [replace(records[0], event=first), *records[1:]]


async def stored_title(model: ContextModel | GraphModel, story: str) -> str:
    if isinstance(model, ContextModel):
        doc = await model.read(story)
        assert doc is not None
        return str(doc["state"]["title"])
    async with model.driver.session(database=model.database) as session:
        result = await session.run(
            f"MATCH (s:{model.story} {{key: $key}}) RETURN s.title AS t", key=story
        )
        record = await result.single()
    assert record is not None
    return str(record["t"])


@pytest.mark.parametrize("name", ["context", "graph"])
async def test_a_replay_in_flight_across_an_erasure_keeps_no_fold(
    projection: Projection, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay's rewind that read the story's events before an erasure was heard
    (the model's caches emptied after the read) keeps no fold of them: the erasure's
    own rewrite of the story, the same events at the same places now closed, would
    fold onto it and write the opened values back."""
    [story] = story_ids(1, tag=f"erase-fold-{name}-")
    await seed(projection.store, [story], 12)
    records = await projection.store.read_aggregate(story)
    model = projection.model(name, 1)
    assert isinstance(model, ContextModel | GraphModel)
    await model.setup()
    read = model.store.read_aggregate

    async def erase_while_reading(*args: Any, **kwargs: Any) -> Any:
        out = await read(*args, **kwargs)
        crypto.note_erasure()  # heard before the events read are folded
        return out

    monkeypatch.setattr(model.store, "read_aggregate", erase_while_reading)
    await model.rewind(story, 12)
    monkeypatch.undo()
    # The erasure's rewrite: the events as they read now, folded from version 1 (the
    # old code folded nothing: the fold of the opened events held them all).
    await model.rewind(story, 12, events=erased_copy(records), guard=(12, 12))
    assert await stored_title(model, story) == "<erased>"
    assert model._folds._by[story][2].title == "<erased>"  # this fold is kept

    # A replay's events read by the caller before an erasure this model hears of
    # first at the rewind: not kept either.
    crypto.note_erasure()
    await model.rewind(story, 12, events=records, guard=(12, 12))
    assert story not in model._folds._by
    await model.rewind(story, 12, events=erased_copy(records), guard=(12, 12))
    assert await stored_title(model, story) == "<erased>"


@pytest.mark.parametrize("name", ["context", "graph"])
async def test_a_replay_reads_again_what_it_read_before_an_erasure_heard_since(
    projection: Projection, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The projector admin's replay reads an aggregate's events itself and hands them to
    the model's rewind. When an erasure is heard between that read and the rewind (and
    another call of the model has already emptied its caches, so the model cannot
    tell), the replay reads the events again, as they now read: the model never folds,
    writes or keeps what the erasure removed."""
    [story] = story_ids(1, tag=f"erase-replay-{name}-")
    await seed(projection.store, [story], 12)
    records = await projection.store.read_aggregate(story)
    model = projection.model(name, 1)
    assert isinstance(model, ContextModel | GraphModel)
    await model.setup()
    await model.rewind(story, 12, events=records, guard=(0, 0))  # stored at 12
    store = projection.store_for(name)
    reads: list[int] = []

    async def erase_after_first_read(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        if len(reads) > 1:  # the store reads the erased values now
            return erased_copy(records)[kwargs.get("from_version", 1) - 1 :]
        out = await read(*args, **kwargs)
        crypto.note_erasure()  # heard while the replay holds the opened events
        model._forget_if_erased()  # by another call of the model, which emptied its caches
        return out

    read = store.read_aggregate
    monkeypatch.setattr(store, "read_aggregate", erase_after_first_read)
    was, written = await admin._replay_aggregate(projection, model, story)
    monkeypatch.undo()
    assert (was, written) == (12, 12)
    assert len(reads) == 2  # read again after the erasure
    assert await stored_title(model, story) == "<erased>"
    assert model._folds._by[story][2].title == "<erased>"
