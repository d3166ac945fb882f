"""`erase` rewrites every version of a read model that holds data, not only the one
queries read: with context v2 built and cut over, v1 stays live (a cutover back
serves it) and kept the subject's name. Its progress only moves forward and ends at
100%, and the report names the versions written."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.projection import admin, erasure
from jetsource.projection.bootstrap import Projection, open_projection
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


async def test_erase_rewrites_the_inactive_version_too(
    projection: Projection, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = projection
    monkeypatch.setattr(erasure, "GRACE_S", 0.05)
    ana = f"ana-{unique}"
    for story in ("s1", "s2"):
        await p.store.append(
            story,
            [
                NewEvent(ev.ContextCreated(title="T", created_by=ana), metadata={"actor": ana}),
                NewEvent(ev.DecisionAdded(decision_id="d1", author=ana, title="D")),
            ],
            0,
        )
    await p.control.ensure("context", 1)
    v1 = p.model("context", 1)
    await Worker(p.nc, p.store, v1, p.dead_letters, p.settings.projector).run(until_caught_up=True)
    await admin.rebuild(p, "context", 2)
    await admin.cutover(p, "context", 2)
    v2 = p.model("context", 2)
    for model in (v1, v2):
        assert ana in repr(await model.read("s1"))  # type: ignore[attr-defined]

    seen: list[tuple[int, int]] = []
    report = await erasure.erase_subject(p, ana, progress=lambda d, t: seen.append((d, t)))

    assert report.key_destroyed and not report.failed
    for model in (v1, v2):  # the inactive v1 too: a cutover back would serve it
        for story in ("s1", "s2"):
            assert ana not in repr(await model.read(story))  # type: ignore[attr-defined]
    assert report.models["context"]["versions"] == {"1": 2, "2": 2}
    done = [d for d, _ in seen]
    assert done == sorted(done), seen  # never backwards
    assert seen[-1][0] == seen[-1][1] > 0, seen  # ends at 100%
