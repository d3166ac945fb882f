"""Snapshots on real JetStream: the store's contract, time travel equal to a full
fold with snapshots in every arrangement, and the snapshotter model driven by the
projector runtime (every N events, idempotent, cold after a restart, old schemas
ignored and written again, the publisher loading through snapshots)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from nats.aio.client import Client as NATS

from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.commands import CommandHandler, CommandOptions
from jetsource.domains.context.history import StateLoader, decode_state
from jetsource.domains.context.model import AddDecision
from jetsource.domains.context.serialize import STATE_SCHEMA_VERSION
from jetsource.domains.context.snapshots_model import SnapshotModel
from jetsource.eventstore.snapshots import JetStreamSnapshotStore, stream_config
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.runtime import Worker
from tests.contract_snapshots import SnapshotStoreContract
from tests.history_fixtures import (
    append_history,
    old_schema_snapshot,
    probe_times,
    save_snapshots,
    state_at,
)
from tests.projector_fixtures import isolated_snapshots, projector_settings, story_ids

pytestmark = pytest.mark.integration


class TestJetStreamSnapshotStore(SnapshotStoreContract):
    @pytest.fixture
    async def snapshots(self, nc: NATS, unique: str) -> AsyncIterator[JetStreamSnapshotStore]:
        store = JetStreamSnapshotStore(nc, isolated_snapshots(unique, keep=3), 5.0)
        await store.ensure_stream()
        yield store
        await store.close()


async def test_snapshot_stream_is_bounded_and_deletable(nc: NATS, unique: str) -> None:
    cfg = isolated_snapshots(unique, keep=4)
    store = JetStreamSnapshotStore(nc, cfg, 5.0)
    info = await store.ensure_stream()
    c = info["config"]
    assert c["max_msgs_per_subject"] == 4 and c["discard"] == "old"
    assert not c.get("deny_delete") and c["allow_direct"]
    assert stream_config(cfg)["subjects"] == [f"{cfg.subject_prefix}.>"]
    await store.close()


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(projector_settings(settings, unique, snapshots={"every": 10}))
    yield p
    await p.close()


async def test_time_travel_on_jetstream_equals_a_full_fold(projection: Projection) -> None:
    store, snapshots = projection.store, projection.snapshots
    records = await append_history(store, "tt", 60, seed=5, group_sizes=[1, 3, 2])
    loader = StateLoader(store, snapshots, cache_size=8)
    arrangements = [
        ("absent", [], []),
        ("old schema only", [], [20, 40, 60]),
        ("part-way", [25], []),
        ("every 10, old ones mixed in", [10, 20, 30, 40, 50, 60], [35, 55]),
    ]
    for name, versions, old in arrangements:
        await save_snapshots(snapshots, records, versions, old)
        for v in range(0, len(records) + 1):
            point = await loader.load("tt", to_version=v)
            assert point.state == state_at(records, v), (name, v)
        for t in probe_times(records):
            point = await loader.load("tt", until=t)
            assert point.state == state_at(records, until=t), (name, t)
    # With every-10 snapshots in place, a late point folds at most 9 events.
    point = await loader.load("tt", to_version=58)
    assert (point.snapshot_version, point.events_folded) == (50, 8)


async def snapshotter(p: Projection) -> Worker:
    worker = Worker(
        p.nc,
        p.store,
        p.model("snapshots", STATE_SCHEMA_VERSION),
        p.dead_letters,
        p.settings.projector,
    )
    await worker.run(until_caught_up=True)
    return worker


async def test_snapshotter_writes_every_n_and_redelivery_changes_nothing(
    projection: Projection,
) -> None:
    stories = story_ids(6)
    histories = {s: await append_history(projection.store, s, 35, seed=1) for s in stories}
    worker = await snapshotter(projection)
    model = worker.model
    assert isinstance(model, SnapshotModel)
    assert model.written == 6 * 3  # versions 10, 20, 30 of each story
    for story, records in histories.items():
        kept = await projection.snapshots.history(story)
        assert [s.version for s in kept] == [10, 20, 30]
        for s in kept:
            assert decode_state(s) == state_at(records, s.version)
            assert s.last_seq == records[s.version - 1].stream_seq
            assert s.recorded_at_ns == records[s.version - 1].recorded_at_ns
    digest = await model.digest()
    # A fresh consumer redelivers everything; a cold model writes nothing new.
    fresh_durable = replace(model.spec, name="snapshots-again")
    again = SnapshotModel(
        fresh_durable,
        projection.snapshots,
        StateLoader(projection.store, projection.snapshots),
        10,
        100,
    )
    w2 = Worker(
        projection.nc,
        projection.store,
        again,
        projection.dead_letters,
        projection.settings.projector,
    )
    await w2.run(until_caught_up=True)
    assert again.written == 0 and w2.stats.applied == 6 * 35
    assert await model.digest() == digest


async def test_old_schema_snapshots_are_skipped_and_written_again(
    projection: Projection,
) -> None:
    records = await append_history(projection.store, "old", 30, seed=2)
    await save_snapshots(projection.snapshots, records, [], old=[10, 20, 30])
    loader = StateLoader(projection.store, projection.snapshots)
    point = await loader.load("old")
    assert point.snapshot_version == 0 and point.state == state_at(records)
    await snapshotter(projection)
    kinds = [(s.version, s.schema_version) for s in await projection.snapshots.history("old")]
    assert (30, STATE_SCHEMA_VERSION) in kinds and (30, 0) in kinds
    point = await loader.load("old")
    assert point.snapshot_version == 30 and point.events_folded == 0
    assert point.state == state_at(records)
    assert old_schema_snapshot(records, 30).schema_version != STATE_SCHEMA_VERSION


async def test_publisher_loads_through_snapshots_and_remembers_old_keys(
    projection: Projection,
) -> None:
    records = await append_history(projection.store, "pub", 45, seed=3)
    await snapshotter(projection)
    loader = StateLoader(projection.store, projection.snapshots)
    handler = CommandHandler(projection.store, loader=loader, cache_size=0)
    loaded = await handler.load("pub")
    assert loaded.state == state_at(records)
    assert loaded.last_seq == records[-1].stream_seq
    # A key used before the snapshot is recognised and answered with the original.
    first = records[4]
    key = first.envelope.idempotency_key
    again = await handler.execute("pub", AddDecision("dx", "x"), CommandOptions(key))
    assert again.duplicate and again.versions == [first.version]
    assert again.event_ids == [first.event_id]
    assert await projection.store.last_version("pub") == 45
    fresh = await handler.execute("pub", AddDecision("dnew", "new"), CommandOptions("new-key"))
    assert fresh.versions == [46] and not fresh.duplicate
