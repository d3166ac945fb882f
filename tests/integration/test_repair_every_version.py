"""`repair void` of an event every version had applied as valid writes the story again
without it in every version that holds data, not only the active one: after a cutover
to the other live version the voided decision was back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.projection.bootstrap import Projection
from jetsource.projection.repair import void_sequence
from tests.projector_fixtures import context_projection, two_live_context_versions

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with context_projection(settings, unique) as p:
        yield p


async def test_a_void_is_replayed_in_every_live_version(projection: Projection) -> None:
    p = projection
    await p.store.append(
        "s1",
        [
            NewEvent(ev.ContextCreated(title="T", created_by="x")),
            NewEvent(ev.DecisionAdded(decision_id="kept-one", title="K")),
            NewEvent(ev.DecisionAdded(decision_id="voided-one", title="V")),
        ],
        0,
    )
    seq = (await p.store.read_aggregate("s1"))[-1].stream_seq
    v1, v2 = await two_live_context_versions(p)
    for model in (v1, v2):
        assert "voided-one" in repr(await model.read("s1"))

    report = await void_sequence(
        p, seq, "entered by mistake", "tester", domain="context", caught_up_s=2.0
    )

    for model in (v1, v2):  # v1 too: a cutover back must not serve the voided decision
        state = repr(await model.read("s1"))
        assert "voided-one" not in state and "kept-one" in state
    assert report.models["context v1"]["replayed"] is True
    assert report.models["context v2"]["replayed"] is True
    assert report.left_to_rebuild() == []
