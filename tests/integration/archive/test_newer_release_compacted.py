"""An event a newer release wrote, compacted into the archive (real NATS and Valkey): a
rebuild from the archive applied archived events with the model's apply, which steps
over an unknown type or version as a no-op: the model went past it in silence, with no
dead letter (the live path files it and parks its story). Now the archive's replay
files it too, naming it, and its story waits behind it; the other stories flow on."""

from __future__ import annotations

from typing import Any

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.archive.history import history_store
from jetsource.core.envelope import NewEvent
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import OutMessage
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from jetsource.projection.runtime import DEAD_LETTERS, Worker
from tests.history_fixtures import save_snapshots
from tests.integration.archive.fixtures import compact_at
from tests.integration.test_newer_release_events import future

pytestmark = pytest.mark.integration


async def _compacted_with_a_newer_release(p: Projection, void: bool = False) -> int:
    """Stories s1 and s2 at version 23, s1's version 6 written by a newer release
    (voided with ``void``), compacted up to version 16: returns its sequence."""
    store = p.store
    prefix = store.settings.subject_prefix
    for story in ("s1", "s2"):
        await store.append(story, [NewEvent(ev.ContextCreated(title="T", created_by="x"))], 0)
        for i in range(1, 5):
            added = ev.DecisionAdded(decision_id=f"d{i}", author="bob", title="D")
            await store.append(story, [NewEvent(added)], i)
    payload = ev.DecisionAdded(decision_id="dn", title="v3").SerializeToString()
    ack = await jsapi.publish(
        store._replies,
        OutMessage(f"{prefix}.s1.DecisionAdded", future("s1", "DecisionAdded", 6, 3, payload), {}),
        5.0,
    )
    newer = ack.seq
    if void:
        await store.void(newer, "operator", "me")
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
        await jsapi.direct_get(store._replies, store.settings.stream, {"seq": newer}, 5.0) is None
    )
    return newer


def archive_worker(p: Projection, model: Any) -> Worker:
    """A worker of ``model`` on the projection's store, reading history from its archive
    too (as the worker's store-lost rebuild does)."""
    return Worker(
        p.nc,
        p.store,
        model,
        p.dead_letters,
        p.settings.projector,
        history=history_store(p.store, p.settings, p.archive_of(p.store)),
    )


async def test_a_rebuild_from_the_archive_dead_letters_a_newer_releases_event(
    compacting: Projection,
) -> None:
    p = compacting
    newer = await _compacted_with_a_newer_release(p)

    await admin.rebuild(p, "context", 2)  # from the archive, then the live stream
    model = p.model("context", 2)
    assert await model.position("s1") == 5  # parked behind it
    assert await model.position("s2") == 24  # the others flow on
    letters = await p.dead_letters.list(p.spec("context", 2))
    first = min(letters, key=lambda d: d.original_seq)
    assert first.original_seq == newer
    assert first.reason.startswith("DecisionAdded v3 was written by a newer release"), first
    assert {d.aggregate_id for d in letters} == {"s1"}
    # Of the archived part only its own letter: the story's later events gone from
    # the live stream are neither applied nor filed (filed before, one letter per
    # event, which dlq retry could not read: "stream sequence N is gone"); its live
    # ones the worker parks behind it, as on any delivery.
    behind = [d for d in letters if d is not first]
    assert behind, letters
    for d in behind:
        assert d.reason == f"parked behind dead letter of sequence {newer}", d
        live = {"seq": d.original_seq}
        assert await jsapi.direct_get(p.store._replies, p.store.settings.stream, live, 5.0)

    # A second replay (the worker's store-lost rebuild) files it not again.
    filed: list[int] = []
    publish = p.dead_letters.publish

    async def spy(spec: Any, aggregate_id: str, raw: Any, reason: str, tries: int) -> None:
        filed.append(raw.seq)
        await publish(spec, aggregate_id, raw, reason, tries)

    p.dead_letters.publish = spy  # type: ignore[method-assign,assignment]
    await model.drop()
    await admin._from_archive(p, "context", model)
    assert filed == []
    assert await model.position("s1") == 5
    assert len(await p.dead_letters.list(p.spec("context", 2))) == len(letters)


async def test_a_voided_newer_releases_event_in_the_archive_is_a_no_op_on_rebuild(
    compacting: Projection,
) -> None:
    """An operator's void of it: a no-op at its place, as the live worker reads it (the
    rebuild dead-lettered it and parked its story at 5 before)."""
    p = compacting
    await _compacted_with_a_newer_release(p, void=True)
    await admin.rebuild(p, "context", 2)
    model = p.model("context", 2)
    assert await model.position("s1") == 24
    assert await p.dead_letters.list(p.spec("context", 2)) == []


async def test_discarding_an_archived_newer_releases_letter_steps_its_story_past_it(
    compacting: Projection,
) -> None:
    """Its sequence gone from the live stream, the discard took the no-place branch: the
    letter deleted, nothing written, the story at 5 for good. Now the letter's own
    message gives it its place: a no-op at version 6."""
    p = compacting
    newer = await _compacted_with_a_newer_release(p)
    await admin.rebuild(p, "context", 2)
    model = p.model("context", 2)
    letters = await p.dead_letters.list(p.spec("context", 2))
    first = min(letters, key=lambda d: d.original_seq)
    assert first.original_seq == newer
    report = await admin.dlq_discard(p, "context", dlq_seqs=[first.dlq_seq])
    assert report.done == [first.dlq_seq], report
    assert await model.position("s1") == 6


async def test_the_workers_rebuild_from_the_archive_counts_its_letter_and_files_it_once(
    compacting: Projection,
) -> None:
    """The worker's store-lost rebuild files it as a delivery does: counted in
    jetsource_projector_dead_letters_total and the pending gauge (only its stats
    before), and not filed again by a second replay, its story parked all the same."""
    p = compacting
    newer = await _compacted_with_a_newer_release(p)
    model = p.model("context", 2)
    await model.setup()
    worker = archive_worker(p, model)
    labels = ("context", "2")
    before = DEAD_LETTERS.labels(*labels)._value.get()
    await worker._apply_archive()
    letters = await p.dead_letters.list(p.spec("context", 2))
    assert [d.original_seq for d in letters] == [newer]
    assert worker._parked == {"s1": {newer}}
    assert worker.stats.dead_letters == 1
    assert DEAD_LETTERS.labels(*labels)._value.get() == before + 1
    assert worker._shown.get("dead_letters") == 1
    assert await model.position("s1") == 5

    await model.drop()  # its store lost again: the replay again
    await model.setup()
    await model.take_birth_mark()  # type: ignore[attr-defined]
    again = archive_worker(p, model)
    await again._apply_archive()
    assert len(await p.dead_letters.list(p.spec("context", 2))) == 1
    assert again._parked == {"s1": {newer}}
    assert again.stats.dead_letters == 0
    assert await model.position("s1") == 5
    assert await model.position("s2") == 16
