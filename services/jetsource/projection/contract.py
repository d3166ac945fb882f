"""Read-model contracts: what a model declares and what the runtime asks of it.

A model applies a batch of events and reports, per event, whether it is done
(applied now or already applied before: both are acked), waiting (an earlier event
of its aggregate is not applied yet) or failed (the handler refuses it: counted
towards dead-lettering). Effects and the model's checkpoint are written in one atomic
step, and an event is applied only if it is the next one for its aggregate, so
redelivery never applies anything twice.

What a model declares is structured, and the runtime and the admin commands obey it:

- ``consumed_events``: the event types it handles. The runtime turns them into its
  consumer's filter subjects, so it never receives what it does not declare.
- ``replay_start``: where a (re)build starts: the first event, a stream sequence or a
  time; used by rebuild and by a fresh model version's consumer.
- ``idempotency_key``: what makes a write idempotent, and what the stored position
  of an aggregate compares: its contiguous version (every event of the aggregate is
  consumed) or its last stream sequence (a model that consumes some types only).
- ``kind`` and ``rebuild_strategy``: enums the admin commands obey.

Transient trouble (a store that does not answer) is raised as an exception: the
whole batch is redelivered later with backoff.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from jetsource.core.envelope import RecordedEvent


class Kind(StrEnum):
    SNAPSHOT = "snapshot"  # current state per aggregate
    TIMELINE = "timeline"  # one entry per event
    AGGREGATE = "aggregate"  # derived across aggregates (indexes, graphs)


class RebuildStrategy(StrEnum):
    # A new version in its own namespace from replay_start while the old one serves,
    # then an atomic cutover (`projector rebuild` + `cutover`).
    SIDE_BY_SIDE = "side-by-side"
    # Truncate the version in place and rebuild it (`projector reset --yes`): readers
    # see it empty, then growing.
    IN_PLACE = "in-place"
    # Aggregate by aggregate, each rewound and re-applied atomically (`replay`).
    PER_AGGREGATE = "per-aggregate"


class Position(StrEnum):
    """What an aggregate's stored position counts."""

    AGGREGATE_VERSION = "aggregate_version"  # contiguous: every event is consumed
    STREAM_SEQUENCE = "stream_sequence"  # the last stream sequence applied


@dataclass(frozen=True)
class IdempotencyKey:
    """A write is applied at most once per these fields; the position says which
    stored value an event is compared with (next version, or a higher sequence)."""

    fields: tuple[str, ...] = ("model_version", "aggregate_id", "aggregate_version")
    position: Position = Position.AGGREGATE_VERSION

    def __str__(self) -> str:
        return f"({', '.join(self.fields)}); position by {self.position}"


BY_AGGREGATE_VERSION = IdempotencyKey()
BY_STREAM_SEQUENCE = IdempotencyKey(
    ("model_version", "aggregate_id", "stream_sequence"), Position.STREAM_SEQUENCE
)


@dataclass(frozen=True)
class ReplayStart:
    """Where a build starts: from the first event, at a stream sequence, or at the
    first event recorded at or after a time (ns since the epoch)."""

    sequence: int = 1
    time_ns: int = 0

    def __post_init__(self) -> None:
        if self.sequence < 1 or self.time_ns < 0:
            raise ValueError("replay_start: sequence >= 1 and time_ns >= 0")
        if self.sequence > 1 and self.time_ns:
            raise ValueError("replay_start: a sequence or a time, not both")

    def __str__(self) -> str:
        if self.time_ns:
            return f"time {self.time_ns}"
        return "first event" if self.sequence == 1 else f"sequence {self.sequence}"


FROM_FIRST = ReplayStart()


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: int
    kind: Kind
    store: str  # "valkey" | "graph" | "jetstream"
    description: str
    # Event types this model consumes; None: every type of its domain's stream.
    consumed_events: frozenset[str] | None = None
    replay_start: ReplayStart = FROM_FIRST
    idempotency_key: IdempotencyKey = BY_AGGREGATE_VERSION
    rebuild_strategy: RebuildStrategy = RebuildStrategy.SIDE_BY_SIDE
    # Side notes for operators (`projector status`).
    notes: str = ""

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError(f"model versions start at 1, got {self.version}")
        if (
            self.consumed_events is not None
            and self.idempotency_key.position is Position.AGGREGATE_VERSION
        ):
            raise ValueError(
                f"{self.name}: a model that consumes only some event types cannot count "
                "contiguous aggregate versions; declare BY_STREAM_SEQUENCE"
            )

    @property
    def durable(self) -> str:
        """The JetStream durable consumer of this model version."""
        return f"jetsource-{self.name}-v{self.version}"

    @property
    def contiguous(self) -> bool:
        """Does the model apply an aggregate's events as a contiguous version chain
        (so a gap can be filled from the stream)?"""
        return self.idempotency_key.position is Position.AGGREGATE_VERSION

    def filter_subjects(self, subject_prefix: str) -> list[str]:
        """The consumer's filter: every event of the stream, or the declared types."""
        if self.consumed_events is None:
            return [f"{subject_prefix}.>"]
        return [f"{subject_prefix}.*.{t}" for t in sorted(self.consumed_events)]

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "kind": str(self.kind),
            "store": self.store,
            "consumed_events": sorted(self.consumed_events) if self.consumed_events else "all",
            "replay_start": str(self.replay_start),
            "idempotency_key": str(self.idempotency_key),
            "rebuild_strategy": str(self.rebuild_strategy),
        }


@dataclass
class Outcome:
    done: list[int] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    applied: int = 0  # how many of ``done`` were applied by this call

    def merge(self, other: Outcome) -> None:
        self.done.extend(other.done)
        self.waiting.update(other.waiting)
        self.failed.update(other.failed)
        self.applied += other.applied


@dataclass(frozen=True)
class Checkpoint:
    seq: int  # highest stream sequence applied
    applied: int  # events applied in total (each exactly once)


class TransientError(Exception):
    """The model's store did not answer; try the batch again later."""


class StoreLost(Exception):
    """The model's store no longer holds the model version it was given (emptied by
    FLUSHALL or a wipe, restarted without persistence, replaced by a new server):
    its birth mark is gone or another one. Nothing was written; the worker builds the
    version again from its replay start (the consumer's position is worthless now)."""


class ReadModel(Protocol):
    spec: ModelSpec

    async def setup(self) -> None:
        """Create indexes, constraints and scripts; idempotent."""

    async def apply(self, events: Sequence[RecordedEvent]) -> Outcome:
        """Apply events (stream order) with their checkpoint in one atomic step."""

    async def skip(self, aggregate_id: str, stream_seq: int) -> bool:
        """Step the aggregate past one event without applying it (a discarded dead
        letter). False if the aggregate is not right before that event."""

    async def rewind(
        self,
        aggregate_id: str,
        to_version: int,
        *,
        events: Sequence[RecordedEvent] | None = None,
        guard: tuple[int, int] | None = None,
    ) -> int:
        """Put the aggregate back to its state at ``to_version``; returns the version it
        was at. `projector replay` calls it with ``events`` (the aggregate's first
        ``to_version`` events, to fold the state from: the engine knows no domain's
        state) and ``guard`` (low, high): write, in one atomic step, only if the stored
        version is within, else write nothing and return the stored version. Repair and
        erasure call it with the two positional arguments (read the events yourself).
        A model without these keywords failed every aggregate of a replay with
        "TypeError: rewind() got an unexpected keyword argument 'events'"."""

    async def position(self, aggregate_id: str) -> int:
        """The aggregate's applied version (0: nothing applied)."""

    async def checkpoint(self) -> Checkpoint: ...

    async def digest(self) -> str:
        """A hash of the model's whole content: equal models, equal digests."""

    async def drop(self) -> int:
        """Delete the model version's namespace; returns what was removed."""

    async def close(self) -> None: ...
