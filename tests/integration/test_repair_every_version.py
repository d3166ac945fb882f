"""`repair void` of an event every version had applied as valid writes the story again
without it in every version that holds data, not only the active one: after a cutover
to the other live version the voided decision was back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.repair import void_sequence
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(projector_settings(settings, unique, control_poll_s=0.2))
    p.settings.projector.models = ["context"]
    yield p
    for version in (1, 2):
        await p.model("context", version).drop()
    await p.close()


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
    await p.control.ensure("context", 1)
    v1 = p.model("context", 1)
    await Worker(p.nc, p.store, v1, p.dead_letters, p.settings.projector).run(until_caught_up=True)
    await admin.rebuild(p, "context", 2)
    await admin.cutover(p, "context", 2)
    v2 = p.model("context", 2)
    for model in (v1, v2):
        assert "voided-one" in repr(await model.read("s1"))  # type: ignore[attr-defined]

    report = await void_sequence(p, seq, "entered by mistake", "tester", caught_up_s=2.0)

    for model in (v1, v2):  # v1 too: a cutover back must not serve the voided decision
        state = repr(await model.read("s1"))  # type: ignore[attr-defined]
        assert "voided-one" not in state and "kept-one" in state
    assert report.models["context v1"]["replayed"] is True
    assert report.models["context v2"]["replayed"] is True
    assert report.left_to_rebuild() == []
