"""A rebuild's archive phase (a compacted stream: the archived events applied before
the worker takes over) meeting a drop of its version (real NATS and Valkey). The
phase wrote without the version fence the live phase's worker asks before each
batch: a drop during it was followed by the archive's next batches written into the
namespace the drop emptied (keys left, the version gone from the control entry), and
the build then started a worker of the dropped version. Each window is made certain
by running the drop inside the phase's first batch."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jetsource.archive import replay
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from jetsource.projection.control import DROPPED
from tests.history_fixtures import save_snapshots
from tests.integration.archive.fixtures import compact_at
from tests.integration.archive.test_newer_release_compacted import archive_worker
from tests.projector_fixtures import build_context_v1, seed, story_ids

pytestmark = pytest.mark.integration


async def _compacted(p: Projection) -> None:
    """Four stories of 23 events, context v1 built, each compacted up to version 16:
    64 events only the archive holds."""
    stories = story_ids(4)
    await seed(p.store, stories, 23)
    await build_context_v1(p)
    last = 0
    for story in stories:
        records = await p.store.read_aggregate(story)
        await save_snapshots(p.snapshots, records, [16])
        last = max(last, records[-1].recorded_at_ns)
    report = (await compact_at(p, last)).report
    assert report.purged >= 64, report


async def _marked(p: Projection, version: int, state: str) -> None:
    for _ in range(250):
        control = await p.control.get("context")
        if control is not None and control.versions.get(version) == state:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"v{version} never {state}")


@pytest.mark.parametrize("drop", ["whole", "marked"])
async def test_a_drop_during_a_rebuilds_archive_phase_stops_its_writes(
    compacting: Projection, monkeypatch: pytest.MonkeyPatch, drop: str
) -> None:
    """``whole``: the drop runs to its end after the phase's first batch (keys left
    behind, the version gone from the entry); ``marked``: the drop has marked the
    version and the fence's quarter second has passed (the phase kept being written
    while the drop settled). Either way the phase writes no further batch and the
    rebuild ends saying the version was dropped, as when the drop meets its worker."""
    p = compacting
    await _compacted(p)
    monkeypatch.setattr(replay, "BATCH", 5)  # 13 batches: a window between them
    real_model = p.model
    dropping: list[asyncio.Task[int]] = []
    later: list[int] = []  # batches v2 was given after the drop came

    def model(name: str, version: int, *args: Any, **kwargs: Any) -> Any:
        m = real_model(name, version, *args, **kwargs)
        if name == "context" and version == 2:
            real_apply = m.apply

            async def apply(records: Any) -> Any:
                if dropping:
                    later.append(len(records))
                outcome = await real_apply(records)
                if not dropping:
                    task = asyncio.create_task(
                        admin.drop(p, "context", 2, settle_s=0.3, verify_s=0.1)
                    )
                    dropping.append(task)
                    if drop == "whole":
                        await task
                    else:
                        await _marked(p, 2, DROPPED)
                        await asyncio.sleep(admin.FENCE_EVERY_S)
                return outcome

            m.apply = apply  # type: ignore[method-assign,assignment]
        return m

    monkeypatch.setattr(p, "model", model)
    with pytest.raises(admin.AdminError, match=r"context v2 was dropped while it was being built"):
        await admin.rebuild(p, "context", 2)
    assert dropping and await asyncio.wait_for(dropping[0], 30) > 0
    assert later == [], later  # nothing written after the drop came
    control = await p.control.get("context")
    assert control is not None and 2 not in control.versions and 2 not in control.claims
    assert await admin._count(real_model("context", 2)) == 0


async def test_a_workers_archive_replay_of_a_dropped_version_writes_nothing(
    compacting: Projection,
) -> None:
    """The worker's store-lost rebuild applies the archive too (Worker._apply_archive):
    of a version a drop has marked it wrote the whole archive into the namespace being
    emptied; it asks the worker's own fence (version_dropped) now, as its batches do."""
    p = compacting
    await _compacted(p)

    def mark(c: Any) -> None:
        c.versions[2] = DROPPED

    await admin._save(p, "context", mark)
    model = p.model("context", 2)
    await model.setup()
    await archive_worker(p, model)._apply_archive()
    assert await admin._count(model) == 0
    assert (await model.checkpoint()).seq == 0
