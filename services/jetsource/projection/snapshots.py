"""Snapshots as a read model of the runtime, for any domain that declares them.

A domain provides a :class:`~jetsource.projection.history.StateCodec` and adds one
entry to its descriptor's models: ``snapshot_decl(codec)``. The projector runtime
drives the model like any other (durable consumer, batches, dead letters, metrics),
only its effect is a snapshot message every ``every`` events per aggregate (at
versions every, 2*every, ...).

Idempotent by construction: a snapshot is keyed by (aggregate, version, state
schema); saving one that exists changes nothing, so a redelivered event costs at most
a lookup. The state at a snapshot version comes from the cached fold of the events
just seen, or (cold, after a restart or for an old event) from the previous snapshot
plus the events since, read from the stream.

The model version is the codec's state schema version: when it changes, the durable
consumer's name changes with it, so a new snapshotter reads the stream from the start
and writes every snapshot again in the new schema, while readers skip the old ones
and fold from events.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from jetsource.core.crypto import ErasureWatch, erasures_heard
from jetsource.core.envelope import RecordedEvent
from jetsource.eventstore.jsapi import ERR_STREAM_NOT_FOUND, JsApiError, NoRespondersError
from jetsource.eventstore.refusals import refused_from
from jetsource.eventstore.snapshots import Snapshot, SnapshotStore, SnapshotTooLargeError
from jetsource.projection.contract import (
    Checkpoint,
    IdempotencyKey,
    Kind,
    ModelSpec,
    Outcome,
    TransientError,
)
from jetsource.projection.domain import ModelDecl
from jetsource.projection.history import (
    Keys,
    RefusedEvent,
    S,
    SnapshotDecodeError,
    StateCodec,
    StateLoader,
    add_keys,
    decode_snapshot,
    make_snapshot,
)
from jetsource.projection.valkey import group

if TYPE_CHECKING:
    from jetsource.projection.bootstrap import ModelEnv
    from jetsource.projection.contract import ReadModel

__all__ = [
    "SNAPSHOTS",
    "RefusedEvent",
    "SnapshotDecodeError",
    "SnapshotModel",
    "StateCodec",
    "register_metrics",
    "snapshot_decl",
    "snapshot_spec",
]

log = logging.getLogger("jetsource.snapshotter")
SNAPSHOTS = "snapshots"

# Not registered at import: every service imports this module (through the domains'
# descriptors), and only a process that runs a snapshots model exports these.
# Registered on the default registry when the first SnapshotModel is built.
WRITTEN = Counter(
    "jetsource_snapshots_written_total",
    "Snapshots written (new ones, not duplicates)",
    registry=None,
)
TOO_LARGE = Counter(
    "jetsource_snapshots_too_large_total",
    "Snapshots not written: above the message size limit",
    registry=None,
)
_registered: set[int] = set()


def register_metrics(registry: CollectorRegistry = REGISTRY) -> None:
    """Export the snapshot counters from ``registry`` (once per registry)."""
    if id(registry) in _registered:
        return
    for metric in (WRITTEN, TOO_LARGE):
        registry.register(metric)
    _registered.add(id(registry))


def snapshot_spec(
    version: int,
    name: str = SNAPSHOTS,
    description: str = "a snapshot of each aggregate every N events (SNAPSHOTS__EVERY)",
) -> ModelSpec:
    return ModelSpec(
        name,
        version,
        Kind.SNAPSHOT,
        "jetstream",
        description,
        idempotency_key=IdempotencyKey(("state_schema", "aggregate_id", "aggregate_version")),
        notes="the model version is the state schema version: a new one re-reads the stream",
    )


@dataclass
class _Warm(Generic[S]):
    state: S
    keys: Keys


class SnapshotModel(Generic[S]):
    """The snapshots of one domain's aggregates; its codec is its loader's."""

    def __init__(
        self,
        spec: ModelSpec,
        snapshots: SnapshotStore,
        loader: StateLoader[S],
        every: int,
        cache_size: int,
    ) -> None:
        self.codec: StateCodec[S] = loader.codec
        if spec.version != self.codec.schema_version:
            raise ValueError(
                f"the snapshots model version is the state schema version "
                f"({self.codec.schema_version}), not {spec.version}"
            )
        if every < 1:
            raise ValueError(f"snapshot every {every} events: must be at least 1")
        register_metrics()
        self.spec = spec
        self.snapshots = snapshots
        self.loader = loader
        self.every = every
        self.cache_size = cache_size
        self._warm: OrderedDict[str, _Warm[S]] = OrderedDict()
        self._erasures = ErasureWatch()  # an erasure empties the warm states
        self.written = 0
        self.too_large = 0

    async def setup(self) -> None:
        pass

    def _ours(self, s: Snapshot) -> bool:
        return (
            s.schema_version == self.codec.schema_version
            and s.aggregate_type == self.codec.aggregate_type
        )

    def _remember(self, aggregate_id: str, warm: _Warm[S]) -> None:
        if self.cache_size == 0:
            return
        self._warm[aggregate_id] = warm
        self._warm.move_to_end(aggregate_id)
        while len(self._warm) > self.cache_size:
            self._warm.popitem(last=False)

    async def _cold(self, aggregate_id: str, version: int) -> _Warm[S]:
        point = await self.loader.load(aggregate_id, to_version=version, keys=True)
        return _Warm(point.state, point.keys)

    async def _save(self, warm: _Warm[S], event: RecordedEvent, heard: int) -> bool:
        """Store the state as the snapshot at ``event``, unless an erasure was heard of
        since ``heard``: the state may hold values opened before it (snapshots hold
        states as they read), and the erasure may already have deleted and taken
        again the aggregate's snapshots; the batch is then delivered again and read
        as it now reads."""
        if heard != erasures_heard():
            self._warm.clear()
            raise TransientError("an erasure was heard while the batch was folded; reading again")
        try:
            stored = await self.snapshots.save(
                make_snapshot(self.codec, warm.state, event, warm.keys)
            )
        except SnapshotTooLargeError as exc:
            self.too_large += 1
            TOO_LARGE.inc()
            log.warning("%s", exc)
            return False
        if stored:
            self.written += 1
            WRITTEN.inc()
        return stored

    async def apply(self, events: Sequence[RecordedEvent]) -> Outcome:
        try:
            return await self._apply(events)
        except (JsApiError, NoRespondersError, TimeoutError) as exc:
            missing = isinstance(exc, NoRespondersError) or (
                isinstance(exc, JsApiError) and exc.err_code == ERR_STREAM_NOT_FOUND
            )
            ensure = getattr(self.snapshots, "ensure_stream", None)
            if missing and ensure is not None:
                # The snapshot stream was deleted under the running snapshotter (it is
                # derived data): made again, and the batch written again into it.
                try:
                    await ensure()
                    log.warning("snapshot stream missing (%r): created it again", exc)
                except (JsApiError, NoRespondersError, TimeoutError) as again:
                    log.warning("snapshot stream missing (%r); creating it: %r", exc, again)
            # A refusal of the server's own (full, sealed) named with its stream and way
            # out, as every other write names it (it was a bare JsApiError repr).
            stream = getattr(getattr(self.snapshots, "settings", None), "stream", "")
            named = refused_from(exc, stream)
            raise TransientError(f"snapshot store: {named or repr(exc)}") from exc

    async def _apply(self, events: Sequence[RecordedEvent]) -> Outcome:
        codec = self.codec
        outcome = Outcome()
        heard = erasures_heard()  # what is folded from here on may be saved and kept
        if self._erasures.moved():
            self._warm.clear()
        for aggregate_id, evs in group(events).items():
            warm = self._warm.pop(aggregate_id, None)
            for e in evs:
                boundary = e.version % self.every == 0
                if warm is not None and codec.version(warm.state) == e.version - 1:
                    try:
                        warm.state = codec.evolve_one(warm.state, e)
                    except RefusedEvent as exc:
                        # The stream holds an event the domain refuses: no snapshot can
                        # be right past it. It goes to the dead letters; nothing is cached.
                        outcome.failed[e.stream_seq] = f"{e.event_type} v{e.version}: {exc}"
                        warm = None
                        continue
                    add_keys(warm.keys, [e])
                    if boundary:
                        await self._save(warm, e, heard)
                elif boundary:
                    at = await self._cold(aggregate_id, e.version)
                    if codec.version(at.state) != e.version:
                        # The stream does not (yet) show what this event says: retry later.
                        outcome.waiting[e.stream_seq] = "aggregate not readable up to here yet"
                        continue
                    await self._save(at, e, heard)
                    if warm is None or codec.version(warm.state) < e.version:
                        warm = at
                elif warm is not None and codec.version(warm.state) < e.version:
                    warm = None  # a gap: cold until the next snapshot version
                outcome.done.append(e.stream_seq)
                outcome.applied += 1
            if warm is not None and heard == erasures_heard():
                self._remember(aggregate_id, warm)
        return outcome

    async def skip(self, aggregate_id: str, stream_seq: int) -> bool:
        self._warm.pop(aggregate_id, None)
        return True  # nothing is kept per event: stepping past one is free

    async def rewind(
        self,
        aggregate_id: str,
        to_version: int,
        *,
        events: Sequence[RecordedEvent] | None = None,
        guard: tuple[int, int] | None = None,
    ) -> int:
        """The snapshots after ``to_version`` deleted (those at or below are the state
        then: nothing is folded, ``events`` are not needed); with ``guard`` only if the
        latest is within. `projector replay snapshots` passes both, which this model did
        not take: every aggregate failed with a TypeError."""
        previous = await self.position(aggregate_id)
        if guard is not None and not guard[0] <= previous <= guard[1]:
            return previous
        self._warm.pop(aggregate_id, None)
        await self.snapshots.delete_after(aggregate_id, to_version)
        return previous

    async def position(self, aggregate_id: str) -> int:
        latest = await self.snapshots.find(aggregate_id, self.codec.schema_version, None, None)
        return latest.version if latest else 0

    async def checkpoint(self) -> Checkpoint:
        """Highest stream sequence covered by a snapshot, and how many are kept."""
        seq = count = 0
        async for s in self.snapshots.all():
            if self._ours(s):
                seq, count = max(seq, s.last_seq), count + 1
        return Checkpoint(seq, count)

    async def digest(self) -> str:
        """Hash of every kept snapshot of this schema (aggregate, version, state)."""
        rows = []
        async for s in self.snapshots.all():
            if self._ours(s):
                state = self.codec.describe(decode_snapshot(self.codec, s))
                rows.append((s.aggregate_id, s.version, s.last_seq, repr(state)))
        rows.sort()
        return hashlib.sha256(repr(rows).encode()).hexdigest()

    async def drop(self) -> int:
        self._warm.clear()
        return await self.snapshots.delete_schema(self.spec.version)

    async def close(self) -> None:
        pass


def snapshot_decl(
    codec: StateCodec[Any],
    name: str = SNAPSHOTS,
    description: str | None = None,
    every: Callable[[ModelEnv], int] | int | None = None,
    default: bool = False,
) -> ModelDecl:
    """The snapshots model of a domain, for its descriptor's ``models`` (under
    ``name``, which is global: a second domain names its own). ``every`` is a number
    of events, or read from the environment; by default ``SNAPSHOTS__EVERY``. Run by
    the snapshotter service unless ``default``; its version is the codec's schema."""
    text = description or (
        f"a snapshot of each {codec.aggregate_type} every N events (SNAPSHOTS__EVERY)"
    )

    def spec(version: int) -> ModelSpec:
        return snapshot_spec(version, name, text)

    def build(env: ModelEnv, spec: ModelSpec) -> ReadModel:
        s = env.settings.snapshots
        n = every(env) if callable(every) else (every or s.every)
        # A cold load reads across the horizon on a compacted stream (the archive read):
        # a snapshot taken where none is kept below it (erase retaking them, a rebuild
        # from the archive) met BeyondHorizonError from the live stream alone. The
        # projection's one reader of the stream: a model built per command or pass
        # (erase) fetched the segments again each time.
        history = env.projection.history_of(env.store)
        loader = StateLoader(codec, history, env.snapshots, s.cache_size)
        model: Any = SnapshotModel(spec, env.snapshots, loader, n, env.options.state_cache_size)
        return model  # type: ignore[no-any-return]

    return ModelDecl(spec, build, default=default, pinned_version=codec.schema_version)
