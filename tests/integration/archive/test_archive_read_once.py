"""Commands that write many compacted stories again (real NATS and Valkey) read the
archive through one reader per stream: `projector replay` and `erase` built a new
archive and reader for every story, so N stories fetched and decoded their segments
N times (each pass of erase, each model version). Counted here as segment downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.archive.objectstore import LocalObjectStore
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.projection import admin, erasure
from jetsource.projection.bootstrap import Projection, open_projection
from tests.history_fixtures import save_snapshots
from tests.integration.archive.fixtures import compact_at, compacting_settings
from tests.projector_fixtures import build_context_v1

pytestmark = pytest.mark.integration
STORIES = 5


def count_segment_gets(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    got: list[str] = []
    real = LocalObjectStore.get

    async def counting(self: LocalObjectStore, key: str) -> bytes | None:
        if key.startswith("segments/"):
            got.append(key)
        return await real(self, key)

    monkeypatch.setattr(LocalObjectStore, "get", counting)
    return got


async def compacted_stories(p: Projection, ana: str) -> None:
    """STORIES stories naming ana in their first event, v1..12 of each in one segment."""
    for n in range(STORIES):
        story = f"s{n}"
        created = ev.ContextCreated(title="T", created_by=ana)
        await p.store.append(story, [NewEvent(created)], 0)
        for i in range(1, 15):
            added = ev.DecisionAdded(decision_id=f"d{i}", author="bob", title="D")
            await p.store.append(story, [NewEvent(added)], i)
        await save_snapshots(p.snapshots, await p.store.read_aggregate(story), [12])
    await build_context_v1(p)
    last = (await p.store.read_aggregate(f"s{STORIES - 1}"))[-1].recorded_at_ns
    report = (await compact_at(p, last)).report
    assert (report.purged, len(report.segments)) == (12 * STORIES, 1), report


async def test_replay_reads_the_segment_once(
    settings: JetsourceSettings, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = await open_projection(compacting_settings(settings, unique, tmp_path / "archive"))
    try:
        await compacted_stories(p, f"ana-{unique}")
        got = count_segment_gets(monkeypatch)
        report = await admin.replay(p, "context", from_seq=1, version=1)
        assert not report.failed, report
        assert len(got) == 1, got  # was one per story
    finally:
        await p.close()


async def test_erase_reads_the_segment_once_per_use(
    settings: JetsourceSettings, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(erasure, "GRACE_S", 0.05)
    p = await open_projection(compacting_settings(settings, unique, tmp_path / "archive"))
    ana = f"ana-{unique}"
    try:
        await compacted_stories(p, ana)
        got = count_segment_gets(monkeypatch)
        report: Any = await erasure.erase_subject(p, ana)
        assert not report.failed, report.failed
        assert sorted(report.aggregates["context"]) == [f"s{n}" for n in range(STORIES)]
        # The scan's read (one segment at a time, not kept), then the rewrites' one.
        assert len(got) == 2, got
    finally:
        await p.close()
