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
from jetsource.projection.control import BUILDING, DROPPED
from tests.admin_fixtures import marked, set_version_state
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
                        await marked(p, 2, DROPPED)
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

    await set_version_state(p, 2, DROPPED)
    model = p.model("context", 2)
    await model.setup()
    await archive_worker(p, model)._apply_archive()
    assert await admin._count(model) == 0
    assert (await model.checkpoint()).seq == 0


async def test_a_drop_ending_inside_an_archive_batch_is_said_as_a_drop(
    compacting: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fence is asked before each batch, not with it: a drop that runs whole
    between that question and the batch's write fails the write on the store (the
    truncation took the birth mark the first batch's write took). The rebuild said the store's raw
    error ("...:born is gone or another one"); it says the version was dropped now."""
    p = compacting
    await _compacted(p)
    monkeypatch.setattr(replay, "BATCH", 5)
    real_model = p.model
    dropping: list[asyncio.Task[int]] = []
    batches: list[int] = []

    def model(name: str, version: int, *args: Any, **kwargs: Any) -> Any:
        m = real_model(name, version, *args, **kwargs)
        if name == "context" and version == 2:
            real_apply = m.apply

            async def apply(records: Any) -> Any:
                batches.append(len(records))
                # The second batch (the first took the birth mark), its fence passed.
                if len(batches) == 2:
                    task = asyncio.create_task(
                        admin.drop(p, "context", 2, settle_s=0.3, verify_s=0.1)
                    )
                    dropping.append(task)
                    await task
                return await real_apply(records)

            m.apply = apply  # type: ignore[method-assign,assignment]
        return m

    monkeypatch.setattr(p, "model", model)
    with pytest.raises(admin.AdminError, match=r"context v2 was dropped while it was being built"):
        await admin.rebuild(p, "context", 2)
    assert dropping and dropping[0].done() and dropping[0].result() > 0
    assert batches == [5, 5], batches  # nothing asked of it after the refused write
    control = await p.control.get("context")
    assert control is not None and 2 not in control.versions and 2 not in control.claims


async def test_a_fenced_archive_phase_stops_though_another_run_builds_the_version_again(
    compacting: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The phase's first fence question finds the version dropped (the fresh read
    says so) and a second read, the one the error was said from, finds it building
    again (another run's build of it): this run went on into setup and the archive
    phase of a build it no longer held. It stops on what the fence read."""
    p = compacting
    await _compacted(p)

    await set_version_state(p, 2, BUILDING)
    real_control = admin._control
    reads: list[int] = []

    async def control(p_: Projection, name: str) -> Any:
        c = await real_control(p_, name)
        reads.append(1)
        if len(reads) == 1:  # the fence's read: dropped; every later one: rebuilt
            c.versions.pop(2, None)
        return c

    async def dropped(*args: Any, **kwargs: Any) -> bool:
        return True

    monkeypatch.setattr(admin, "_control", control)
    monkeypatch.setattr(admin, "version_dropped", dropped)
    model = p.model("context", 2)
    set_up: list[int] = []
    real_setup = model.setup

    async def setup() -> None:
        set_up.append(1)
        await real_setup()

    model.setup = setup  # type: ignore[method-assign]
    with pytest.raises(admin.AdminError, match=r"context v2 was dropped while it was being built"):
        await admin._from_archive(p, "context", model)
    assert set_up == []
    assert await admin._count(model) == 0
