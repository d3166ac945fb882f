"""Time travel's caches of immutable facts (decoded snapshot states, the events read
after a snapshot, states folded on the way, encoded views) change no answer: loads in
any order, by version, by time or both, give what a loader without caches gives and
what a full fold gives, while points already read are served without asking the store
again. A cached state is never changed by a load, and an erasure empties every cache."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetsource.core import crypto
from jetsource.core.clock import to_ns
from jetsource.core.envelope import RecordedEvent
from jetsource.domains.context.events import registry
from jetsource.domains.context.history import StateLoader
from jetsource.domains.context.query_service import EncodedViews
from jetsource.domains.context.serialize import state_to_dict
from jetsource.domains.context.views import state_view
from jetsource.eventstore.horizon import BeyondHorizonError, Horizon
from jetsource.eventstore.memory import InMemoryEventStore
from jetsource.eventstore.snapshots import InMemorySnapshotStore
from tests.history_fixtures import (
    CountingStore,
    append_history,
    probe_times,
    save_snapshots,
    state_at,
    ticking_clock,
)


def facts(point: Any) -> tuple[Any, ...]:
    return (
        point.state,
        point.last_seq,
        point.recorded_at_ns,
        point.snapshot_version,
        point.events_folded,
        point.keys,
    )


@st.composite
def loads(draw: st.DrawFn, n: int, times: list[int]) -> list[dict[str, Any]]:
    """Points in any order, repeated, by version, time, both, or none ("now")."""
    out = []
    for _ in range(draw(st.integers(1, 60))):
        kind = draw(st.sampled_from(["version", "version", "time", "time", "both", "now"]))
        point: dict[str, Any] = {}
        if kind in ("version", "both"):
            point["to_version"] = draw(st.integers(0, n + 2))
        if kind in ("time", "both"):
            point["until"] = draw(st.sampled_from(times))
        if draw(st.integers(0, 9)) == 0:
            point["keys"] = True
        out.append(point)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
async def test_cached_loads_answer_as_uncached_ones_and_a_full_fold(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 70))
    steps = data.draw(st.lists(st.integers(0, 2_000_000), min_size=1, max_size=4))
    store = CountingStore(registry, clock=ticking_clock(steps))
    records = await append_history(
        store, "s1", n, data.draw(st.integers(0, 1000)), data.draw(st.sampled_from([(1,), (3, 1)]))
    )
    snapshots = InMemorySnapshotStore(keep=data.draw(st.integers(1, 8)))
    every = data.draw(st.integers(1, 25))
    await save_snapshots(snapshots, records, list(range(every, n + 1, every)))
    # A small cache (3 states, 30 events) is full most of the time: evictions too.
    cached = StateLoader(store, snapshots, cache_size=data.draw(st.sampled_from([3, 1000])))
    bare = StateLoader(store, snapshots, cache_size=0)
    for point in data.draw(loads(n, probe_times(records))):
        got = await cached.load("s1", **point)
        assert facts(got) == facts(await bare.load("s1", **point)), point
        assert got.state == state_at(records, point.get("to_version"), point.get("until"))
        # The same point again: nothing read, nothing looked up (the run holds it),
        # unless it is "now" (only the store knows) or past what the run holds.
        reads, looked_up = store.reads, store.looked_up
        again = await cached.load("s1", **point)
        assert facts(again) == facts(got)
        within = "until" not in point and 0 < point.get("to_version", 0) <= n
        if within and got.snapshot_version and got.events_folded:
            assert (store.reads, store.looked_up) == (reads, looked_up), point


async def test_points_within_a_kept_run_are_served_without_the_store() -> None:
    store = CountingStore(registry, clock=ticking_clock([1000]))
    snapshots = InMemorySnapshotStore(keep=5)
    records = await append_history(store, "s1", 60, 4)
    await save_snapshots(snapshots, records, [10, 20, 30, 40, 50])
    loader = StateLoader(store, snapshots)
    await loader.load("s1", to_version=39)  # lists the snapshots, reads 31..39
    reads = store.reads
    for v in range(30, 40):
        point = await loader.load("s1", to_version=v)
        assert point.state == state_at(records, v)
        assert (point.snapshot_version, point.events_folded) == (30, v - 30)
        assert point.last_seq == records[v - 1].stream_seq
    # A time between the snapshot at 30 and the one at 40 is a version found in the
    # run: no read, and one look-up (at the snapshot's time: it says every version
    # before the run was recorded by then; a stream's times may step back), then none.
    for v in range(30, 40):
        for t in (records[v - 1].recorded_at_ns, records[v].recorded_at_ns - 1):
            point = await loader.load("s1", until=t)
            assert point.state == state_at(records, until=t) and point.state.version == v
    assert (store.reads, store.looked_up) == (reads, 1)
    # Past the run: only the events after it are read, and the run grows.
    point = await loader.load("s1", to_version=45)
    assert point.snapshot_version == 40 and store.reads == reads + 1
    point = await loader.load("s1")  # now: past the newest snapshot (50)
    assert point.state == state_at(records) and point.events_folded == 10
    assert store.reads == reads + 2
    point = await loader.load("s1")  # again: the store is asked for what came since
    assert point.state == state_at(records) and store.reads == reads + 3


async def test_times_read_backwards_within_a_kept_run_need_one_look_up() -> None:
    # Scrubbing back in time: the one look-up is at the snapshot's own time (the event
    # before the run), so it covers every time in the run whatever the order read.
    store = CountingStore(registry, clock=ticking_clock([1000]))
    snapshots = InMemorySnapshotStore(keep=5)
    records = await append_history(store, "s1", 60, 4)
    await save_snapshots(snapshots, records, [10, 20, 30, 40, 50])
    loader = StateLoader(store, snapshots)
    await loader.load("s1", to_version=39)  # lists the snapshots, reads 31..39
    reads = store.reads
    for v in reversed(range(30, 39)):
        t = records[v - 1].recorded_at_ns
        point = await loader.load("s1", until=t)
        assert point.state == state_at(records, until=t) and point.state.version == v
    assert (store.reads, store.looked_up) == (reads, 1)
    # A time before the snapshot's is not the run's: the store answers it.
    t = records[28].recorded_at_ns
    point = await loader.load("s1", until=t)
    assert point.state == state_at(records, until=t) and point.state.version == 29
    assert store.looked_up == 2


async def test_a_snapshot_time_behind_a_horizon_leaves_times_after_it_to_the_store() -> None:
    # The one look-up at the snapshot's time is no error when that time lies behind a
    # compaction horizon (a live store then cannot say): the time read is looked up.
    class Compacted(CountingStore):
        horizon: Horizon | None = None

        async def version_at_time(self, aggregate_id: str, time: datetime | int) -> int:
            if self.horizon is not None and to_ns(time) < self.horizon.time_ns:
                self.looked_up += 1
                raise BeyondHorizonError(aggregate_id, self.horizon)
            return await super().version_at_time(aggregate_id, time)

    store = Compacted(registry, clock=ticking_clock([1000]))
    snapshots = InMemorySnapshotStore(keep=5)
    records = await append_history(store, "s1", 60, 4)
    await save_snapshots(snapshots, records, [10, 20, 30, 40, 50])
    loader = StateLoader(store, snapshots)
    await loader.load("s1", to_version=39)  # lists the snapshots, reads 31..39
    h = records[31]
    store.horizon = Horizon(h.version, h.stream_seq, h.recorded_at_ns)
    for v in (36, 35):
        t = records[v - 1].recorded_at_ns
        point = await loader.load("s1", until=t)
        assert point.state == state_at(records, until=t) and point.state.version == v


async def test_a_load_never_changes_a_cached_snapshot_state() -> None:
    store = InMemoryEventStore(registry)
    snapshots = InMemorySnapshotStore(keep=5)
    records = await append_history(store, "s1", 50, 9)
    await save_snapshots(snapshots, records, [20, 40])
    loader = StateLoader(store, snapshots)
    first = await loader.load("s1", to_version=20)
    assert first.base is not None
    pristine = state_to_dict(first.base)
    for v in [*range(21, 40), 25, 39, 21]:
        point = await loader.load("s1", to_version=v)
        assert point.base is first.base  # the decoded state is shared ...
        assert point.state == state_at(records, v)
        assert state_to_dict(point.base) == pristine  # ... and never changed
        assert point.base == state_at(records, 20)
    # Nor a state kept on the way (every 10th version), that later loads start from.
    assert sorted(v for _, v in loader._folded) == [30]
    for v in [*range(31, 40), 30, 35]:
        assert (await loader.load("s1", to_version=v)).state == state_at(records, v)
    kept, _ = loader._folded[("s1", 30)]
    assert kept == state_at(records, 30) and state_to_dict(kept) == state_to_dict(
        state_at(records, 30)
    )


async def test_an_erasure_empties_every_cache() -> None:
    store = CountingStore(registry, clock=ticking_clock([1000]))
    snapshots = InMemorySnapshotStore(keep=5)
    records = await append_history(store, "s1", 40, 2)
    await save_snapshots(snapshots, records, [10, 30, 40])
    loader = StateLoader(store, snapshots)
    await loader.load("s1", to_version=25)  # reads 11..25, keeps the state at 20
    assert list(loader._folded) == [("s1", 20)] and len(loader._cache) == 1
    reads = store.reads
    await loader.load("s1", to_version=15)
    assert store.reads == reads  # served from the kept run
    crypto.note_erasure()  # what a key store does when it hears of an erase
    point = await loader.load("s1", to_version=15)
    assert point.state == state_at(records, 15)
    assert store.reads == reads + 1  # read again: states and events held opened values
    # Only what it read since: the snapshot at 10 and the events 11..15.
    assert [e.version for e in loader._tails["s1"].events] == list(range(11, 16))
    assert len(loader._cache) == 1 and not loader._folded


async def test_encoded_views_are_kept_within_a_budget_and_emptied_by_an_erasure() -> None:
    store = InMemoryEventStore(registry)
    snapshots = InMemorySnapshotStore(keep=5)
    records = await append_history(store, "s1", 40, 5)
    await save_snapshots(snapshots, records, [10, 20, 30])
    loader = StateLoader(store, snapshots)
    points = [await loader.load("s1", to_version=v) for v in range(1, 41)]
    size = max(len(state_view(p.state).SerializeToString()) for p in points)
    views = EncodedViews(budget=8 * size)
    heard = crypto.erasures_heard()
    for p in [*points, *points[::-1]]:  # every view, then again from the newest down
        assert views.encode(p, heard) == state_view(p.state).SerializeToString()
    newest = points[-1]
    kept = views.encode(newest, heard)
    assert views.encode(newest, heard) is kept  # encoded once, then served as it is
    assert 0 < views._bytes <= 8 * size
    crypto.note_erasure()
    again = views.encode(newest, crypto.erasures_heard())
    assert again == kept and again is not kept  # encoded anew: nothing kept survives
    assert list(views._views) == [("s1", 40, newest.last_seq)]


async def test_a_view_of_a_point_loaded_before_an_erasure_is_not_kept() -> None:
    """The erasure is heard while the point loads (its state may hold what the erasure
    destroyed): the view answers that one request and is not kept for the next."""
    store = InMemoryEventStore(registry)
    records = await append_history(store, "s1", 12, 5)
    loader = StateLoader(store, None)
    heard = crypto.erasures_heard()
    point = await loader.load("s1", to_version=12)
    crypto.note_erasure()  # heard after the load began, before its view is encoded
    views = EncodedViews()
    assert views.encode(point, heard) == state_view(state_at(records, 12)).SerializeToString()
    assert not views._views
    # A point loaded after it is kept as usual.
    heard = crypto.erasures_heard()
    again = await loader.load("s1", to_version=12)
    assert views.encode(again, heard) is views.encode(again, heard)


class InterleavingStore(InMemoryEventStore):
    """Reads that yield to other loads halfway, as a network store's do."""

    async def read_aggregate(self, aggregate_id: str, *args: Any, **kw: Any) -> list[RecordedEvent]:
        await asyncio.sleep(0)
        out = await super().read_aggregate(aggregate_id, *args, **kw)
        await asyncio.sleep(0)
        return out

    async def version_at_time(self, aggregate_id: str, time: datetime | int) -> int:
        await asyncio.sleep(0)
        return await super().version_at_time(aggregate_id, time)


async def test_concurrent_loads_share_the_caches_safely() -> None:
    store = InterleavingStore(registry, clock=ticking_clock([1000, 1]))
    snapshots = InMemorySnapshotStore(keep=8)
    records = await append_history(store, "s1", 120, 6, (1, 2))
    await save_snapshots(snapshots, records, list(range(25, 121, 25)))
    loader = StateLoader(store, snapshots, cache_size=5)
    rng = random.Random(11)
    points: list[dict[str, Any]] = []
    for _ in range(300):
        v = rng.randrange(0, 121)
        points.append(
            {"to_version": v}
            if rng.random() < 0.6
            else {"until": records[max(v, 1) - 1].recorded_at_ns}
        )
    got = await asyncio.gather(*(loader.load("s1", **p) for p in points))
    for p, point in zip(points, got, strict=True):
        assert point.state == state_at(records, p.get("to_version"), p.get("until")), p
    assert loader._tail_total == sum(len(r.events) for r in loader._tails.values())
    assert loader._tail_total <= loader.tail_events


class ErasingStore(InMemoryEventStore):
    """A read during which an erasure is heard, and another load begins (and empties
    the caches) before the read returns: as when a key store hears of an erase while
    a network read is in flight."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.erase_during_next_read = False
        self.reads = 0
        self.started = asyncio.Event()
        self.go_on = asyncio.Event()

    async def read_aggregate(self, aggregate_id: str, *args: Any, **kw: Any) -> list[RecordedEvent]:
        self.reads += 1
        out = await super().read_aggregate(aggregate_id, *args, **kw)  # opened before ...
        if self.erase_during_next_read:
            self.erase_during_next_read = False
            crypto.note_erasure()  # ... the erasure is heard
            self.started.set()
            await self.go_on.wait()
        return out


async def test_what_a_load_opened_before_an_erasure_is_not_kept_after_it() -> None:
    """A load in flight when an erasure is heard keeps none of the events it read nor
    the states it folded, even when another load began after the erasure and emptied
    the caches before the first one finished."""
    store = ErasingStore(registry, clock=ticking_clock([1000]))
    snapshots = InMemorySnapshotStore(keep=5)
    records = await append_history(store, "s1", 40, 2)
    await save_snapshots(snapshots, records, [10, 30])
    loader = StateLoader(store, snapshots)
    store.erase_during_next_read = True
    first = asyncio.create_task(loader.load("s1", to_version=25))  # reads 11..25
    await store.started.wait()
    await loader.load("s1", to_version=5)  # begins after the erasure: empties the caches
    assert not loader._tails and not loader._folded
    store.go_on.set()
    point = await first
    assert point.state == state_at(records, 25)
    assert not loader._tails and not loader._folded  # nothing opened before it kept
    reads = store.reads
    await loader.load("s1", to_version=25)  # read again, and kept now
    assert store.reads == reads + 1
    assert [e.version for e in loader._tails["s1"].events] == list(range(11, 26))
    assert list(loader._folded) == [("s1", 20)]
