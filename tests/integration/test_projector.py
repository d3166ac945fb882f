"""The projector against real NATS, Valkey and the graph store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.domain.context.serialize import state_to_dict
from jetsource.eventstore import jsapi
from jetsource.projector.bootstrap import Projection, open_projection
from jetsource.projector.graph_model import GraphModel
from jetsource.projector.runtime import Worker
from jetsource.projector.valkey_models import ContextModel, TimelineModel
from tests.projector_fixtures import expected_state, projector_settings, seed, story_ids

pytestmark = pytest.mark.integration

MODELS = ("context", "timeline", "graph")


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(projector_settings(settings, unique))
    yield p
    for name in MODELS:
        await p.model(name, 1).drop()
    await p.close()


async def build(p: Projection, name: str, version: int = 1) -> Worker:
    worker = Worker(p.nc, p.store, p.model(name, version), p.dead_letters, p.settings.projector)
    await worker.run(until_caught_up=True)
    return worker


async def test_models_follow_the_stream_and_redelivery_changes_nothing(
    projection: Projection,
) -> None:
    stories = story_ids(12)
    histories = await seed(projection.store, stories, 40)
    total = 12 * 40
    digests = {}
    for name in MODELS:
        worker = await build(projection, name)
        assert worker.stats.applied == total, name
        checkpoint = await worker.model.checkpoint()
        assert checkpoint.applied == total
        digests[name] = await worker.model.digest()

    context = projection.model("context", 1)
    assert isinstance(context, ContextModel)
    for story in stories:
        doc = await context.read(story)
        assert doc is not None
        assert doc["state"] == state_to_dict(expected_state(story, histories[story]))
        assert doc["applied"] == 40
    timeline = projection.model("timeline", 1)
    assert isinstance(timeline, TimelineModel)
    entries = await timeline.read(stories[0], limit=100)
    assert [e["version"] for e in entries] == list(range(40, 0, -1))
    graph = projection.model("graph", 1)
    assert isinstance(graph, GraphModel)
    hood = await graph.neighbourhood(stories[0])
    state = expected_state(stories[0], histories[stories[0]])
    assert hood["story"]["version"] == 40
    has = [e for e in hood["edges"] if e[0] in ("HAS_DECISION", "HAS_SUBTASK")]
    assert len(has) == len(state.decisions) + len(state.subtasks)
    depends = [e for e in hood["edges"] if e[0] == "DEPENDS_ON"]
    assert len(depends) == len(state.dependencies)

    # Every event again, from a fresh consumer: all duplicates, nothing changes.
    for name in MODELS:
        spec = projection.model(name, 1).spec
        await jsapi.delete_consumer(
            projection.store._replies, projection.store.settings.stream, spec.durable, 5
        )
        worker = await build(projection, name)
        assert worker.stats.applied == 0, name
        assert worker.stats.duplicates == total, name
        assert await worker.model.digest() == digests[name], name
