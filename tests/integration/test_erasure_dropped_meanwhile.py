"""`erase` meeting a drop of a model version it is writing (real NATS and Valkey): the
version's writes failed on the drop's fence ("context v2 is dropped now") and the erase
reported them as failed, exit 1 and "run the same erase again", whose plan no longer had
the version. A version dropped meanwhile is said under ``skipped`` now, not failed; the
other versions are written. The window is made certain as in test_admin_races: the drop
runs (to its end, or until it has marked the version) between the erase's replay of a
v2 story and its write."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.projection import admin, erasure
from jetsource.projection.bootstrap import Projection
from jetsource.projection.control import DROPPED
from tests.admin_fixtures import marked, stories_of
from tests.projector_fixtures import build_context_v1, context_projection

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with context_projection(settings, unique) as p:
        yield p


@pytest.mark.parametrize("drop", ["whole", "marked"])
async def test_a_version_dropped_during_an_erase_is_skipped_not_failed(
    projection: Projection, unique: str, monkeypatch: pytest.MonkeyPatch, drop: str
) -> None:
    p = projection
    monkeypatch.setattr(erasure, "GRACE_S", 0.05)
    ana = f"ana-{unique}"
    await stories_of(p, ana)
    v1 = await build_context_v1(p)
    await admin.rebuild(p, "context", 2)  # v1 active, v2 live beside it
    real_replay = admin._replay_aggregate
    dropping: list[asyncio.Task[int]] = []

    async def replay_meeting_a_drop(pp: Projection, model: Any, agg: str) -> tuple[int, int]:
        if model.spec.version == 2 and not dropping:
            task = asyncio.create_task(admin.drop(p, "context", 2, settle_s=0.3, verify_s=0.1))
            dropping.append(task)
            if drop == "whole":
                await task
            else:
                await marked(p, 2, DROPPED)
        return await real_replay(pp, model, agg)

    monkeypatch.setattr(admin, "_replay_aggregate", replay_meeting_a_drop)
    report = await erasure.erase_subject(p, ana)
    assert dropping and await asyncio.wait_for(dropping[0], 30) > 0

    assert report.key_destroyed
    assert report.failed == [], report.failed  # was: "context s1 v2: AdminError(...)"
    assert report.skipped == [
        "context v2: dropped by another run meanwhile (nothing of it left to erase)"
    ], report.skipped
    entry = report.models["context"]
    assert entry["versions"] == {"1": 2}, entry
    assert entry["aggregates"] == 2 and entry["failed"] == {}, entry
    assert entry["emptied_meanwhile"] == {"2": "dropped"}, entry
    assert report.summary()["skipped"] == report.skipped
    for story in ("s1", "s2"):  # the version that remains is erased
        assert ana not in repr(await v1.read(story))
    control = await p.control.get("context")
    assert control is not None and 2 not in control.versions
    assert await admin._count(p.model("context", 2)) == 0
