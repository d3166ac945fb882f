"""The projector's context models keep no story state folded from events opened before
an erasure that was heard while their write was in flight: the write itself goes
through (the erasure's own rewrite of the aggregate follows, under the same version
guard), but the next batch reads the story again instead of folding onto the state
held before. The publisher's, the snapshotter's and time travel's caches: tests/unit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from jetsource.core import crypto
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.graph_model import GraphModel
from jetsource.domains.context.valkey_models import ContextModel
from jetsource.projection.bootstrap import Projection, open_projection
from tests.projector_fixtures import projector_settings, seed, story_ids

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(projector_settings(settings, unique))
    yield p
    for name in ("context", "graph"):
        await p.model(name, 1).drop()
    await p.close()


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
