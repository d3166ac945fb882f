"""`erase` on a compacted stream (real NATS and Valkey): a story whose events naming
the subject were all compacted into the archive was not found (the scan read the
live stream only), and its snapshot and read model kept the subject's name in the
clear; a story with such events on both sides of the horizon was found, but its
snapshots were deleted and could not be taken again (the live stream alone answered
BeyondHorizonError) and its read model was not written again. Both are now written
again from the archive and the live stream, and nothing of the subject is left."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.archive.history import history_store
from jetsource.core.crypto import ERASED
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.projection import erasure
from jetsource.projection.bootstrap import Projection, open_projection
from tests.history_fixtures import save_snapshots
from tests.integration.archive.fixtures import compact_at, compacting_settings
from tests.projector_fixtures import build_context_v1

pytestmark = pytest.mark.integration


def _created_by(recorded: Any) -> str:
    """The ``created_by`` of a recorded context event (a DecisionAdded here)."""
    return str(recorded.event.created_by)


async def compacted_stories(p: Projection, ana: str) -> Any:
    """s1 names ana in its first event only (compacted); s2 in its first and last."""
    for story, last_author in (("s1", "bob"), ("s2", ana)):
        created = ev.ContextCreated(title="T", created_by=ana)
        await p.store.append(story, [NewEvent(created, metadata={"actor": ana})], 0)
        for i in range(1, 24):
            author = last_author if i == 23 else "bob"
            added = ev.DecisionAdded(decision_id=f"d{i}", author=author, title="D")
            await p.store.append(story, [NewEvent(added)], i)
        await save_snapshots(p.snapshots, await p.store.read_aggregate(story), [16])
    model = await build_context_v1(p)
    last = (await p.store.read_aggregate("s2"))[-1].recorded_at_ns
    assert (await compact_at(p, last)).report.purged == 32  # v1..16 of each
    for story in ("s1", "s2"):
        assert ana in repr(await model.read(story))
    return model


async def test_erase_reaches_stories_behind_the_horizon(
    settings: JetsourceSettings, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(erasure, "GRACE_S", 0.05)
    p = await open_projection(compacting_settings(settings, unique, tmp_path / "archive"))
    ana = f"ana-{unique}"
    try:
        model = await compacted_stories(p, ana)
        # A reader that lives on (the query service's): its archived events are cached.
        reader = history_store(p.store, p.settings)
        assert _created_by((await reader.read_aggregate("s1", to_version=1))[0]) == ana

        report = await erasure.erase_subject(p, ana)

        first = (await reader.read_aggregate("s1", to_version=1))[0]
        assert _created_by(first) == ERASED, "served from the cache of archived events"
        assert report.aggregates == {"context": ["s1", "s2"]}, report.summary()
        assert not report.failed, report.failed
        for story in ("s1", "s2"):
            assert ana not in repr(await model.read(story)), story
            snapshots = await p.snapshots.history(story)
            assert snapshots and all(
                ana.encode() not in zlib.decompress(s.state) for s in snapshots
            ), story
    finally:
        await p.close()


async def test_an_archive_that_does_not_read_is_named_and_the_live_part_erased(
    settings: JetsourceSettings, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(erasure, "GRACE_S", 0.05)
    root = tmp_path / "archive"
    p = await open_projection(compacting_settings(settings, unique, root))
    ana = f"ana-{unique}"
    try:
        model = await compacted_stories(p, ana)
        for seg in root.rglob("*.seg"):  # damaged: the scan of the archive fails
            seg.write_bytes(seg.read_bytes()[:-9])

        report = await erasure.erase_subject(p, ana)

        # The live stream was scanned all the same (s2), the archive named: exit 1.
        assert report.aggregates == {"context": ["s2"]}, report.summary()
        assert report.failed and p.store.settings.stream in report.failed[0], report.failed
        assert "archive verify" in report.failed[0]
        assert report.key_destroyed
        # s2's history needs the archive too: said, left as it was, not half written.
        assert any(f.startswith("context s2") for f in report.failed), report.failed
        assert ana in repr(await model.read("s2"))
    finally:
        await p.close()
