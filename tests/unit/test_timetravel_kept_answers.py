"""What the query service answers time travel from without loading: the loader's
``peek`` places a point exactly as a load does (or says it cannot), versions at
final times are kept and times not yet final are asked again, kept answers are the
bytes the whole message encodes to, shared by both time-travel methods, and an
erasure empties all of it. The heap keeper freezes only when turned on."""

from __future__ import annotations

import asyncio
import gc
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetsource._gen.context.v1 import query_pb2 as pb
from jetsource.core import crypto
from jetsource.core.clock import to_timestamp
from jetsource.core.heap import HeapKeeper
from jetsource.domains.context.events import registry
from jetsource.domains.context.history import KeptPoint, StateLoader
from jetsource.domains.context.query_service import EncodedViews
from jetsource.domains.context.views import state_view
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


def placed(point: Any) -> KeptPoint:
    return KeptPoint(
        point.state.version,
        point.last_seq,
        point.recorded_at_ns,
        point.snapshot_version,
        point.events_folded,
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
async def test_peek_places_a_point_as_a_load_does(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 60))
    steps = data.draw(st.lists(st.integers(0, 2_000_000), min_size=1, max_size=4))
    store = CountingStore(registry, clock=ticking_clock(steps))
    records = await append_history(store, "s1", n, data.draw(st.integers(0, 1000)))
    snapshots = InMemorySnapshotStore(keep=data.draw(st.integers(1, 8)))
    every = data.draw(st.integers(1, 20))
    await save_snapshots(snapshots, records, list(range(every, n + 1, every)))
    loader = StateLoader(store, snapshots, cache_size=data.draw(st.sampled_from([3, 1000])))
    bare = StateLoader(store, snapshots, cache_size=0)
    times = probe_times(records)
    for _ in range(data.draw(st.integers(1, 40))):
        if data.draw(st.booleans()):
            point: dict[str, Any] = {"to_version": data.draw(st.integers(1, n + 2))}
            peek: dict[str, Any] = dict(point)
        else:
            at = data.draw(st.sampled_from(times))
            point, peek = {"until": at}, {"until_ns": at}
        before = loader.peek("s1", **peek)
        reads, looked_up = store.reads, store.looked_up
        got = await loader.load("s1", **point)
        if before is not None:  # placed from what was kept: exactly where the load put it
            assert before == placed(got), point
            assert (store.reads, store.looked_up) == (reads, looked_up), point
        assert got.state == state_at(records, point.get("to_version"), point.get("until"))
        assert placed(got) == placed(await bare.load("s1", **point)), point
        after = loader.peek("s1", **peek)
        assert after is None or after == placed(got), point


async def test_peek_needs_a_snapshot_past_the_point_and_the_kept_run() -> None:
    store = CountingStore(registry, clock=ticking_clock([1000]))
    snapshots = InMemorySnapshotStore(keep=5)
    records = await append_history(store, "s1", 60, 4)
    await save_snapshots(snapshots, records, [10, 20, 30, 40, 50])
    loader = StateLoader(store, snapshots)
    assert loader.peek("s1", to_version=35) is None  # nothing kept yet
    await loader.load("s1", to_version=37)  # lists the snapshots, reads 31..37
    assert loader.peek("s1", until_ns=records[30].recorded_at_ns) is None  # see below
    # Once a time look-up said every version before the run was recorded by the
    # snapshot's time (a stream's times may step back), the run answers times after it.
    await loader.load("s1", until=records[29].recorded_at_ns)
    for v in range(30, 38):
        kept = loader.peek("s1", to_version=v)
        assert kept == KeptPoint(
            v, records[v - 1].stream_seq, records[v - 1].recorded_at_ns, 30, v - 30
        )
        t = records[v - 1].recorded_at_ns
        # At the run's last time, only the store knows whether 38 came at that time too.
        assert loader.peek("s1", until_ns=t) == (kept if v < 37 else None)
    assert loader.peek("s1", to_version=38) is None  # past the run: the store says
    assert loader.peek("s1", to_version=55) is None  # past every snapshot: "now"
    assert loader.peek("s1", until_ns=records[-1].recorded_at_ns) is None
    crypto.note_erasure()
    assert loader.peek("s1", to_version=35) is None  # a load empties the caches first
    point = await loader.load("s1", to_version=35)
    assert point.state == state_at(records, 35)


async def test_versions_at_final_times_are_kept_and_times_not_final_asked_again() -> None:
    store = CountingStore(registry, clock=ticking_clock([1000]))
    records = await append_history(store, "s1", 30, 3)
    loader = StateLoader(store, InMemorySnapshotStore(keep=5))
    await save_snapshots(loader.snapshots, records, [10, 20])  # type: ignore[arg-type]
    await loader.load("s1", to_version=30)  # the newest known version: 30
    looked_up = store.looked_up
    # A time between two events, before the kept run (21..30): looked up once, then
    # kept (version 6 exists, so nothing can come at or before it any more).
    at = records[4].recorded_at_ns + 1
    for _ in range(3):
        point = await loader.load("s1", until=at)
        assert point.state == state_at(records, until=at) and point.state.version == 5
    assert store.looked_up == looked_up + 1
    # At or after the last append, an append may still come at that time: asked
    # every time, and an append is seen.
    last = records[-1].recorded_at_ns
    for _ in range(2):
        assert (await loader.load("s1", until=last)).state.version == 30
    assert store.looked_up == looked_up + 3
    # An erasure empties what is kept.
    crypto.note_erasure()
    assert (await loader.load("s1", until=at)).state.version == 5
    assert store.looked_up == looked_up + 4
    assert not loader._times or list(loader._times) == [("s1", at)]


def _whole(kind: Any, point: Any) -> bytes:
    message = kind(
        context=state_view(point.state),
        last_stream_sequence=point.last_seq,
        snapshot_version=point.snapshot_version,
        events_folded=point.events_folded,
    )
    message.recorded_at.CopyFrom(to_timestamp(point.recorded_at_ns))
    return bytes(message.SerializeToString())


async def test_kept_answers_are_the_whole_message_shared_by_both_methods() -> None:
    store = InMemoryEventStore(registry)
    snapshots = InMemorySnapshotStore(keep=5)
    records = await append_history(store, "s1", 40, 5)
    await save_snapshots(snapshots, records, [10, 20, 30, 40])
    loader = StateLoader(store, snapshots)
    views = EncodedViews()
    heard = crypto.erasures_heard()
    versions = random.Random(2).sample(range(1, 40), 20)
    points = [await loader.load("s1", to_version=v) for v in versions]
    for p in points:
        answer = views.answer(pb.GetContextAtVersionResponse, p, heard)
        assert answer == _whole(pb.GetContextAtVersionResponse, p)
        assert answer == _whole(pb.GetContextAtTimeResponse, p)
        assert pb.GetContextAtTimeResponse.FromString(answer).context.version == p.state.version
        assert views.answer(pb.GetContextAtTimeResponse, p, heard) is answer
        assert views.kept_answer(pb.GetContextAtTimeResponse, "s1", placed(p)) is answer
        kept = loader.peek("s1", to_version=p.state.version)
        if kept is not None:
            assert views.kept_answer(pb.GetContextAtVersionResponse, "s1", kept) is answer
    crypto.note_erasure()
    assert views.kept_answer(pb.GetContextAtVersionResponse, "s1", placed(points[0])) is None
    assert not views._answers and not views._views and views._answer_bytes == 0


async def test_an_answer_of_a_point_loaded_before_an_erasure_is_not_kept() -> None:
    store = InMemoryEventStore(registry)
    await append_history(store, "s1", 12, 5)
    loader = StateLoader(store, None)
    heard = crypto.erasures_heard()
    point = await loader.load("s1", to_version=12)
    crypto.note_erasure()
    views = EncodedViews()
    assert views.answer(pb.GetContextAtVersionResponse, point, heard) == _whole(
        pb.GetContextAtVersionResponse, point
    )
    assert not views._answers and not views._views


async def test_the_heap_keeper_freezes_what_lives_only_when_on() -> None:
    off = HeapKeeper()
    before = gc.get_freeze_count()
    off.settle()
    off.grew()
    await asyncio.sleep(0)
    assert gc.get_freeze_count() == before and off.freezes == 0
    on = HeapKeeper(enabled=True)
    try:
        kept = [[i] for i in range(1000)]  # what a cache grew by
        on.grew()
        on.grew()  # once per turn of the loop
        await asyncio.sleep(0)
        assert on.freezes == 1 and gc.get_freeze_count() >= len(kept)
        on.sweep_every_s = 0.0  # a sweep: unfreeze, collect, freeze again
        cycle: list[Any] = []
        cycle.append(cycle)
        on.grew()
        await asyncio.sleep(0)
        assert on.freezes == 2
    finally:
        gc.unfreeze()
