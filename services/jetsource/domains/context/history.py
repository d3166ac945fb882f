"""The context domain's state through history: its state codec (what the engine's
snapshots and loader need of it), the checked fold of stored events, and a fold
cache for the models that rewind.

Every reader goes through :class:`StateLoader` (the publisher for current state, the
query service for time travel, the snapshotter for its next snapshot): the engine's
loader (:mod:`jetsource.projection.history`) bound to :data:`CODEC`. A snapshot is
used only if its state schema is the one this code writes (``STATE_SCHEMA_VERSION``);
an older one is skipped and the state folded from events, never misread.
"""

from __future__ import annotations

import json
import zlib
from collections import OrderedDict
from dataclasses import replace
from typing import Any, TypeAlias

from jetsource.core.crypto import erasures_heard
from jetsource.core.envelope import RecordedEvent
from jetsource.core.errors import CorruptEventError
from jetsource.domains.context.events import AGGREGATE_TYPE
from jetsource.domains.context.model import ContextState, EvolveError, evolve, fold
from jetsource.domains.context.serialize import STATE_SCHEMA_VERSION, state_from_dict, state_to_dict
from jetsource.eventstore.port import EventStore
from jetsource.eventstore.snapshots import Snapshot, SnapshotStore
from jetsource.projection import history as engine
from jetsource.projection.history import (
    KeptPoint,
    Keys,
    RefusedEvent,
    SnapshotDecodeError,
    add_keys,
    decode_keys,
    encode_keys,
    history_up_to,
)

__all__ = [
    "AGGREGATE_TYPE",
    "CODEC",
    "ENCODING",
    "ContextCodec",
    "FoldCache",
    "KeptPoint",
    "Keys",
    "PointInTime",
    "SnapshotDecodeError",
    "StateLoader",
    "add_keys",
    "decode_keys",
    "decode_state",
    "encode_keys",
    "encode_state",
    "fold_records",
    "history_up_to",
    "make_snapshot",
]

ENCODING = "json+zlib"
PointInTime: TypeAlias = engine.PointInTime[ContextState]


class FoldCache:
    """The fold of each aggregate's event prefix, kept across calls: a replay that
    writes a hot story again and again (the live worker moving it meanwhile) folds its
    history once, then only the events that arrived since. A prefix that changed
    (other events at the same places) is folded again from version 1.

    Its owner empties it on an erasure (an ``ErasureWatch``), and a fold of events
    read before an erasure heard since is not kept (``heard``): a replay in flight
    across the erasure would otherwise put back, after the emptying, a state that
    holds opened values, and the erasure's own rewrite (the same events at the same
    places) would fold onto it."""

    def __init__(self, size: int = 1_000) -> None:
        self.size = size
        self._by: OrderedDict[str, tuple[int, int, ContextState]] = OrderedDict()

    def state_at(
        self, aggregate_id: str, events: list[RecordedEvent], version: int, *, heard: int | None
    ) -> ContextState:
        """The fold of ``events[:version]``, kept if ``heard`` (:func:`erasures_heard`
        before the events were read; None: not known) is still the count."""
        n, last_seq, state = self._by.get(aggregate_id, (0, 0, ContextState(id=aggregate_id)))
        if n > version or (n and (len(events) < n or events[n - 1].stream_seq != last_seq)):
            n, state = 0, ContextState(id=aggregate_id)
        state = fold((e.event for e in events[n:version]), state)
        if heard is None or heard != erasures_heard():
            return state  # (what is held stays: kept since the cache was emptied)
        self._by[aggregate_id] = (version, events[version - 1].stream_seq if version else 0, state)
        self._by.move_to_end(aggregate_id)
        while len(self._by) > self.size:
            self._by.popitem(last=False)
        return state


async def fold_records(
    store: EventStore, records: list[RecordedEvent], state: ContextState
) -> ContextState:
    """Fold stored events into ``state``. An event the domain refuses has no place in
    the history: CorruptEventError naming its sequence, unless an operator voided it,
    then it changes nothing (the store already reads voided messages so; this covers
    a void recorded after the read)."""
    try:
        return fold((r.event for r in records), state)
    except EvolveError:
        pass
    for r in records:
        try:
            state = evolve(state, r.event)
        except EvolveError as exc:
            if not await store.voided(r.aggregate_id, r.stream_seq):
                raise CorruptEventError(
                    r.aggregate_id, r.stream_seq, f"{r.event_type} v{r.version}: {exc}"
                ) from exc
            state = replace(state, version=r.version)
    return state


def encode_state(state: ContextState) -> bytes:
    doc = json.dumps(state_to_dict(state), separators=(",", ":"), sort_keys=True)
    return zlib.compress(doc.encode(), 1)


def decode_state(snapshot: Snapshot) -> ContextState:
    """The state in a snapshot of this schema and encoding, checked to be the
    aggregate and version the snapshot names."""
    return engine.decode_snapshot(CODEC, snapshot)


def _decode(snapshot: Snapshot) -> ContextState:
    try:
        state = state_from_dict(json.loads(zlib.decompress(snapshot.state)))
    except (zlib.error, ValueError, KeyError, TypeError) as exc:
        raise SnapshotDecodeError(f"unreadable snapshot state: {exc!r}") from exc
    if state.id != snapshot.aggregate_id or state.version != snapshot.version:
        raise SnapshotDecodeError(
            f"snapshot says {snapshot.aggregate_id} v{snapshot.version}, "
            f"its state is {state.id} v{state.version}"
        )
    return state


class ContextCodec:
    """The context aggregate's state, as the engine's snapshots and loader see it."""

    aggregate_type = AGGREGATE_TYPE
    schema_version = STATE_SCHEMA_VERSION
    encoding = ENCODING

    def empty(self, aggregate_id: str) -> ContextState:
        return ContextState(id=aggregate_id)

    def version(self, state: ContextState) -> int:
        return state.version

    async def fold(
        self, store: EventStore, records: list[RecordedEvent], state: ContextState
    ) -> ContextState:
        return await fold_records(store, records, state)

    def evolve_one(self, state: ContextState, record: RecordedEvent) -> ContextState:
        try:
            return fold([record.event], state)
        except EvolveError as exc:
            raise RefusedEvent(str(exc)) from exc

    def encode(self, state: ContextState) -> bytes:
        return encode_state(state)

    def decode(self, snapshot: Snapshot) -> ContextState:
        return _decode(snapshot)

    def describe(self, state: ContextState) -> Any:
        return state_to_dict(state)


CODEC = ContextCodec()


def make_snapshot(
    state: ContextState, last: RecordedEvent, keys: Keys, taken_at_ns: int = 0
) -> Snapshot:
    return engine.make_snapshot(CODEC, state, last, keys, taken_at_ns)


class StateLoader(engine.StateLoader[ContextState]):
    """The engine's state loader bound to the context codec (peek and the versions
    at final times the query service asks for are the engine loader's)."""

    def __init__(
        self,
        store: EventStore,
        snapshots: SnapshotStore | None,
        cache_size: int = 1_000,
    ) -> None:
        super().__init__(CODEC, store, snapshots, cache_size)
