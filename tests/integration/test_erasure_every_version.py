"""`erase` rewrites every version of a read model that holds data, not only the one
queries read: with context v2 built and cut over, v1 stays live (a cutover back
serves it) and kept the subject's name. Its progress only moves forward and ends at
100%, and the report names the versions written."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.projection import erasure
from jetsource.projection.bootstrap import Projection
from tests.admin_fixtures import stories_of
from tests.projector_fixtures import context_projection, two_live_context_versions

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with context_projection(settings, unique) as p:
        yield p


async def test_erase_rewrites_the_inactive_version_too(
    projection: Projection, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = projection
    monkeypatch.setattr(erasure, "GRACE_S", 0.05)
    ana = f"ana-{unique}"
    await stories_of(p, ana)
    v1, v2 = await two_live_context_versions(p)
    for model in (v1, v2):
        assert ana in repr(await model.read("s1"))

    seen: list[tuple[int, int]] = []
    report = await erasure.erase_subject(p, ana, progress=lambda d, t: seen.append((d, t)))

    assert report.key_destroyed and not report.failed
    for model in (v1, v2):  # the inactive v1 too: a cutover back would serve it
        for story in ("s1", "s2"):
            assert ana not in repr(await model.read(story))
    assert report.models["context"]["versions"] == {"1": 2, "2": 2}
    done = [d for d, _ in seen]
    assert done == sorted(done), seen  # never backwards
    assert seen[-1][0] == seen[-1][1] > 0, seen  # ends at 100%
