"""The archive a command reads must be the stream's own and hold what compaction purged
(real NATS): an archive folder other than the one compaction wrote to (a wrong
JETSOURCE_ARCHIVE__URL, a segment removed with its entry) fails `verify` naming the
segments the horizons name, and `restore` refuses it (it wrote the new stream with
the purged history missing, exit 0); a manifest entry or segment of another stream
copied into this stream's folder is named, not read as this stream's (verify passed
it, and restore wrote the other stream's messages into that other stream)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from jetsource.archive.history import open_archive
from jetsource.archive.objectstore import LocalObjectStore
from jetsource.archive.restore import RestoreError, restore
from jetsource.archive.segment import SegmentError
from jetsource.archive.store import Archive
from jetsource.core.settings import JetsourceSettings
from jetsource.eventstore import horizon, jsapi
from jetsource.projection.bootstrap import Projection, open_projection
from tests.history_fixtures import save_snapshots
from tests.integration.archive.fixtures import compact_at, compacting_settings, middle_time
from tests.projector_fixtures import seed, story_ids

pytestmark = pytest.mark.integration


async def compacted(p: Projection, prefix: str) -> None:
    stories = story_ids(2, prefix)
    await seed(p.store, stories, 24, seed=5)
    records = [r for s in stories for r in await p.store.read_aggregate(s)]
    for s in stories:
        await save_snapshots(p.snapshots, await p.store.read_aggregate(s), [16])
    assert (await compact_at(p, middle_time(records, 0.9))).report.purged > 0


async def stream_exists(p: Projection, name: str) -> bool:
    try:
        await jsapi.api(p.store._replies, f"STREAM.INFO.{name}", {}, 5.0)
    except jsapi.JsApiError:
        return False
    return True


async def test_an_archive_without_the_purged_history_is_named(
    compacting: Projection, unique: str, tmp_path: Path
) -> None:
    p = compacting
    await compacted(p, "w")
    stream = p.store.settings.stream
    horizons = await horizon.read_all(p.store._replies, stream, 5.0)
    assert len(horizons) == 2
    named = {name for h in horizons.values() for name in h.segments}
    assert (await open_archive(p.settings, stream).verify(horizons)).passed

    elsewhere = Archive(LocalObjectStore(tmp_path / "not-the-archive"), stream)
    report = await elsewhere.verify(horizons)
    assert not report.passed and set(report.corrupt) == named
    assert all("JETSOURCE_ARCHIVE__URL" in why for why in report.corrupt.values())

    info = await p.store.stream_info()
    with pytest.raises(RestoreError) as refused:
        await restore(p.store._replies, elsewhere, info["config"], f"RW_{unique}", {}, 5.0)
    assert refused.value.field == "JETSOURCE_ARCHIVE__URL"
    assert all(name in str(refused.value) for name in named)
    assert not await stream_exists(p, f"RW_{unique}")  # nothing written


async def test_an_entry_or_segment_of_another_stream_is_named(
    settings: JetsourceSettings, unique: str, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    p = await open_projection(compacting_settings(settings, unique, root))
    q = await open_projection(compacting_settings(settings, f"{unique}q", root))
    try:
        await compacted(p, "a")
        await compacted(q, "b")
        mine, theirs = q.store.settings.stream, p.store.settings.stream
        before = (await p.store.stream_info())["state"]
        # One of p's entries copied into q's manifest folder, its segment beside it.
        entry = next((root / "manifest" / theirs).iterdir())
        shutil.copy(entry, root / "manifest" / mine / entry.name)
        archive = open_archive(q.settings, mine)
        report = await archive.verify()
        key = f"manifest/{mine}/{entry.name}"
        assert not report.passed and theirs in report.corrupt[key], report
        with pytest.raises(SegmentError, match=theirs):
            await archive.entries()
        info = await q.store.stream_info()
        with pytest.raises(SegmentError, match=theirs):
            await restore(
                q.store._replies,
                open_archive(q.settings, mine),
                info["config"],
                f"RX_{unique}",
                {q.store.settings.subject_prefix.split(".")[0]: f"rx{unique}"},
                5.0,
            )
        assert (await p.store.stream_info())["state"] == before  # p's stream untouched
        (root / "manifest" / mine / entry.name).unlink()

        # A segment of p's renamed into q's folder with an entry saying it is q's:
        # its own header names p's stream.
        seg = next((root / "segments" / theirs).iterdir())
        shutil.copy(seg, root / "segments" / mine / seg.name)
        text = entry.read_text().replace(theirs, mine)
        (root / "manifest" / mine / entry.name).write_text(text)
        report = await open_archive(q.settings, mine).verify()
        assert theirs in report.corrupt[f"segments/{mine}/{seg.name}"], report
    finally:
        await q.close()
        await p.close()
