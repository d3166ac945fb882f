"""A message an operator voided (one that does not decode) compacted into the archive
(real NATS and Valkey): readers step over it in the live stream, but the archiver
counted its envelope's version, so the horizon said one version more than the archive
reads, and every read of the story before the horizon failed (PayloadDecodeError, then
a version mismatch); a rebuild from the archive failed on it too. Reads and rebuilds
across the horizon now equal those before compaction."""

from __future__ import annotations

import pytest

from jetsource.archive.history import history_store
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from tests.history_fixtures import save_snapshots
from tests.integration.archive.fixtures import compact_at, story_with_a_voided_forgery
from tests.projector_fixtures import build_context_v1

pytestmark = pytest.mark.integration


async def test_a_voided_message_behind_the_horizon_reads_as_before(
    compacting: Projection, unique: str
) -> None:
    p = compacting
    store = p.store
    # A hostile message on the story's subject, voided by an operator, among 23 versions.
    await story_with_a_voided_forgery(p, unique, last=23)

    history = history_store(store, p.settings)
    records = await history.read_aggregate("s1")
    assert [r.version for r in records] == list(range(1, 25))
    await save_snapshots(p.snapshots, records, [16])
    model = await build_context_v1(p)
    digest = await model.digest()
    times = [r.recorded_at_ns for r in records]
    before = [await history.version_at_time("s1", t) for t in times]

    report = (await compact_at(p, records[-1].recorded_at_ns)).report
    assert report.purged == 17, report  # v1..16 and the voided message among them
    horizon = await store.horizon("s1")
    assert horizon is not None and horizon.version == 16

    history = history_store(store, p.settings)
    after = await history.read_aggregate("s1")
    assert [(r.version, r.stream_seq) for r in after] == [
        (r.version, r.stream_seq) for r in records
    ]
    assert [await history.version_at_time("s1", t) for t in times] == before
    assert len(await history.read_aggregate("s1", to_version=6)) == 6
    await admin.rebuild(p, "context", 2)  # from the archive, then the live stream
    assert await p.model("context", 2).digest() == digest
