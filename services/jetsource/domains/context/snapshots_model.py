"""Snapshots as a read model: the projector runtime drives it like any other model
(durable consumer, batches, dead letters, metrics), only its effect is a snapshot
message every ``every`` events per aggregate (at versions every, 2*every, ...).

Idempotent by construction: a snapshot is keyed by (aggregate, version, state
schema); saving one that exists changes nothing, so a redelivered event costs at most
a lookup. The state at a snapshot version comes from the cached fold of the events
just seen, or (cold, after a restart or for an old event) from the previous snapshot
plus the events since, read from the stream.

The model version is the state schema version: when ``STATE_SCHEMA_VERSION`` changes,
the durable consumer's name changes with it, so a new snapshotter reads the stream
from the start and writes every snapshot again in the new schema, while readers skip
the old ones and fold from events.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from jetsource.core.envelope import RecordedEvent
from jetsource.domains.context.history import (
    Keys,
    StateLoader,
    add_keys,
    decode_state,
    make_snapshot,
)
from jetsource.domains.context.model import ContextState, EvolveError, fold
from jetsource.domains.context.serialize import STATE_SCHEMA_VERSION, state_to_dict
from jetsource.eventstore.jsapi import JsApiError, NoRespondersError
from jetsource.eventstore.snapshots import SnapshotStore, SnapshotTooLargeError
from jetsource.projection.contract import (
    Checkpoint,
    IdempotencyKey,
    Kind,
    ModelSpec,
    Outcome,
    TransientError,
)
from jetsource.projection.valkey import group

log = logging.getLogger("jetsource.snapshotter")
SNAPSHOTS = "snapshots"

# Not registered at import: every service imports this module (through the projection
# bootstrap), and only a process that runs the snapshots model exports these. Registered
# on the default registry when the first SnapshotModel is built (register_metrics).
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


def snapshot_spec(version: int) -> ModelSpec:
    return ModelSpec(
        SNAPSHOTS,
        version,
        Kind.SNAPSHOT,
        "jetstream",
        "a snapshot of each context every N events (CONTEXT_SNAPSHOTS)",
        idempotency_key=IdempotencyKey(("state_schema", "aggregate_id", "aggregate_version")),
        notes="the model version is the state schema version: a new one re-reads the stream",
    )


@dataclass
class _Warm:
    state: ContextState
    keys: Keys


class SnapshotModel:
    def __init__(
        self,
        spec: ModelSpec,
        snapshots: SnapshotStore,
        loader: StateLoader,
        every: int,
        cache_size: int,
    ) -> None:
        if spec.version != STATE_SCHEMA_VERSION:
            raise ValueError(
                f"the snapshots model version is the state schema version "
                f"({STATE_SCHEMA_VERSION}), not {spec.version}"
            )
        register_metrics()
        self.spec = spec
        self.snapshots = snapshots
        self.loader = loader
        self.every = every
        self.cache_size = cache_size
        self._warm: OrderedDict[str, _Warm] = OrderedDict()
        self.written = 0
        self.too_large = 0

    async def setup(self) -> None:
        pass

    def _remember(self, aggregate_id: str, warm: _Warm) -> None:
        if self.cache_size == 0:
            return
        self._warm[aggregate_id] = warm
        self._warm.move_to_end(aggregate_id)
        while len(self._warm) > self.cache_size:
            self._warm.popitem(last=False)

    async def _cold(self, aggregate_id: str, version: int) -> _Warm:
        point = await self.loader.load(aggregate_id, to_version=version, keys=True)
        return _Warm(point.state, point.keys)

    async def _save(self, warm: _Warm, event: RecordedEvent) -> bool:
        try:
            stored = await self.snapshots.save(make_snapshot(warm.state, event, warm.keys))
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
            raise TransientError(f"snapshot store: {exc!r}") from exc

    async def _apply(self, events: Sequence[RecordedEvent]) -> Outcome:
        outcome = Outcome()
        for aggregate_id, evs in group(events).items():
            warm = self._warm.pop(aggregate_id, None)
            for e in evs:
                boundary = e.version % self.every == 0
                if warm is not None and warm.state.version == e.version - 1:
                    try:
                        warm.state = fold([e.event], warm.state)
                    except EvolveError as exc:
                        # The stream holds an event the domain refuses: no snapshot can
                        # be right past it. It goes to the dead letters; nothing is cached.
                        outcome.failed[e.stream_seq] = f"{e.event_type} v{e.version}: {exc}"
                        warm = None
                        continue
                    add_keys(warm.keys, [e])
                    if boundary:
                        await self._save(warm, e)
                elif boundary:
                    at = await self._cold(aggregate_id, e.version)
                    if at.state.version != e.version:
                        # The stream does not (yet) show what this event says: retry later.
                        outcome.waiting[e.stream_seq] = "aggregate not readable up to here yet"
                        continue
                    await self._save(at, e)
                    if warm is None or warm.state.version < e.version:
                        warm = at
                elif warm is not None and warm.state.version < e.version:
                    warm = None  # a gap: cold until the next snapshot version
                outcome.done.append(e.stream_seq)
                outcome.applied += 1
            if warm is not None:
                self._remember(aggregate_id, warm)
        return outcome

    async def skip(self, aggregate_id: str, stream_seq: int) -> bool:
        self._warm.pop(aggregate_id, None)
        return True  # nothing is kept per event: stepping past one is free

    async def rewind(self, aggregate_id: str, to_version: int) -> int:
        previous = await self.position(aggregate_id)
        self._warm.pop(aggregate_id, None)
        await self.snapshots.delete_after(aggregate_id, to_version)
        return previous

    async def position(self, aggregate_id: str) -> int:
        latest = await self.snapshots.find(aggregate_id, STATE_SCHEMA_VERSION, None, None)
        return latest.version if latest else 0

    async def checkpoint(self) -> Checkpoint:
        """Highest stream sequence covered by a snapshot, and how many are kept."""
        seq = count = 0
        async for s in self.snapshots.all():
            if s.schema_version == STATE_SCHEMA_VERSION:
                seq, count = max(seq, s.last_seq), count + 1
        return Checkpoint(seq, count)

    async def digest(self) -> str:
        """Hash of every kept snapshot of this schema (aggregate, version, state)."""
        rows = []
        async for s in self.snapshots.all():
            if s.schema_version == STATE_SCHEMA_VERSION:
                state = state_to_dict(decode_state(s))
                rows.append((s.aggregate_id, s.version, s.last_seq, repr(state)))
        rows.sort()
        return hashlib.sha256(repr(rows).encode()).hexdigest()

    async def drop(self) -> int:
        self._warm.clear()
        return await self.snapshots.delete_schema(self.spec.version)

    async def close(self) -> None:
        pass
