"""An aggregate's state at any point of its history, for any domain: the latest
usable snapshot at or before the point, plus the remaining events folded from the
event stream.

A domain that wants snapshots provides a :class:`StateCodec` (its empty state, its
checked fold, one-event evolve, and the state's encoding); the engine does the rest:
:class:`StateLoader` here, the snapshots read model in
:mod:`jetsource.projection.snapshots`. Every reader of a domain's state goes through
the loader, so they all agree with a full fold from version 1. A snapshot is used
only if its state schema is the one the codec writes (``schema_version``); an older
one is skipped and the state folded from events, never misread.

A point is a version (``to_version``), a time (``until``: the longest run of events
from version 1 all recorded at or before it, :func:`recorded_by`; a stream's times may
step back, and an event stamped by then after one stamped later is not in it) or both;
none means "now". A reader that
answers the same points again (time travel) asks :meth:`StateLoader.peek` where a
point lies before it loads: from what the loader holds, without reading anything.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from jetsource.core.clock import to_ns
from jetsource.core.crypto import ErasureWatch, erasures_heard
from jetsource.core.envelope import RecordedEvent, recorded_by
from jetsource.core.errors import CorruptEventError, JetsourceError
from jetsource.eventstore.horizon import BeyondHorizonError
from jetsource.eventstore.jsapi import ERR_STREAM_NOT_FOUND, JsApiError, NoRespondersError
from jetsource.eventstore.port import EventStore
from jetsource.eventstore.snapshots import (
    Snapshot,
    SnapshotStore,
    choose,
    not_its_history,
    not_taken_at,
)

log = logging.getLogger("jetsource.history")

S = TypeVar("S")
# idempotency key -> (first version, last version) of the command that used it
Keys = dict[str, tuple[int, int]]
# Events after a snapshot a loader keeps, per decoded state it may keep: with the
# default 1,000 states and snapshots every 100 events, the tails of 100 aggregates.
TAIL_EVENTS_PER_STATE = 10
# A loader keeps the state folded to every CHECKPOINT_EVERY-th version it folds
# through after a snapshot (at most CHECKPOINTS states), so a load near one folds a
# few events instead of all those since the snapshot.
CHECKPOINT_EVERY = 10
CHECKPOINTS = 64
# Times whose version a loader keeps (those looked up in the store and final).
TIMES_KEPT = 10_000


class SnapshotDecodeError(ValueError):
    """A snapshot's state cannot be read by this code (other schema or encoding,
    damaged bytes, or a state that is not the one the snapshot says)."""


class RefusedEvent(JetsourceError):
    """The domain refuses an event at this place in the history (it contradicts the
    state): no state past it is right."""


class StateCodec(Protocol[S]):
    """What a domain gives the engine to snapshot and load its aggregates' state."""

    @property
    def aggregate_type(self) -> str: ...

    @property
    def schema_version(self) -> int:
        """The state schema this code writes and reads; a snapshot of another is skipped."""
        ...

    @property
    def encoding(self) -> str: ...

    def empty(self, aggregate_id: str) -> S:
        """The state before the first event."""
        ...

    def version(self, state: S) -> int:
        """The aggregate version the state is at (0: no event)."""
        ...

    async def fold(self, store: EventStore, records: list[RecordedEvent], state: S) -> S:
        """Fold stored events into ``state``, checked: an event the domain refuses
        raises CorruptEventError naming its sequence, unless an operator voided it
        (``store.voided``), then it only advances the version."""
        ...

    def evolve_one(self, state: S, record: RecordedEvent) -> S:
        """Apply one event; :class:`RefusedEvent` if the domain refuses it."""
        ...

    def encode(self, state: S) -> bytes: ...

    def decode(self, snapshot: Snapshot) -> S:
        """The state in ``snapshot`` (schema and encoding already checked);
        :class:`SnapshotDecodeError` if it cannot be read."""
        ...

    def describe(self, state: S) -> Any:
        """A plain, deterministic view of the state (for digests)."""
        ...


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


def decode_snapshot(codec: StateCodec[S], snapshot: Snapshot) -> S:
    """The state in ``snapshot``, checked to be of the codec's schema and encoding and
    at the snapshot's version."""
    if snapshot.schema_version != codec.schema_version:
        raise SnapshotDecodeError(
            f"state schema {snapshot.schema_version}; this code reads {codec.schema_version}"
        )
    if snapshot.encoding != codec.encoding:
        raise SnapshotDecodeError(f"unknown snapshot encoding {snapshot.encoding!r}")
    state = codec.decode(snapshot)
    if codec.version(state) != snapshot.version:
        raise SnapshotDecodeError(
            f"snapshot says {snapshot.aggregate_id} v{snapshot.version}, "
            f"its state is at v{codec.version(state)}"
        )
    return state


def encode_keys(keys: Keys) -> bytes:
    return zlib.compress(json.dumps(keys, separators=(",", ":"), sort_keys=True).encode(), 1)


def decode_keys(data: bytes) -> Keys:
    if not data:
        return {}
    try:
        return {k: (int(a), int(b)) for k, (a, b) in json.loads(zlib.decompress(data)).items()}
    except (zlib.error, ValueError, TypeError, AttributeError) as exc:
        raise SnapshotDecodeError(f"unreadable idempotency keys: {exc!r}") from exc


def add_keys(keys: Keys, events: list[RecordedEvent]) -> None:
    for e in events:
        key = e.envelope.idempotency_key
        if key:
            first, _ = keys.get(key, (e.version, e.version))
            keys[key] = (first, e.version)


def make_snapshot(
    codec: StateCodec[S], state: S, last: RecordedEvent, keys: Keys, taken_at_ns: int = 0
) -> Snapshot:
    """The snapshot of ``state``, the fold up to and including ``last``."""
    return Snapshot(
        codec.aggregate_type,
        last.aggregate_id,
        codec.version(state),
        last.stream_seq,
        last.recorded_at_ns,
        codec.schema_version,
        codec.encoding,
        codec.encode(state),
        encode_keys(keys),
        taken_at_ns,
    )


@dataclass
class _Run:
    """Events of contiguous versions of one aggregate, as read after a snapshot, and
    the recorded time of the event before the first (the snapshot's).

    ``bound_ns``: a time by which every version before the run is known to have been
    recorded (None: not known yet). The snapshot's own time is no such bound (an event
    before it may be stamped later, by a clock that stepped back since): the run
    answers a time only at or after ``bound_ns``, learnt from a store look-up that
    answered the run's first version or later (or the snapshot's time, for a run right
    after version 1). The first time the run would answer but its bound does not cover,
    the store is asked once at ``before_ns`` (``probed``): with stamps that never step
    back that bounds the run from the snapshot's time on, whatever order times are read
    in."""

    before_ns: int
    events: list[RecordedEvent]
    bound_ns: int | None = None
    probed: bool = False

    @property
    def first(self) -> int:
        return self.events[0].version

    @property
    def last(self) -> int:
        return self.events[-1].version


@dataclass
class PointInTime(Generic[S]):
    state: S
    last_seq: int = 0  # stream sequence of the last event included (0: none)
    recorded_at_ns: int = 0  # its recorded time
    snapshot_version: int = 0  # the snapshot it started from (0: none)
    events_folded: int = 0
    keys: Keys = field(default_factory=dict)  # only when asked for
    # The decoded snapshot state it started from, shared by every load from that
    # snapshot (never changed): what did not change since is the same object in both.
    base: S | None = None


class _NotItsHistory(Exception):
    """A snapshot whose event the event stream does not hold where it says."""


class KeptPoint(NamedTuple):
    """What a load of a point would answer besides its state (see
    :meth:`StateLoader.peek`)."""

    version: int
    last_seq: int
    recorded_at_ns: int
    snapshot_version: int
    events_folded: int


class StateLoader(Generic[S]):
    """Loads states through snapshots. Three caches, all of facts that never change
    (events are never deleted and versions are contiguous, so the event at a version
    and a snapshot of this schema are what they are for good): decoded snapshot
    states; per aggregate the list of snapshots kept when it was last listed; and
    per aggregate the run of events read after a snapshot (its tail). With that
    list, a point that has a listed snapshot at or before it and one past it is
    served without asking the snapshot store: snapshots stored later are past the
    point too. With the tail, a point within it is served without reading the
    stream, and a point past it reads only the events after it.

    Two more, for a reader that asks the same points again (time travel):

    - states folded to checkpoint versions after a snapshot (a load near one folds a
      few events, not all since the snapshot);
    - the version at a time, kept once it is final: the store said version v and the
      loader knows a version past v exists, so v + 1 was recorded after the time and
      no later append changes the answer (it is the versions before the first recorded
      after the time). A time at or after the last append known is asked again (an
      append may still come at that time).

    With them :meth:`peek` places a point (its version, last stream sequence,
    snapshot and events folded) without reading or folding, so an answer a reader
    kept for that point is sent without loading the state again.

    An erasure empties them all (states and events hold opened personal values),
    and a load in flight across one keeps nothing it opened before it was heard."""

    def __init__(
        self,
        codec: StateCodec[S],
        store: EventStore,
        snapshots: SnapshotStore | None,
        cache_size: int = 1_000,
    ) -> None:
        self.codec = codec
        self.store = store
        self.snapshots = snapshots
        self.cache_size = cache_size
        # (aggregate, version, snapshot seq) -> decoded state: snapshots never change
        self._cache: OrderedDict[tuple[str, int, int], S] = OrderedDict()
        # aggregate -> its snapshots (without their state) as last listed
        self._listed: OrderedDict[str, list[Snapshot]] = OrderedDict()
        # aggregate -> events of contiguous versions, as last read after a snapshot;
        # at most ``tail_events`` in all (a longer run is not kept).
        self.tail_events = TAIL_EVENTS_PER_STATE * cache_size
        self._tails: OrderedDict[str, _Run] = OrderedDict()
        self._tail_total = 0
        # (aggregate, version) -> (state folded to it, the snapshot state it came from)
        self.checkpoints = min(CHECKPOINTS, cache_size)
        self._folded: OrderedDict[tuple[str, int], tuple[S, S]] = OrderedDict()
        # Snapshots whose event (version, stream sequence, recorded time) the event
        # stream was seen to hold: only those are used, and only their sequence and
        # time bound reads (a snapshot is written by whoever may publish on its subject).
        self._verified: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        # ... and those it was seen not to: never chosen again (an older one is).
        self._rejected: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        # (aggregate, time ns) -> the last version recorded by then, once final
        self.times_kept = TIMES_KEPT if cache_size else 0
        self._times: OrderedDict[tuple[str, int], int] = OrderedDict()
        # ... except after an erasure: its snapshots are deleted and taken again.
        self._erasures = ErasureWatch()

    @property
    def _live(self) -> EventStore:
        """The live event stream under the store (an archive-backed history reads the
        archive for what a compaction purged; a snapshot is checked without it)."""
        live: EventStore | None = getattr(self.store, "live", None)
        return self.store if live is None else live

    @property
    def schema(self) -> int:
        return self.codec.schema_version

    def _empty(self) -> None:
        """Empty every cache (an erasure was heard of since they were last emptied:
        ``self._erasures.moved()``, checked inline where it is asked on every call)."""
        self._cache.clear()
        self._listed.clear()
        self._tails.clear()
        self._tail_total = 0
        self._folded.clear()
        self._times.clear()
        self._verified.clear()
        self._rejected.clear()

    @staticmethod
    def _key(snapshot: Snapshot) -> tuple[str, int, int]:
        return (snapshot.aggregate_id, snapshot.version, snapshot.snapshot_seq)

    def _decoded(self, snapshot: Snapshot) -> S:
        key = self._key(snapshot)
        state = self._cache.get(key)
        if state is None:
            state = decode_snapshot(self.codec, snapshot)
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
                if s.schema_version == self.schema
            ]
            self._listed.move_to_end(aggregate_id)
            while len(self._listed) > self.cache_size:
                self._listed.popitem(last=False)

    def _from_list(self, aggregate_id: str, to_version: int | None) -> tuple[Snapshot, S] | None:
        """The best listed snapshot for the point, if the point lies between listed
        ones (so no snapshot stored since can be closer) and its state is decoded."""
        listed = self._listed.get(aggregate_id)
        if not listed or to_version is None:
            return None
        best = choose(listed, self.schema, to_version, None)
        if best is None or all(s.version <= to_version for s in listed):
            return None
        state = self._cache.get(self._key(best))
        if state is None or self._key(best) not in self._verified:
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

    async def _tail(
        self,
        aggregate_id: str,
        point: PointInTime[S],
        to_version: int | None,
        heard: int,
        check: Snapshot | None = None,
    ) -> list[RecordedEvent]:
        """The events after the point's state up to ``to_version``: from the
        aggregate's kept run as far as it holds them, the rest read from the store.
        What is read after a snapshot is kept, as a new run or as the kept one made
        longer, for the next load, unless an erasure was heard of since the load
        began (``heard``): the events were opened before it, and a load that began
        after it may already have emptied the caches.

        ``check``: the snapshot the point's state came from, not yet seen to match
        the event stream; the read then starts at its own event (same request, one
        more message) and :class:`_NotItsHistory` says that it does not match."""
        at, last_seq = self.codec.version(point.state), point.last_seq
        run = self._tails.get(aggregate_id)
        have: list[RecordedEvent] = []
        if check is not None:
            run = None
        elif run and run.first <= at + 1 <= run.last + 1:
            self._tails.move_to_end(aggregate_id)
            start = at + 1 - run.first
            end = len(run.events) if to_version is None else to_version - run.first + 1
            have = run.events[start:end]
            if to_version is not None and end <= len(run.events):
                return have  # the run holds every event up to the point
            at, last_seq = run.last, run.events[-1].stream_seq  # read on from its end
        else:
            run = None
        own = 0 if check is None else 1  # the snapshot's own event, read to check it
        bound = self._last_seq(aggregate_id, to_version)
        # A listed snapshot of the version after the point, not yet checked: its event
        # is read too (in the same request) to check it, since a time read trusts its
        # recorded time to place the point (:meth:`_version_at_time`).
        after = None
        if to_version is not None:
            after = next(
                (
                    s
                    for s in self._listed.get(aggregate_id, ())
                    if s.version == to_version + 1 and self._key(s) not in self._verified
                ),
                None,
            )
        if after is not None and bound != after.last_seq - 1:
            after = None  # another listed snapshot bounds the read: not read that far
        # A snapshot is checked against the live stream only: one whose event is purged
        # behind a compaction horizon is taken as it is (below), not looked for in the
        # archive (that fetched and decoded a segment per story: time travel after the
        # horizon went from p50 1.5 to 5.5 ms, p99 5 to 38 ms in bench_archive).
        reader = self.store if check is None else self._live
        try:
            read = await reader.read_aggregate(
                aggregate_id,
                from_version=at + 1 - own,
                to_version=to_version if after is None else after.version,
                from_seq=last_seq + 1 - own,
                to_seq=bound if after is None else after.last_seq,
            )
        except BeyondHorizonError:
            if check is None:
                raise
            # Its event is purged behind a compaction horizon (and not archived
            # here): the snapshot is what is left of that history.
            self._verify(check)
            check, own = None, 0
            read = await self.store.read_aggregate(
                aggregate_id, at + 1, to_version, from_seq=last_seq + 1, to_seq=bound
            )
        if check is not None:
            self._checked(check, read[0] if read else None)
            read = read[1:]
        if after is not None and read and read[-1].version == after.version:
            try:
                self._checked(after, read.pop())
            except _NotItsHistory as exc:
                self._reject(after, str(exc))
        if bound is not None and to_version is not None and at + len(read) < to_version:
            # A listed snapshot's sequence bounded the read short of the point: that
            # snapshot is none of this history's (the store says whether the events
            # are there); read on without it.
            read += await self.store.read_aggregate(
                aggregate_id,
                from_version=at + len(read) + 1,
                to_version=to_version,
                from_seq=(read[-1].stream_seq if read else last_seq) + 1,
            )
        if read and point.snapshot_version and self.tail_events and heard == erasures_heard():
            if run is not None:
                self._keep(
                    aggregate_id,
                    _Run(run.before_ns, run.events + read, run.bound_ns, run.probed),
                )
            else:
                # Right after version 1, the snapshot's time bounds all before the run.
                bound = point.recorded_at_ns if point.snapshot_version == 1 else None
                self._keep(aggregate_id, _Run(point.recorded_at_ns, read, bound))
        return have + read if have else read

    def _keep(self, aggregate_id: str, run: _Run) -> None:
        if len(run.events) > self.tail_events:
            return
        old = self._tails.pop(aggregate_id, None)
        self._tail_total -= len(old.events) if old else 0
        self._tails[aggregate_id] = run
        self._tail_total += len(run.events)
        while self._tail_total > self.tail_events:
            _, dropped = self._tails.popitem(last=False)
            self._tail_total -= len(dropped.events)

    def _version_at_time(self, aggregate_id: str, time_ns: int) -> int | None:
        """The version at ``time_ns`` (:func:`recorded_by`), when the kept run says:
        every version before the run is known recorded by then (``bound_ns``), and one
        of the run's events was recorded after it, or the event after the run is (a
        listed snapshot's)."""
        run = self._tails.get(aggregate_id)
        if run is None or run.bound_ns is None or time_ns < run.bound_ns:
            return None
        return self._in_run(aggregate_id, run, time_ns)

    def _in_run(self, aggregate_id: str, run: _Run, time_ns: int) -> int | None:
        """The version at ``time_ns`` from ``run``, were every version before it
        recorded by then."""
        events = run.events
        by_then = recorded_by(events, time_ns)
        if by_then < len(events):
            return run.first - 1 + by_then
        for s in self._listed.get(aggregate_id, ()):
            if (
                s.version == run.last + 1
                and s.recorded_at_ns > time_ns
                and self._key(s) in self._verified
            ):
                return run.last
        return None

    def _known_last(self, aggregate_id: str) -> int:
        """A version the aggregate is known to have (0: none known)."""
        run = self._tails.get(aggregate_id)
        last = run.last if run is not None else 0
        for s in self._listed.get(aggregate_id, ()):
            if self._key(s) in self._verified:
                last = max(last, s.version)
        return last

    def _kept_version_at(self, aggregate_id: str, time_ns: int) -> int | None:
        """The last version recorded at or before ``time_ns``, from what is kept."""
        by_then = self._version_at_time(aggregate_id, time_ns)
        if by_then is None:
            by_then = self._times.get((aggregate_id, time_ns))
            if by_then is not None:
                self._times.move_to_end((aggregate_id, time_ns))
        return by_then

    def _learn(self, aggregate_id: str, by_then: int, time_ns: int) -> None:
        """The store said every version up to ``by_then`` was recorded by ``time_ns``:
        if that covers all before the kept run, the run answers times from then on."""
        run = self._tails.get(aggregate_id)
        if (
            run is not None
            and by_then >= run.first - 1
            and (run.bound_ns is None or time_ns < run.bound_ns)
        ):
            run.bound_ns = time_ns

    async def _bound_run(self, aggregate_id: str, time_ns: int) -> bool:
        """If the kept run would answer ``time_ns`` but its bound does not cover it,
        ask the store once per run at ``before_ns`` (the snapshot's time): if every
        version before the run was recorded by then, the run answers every time from
        then on (one look-up per kept run, whatever order times are read in). True if
        the store was asked."""
        run = self._tails.get(aggregate_id)
        if (
            run is None
            or run.probed
            or not run.before_ns  # (0: not known)
            or time_ns < run.before_ns
            or (run.bound_ns is not None and run.bound_ns <= run.before_ns)
            or self._in_run(aggregate_id, run, time_ns) is None
        ):
            return False
        run.probed = True
        try:
            await self._look_up_version_at(aggregate_id, run.before_ns)  # (learns it)
        except BeyondHorizonError:
            return False  # (the snapshot's time is behind a compaction horizon: t is not)
        return True

    async def _look_up_version_at(self, aggregate_id: str, time_ns: int) -> int:
        """The version at ``time_ns`` (:func:`recorded_by`), from the store (one
        look-up), kept once final. (A version is no opened value and an erasure
        changes none: what is kept needs no erasure guard.)"""
        by_then = await self.store.version_at_time(aggregate_id, time_ns)
        self._learn(aggregate_id, by_then, time_ns)
        if self.times_kept and by_then < self._known_last(aggregate_id):
            self._times[(aggregate_id, time_ns)] = by_then
            while len(self._times) > self.times_kept:
                self._times.popitem(last=False)
        return by_then

    async def _fold(
        self, aggregate_id: str, point: PointInTime[S], tail: list[RecordedEvent], heard: int
    ) -> S:
        """The point's state (a snapshot's) folded through ``tail``: from the kept
        state nearest the end along it, if any; the state at the last checkpoint
        version on the way is kept (unless an erasure was heard of since the load
        began: ``heard``). Every state kept or started from came from the same decoded
        snapshot state, so what no event changed is shared with it."""
        fold, base = self.codec.fold, point.base
        first, last = tail[0].version, tail[-1].version
        if not (self.checkpoints and point.snapshot_version and base is not None) or (
            last - first + 1 != len(tail)  # (versions are contiguous; else fold it all)
        ):
            return await fold(self.store, tail, point.state)
        state, done = point.state, 0  # ``done``: events of the tail already in ``state``
        mark = last - last % CHECKPOINT_EVERY
        for version in range(mark, first - 1, -CHECKPOINT_EVERY):
            kept = self._folded.get((aggregate_id, version))
            if kept is not None and kept[1] is base:
                self._folded.move_to_end((aggregate_id, version))
                state, done = kept[0], version - first + 1
                break
        if mark >= first + done:
            state = await fold(self.store, tail[done : mark - first + 1], state)
            done = mark - first + 1
            if heard == erasures_heard():
                self._folded[(aggregate_id, mark)] = (state, base)
                while len(self._folded) > self.checkpoints:
                    self._folded.popitem(last=False)
        if done < len(tail):
            state = await fold(self.store, tail[done:], state)
        return state

    def _checked(self, snapshot: Snapshot, found: RecordedEvent | None) -> None:
        """``found``: the event the stream holds where ``snapshot`` says it was taken
        (None: none). _NotItsHistory unless it is that event."""
        if (why := not_taken_at(snapshot, found)) is not None:
            raise _NotItsHistory(why)
        self._verify(snapshot)

    def _verify(self, snapshot: Snapshot) -> None:
        self._verified[self._key(snapshot)] = None
        while len(self._verified) > max(self.cache_size * 4, 64):
            self._verified.popitem(last=False)

    async def _check(self, snapshot: Snapshot) -> str | None:
        """Why ``snapshot`` is no snapshot of its aggregate's history (None: it is):
        the event it says it was taken at (its version, stream sequence and recorded
        time) must be the one the event stream holds there. One read of one message,
        once per snapshot. A snapshot at or behind a compaction horizon whose event is
        purged (and not archived here) is taken as it is: it is what is left."""
        key = self._key(snapshot)
        if key in self._verified:
            self._verified.move_to_end(key)
            return None
        if (why := await not_its_history(self._live, snapshot)) is not None:
            return why
        self._verify(snapshot)
        return None

    async def _purged(self, snapshot: Snapshot) -> bool:
        """Its event lies at or behind its aggregate's compaction horizon (purged, or
        about to be): nothing live to check it against. Asked only of a compacted
        stream (one request; a stream without compaction answers at once), so its
        check neither reads the archive nor waits for the live read to find the gap
        (time travel after a horizon: p50 5.5 ms with the archive read, 2.6 ms with
        the gap found by the read, against 1.7 ms before snapshots were checked)."""
        horizon_of = getattr(self._live, "horizon", None)
        if horizon_of is None:
            return False
        horizon = await horizon_of(snapshot.aggregate_id)
        return horizon is not None and snapshot.version <= horizon.version

    async def _find(self, aggregate_id: str, to_version: int | None) -> Snapshot | None:
        """The newest usable snapshot: usually the latest one; else list them all."""
        assert self.snapshots is not None
        try:
            latest = await self.snapshots.latest(aggregate_id)
        except (NoRespondersError, JsApiError) as exc:
            if isinstance(exc, JsApiError) and exc.err_code != ERR_STREAM_NOT_FOUND:
                raise
            # Snapshots are a cache: with their stream gone (deleted, not yet made
            # again by the snapshotter) the state is folded from the events.
            log.warning("%s: no snapshot stream (%r); folding from events", aggregate_id, exc)
            return None
        if latest is None:
            return None
        if latest.usable(self.schema, to_version, None) and self._key(latest) not in self._rejected:
            return latest
        kept = [
            s
            for s in await self.snapshots.history(aggregate_id)
            if self._key(s) not in self._rejected
        ]
        self._list(aggregate_id, kept)
        return choose(kept, self.schema, to_version, None)

    def _reject(self, snapshot: Snapshot, why: str) -> None:
        """Never use ``snapshot`` again (it is none of its aggregate's history), and
        say so once."""
        log.warning(
            "%s: snapshot v%d (snapshot stream sequence %d) is not of its history and "
            "is skipped (an older one or the events are read instead): %s",
            snapshot.aggregate_id,
            snapshot.version,
            snapshot.snapshot_seq,
            why,
        )
        key = self._key(snapshot)
        self._verified.pop(key, None)
        self._rejected[key] = None
        while len(self._rejected) > max(self.cache_size * 4, 64):
            self._rejected.popitem(last=False)
        listed = self._listed.get(snapshot.aggregate_id)
        if listed is not None:
            self._listed[snapshot.aggregate_id] = [s for s in listed if self._key(s) != key]

    async def load(
        self,
        aggregate_id: str,
        to_version: int | None = None,
        until: datetime | int | None = None,
        keys: bool = False,
        use_snapshots: bool = True,
    ) -> PointInTime[S]:
        """State after every event up to ``to_version`` and recorded at or before
        ``until`` (both optional)."""
        codec = self.codec
        heard = erasures_heard()  # (what is opened from here on may be kept)
        if self._erasures.moved():
            self._empty()
        looked_up: tuple[int, int] | None = None  # (version, time) the store said
        if until is not None:
            # The state at a time is the versions before the first recorded after it
            # (recorded_by): at most one look-up, and the rest is a read up to a
            # version. A snapshot is used only at or before that version.
            at = to_ns(until)
            by_then = self._kept_version_at(aggregate_id, at)
            if by_then is None and await self._bound_run(aggregate_id, at):
                by_then = self._kept_version_at(aggregate_id, at)
            if by_then is None:
                by_then = await self._look_up_version_at(aggregate_id, at)
                looked_up = (by_then, at)
            to_version = by_then if to_version is None else min(to_version, by_then)
        point = PointInTime(codec.empty(aggregate_id))
        check: Snapshot | None = None
        used: Snapshot | None = None  # the snapshot ``point`` starts from
        if use_snapshots and self.snapshots is not None and to_version != 0:
            found = None if keys else self._from_list(aggregate_id, to_version)
            snapshot = found[0] if found else await self._find(aggregate_id, to_version)
            wrong = None
            if snapshot is not None and not found and self._key(snapshot) not in self._verified:
                if await self._purged(snapshot):
                    self._verify(snapshot)  # what is left of that history: taken as it is
                elif to_version is not None and to_version <= snapshot.version:
                    wrong = await self._check(snapshot)  # no events to read after it
                else:
                    check = snapshot  # checked by the read of the events after it
            if wrong is not None and snapshot is not None:
                self._reject(snapshot, wrong)
                return await self.load(aggregate_id, to_version, keys=keys)
            if snapshot is not None:
                try:
                    state = found[1] if found else self._decoded(snapshot)
                    used = snapshot
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
                    point = PointInTime(codec.empty(aggregate_id))
                    check = used = None
        at = codec.version(point.state)
        if to_version is not None and at >= to_version:
            return point
        try:
            tail = await self._tail(aggregate_id, point, to_version, heard, check)
        except _NotItsHistory as exc:
            assert check is not None
            self._reject(check, str(exc))
            return await self.load(aggregate_id, to_version, keys=keys)
        if tail:
            try:
                point.state = await self._fold(aggregate_id, point, tail, heard)
            except CorruptEventError as exc:
                if not point.snapshot_version:
                    raise
                # An event the domain refuses on top of a snapshot's state may be the
                # snapshot's fault (a state that is not its history's): the full fold
                # says which, and names the event only if it is refused there too.
                log.warning(
                    "%s: events after snapshot v%d do not fold onto it (%s); "
                    "folding from version 1",
                    aggregate_id,
                    point.snapshot_version,
                    exc,
                )
                full = await self.load(aggregate_id, to_version, keys=keys, use_snapshots=False)
                # The events fold from version 1: the snapshot's state is not their
                # history's. Rejected once, or every read folded the whole story again.
                if used is not None:
                    self._reject(used, f"the events after it do not fold onto it: {exc}")
                return full
            point.last_seq = tail[-1].stream_seq
            point.recorded_at_ns = tail[-1].recorded_at_ns
            point.events_folded = len(tail)
            if keys:
                add_keys(point.keys, tail)
            if looked_up is not None:  # (the run it kept, if any, is bounded by it)
                self._learn(aggregate_id, *looked_up)
        return point

    def peek(
        self, aggregate_id: str, to_version: int | None = None, until_ns: int | None = None
    ) -> KeptPoint | None:
        """What ``load(aggregate_id, to_version, until_ns)`` would answer but its state,
        when what is kept says it without asking any store (else None): a listed
        snapshot at or before the point with one past it, and the kept run of events
        after it holding the point."""
        if self._erasures.moved():
            self._empty()
            return None  # nothing is kept past an erasure
        if until_ns is not None:
            by_then = self._kept_version_at(aggregate_id, until_ns)
            if by_then is None:
                return None
            to_version = by_then if to_version is None else min(to_version, by_then)
        if to_version is None or to_version <= 0:
            return None
        found = self._from_list(aggregate_id, to_version)
        if found is None:
            return None
        snapshot = found[0]
        if snapshot.version >= to_version:
            return KeptPoint(
                snapshot.version, snapshot.last_seq, snapshot.recorded_at_ns, snapshot.version, 0
            )
        run = self._tails.get(aggregate_id)
        if run is None or not run.first <= snapshot.version + 1 <= run.last + 1:
            return None
        if to_version > run.last:
            return None
        last = run.events[to_version - run.first]
        return KeptPoint(
            to_version,
            last.stream_seq,
            last.recorded_at_ns,
            snapshot.version,
            to_version - snapshot.version,
        )
