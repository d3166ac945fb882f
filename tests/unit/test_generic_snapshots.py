"""Snapshots are generic: a second, tiny domain (a counter) that provides a
``StateCodec`` gets the engine's snapshots model and state loader, with no engine or
context code of its own. In memory (event store and snapshot store fakes)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import pytest
from google.protobuf import wrappers_pb2

from jetsource.core.codec import EventRegistry
from jetsource.core.envelope import ANY, NewEvent, RecordedEvent
from jetsource.core.errors import CorruptEventError
from jetsource.core.settings import EventStoreSettings
from jetsource.eventstore.memory import InMemoryEventStore
from jetsource.eventstore.port import EventStore
from jetsource.eventstore.snapshots import InMemorySnapshotStore, Snapshot
from jetsource.projection.history import (
    RefusedEvent,
    SnapshotDecodeError,
    StateCodec,
    StateLoader,
    make_snapshot,
)
from jetsource.projection.snapshots import SnapshotModel, snapshot_decl, snapshot_spec

registry = EventRegistry()
registry.register("CounterAdded", 1, wrappers_pb2.Int64Value)


@dataclass(frozen=True)
class Counter:
    id: str
    version: int = 0
    total: int = 0


class CounterCodec:
    """Adds each event's value; refuses one that takes the total below zero."""

    aggregate_type = "counter"
    schema_version = 3
    encoding = "json"

    def empty(self, aggregate_id: str) -> Counter:
        return Counter(aggregate_id)

    def version(self, state: Counter) -> int:
        return state.version

    def evolve_one(self, state: Counter, record: RecordedEvent) -> Counter:
        assert isinstance(record.event, wrappers_pb2.Int64Value)
        total = state.total + record.event.value
        if total < 0:
            raise RefusedEvent(f"total {state.total} + {record.event.value} < 0")
        return Counter(state.id, state.version + 1, total)

    async def fold(
        self, store: EventStore, records: list[RecordedEvent], state: Counter
    ) -> Counter:
        for r in records:
            try:
                state = self.evolve_one(state, r)
            except RefusedEvent as exc:
                if not await store.voided(r.aggregate_id, r.stream_seq):
                    raise CorruptEventError(r.aggregate_id, r.stream_seq, str(exc)) from exc
                state = replace(state, version=r.version)
        return state

    def encode(self, state: Counter) -> bytes:
        return json.dumps([state.id, state.version, state.total]).encode()

    def decode(self, snapshot: Snapshot) -> Counter:
        try:
            return Counter(*json.loads(snapshot.state))
        except (ValueError, TypeError) as exc:
            raise SnapshotDecodeError(f"unreadable counter: {exc!r}") from exc

    def describe(self, state: Counter) -> dict[str, object]:
        return {"id": state.id, "version": state.version, "total": state.total}


CODEC: StateCodec[Counter] = CounterCodec()
EVERY = 4


def new_store() -> InMemoryEventStore:
    cfg = EventStoreSettings(
        stream="COUNTER_EVENTS", subject_prefix="counter.events", aggregate_type="counter"
    )
    return InMemoryEventStore(registry, cfg)


async def add(store: InMemoryEventStore, aggregate_id: str, values: list[int]) -> None:
    for i, v in enumerate(values):
        await store.append(
            aggregate_id,
            [NewEvent(wrappers_pb2.Int64Value(value=v), idempotency_key=f"{aggregate_id}-{i}")],
            ANY,
        )


def model_on(store: InMemoryEventStore) -> tuple[SnapshotModel[Counter], InMemorySnapshotStore]:
    snapshots = InMemorySnapshotStore(keep=10)
    loader = StateLoader(CODEC, store, snapshots, cache_size=100)
    spec = snapshot_spec(CODEC.schema_version, "counter_snapshots")
    return SnapshotModel(spec, snapshots, loader, EVERY, cache_size=100), snapshots


async def build(
    model: SnapshotModel[Counter], records: list[RecordedEvent], batch: int, redeliver: bool
) -> None:
    i = 0
    while i < len(records):
        chunk = records[i : i + batch]
        outcome = await model.apply(chunk)
        assert not outcome.failed and not outcome.waiting
        if redeliver:
            model._warm.clear()  # a restart: the next batch starts cold
            await model.apply(chunk)
        i += batch


async def test_a_second_domain_gets_snapshots_from_the_generic_model() -> None:
    store = new_store()
    await add(store, "c1", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    await add(store, "c2", [5, -1, 2, 2, 1, 1, 1, 1, 1])
    records = [r async for r in store.read_all()]

    one_pass, snaps = model_on(store)
    await build(one_pass, records, len(records), redeliver=False)
    kept = {
        s.aggregate_id: [x.version for x in await snaps.history(s.aggregate_id)]
        async for s in snaps.all()
    }
    assert kept == {"c1": [4, 8], "c2": [4, 8]}
    assert all(s.aggregate_type == "counter" for s in [s async for s in snaps.all()])
    assert (await one_pass.checkpoint()).applied == 4  # snapshots kept
    assert await one_pass.position("c1") == 8

    batched, _ = model_on(store)
    await build(batched, records, 3, redeliver=True)
    assert await batched.digest() == await one_pass.digest()

    # Loading through the snapshots equals a full fold, and folds only the tail.
    loader = one_pass.loader
    for v in range(0, 12):
        point = await loader.load("c1", to_version=v)
        assert point.state == Counter("c1", v, sum(range(1, v + 1)))
        assert point.events_folded == v - point.snapshot_version
    point = await loader.load("c1", keys=True)
    assert point.snapshot_version == 8 and point.events_folded == 3
    assert point.keys["c1-10"] == (11, 11)


async def test_a_refused_event_is_a_dead_letter_and_a_corrupt_history() -> None:
    store = new_store()
    await add(store, "c1", [1, 1, 1, 1, -9, 1])
    records = [r async for r in store.read_all()]
    model, _ = model_on(store)
    await model.apply(records[:4])  # a snapshot at 4, and the state kept warm
    outcome = await model.apply(records[4:5])
    assert outcome.failed.keys() == {records[4].stream_seq}
    with pytest.raises(CorruptEventError):
        await model.loader.load("c1")
    store.void(records[4].stream_seq)
    assert (await model.loader.load("c1")).state == Counter("c1", 6, 5)


async def test_a_snapshot_of_another_schema_or_unreadable_is_skipped() -> None:
    store = new_store()
    await add(store, "c1", [1, 2, 3])
    records = [r async for r in store.read_all()]
    snapshots = InMemorySnapshotStore()
    good = make_snapshot(CODEC, Counter("c1", 2, 3), records[1], {})
    await snapshots.save(replace(good, schema_version=2, state=b"old"))
    loader = StateLoader(CODEC, store, snapshots)
    point = await loader.load("c1")
    assert point.state == Counter("c1", 3, 6) and point.snapshot_version == 0
    await snapshots.save(replace(good, state=b"not json"))
    point = await loader.load("c1")
    assert point.state == Counter("c1", 3, 6) and point.snapshot_version == 0


def test_snapshot_decl_is_one_descriptor_entry() -> None:
    decl = snapshot_decl(CODEC, "counter_snapshots", every=EVERY)
    assert decl.pinned_version == CODEC.schema_version and not decl.default
    spec = decl.spec(CODEC.schema_version)
    assert spec.name == "counter_snapshots" and "counter" in spec.description
