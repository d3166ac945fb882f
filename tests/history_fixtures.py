"""Generated histories with snapshots in every arrangement, for time-travel tests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from jetsource.core.envelope import ANY, NewEvent, RecordedEvent
from jetsource.domains.context.history import Keys, add_keys, make_snapshot
from jetsource.domains.context.model import ContextState, fold
from jetsource.domains.context.samples import story_events
from jetsource.eventstore.memory import InMemoryEventStore
from jetsource.eventstore.port import EventStore
from jetsource.eventstore.snapshots import Snapshot, SnapshotStore


async def append_history(
    store: EventStore, context_id: str, n: int, seed: int, group_sizes: Sequence[int] = (1,)
) -> list[RecordedEvent]:
    """Append a generated history in commands of the given sizes (cycled); each
    command carries its own idempotency key. Returns what the store recorded."""
    events = story_events(context_id, n, seed)
    i = k = 0
    while i < len(events):
        size = group_sizes[k % len(group_sizes)]
        chunk = events[i : i + size]
        await store.append(
            context_id, [NewEvent(e, idempotency_key=f"cmd-{k}") for e in chunk], ANY
        )
        i, k = i + size, k + 1
    return await store.read_aggregate(context_id)


def state_at(
    records: Sequence[RecordedEvent], version: int | None = None, until: int | None = None
) -> ContextState:
    """The reference: a full fold from version 1."""
    chosen = []
    for r in records:
        if version is not None and r.version > version:
            break
        if until is not None and r.recorded_at_ns > until:
            break
        chosen.append(r.event)
    return fold(chosen, context_id=records[0].aggregate_id)


def snapshot_at(records: Sequence[RecordedEvent], version: int) -> Snapshot:
    keys: Keys = {}
    add_keys(keys, list(records[:version]))
    return make_snapshot(state_at(records, version), records[version - 1], keys)


def old_schema_snapshot(records: Sequence[RecordedEvent], version: int) -> Snapshot:
    """A snapshot of a schema this code does not write, with a state it could not read."""
    from dataclasses import replace

    return replace(snapshot_at(records, version), schema_version=0, state=b"\x00 old layout")


async def save_snapshots(
    snapshots: SnapshotStore,
    records: Sequence[RecordedEvent],
    versions: Sequence[int],
    old: Sequence[int] = (),
) -> None:
    for v in sorted(set(versions) | set(old)):
        if v in old:
            await snapshots.save(old_schema_snapshot(records, v))
        if v in versions:
            await snapshots.save(snapshot_at(records, v))


def probe_times(records: Sequence[RecordedEvent]) -> list[int]:
    """Times at, between, before and after events."""
    times = {records[0].recorded_at_ns - 1, records[-1].recorded_at_ns + 10**9}
    for r in records:
        times |= {r.recorded_at_ns, r.recorded_at_ns - 1, r.recorded_at_ns + 1}
    return sorted(times)


def ticking_clock(steps: list[int]):  # type: ignore[no-untyped-def]
    """A store clock that moves by ``steps`` in turn (nanoseconds), from a fixed start."""
    now = [1_700_000_000_000_000_000]
    i = [0]

    def clock() -> int:
        now[0] += steps[i[0] % len(steps)]
        i[0] += 1
        return now[0]

    return clock


class CountingStore(InMemoryEventStore):
    """Counts the reads and time look-ups the loader makes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads = 0
        self.looked_up = 0

    async def version_at_time(self, aggregate_id: str, time: datetime | int) -> int:
        self.looked_up += 1
        return await super().version_at_time(aggregate_id, time)

    async def read_aggregate(self, aggregate_id: str, *args: Any, **kw: Any) -> list[RecordedEvent]:
        self.reads += 1
        return await super().read_aggregate(aggregate_id, *args, **kw)
