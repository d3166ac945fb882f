"""The event store port: one contract, two adapters (JetStream and in-memory)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Protocol

from jetsource.core.envelope import AppendResult, Expected, NewEvent, RecordedEvent


class EventStore(Protocol):
    async def append(
        self, aggregate_id: str, events: Sequence[NewEvent], expected_version: Expected
    ) -> AppendResult:
        """Append atomically with optimistic concurrency; idempotent by event id."""

    async def read_aggregate(
        self,
        aggregate_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        until_time: datetime | int | None = None,
        from_seq: int = 1,
        to_seq: int | None = None,
    ) -> list[RecordedEvent]:
        """Events of one aggregate in version order, bounded by version, time
        (recorded at or before ``until_time``) and/or stream sequence (at or below
        ``to_seq``, e.g. ``seq_at_time`` of a time the caller has looked up already).
        ``from_seq`` is a hint (e.g. a snapshot's last sequence) where to start looking."""

    def read_all(
        self, from_seq: int = 1, to_seq: int | None = None, subject_filter: str | None = None
    ) -> AsyncIterator[RecordedEvent]:
        """Every event in global (stream sequence) order."""

    async def last_version(self, aggregate_id: str) -> int:
        """Current version of the aggregate; 0 when it has no events."""

    async def seq_at_time(self, time: datetime | int) -> int:
        """Last stream sequence recorded at or before ``time``; 0 if none."""

    async def voided(self, aggregate_id: str, stream_seq: int) -> bool:
        """Has an operator voided this stream sequence (``jetsource repair void``)?
        A voided event reads as a no-op at its place in the history."""

    async def version_at_time(self, aggregate_id: str, time: datetime | int) -> int:
        """The aggregate's version at ``time``: the version before its first event
        recorded after ``time`` (:func:`jetsource.core.envelope.recorded_by`; a stream's
        times may step back, and an event recorded by then after it does not count);
        0 if none."""
