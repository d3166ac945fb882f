"""Snapshots whose metadata is not their story's history, stored raw in the snapshot
stream (by a bug, an old release, a restored backup of another stack or an operator):
a stream sequence (``last_stream_sequence``) too high or too low for the version, a
version past the story's end, a recorded time earlier or later than its event's.

Every read (now, at a version, at a time, with the idempotency keys the publisher's
command path loads) answers what a full fold of the events answers: a snapshot whose
event the stream does not hold where it says is skipped once (logged) for an older
one or the events, and the snapshotter writes a good one past it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from jetsource.core.envelope import ANY, NewEvent, RecordedEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.events import registry
from jetsource.domains.context.history import StateLoader
from jetsource.domains.context.samples import story_events
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import OutMessage
from jetsource.eventstore.memory import InMemoryEventStore
from jetsource.eventstore.snapshots import Snapshot
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.runtime import Worker
from tests.history_fixtures import append_history, probe_times, snapshot_at, state_at
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(projector_settings(settings, unique, snapshots={"every": 2}))
    yield p
    await p.model("snapshots", 1).drop()
    await p.close()


async def raw_snapshot(p: Projection, snapshot: Snapshot) -> None:
    subject = p.snapshots.subject(snapshot.aggregate_id)
    await jsapi.publish(p.snapshots._replies, OutMessage(subject, snapshot.encode(), {}), 5.0)


async def story_among_others(p: Projection, n: int = 8) -> list[RecordedEvent]:
    """The story's events in the middle of the stream (sequences above versions)."""
    await append_history(p.store, "before", 5, seed=9)
    records = await append_history(p.store, "story", n, seed=3)
    await append_history(p.store, "after", 5, seed=9)
    return records


async def bad_snapshot(kind: str, records: list[RecordedEvent]) -> Snapshot:
    good = snapshot_at(records, 4)
    if kind == "seq_high":
        return replace(good, last_seq=records[-1].stream_seq + 100)
    if kind == "seq_low":
        return replace(good, last_seq=4)  # at least its version, below its event
    if kind == "seq_plus1":
        return replace(good, last_seq=good.last_seq + 1)
    if kind == "seq_minus1":
        return replace(good, last_seq=good.last_seq - 1)
    if kind == "past_end":  # a longer history of the same story id (another stack's)
        longer = await append_history(InMemoryEventStore(registry), "story", 30, seed=3)
        return snapshot_at(longer, 20)
    if kind == "recorded_early":
        return replace(good, recorded_at_ns=records[0].recorded_at_ns - 10**9)
    assert kind == "recorded_late"
    return replace(good, recorded_at_ns=records[-1].recorded_at_ns + 10**12)


KINDS = [
    "seq_high",
    "seq_low",
    "seq_plus1",
    "seq_minus1",
    "past_end",
    "recorded_early",
    "recorded_late",
]


@pytest.mark.parametrize("kind", KINDS)
async def test_every_read_answers_the_full_fold(
    projection: Projection, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    p = projection
    records = await story_among_others(p)
    await p.snapshots.save(snapshot_at(records, 2))  # a good older one to fall back to
    await raw_snapshot(p, await bad_snapshot(kind, records))
    wrong: list[tuple[object, ...]] = []
    shared = StateLoader(p.store, p.snapshots)
    for fresh in (False, True):

        def loader_of(fresh: bool = fresh) -> StateLoader:
            return StateLoader(p.store, p.snapshots) if fresh else shared

        for keys in (False, True):
            for v in (None, 1, 2, 3, 4, 5, 6, 8, 20):
                point = await loader_of().load("story", v, keys=keys)
                if point.state != state_at(records, v):
                    wrong.append(("version", v, keys, point.state.version))
        for t in probe_times(records):
            point = await loader_of().load("story", until=t)
            if point.state != state_at(records, until=t):
                wrong.append(("time", t, point.state.version))
    assert not wrong
    if kind != "recorded_late":  # (its event is never reached by a read past it)
        assert "is not of its history and is skipped" in caplog.text


async def test_a_state_the_events_after_it_do_not_fold_onto_names_no_event(
    projection: Projection,
) -> None:
    """A snapshot at the right event with another history's state: the events after
    it are refused on top of it. That is the snapshot's fault, not the event's: the
    story folds from version 1 (no CorruptEventError asking to void a good event)."""
    p = projection
    records = await story_among_others(p)
    alt = await append_history(InMemoryEventStore(registry), "story", 8, seed=11)
    good = snapshot_at(records, 4)
    forged = replace(
        snapshot_at(alt, 4), last_seq=good.last_seq, recorded_at_ns=good.recorded_at_ns
    )
    await raw_snapshot(p, forged)
    for keys in (False, True):
        point = await StateLoader(p.store, p.snapshots).load("story", keys=keys)
        assert point.state == state_at(records)


async def test_the_snapshotter_writes_past_a_snapshot_of_its_version(
    projection: Projection, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong snapshot stored for the version the snapshotter is about to write: the
    snapshotter took it for its own and never wrote one, so every new reader skipped
    it and read the events. Now it writes the good one past it."""
    p = projection
    await append_history(p.store, "before", 5, seed=9)
    events = story_events("story", 8, 3)
    await p.store.append("story", [NewEvent(e) for e in events[:6]], ANY)
    await p.control.ensure("snapshots", 1)
    model = p.model("snapshots", 1)
    worker = Worker(p.nc, p.store, model, p.dead_letters, p.settings.projector)
    await asyncio.wait_for(worker.run(until_caught_up=True), 60)
    await p.store.append("story", [NewEvent(e) for e in events[6:]], ANY)
    records = await p.store.read_aggregate("story")
    await raw_snapshot(p, replace(snapshot_at(records, 8), last_seq=records[-1].stream_seq + 7))
    worker = Worker(p.nc, p.store, model, p.dead_letters, p.settings.projector)
    await asyncio.wait_for(worker.run(until_caught_up=True), 60)
    latest = await p.snapshots.latest("story")
    assert latest is not None and latest.last_seq == records[-1].stream_seq
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        point = await StateLoader(p.store, p.snapshots).load("story")
    assert point.snapshot_version == 8 and point.events_folded == 0
    assert point.state == state_at(records)
    assert "skipped" not in caplog.text


async def test_a_deleted_snapshot_stream_is_read_past_and_made_again(
    projection: Projection,
) -> None:
    """The snapshot stream deleted under running services (it is derived data): a
    read failed with no responders (the query service answered UNAVAILABLE, the
    publisher refused commands on contexts it had not cached) and the snapshotter
    retried its batch for ever. Reads now fold from the events, and the snapshotter
    creates the stream again and writes into it."""
    p = projection
    records = await append_history(p.store, "story", 8, seed=3)
    await p.control.ensure("snapshots", 1)
    model = p.model("snapshots", 1)
    worker = Worker(p.nc, p.store, model, p.dead_letters, p.settings.projector)
    await asyncio.wait_for(worker.run(until_caught_up=True), 60)
    await p.nc.request(f"$JS.API.STREAM.DELETE.{p.snapshots.settings.stream}", b"", timeout=5)
    for keys in (False, True):
        point = await StateLoader(p.store, p.snapshots).load("story", keys=keys)
        assert point.state == state_at(records) and point.snapshot_version == 0
    more = await append_history(p.store, "later", 4, seed=5)
    worker = Worker(p.nc, p.store, model, p.dead_letters, p.settings.projector)
    await asyncio.wait_for(worker.run(until_caught_up=True), 10)
    latest = await p.snapshots.latest("later")
    assert latest is not None and latest.last_seq == more[-1].stream_seq


async def test_a_time_is_not_placed_by_an_unchecked_snapshot_past_it(
    projection: Projection,
) -> None:
    """A loader placed a time after its kept events by the recorded time of the listed
    snapshot of the next version, which no read had checked: with that time too late,
    the time of the next event answered the version before it."""
    p = projection
    records = await story_among_others(p)
    await p.snapshots.save(snapshot_at(records, 2))
    late = records[-1].recorded_at_ns + 10**12
    await raw_snapshot(p, replace(snapshot_at(records, 4), recorded_at_ns=late))
    loader = StateLoader(p.store, p.snapshots)
    assert (await loader.load("story", 3)).state == state_at(records, 3)
    for r in records[3:]:
        point = await loader.load("story", until=r.recorded_at_ns)
        assert point.state == state_at(records, until=r.recorded_at_ns), r.version


async def test_a_state_the_events_do_not_fold_onto_is_rejected_once(
    projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Such a snapshot was kept: every read of the story folded onto it, failed, and
    folded the whole story from version 1 again. Now the first full fold rejects it, and
    later reads start from an older snapshot."""
    p = projection
    records = await story_among_others(p)
    await p.snapshots.save(snapshot_at(records, 2))  # a good older one
    alt = await append_history(InMemoryEventStore(registry), "story", 8, seed=11)
    good = snapshot_at(records, 4)
    forged = replace(
        snapshot_at(alt, 4), last_seq=good.last_seq, recorded_at_ns=good.recorded_at_ns
    )
    await raw_snapshot(p, forged)
    loader = StateLoader(p.store, p.snapshots)
    full_folds = 0
    load = loader.load

    async def counted(*args: object, **kwargs: object) -> object:
        nonlocal full_folds
        full_folds += kwargs.get("use_snapshots") is False
        return await load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loader, "load", counted)
    for _ in range(3):
        point = await loader.load("story")
        assert point.state == state_at(records)
    assert full_folds == 1
    assert point.snapshot_version == 2  # the older one
