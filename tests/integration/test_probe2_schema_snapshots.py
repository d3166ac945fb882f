"""Snapshots the snapshotter never writes, stored raw in the snapshot stream (which
anyone with publish rights on it can write): bytes that are no snapshot, a snapshot
whose idempotency keys do not read, one claiming a version its state is not at,
another story's snapshot stored under this one. A snapshot is a cache: each is
skipped (the story folds from its events, the snapshotter writes a good one past
it), never an error escaping the loader, never another story's state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.history import StateLoader
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import OutMessage
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.runtime import Worker
from tests.history_fixtures import append_history, snapshot_at, state_at
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(projector_settings(settings, unique, snapshots={"every": 2}))
    yield p
    await p.model("snapshots", 1).drop()
    await p.close()


async def raw_snapshot(p: Projection, story: str, data: bytes) -> None:
    subject = p.snapshots.subject(story)
    await jsapi.publish(p.snapshots._replies, OutMessage(subject, data, {}), 5.0)


@pytest.mark.parametrize("kind", ["garbage", "keys", "future", "foreign"])
async def test_a_snapshot_that_does_not_read_is_skipped(projection: Projection, kind: str) -> None:
    p = projection
    records = await append_history(p.store, f"s{kind}", 6, seed=3)
    story = records[0].aggregate_id
    good = snapshot_at(records, 3)
    if kind == "garbage":
        data = b"\xff\xff\xff not a snapshot"
    elif kind == "keys":
        data = replace(good, idempotency_keys=b"junk").encode()
    elif kind == "future":
        data = replace(snapshot_at(records, 6), version=60).encode()
    else:  # another story's snapshot, whole, stored under this one
        other = await append_history(p.store, f"o{kind}", 5, seed=4)
        data = snapshot_at(other, 5).encode()
    await raw_snapshot(p, story, data)
    loader = StateLoader(p.store, p.snapshots)
    for keys in (False, True):
        for v in (None, 2, 4, 6):
            point = await loader.load(story, v, keys=keys)
            assert point.state == state_at(records, v), (keys, v)


async def test_the_snapshotter_goes_on_past_a_snapshot_that_does_not_read(
    projection: Projection,
) -> None:
    p = projection
    records = await append_history(p.store, "over", 6, seed=5)
    await raw_snapshot(p, "over", b"\xff\xff\xff not a snapshot")
    await p.control.ensure("snapshots", 1)
    worker = Worker(p.nc, p.store, p.model("snapshots", 1), p.dead_letters, p.settings.projector)
    await asyncio.wait_for(worker.run(until_caught_up=True), 60)
    assert worker.stats.dead_letters == 0
    point = await StateLoader(p.store, p.snapshots).load("over")
    assert point.snapshot_version == records[-1].version
    assert point.state == state_at(records)
