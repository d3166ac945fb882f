"""An event a newer release wrote, compacted into the archive (real NATS and Valkey): a
rebuild from the archive applied archived events with the model's apply, which steps
over an unknown type or version as a no-op: the model went past it in silence, with no
dead letter (the live path files it and parks its story). Now the archive's replay
files it too, naming it, and its story waits behind it; the other stories flow on."""

from __future__ import annotations

from pathlib import Path

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import OutMessage
from jetsource.projection import admin
from jetsource.projection.bootstrap import open_projection
from tests.history_fixtures import save_snapshots
from tests.integration.archive.fixtures import compact_at, compacting_settings
from tests.integration.test_newer_release_events import future

pytestmark = pytest.mark.integration


async def test_a_rebuild_from_the_archive_dead_letters_a_newer_releases_event(
    settings: JetsourceSettings, unique: str, tmp_path: Path
) -> None:
    p = await open_projection(compacting_settings(settings, unique, tmp_path / "archive"))
    store = p.store
    prefix = store.settings.subject_prefix
    try:
        for story in ("s1", "s2"):
            await store.append(story, [NewEvent(ev.ContextCreated(title="T", created_by="x"))], 0)
            for i in range(1, 5):
                added = ev.DecisionAdded(decision_id=f"d{i}", author="bob", title="D")
                await store.append(story, [NewEvent(added)], i)
        payload = ev.DecisionAdded(decision_id="dn", title="v3").SerializeToString()
        ack = await jsapi.publish(
            store._replies,
            OutMessage(
                f"{prefix}.s1.DecisionAdded", future("s1", "DecisionAdded", 6, 3, payload), {}
            ),
            5.0,
        )
        newer = ack.seq
        for story in ("s1", "s2"):
            for i in range(6 if story == "s1" else 5, 24):
                added = ev.DecisionAdded(decision_id=f"e{i}", author="bob", title="D")
                await store.append(story, [NewEvent(added)], i)
        for story in ("s1", "s2"):
            records = await store.read_aggregate(story)
            await save_snapshots(p.snapshots, records, [16])
        report = (await compact_at(p, records[-1].recorded_at_ns)).report
        assert report.purged >= 16, report
        assert (
            await jsapi.direct_get(store._replies, store.settings.stream, {"seq": newer}, 5.0)
            is None
        )

        await admin.rebuild(p, "context", 2)  # from the archive, then the live stream
        model = p.model("context", 2)
        assert await model.position("s1") == 5  # parked behind it
        assert await model.position("s2") == 24  # the others flow on
        letters = await p.dead_letters.list(p.spec("context", 2))
        first = min(letters, key=lambda d: d.original_seq)
        assert first.original_seq == newer
        assert first.reason.startswith("DecisionAdded v3 was written by a newer release"), first
        assert {d.aggregate_id for d in letters} == {"s1"}
        assert len(letters) == 24 - 5, [(d.original_seq, d.reason[:40]) for d in letters]
    finally:
        await p.close()
