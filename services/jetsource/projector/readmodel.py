"""Read-model contracts: what a model declares and what the consumer runtime asks of it.

A model applies a batch of events and reports, per event, whether it is done
(applied now or already applied before: both are acked), waiting (an earlier event
of its aggregate is not applied yet: redelivered soon) or failed (the handler
refuses it: counted towards dead-lettering). Effects and the model's checkpoint are
written in one atomic step, and an event is applied only if it is the next version
of its aggregate, so redelivery never applies anything twice.

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


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: int
    kind: Kind
    store: str  # "valkey" | "graph"
    description: str
    # Event types this model consumes; None means all of them.
    event_types: frozenset[str] | None = None
    idempotency: str = "apply only the next aggregate_version; checkpoint in the same write"
    rebuild: str = "side by side into a new namespace from stream sequence 1, then cut over"

    @property
    def durable(self) -> str:
        """The JetStream durable consumer of this model version."""
        return f"jetsource-{self.name}-v{self.version}"


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


class ReadModel(Protocol):
    spec: ModelSpec

    async def setup(self) -> None:
        """Create indexes, constraints and scripts; idempotent."""

    async def apply(self, events: Sequence[RecordedEvent]) -> Outcome:
        """Apply events (stream order) with their checkpoint in one atomic step."""

    async def skip(self, aggregate_id: str, stream_seq: int) -> bool:
        """Step the aggregate past one event without applying it (a discarded dead
        letter). False if the aggregate is not right before that event."""

    async def rewind(self, aggregate_id: str, to_version: int) -> int:
        """Put the aggregate back to its state at ``to_version`` (for replay);
        returns the version it was at."""

    async def position(self, aggregate_id: str) -> int:
        """The aggregate's applied version (0: nothing applied)."""

    async def checkpoint(self) -> Checkpoint: ...

    async def digest(self) -> str:
        """A hash of the model's whole content: equal models, equal digests."""

    async def drop(self) -> int:
        """Delete the model version's namespace; returns what was removed."""

    async def close(self) -> None: ...
