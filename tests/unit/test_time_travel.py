"""Time travel on the in-memory adapters: state at any version or time equals a
full fold from version 1, with snapshots absent, present, part-way and of an old
schema (hypothesis). The same checks run against JetStream in
tests/integration/test_snapshots.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetsource.core.envelope import RecordedEvent
from jetsource.domains.context.events import registry
from jetsource.domains.context.history import StateLoader
from jetsource.eventstore.memory import InMemoryEventStore
from jetsource.eventstore.snapshots import InMemorySnapshotStore, Snapshot
from tests.contract_snapshots import SnapshotStoreContract
from tests.history_fixtures import (
    append_history,
    probe_times,
    save_snapshots,
    state_at,
    ticking_clock,
)


class TestInMemorySnapshotStore(SnapshotStoreContract):
    @pytest.fixture
    async def snapshots(self) -> AsyncIterator[InMemorySnapshotStore]:
        yield InMemorySnapshotStore(keep=3)


@st.composite
def arrangements(draw: st.DrawFn) -> dict[str, object]:
    n = draw(st.integers(1, 90))
    mode = draw(st.sampled_from(["absent", "every", "some", "old", "old+some"]))
    versions: list[int] = []
    old: list[int] = []
    if mode == "every":
        k = draw(st.integers(1, 30))
        versions = list(range(k, n + 1, k))
    if "some" in mode:
        versions = draw(st.lists(st.integers(1, n), max_size=6, unique=True))
    if "old" in mode:
        old = draw(st.lists(st.integers(1, n), min_size=1, max_size=4, unique=True))
    return {
        "n": n,
        "seed": draw(st.integers(0, 10_000)),
        "groups": draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)),
        "steps": draw(st.lists(st.integers(1, 3_000_000), min_size=1, max_size=5)),
        "versions": versions,
        "old": old,
        "keep": draw(st.integers(1, 8)),
    }


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrangements())
async def test_time_travel_equals_a_full_fold(a: dict) -> None:  # type: ignore[type-arg]
    store = InMemoryEventStore(registry, clock=ticking_clock(a["steps"]))
    snapshots = InMemorySnapshotStore(keep=a["keep"])
    records = await append_history(store, "s1", a["n"], a["seed"], a["groups"])
    await save_snapshots(snapshots, records, a["versions"], a["old"])
    loader = StateLoader(store, snapshots, cache_size=4)
    for v in range(0, len(records) + 1):
        point = await loader.load("s1", to_version=v)
        assert point.state == state_at(records, v), v
        assert point.snapshot_version <= v
        assert point.last_seq == (records[v - 1].stream_seq if v else 0)
    for t in probe_times(records):
        point = await loader.load("s1", until=t)
        assert point.state == state_at(records, until=t), t
    # Both bounds at once, and the keys seen up to a point.
    for v in range(1, len(records) + 1, 7):
        t = records[v - 1].recorded_at_ns
        point = await loader.load("s1", to_version=v, until=t, keys=True)
        assert point.state == state_at(records, v, t)
        assert set(point.keys) == {
            r.envelope.idempotency_key for r in records if r.version <= point.state.version
        }


async def test_old_schema_snapshots_are_never_read() -> None:
    store = InMemoryEventStore(registry)
    snapshots = InMemorySnapshotStore()
    records = await append_history(store, "s1", 40, 3)
    await save_snapshots(snapshots, records, [], old=[10, 20, 30])
    point = await StateLoader(store, snapshots).load("s1")
    assert point.snapshot_version == 0 and point.events_folded == 40
    assert point.state == state_at(records)
    await save_snapshots(snapshots, records, [20])
    point = await StateLoader(store, snapshots).load("s1")
    assert (point.snapshot_version, point.events_folded) == (20, 20)
    assert point.state == state_at(records)


class CountingSnapshots(InMemorySnapshotStore):
    def __init__(self, keep: int = 5) -> None:
        super().__init__(keep)
        self.asked = 0

    async def latest(self, aggregate_id: str) -> Snapshot | None:
        self.asked += 1
        return await super().latest(aggregate_id)

    async def history(self, aggregate_id: str) -> list[Snapshot]:
        self.asked += 1
        return await super().history(aggregate_id)


class CountingStore(InMemoryEventStore):
    times_looked_up = 0
    last_read: dict[str, Any] | None = None

    async def version_at_time(self, aggregate_id: str, time: datetime | int) -> int:
        self.times_looked_up += 1
        return await super().version_at_time(aggregate_id, time)

    async def read_aggregate(
        self,
        aggregate_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        until_time: datetime | int | None = None,
        from_seq: int = 1,
        to_seq: int | None = None,
    ) -> list[RecordedEvent]:
        self.last_read = {
            "from_version": from_version,
            "to_version": to_version,
            "until_time": until_time,
            "from_seq": from_seq,
            "to_seq": to_seq,
        }
        return await super().read_aggregate(
            aggregate_id, from_version, to_version, until_time, from_seq, to_seq
        )


async def test_points_between_listed_snapshots_need_no_snapshot_lookup() -> None:
    store = CountingStore(registry, clock=ticking_clock([1000]))
    snapshots = CountingSnapshots(keep=5)
    records = await append_history(store, "s1", 60, 4)
    await save_snapshots(snapshots, records, [10, 20, 30, 40, 50])
    loader = StateLoader(store, snapshots)
    first = await loader.load("s1", to_version=35)  # the latest (50) is past it: list them
    assert (first.snapshot_version, snapshots.asked) == (30, 2)
    for v in range(10, 50):
        point = await loader.load("s1", to_version=v)
        assert point.state == state_at(records, v)
        assert point.snapshot_version == v // 10 * 10
        assert point.base is not None and point.base.version == point.snapshot_version
    for v in range(10, 50):
        t = records[v - 1].recorded_at_ns
        point = await loader.load("s1", until=t)
        assert point.state == state_at(records, until=t) and point.snapshot_version == v // 10 * 10
    assert snapshots.asked == 2 + 3 * 2  # fetching 10, 20 and 40 to decode them, once
    assert store.times_looked_up == 40  # once per time, nothing else looked up
    # A time is a version (the last one recorded by then), and the snapshot past it
    # bounds the tail read by sequence (here exactly: the aggregate is alone).
    for to_version, until in ((37, None), (None, records[36].recorded_at_ns)):
        await loader.load("s1", to_version=to_version, until=until)
        assert store.last_read is not None
        assert store.last_read["to_version"] == 37
        assert store.last_read["to_seq"] == records[36].stream_seq
    # Past the newest listed snapshot the store is asked again; new ones are found.
    await save_snapshots(snapshots, records, [60])
    point = await loader.load("s1")
    assert (point.snapshot_version, point.state) == (60, state_at(records))
    # A listed snapshot deleted since is still a correct start: events never change.
    assert await snapshots.delete_after("s1", 15) == 5
    point = await loader.load("s1", to_version=45)
    assert (point.snapshot_version, point.state) == (40, state_at(records, 45))
    # Without a cache nothing is listed or kept.
    bare = StateLoader(store, snapshots, cache_size=0)
    await save_snapshots(snapshots, records, [10, 50])
    assert (await bare.load("s1", to_version=12)).snapshot_version == 10
    assert bare._listed == {} and bare._cache == {}
