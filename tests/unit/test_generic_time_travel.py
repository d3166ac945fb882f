"""Time travel's caches are the engine's: a second, tiny domain (a running sum) that
provides only a ``StateCodec`` gets the engine loader's ``peek`` (a point asked again
placed from what is kept, without a read) and its versions at final times (looked up
once), and an erasure empties both, with no code of its own. In memory."""

from __future__ import annotations

import json
from dataclasses import dataclass

from google.protobuf import wrappers_pb2

from jetsource.core import crypto
from jetsource.core.codec import EventRegistry
from jetsource.core.envelope import ANY, NewEvent, RecordedEvent
from jetsource.core.settings import EventStoreSettings
from jetsource.eventstore.port import EventStore
from jetsource.eventstore.snapshots import InMemorySnapshotStore, Snapshot
from jetsource.projection.history import (
    KeptPoint,
    PointInTime,
    StateCodec,
    StateLoader,
    make_snapshot,
)
from tests.history_fixtures import CountingStore, ticking_clock

registry = EventRegistry()
registry.register("SumAdded", 1, wrappers_pb2.Int64Value)


@dataclass(frozen=True)
class Sum:
    id: str
    version: int = 0
    total: int = 0


class SumCodec:
    """Adds each event's value: the whole domain."""

    aggregate_type = "sum"
    schema_version = 1
    encoding = "json"

    def empty(self, aggregate_id: str) -> Sum:
        return Sum(aggregate_id)

    def version(self, state: Sum) -> int:
        return state.version

    def evolve_one(self, state: Sum, record: RecordedEvent) -> Sum:
        assert isinstance(record.event, wrappers_pb2.Int64Value)
        return Sum(state.id, state.version + 1, state.total + record.event.value)

    async def fold(self, store: EventStore, records: list[RecordedEvent], state: Sum) -> Sum:
        for r in records:
            state = self.evolve_one(state, r)
        return state

    def encode(self, state: Sum) -> bytes:
        return json.dumps([state.id, state.version, state.total]).encode()

    def decode(self, snapshot: Snapshot) -> Sum:
        return Sum(*json.loads(snapshot.state))

    def describe(self, state: Sum) -> dict[str, object]:
        return {"id": state.id, "version": state.version, "total": state.total}


CODEC: StateCodec[Sum] = SumCodec()


def placed(point: PointInTime[Sum]) -> KeptPoint:
    return KeptPoint(
        point.state.version,
        point.last_seq,
        point.recorded_at_ns,
        point.snapshot_version,
        point.events_folded,
    )


async def sums(
    n: int, snapshot_at: range
) -> tuple[CountingStore, InMemorySnapshotStore, list[RecordedEvent]]:
    """A sum of 1..n (one event each, 1 µs apart), snapshots at ``snapshot_at``."""
    cfg = EventStoreSettings(stream="SUM_EVENTS", subject_prefix="sum.events", aggregate_type="sum")
    store = CountingStore(registry, cfg, clock=ticking_clock([1000]))
    for v in range(1, n + 1):
        await store.append("a1", [NewEvent(wrappers_pb2.Int64Value(value=v))], ANY)
    records = await store.read_aggregate("a1")
    snapshots = InMemorySnapshotStore(keep=n)
    state = CODEC.empty("a1")
    for r in records:
        state = CODEC.evolve_one(state, r)
        if r.version in snapshot_at:
            await snapshots.save(make_snapshot(CODEC, state, r, {}))
    return store, snapshots, records


def total(version: int) -> int:
    return version * (version + 1) // 2


async def test_a_second_domain_gets_peek_from_the_engine_loader() -> None:
    store, snapshots, records = await sums(50, range(10, 51, 10))
    loader = StateLoader(CODEC, store, snapshots)
    assert loader.peek("a1", to_version=25) is None  # nothing kept yet
    point = await loader.load("a1", to_version=27)  # lists the snapshots, reads 21..27
    assert point.state == Sum("a1", 27, total(27))
    # One time look-up saying all before the run was recorded by the snapshot's time
    # (a stream's times may step back): the run answers times at or after it.
    await loader.load("a1", until=records[19].recorded_at_ns)
    reads, looked_up = store.reads, store.looked_up
    for v in range(20, 28):
        kept = loader.peek("a1", to_version=v)
        assert kept == KeptPoint(
            v, records[v - 1].stream_seq, records[v - 1].recorded_at_ns, 20, v - 20
        )
        assert kept == placed(await loader.load("a1", to_version=v))  # as a load places it
        assert (await loader.load("a1", to_version=v)).state.total == total(v)
        if v < 27:  # at the run's last time only the store knows whether 28 came then too
            assert loader.peek("a1", until_ns=records[v - 1].recorded_at_ns) == kept
    assert (store.reads, store.looked_up) == (reads, looked_up)  # all from what is kept
    assert loader.peek("a1", to_version=28) is None  # past the run: the store says
    assert loader.peek("a1", to_version=45) is None  # past every snapshot: "now"
    crypto.note_erasure()
    assert loader.peek("a1", to_version=25) is None  # nothing kept past an erasure
    assert not loader._tails and not loader._listed and not loader._folded
    assert (await loader.load("a1", to_version=25)).state == Sum("a1", 25, total(25))


async def test_a_second_domain_gets_versions_at_final_times_kept() -> None:
    store, snapshots, records = await sums(30, range(10, 21, 10))
    loader = StateLoader(CODEC, store, snapshots)
    await loader.load("a1", to_version=30)  # reads 21..30: the newest known version is 30
    looked_up = store.looked_up
    # Between two events before the kept run: looked up once, then kept (version 6
    # exists, so nothing can come at or before that time any more).
    at = records[4].recorded_at_ns + 1
    for _ in range(3):
        point = await loader.load("a1", until=at)
        assert point.state == Sum("a1", 5, total(5))
    assert store.looked_up == looked_up + 1
    assert list(loader._times) == [("a1", at)]
    # At or after the last append, an append may still come at that time: asked again.
    last = records[-1].recorded_at_ns
    for _ in range(2):
        assert (await loader.load("a1", until=last)).state.version == 30
    assert store.looked_up == looked_up + 3
    # An erasure empties the kept times too.
    crypto.note_erasure()
    assert loader.peek("a1", until_ns=at) is None and not loader._times
    assert (await loader.load("a1", until=at)).state.total == total(5)
    assert store.looked_up == looked_up + 4


async def test_a_kept_time_is_peeked_where_a_snapshot_precedes_it() -> None:
    store, snapshots, records = await sums(40, range(10, 41, 10))
    loader = StateLoader(CODEC, store, snapshots)
    await loader.load("a1", to_version=40)
    await loader.load("a1", to_version=15)  # lists the snapshots; keeps the run 11..15
    at = records[22].recorded_at_ns + 1  # version 23, past the run: the store says
    assert loader.peek("a1", until_ns=at) is None
    looked_up = store.looked_up
    point = await loader.load("a1", until=at)
    assert point.state == Sum("a1", 23, total(23)) and store.looked_up == looked_up + 1
    assert loader.peek("a1", until_ns=at) == placed(point)  # the kept time, the kept run
    assert store.looked_up == looked_up + 1
