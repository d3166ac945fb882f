"""In-memory event store for unit tests: the same contract as the JetStream store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime

from jetsource.core.clock import now_ns, to_ns, to_timestamp
from jetsource.core.codec import EventRegistry
from jetsource.core.envelope import (
    AppendResult,
    Expected,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    recorded_by,
)
from jetsource.core.errors import (
    ConcurrencyError,
    EventTooLargeError,
    PartlyStoredError,
)
from jetsource.core.ids import validate_aggregate_id
from jetsource.core.settings import EventStoreSettings
from jetsource.eventstore.common import (
    check_append,
    check_read,
    stored_already,
    stored_envelope,
)
from jetsource.eventstore.jsapi import subject_matches


class InMemoryEventStore:
    def __init__(
        self,
        registry: EventRegistry,
        settings: EventStoreSettings | None = None,
        clock: Callable[[], int] = now_ns,
    ) -> None:
        self._registry = registry
        self._cfg = settings or EventStoreSettings()
        self._clock = clock
        self._log: list[tuple[str, RecordedEvent]] = []  # (subject, record), seq = index + 1
        self._by_aggregate: dict[str, list[RecordedEvent]] = {}
        self._by_event_id: dict[str, RecordedEvent] = {}
        self._lock = asyncio.Lock()
        self._last_time = 0
        self._voids: set[int] = set()

    async def ensure_streams(self) -> None:
        return None

    async def append(
        self, aggregate_id: str, events: Sequence[NewEvent], expected_version: Expected
    ) -> AppendResult:
        ids = check_append(aggregate_id, events, expected_version)
        encoded = [self._registry.encode(e.event, e.event_type, e.schema_version) for e in events]
        for i, (event_type, _, payload) in enumerate(encoded):
            if len(payload) + 200 > self._cfg.max_msg_size:
                raise EventTooLargeError(
                    f"event {i} ({event_type}) is {len(payload)} bytes; the stream accepts at "
                    f"most {self._cfg.max_msg_size} bytes per event",
                    index=i,
                )
        async with self._lock:
            history = self._by_aggregate.get(aggregate_id, [])
            known = [self._by_event_id.get(i) for i in ids]
            if all(known):
                return stored_already(aggregate_id, ids, [k for k in known if k is not None])
            if any(known):
                stored_ids = [i for i, k in zip(ids, known, strict=True) if k is not None]
                raise PartlyStoredError(aggregate_id, stored_ids, len(history))
            version = len(history)
            if (isinstance(expected_version, int) and expected_version != version) or (
                expected_version is ExpectedVersion.NO_STREAM and version != 0
            ):
                raise ConcurrencyError(aggregate_id, expected_version, version)
            now = max(self._clock(), self._last_time + 1)
            self._last_time = now
            out = []
            for i, (new, (event_type, schema_version, payload)) in enumerate(
                zip(events, encoded, strict=True)
            ):
                envelope = stored_envelope(new, schema_version, version + i + 1, payload, now)
                envelope.event_id = new.event_id
                envelope.event_type = event_type
                envelope.aggregate_id = aggregate_id
                envelope.aggregate_type = self._cfg.aggregate_type
                envelope.recorded_at.CopyFrom(to_timestamp(now))
                seq = len(self._log) + 1
                record = RecordedEvent(
                    envelope, self._registry.decode(event_type, schema_version, payload), seq, now
                )
                subject = f"{self._cfg.subject_prefix}.{aggregate_id}.{event_type}"
                self._log.append((subject, record))
                self._by_event_id[new.event_id] = record
                out.append(record)
            self._by_aggregate[aggregate_id] = [*history, *out]
            return AppendResult(
                aggregate_id, [r.version for r in out], [r.stream_seq for r in out], ids
            )

    async def read_aggregate(
        self,
        aggregate_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        until_time: datetime | int | None = None,
        from_seq: int = 1,
        to_seq: int | None = None,
    ) -> list[RecordedEvent]:
        check_read(aggregate_id, from_version)
        history = self._by_aggregate.get(aggregate_id, [])
        if until_time is not None:  # the versions before the first recorded after it
            by_then = recorded_by(history, to_ns(until_time))
            to_version = by_then if to_version is None else min(to_version, by_then)
        return [
            r
            for r in history
            if r.stream_seq >= from_seq
            and (to_seq is None or r.stream_seq <= to_seq)
            and r.version >= from_version
            and (to_version is None or r.version <= to_version)
        ]

    async def read_all(
        self, from_seq: int = 1, to_seq: int | None = None, subject_filter: str | None = None
    ) -> AsyncIterator[RecordedEvent]:
        for subject, record in list(self._log[max(from_seq, 1) - 1 :]):
            if to_seq is not None and record.stream_seq > to_seq:
                return
            if subject_filter is None or subject_matches(subject_filter, subject):
                yield record

    async def last_version(self, aggregate_id: str) -> int:
        validate_aggregate_id(aggregate_id)
        return len(self._by_aggregate.get(aggregate_id, []))

    async def seq_at_time(self, time: datetime | int) -> int:
        t = to_ns(time)
        last = 0
        for _, record in self._log:
            if record.recorded_at_ns > t:
                break
            last = record.stream_seq
        return last

    async def voided(self, aggregate_id: str, stream_seq: int) -> bool:
        return stream_seq in self._voids

    def void(self, stream_seq: int) -> None:
        """What ``jetsource repair void`` records, for unit tests of the readers."""
        self._voids.add(stream_seq)

    async def version_at_time(self, aggregate_id: str, time: datetime | int) -> int:
        validate_aggregate_id(aggregate_id)
        return recorded_by(self._by_aggregate.get(aggregate_id, []), to_ns(time))
