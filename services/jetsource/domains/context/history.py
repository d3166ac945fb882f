"""A context's state at any point of its history: the latest usable snapshot at or
before the point, plus the remaining events folded from the event stream.

Every reader goes through :class:`StateLoader` (the publisher for current state, the
query service for time travel, the snapshotter for its next snapshot), so they all
agree with a full fold from version 1. A snapshot is used only if its state schema
is the one this code writes (``STATE_SCHEMA_VERSION``); an older one is skipped and
the state folded from events, never misread.

A point is a version (``to_version``), a time (``until``: every event recorded at or
before it; stream times never go backwards) or both; none means "now".
"""

from __future__ import annotations

import json
import logging
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from jetsource.core.clock import to_ns
from jetsource.core.envelope import RecordedEvent
from jetsource.core.errors import CorruptEventError
from jetsource.domains.context.model import ContextState, EvolveError, evolve, fold
from jetsource.domains.context.serialize import STATE_SCHEMA_VERSION, state_from_dict, state_to_dict
from jetsource.eventstore.port import EventStore
from jetsource.eventstore.snapshots import Snapshot, SnapshotStore, choose

log = logging.getLogger("jetsource.history")

AGGREGATE_TYPE = "context"
ENCODING = "json+zlib"
# idempotency key -> (first version, last version) of the command that used it
Keys = dict[str, tuple[int, int]]


class SnapshotDecodeError(ValueError):
    pass


async def history_up_to(
    store: EventStore,
    aggregate_id: str,
    to_version: int,
    events: Sequence[RecordedEvent] | None = None,
) -> list[RecordedEvent]:
    """The aggregate's first ``to_version`` events (``events`` if the caller read them,
    else from the store), checked to be versions 1..n: what a rewind writes from."""
    if events is None:
        events = (
            await store.read_aggregate(aggregate_id, to_version=to_version) if to_version else []
        )
    out = list(events[:to_version])
    if [e.version for e in out] != list(range(1, to_version + 1)):
        raise ValueError(f"rewind of {aggregate_id} to {to_version}: events are not 1..n")
    return out


class FoldCache:
    """The fold of each aggregate's event prefix, kept across calls: a replay that
    writes a hot story again and again (the live worker moving it meanwhile) folds its
    history once, then only the events that arrived since. A prefix that changed
    (other events at the same places) is folded again from version 1."""

    def __init__(self, size: int = 1_000) -> None:
        self.size = size
        self._by: OrderedDict[str, tuple[int, int, ContextState]] = OrderedDict()

    def state_at(
        self, aggregate_id: str, events: list[RecordedEvent], version: int
    ) -> ContextState:
        n, last_seq, state = self._by.get(aggregate_id, (0, 0, ContextState(id=aggregate_id)))
        if n > version or (n and (len(events) < n or events[n - 1].stream_seq != last_seq)):
            n, state = 0, ContextState(id=aggregate_id)
        state = fold((e.event for e in events[n:version]), state)
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
    if snapshot.schema_version != STATE_SCHEMA_VERSION:
        raise SnapshotDecodeError(
            f"state schema {snapshot.schema_version}; this code reads {STATE_SCHEMA_VERSION}"
        )
    if snapshot.encoding != ENCODING:
        raise SnapshotDecodeError(f"unknown snapshot encoding {snapshot.encoding!r}")
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


def encode_keys(keys: Keys) -> bytes:
    return zlib.compress(json.dumps(keys, separators=(",", ":"), sort_keys=True).encode(), 1)


def decode_keys(data: bytes) -> Keys:
    if not data:
        return {}
    return {k: (int(a), int(b)) for k, (a, b) in json.loads(zlib.decompress(data)).items()}


def add_keys(keys: Keys, events: list[RecordedEvent]) -> None:
    for e in events:
        key = e.envelope.idempotency_key
        if key:
            first, _ = keys.get(key, (e.version, e.version))
            keys[key] = (first, e.version)


def make_snapshot(
    state: ContextState, last: RecordedEvent, keys: Keys, taken_at_ns: int = 0
) -> Snapshot:
    return Snapshot(
        AGGREGATE_TYPE,
        state.id,
        state.version,
        last.stream_seq,
        last.recorded_at_ns,
        STATE_SCHEMA_VERSION,
        ENCODING,
        encode_state(state),
        encode_keys(keys),
        taken_at_ns,
    )


@dataclass
class PointInTime:
    state: ContextState
    last_seq: int = 0  # stream sequence of the last event included (0: none)
    recorded_at_ns: int = 0  # its recorded time
    snapshot_version: int = 0  # the snapshot it started from (0: none)
    events_folded: int = 0
    keys: Keys = field(default_factory=dict)  # only when asked for
    # The decoded snapshot state it started from, shared by every load from that
    # snapshot (never changed): what did not change since is the same object in both.
    base: ContextState | None = None


class StateLoader:
    """Loads states through snapshots. Two caches, both of facts that never change
    (events are never deleted, so a snapshot of this schema is the fold of its
    versions for good): decoded snapshot states, and per aggregate the list of
    snapshots kept when it was last listed. With that list, a point that has a
    listed snapshot at or before it and one past it is served without asking the
    snapshot store: snapshots stored later are past the point too."""

    def __init__(
        self,
        store: EventStore,
        snapshots: SnapshotStore | None,
        cache_size: int = 1_000,
    ) -> None:
        self.store = store
        self.snapshots = snapshots
        self.cache_size = cache_size
        # (aggregate, version, snapshot seq) -> decoded state: snapshots never change
        self._cache: OrderedDict[tuple[str, int, int], ContextState] = OrderedDict()
        # aggregate -> its snapshots (without their state) as last listed
        self._listed: OrderedDict[str, list[Snapshot]] = OrderedDict()

    @staticmethod
    def _key(snapshot: Snapshot) -> tuple[str, int, int]:
        return (snapshot.aggregate_id, snapshot.version, snapshot.snapshot_seq)

    def _decoded(self, snapshot: Snapshot) -> ContextState:
        key = self._key(snapshot)
        state = self._cache.get(key)
        if state is None:
            state = decode_state(snapshot)
            if self.cache_size:
                self._cache[key] = state
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return state

    def _list(self, aggregate_id: str, kept: list[Snapshot]) -> None:
        if self.cache_size:
            self._listed[aggregate_id] = [
                replace(s, state=b"", idempotency_keys=b"")
                for s in kept
                if s.schema_version == STATE_SCHEMA_VERSION
            ]
            self._listed.move_to_end(aggregate_id)
            while len(self._listed) > self.cache_size:
                self._listed.popitem(last=False)

    def _from_list(
        self, aggregate_id: str, to_version: int | None
    ) -> tuple[Snapshot, ContextState] | None:
        """The best listed snapshot for the point, if the point lies between listed
        ones (so no snapshot stored since can be closer) and its state is decoded."""
        listed = self._listed.get(aggregate_id)
        if not listed or to_version is None:
            return None
        best = choose(listed, STATE_SCHEMA_VERSION, to_version, None)
        if best is None or all(s.version <= to_version for s in listed):
            return None
        state = self._cache.get(self._key(best))
        if state is None:
            return None
        self._cache.move_to_end(self._key(best))
        self._listed.move_to_end(aggregate_id)
        return best, state

    def _last_seq(self, aggregate_id: str, to_version: int | None) -> int | None:
        """Where the events up to the point end, from listed snapshots past it: a
        snapshot of version V at sequence S puts event v < V at S - (V - v) or below
        (so a tail read knows its range; exactly, when the aggregate's events are
        contiguous in the stream)."""
        if to_version is None:
            return None
        bounds = [
            s.last_seq - (s.version - to_version)
            for s in self._listed.get(aggregate_id, ())
            if s.version > to_version
        ]
        return min(bounds, default=None)

    async def _find(self, aggregate_id: str, to_version: int | None) -> Snapshot | None:
        """The newest usable snapshot: usually the latest one; else list them all."""
        assert self.snapshots is not None
        latest = await self.snapshots.latest(aggregate_id)
        if latest is None:
            return None
        if latest.usable(STATE_SCHEMA_VERSION, to_version, None):
            return latest
        kept = await self.snapshots.history(aggregate_id)
        self._list(aggregate_id, kept)
        return choose(kept, STATE_SCHEMA_VERSION, to_version, None)

    async def load(
        self,
        aggregate_id: str,
        to_version: int | None = None,
        until: datetime | int | None = None,
        keys: bool = False,
        use_snapshots: bool = True,
    ) -> PointInTime:
        """State after every event up to ``to_version`` and recorded at or before
        ``until`` (both optional)."""
        if until is not None:
            # Stream times never go backwards: the events recorded by then are the
            # versions up to the last one recorded by then. One look-up, and the rest
            # is a read up to a version.
            by_then = await self.store.version_at_time(aggregate_id, to_ns(until))
            to_version = by_then if to_version is None else min(to_version, by_then)
        point = PointInTime(ContextState(id=aggregate_id))
        if use_snapshots and self.snapshots is not None and to_version != 0:
            found = None if keys else self._from_list(aggregate_id, to_version)
            snapshot = found[0] if found else await self._find(aggregate_id, to_version)
            if snapshot is not None:
                try:
                    state = found[1] if found else self._decoded(snapshot)
                    point = PointInTime(
                        state,
                        snapshot.last_seq,
                        snapshot.recorded_at_ns,
                        snapshot.version,
                        base=state,
                    )
                    if keys:
                        point.keys = decode_keys(snapshot.idempotency_keys)
                except (SnapshotDecodeError, ValueError) as exc:
                    log.warning("%s: snapshot v%d skipped: %s", aggregate_id, snapshot.version, exc)
                    point = PointInTime(ContextState(id=aggregate_id))
        if to_version is not None and point.state.version >= to_version:
            return point
        tail = await self.store.read_aggregate(
            aggregate_id,
            from_version=point.state.version + 1,
            to_version=to_version,
            from_seq=point.last_seq + 1,
            to_seq=self._last_seq(aggregate_id, to_version),
        )
        if tail:
            point.state = await fold_records(self.store, tail, point.state)
            point.last_seq = tail[-1].stream_seq
            point.recorded_at_ns = tail[-1].recorded_at_ns
            point.events_folded = len(tail)
            if keys:
                add_keys(point.keys, tail)
        return point
