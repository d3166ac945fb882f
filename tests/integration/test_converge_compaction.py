"""Read models converge when the stream they follow was compacted under them.

Compaction archives and purges the events of a story older than the policy's age and
covered by a snapshot. A projector behind it (down, or stuck, for that long) and a
model whose store was emptied after it (rebuilt from the replay start by the worker
on its own, see test_converge_store_loss.py) both meet histories that start at their
horizons in the live stream: the missing versions were read from the live stream
only, answered BeyondHorizonError, and every later event of those stories was
dead-lettered (27 dead letters for 3 stories here), the model partial for good. The
projector service now reads them from the archive below the stream (as `projector
rebuild` / `reset` do), and a rebuild on its own applies the archive first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.host import ProjectorService
from tests.history_fixtures import append_history, save_snapshots
from tests.integration.archive.fixtures import compact_at, compacting_settings, middle_time

pytestmark = pytest.mark.integration

MODELS = ("context", "timeline")


@pytest.fixture
async def projection(
    settings: JetsourceSettings, unique: str, tmp_path: Path
) -> AsyncIterator[Projection]:
    p = await open_projection(compacting_settings(settings, unique, tmp_path / "archive"))
    p.settings.projector.models = list(MODELS)
    yield p
    for name in MODELS:
        for version in (1, 2):
            await p.model(name, version).drop()
    await p.close()


async def stories(p: Projection) -> dict[str, Any]:
    histories = {}
    for i in range(3):
        story = f"cs{i}"
        histories[story] = await append_history(p.store, story, 45, seed=i, group_sizes=[1])
        await save_snapshots(p.snapshots, histories[story], [10, 20, 30, 40])
    return histories


async def serve(p: Projection) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    return stop, asyncio.create_task(ProjectorService(p).run(stop))


async def equals_a_rebuild(
    p: Projection, total: int, timeout: float = 30.0, rebuild: bool = True
) -> None:
    """Every model applied ``total`` events, none dead-lettered, and (``rebuild``)
    equals a clean rebuild (``projector rebuild``, which reads the archive first)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = {m: (await p.model(m, 1).checkpoint()).applied for m in MODELS}
        letters = await admin.dlq_list(p)
        assert not letters, [(d.original_seq, d.reason) for d in letters][:3]
        if all(c == total for c in counts.values()):
            break
        assert time.monotonic() < deadline, counts
        await asyncio.sleep(0.2)
    for name in MODELS if rebuild else ():
        await admin.rebuild(p, name, 2)
        assert await p.model(name, 1).digest() == await p.model(name, 2).digest(), name


async def test_a_projector_behind_compaction_fills_the_purged_versions_from_the_archive(
    projection: Projection,
) -> None:
    p = projection
    histories = await stories(p)
    total = sum(len(h) for h in histories.values())
    # The projector ran while the first story had 10 events, then was down.
    stop, task = await serve(p)
    await asyncio.sleep(0)
    stop.set()
    await task
    for name in MODELS:
        model = p.model(name, 1)
        await model.apply(histories["cs0"][:10])
    compacted = await compact_at(p, middle_time(histories["cs2"]))
    assert compacted.report.purged > 0
    stop, task = await serve(p)
    try:
        await equals_a_rebuild(p, total)
    finally:
        stop.set()
        await task


async def test_a_store_emptied_after_compaction_is_rebuilt_with_the_archive(
    projection: Projection,
) -> None:
    p = projection
    histories = await stories(p)
    total = sum(len(h) for h in histories.values())
    stop, task = await serve(p)
    try:
        await equals_a_rebuild(p, total, rebuild=False)
        compacted = await compact_at(p, middle_time(histories["cs2"]))
        assert compacted.report.purged > 0
        for name in MODELS:
            await p.model(name, 1).drop()  # the store emptied
        await equals_a_rebuild(p, total)
    finally:
        stop.set()
        await task
