"""What both event store adapters share: argument checks and the stored envelope."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.clock import NS
from jetsource.core.envelope import AppendResult, Expected, NewEvent, RecordedEvent
from jetsource.core.errors import ValidationError
from jetsource.core.ids import validate_aggregate_id
from jetsource.eventstore.jsapi import BATCH_LIMIT  # events per append: one atomic batch


def check_append(aggregate_id: str, events: Sequence[NewEvent], expected: Expected) -> list[str]:
    """Validate an append's arguments; return its event ids."""
    validate_aggregate_id(aggregate_id)
    if not events:
        raise ValidationError("append needs at least one event")
    if len(events) > BATCH_LIMIT:
        raise ValidationError(
            f"{len(events)} events in one append; at most {BATCH_LIMIT} are atomic"
        )
    if isinstance(expected, int) and expected < 0:
        raise ValidationError("expected_version must be >= 0, ANY or NO_STREAM")
    ids = [e.event_id for e in events]
    if len(ids) > 1 and len(set(ids)) != len(ids):
        raise ValidationError("event ids within one append must be unique")
    return ids


def stored_already(
    aggregate_id: str, ids: list[str], records: Sequence[RecordedEvent]
) -> AppendResult:
    """The answer to an append whose events (``ids``) are ``records``, stored before."""
    return AppendResult(
        aggregate_id,
        [r.version for r in records],
        [r.stream_seq for r in records],
        ids,
        duplicate=True,
    )


# The range of a protobuf Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799


def a_time(at: Timestamp) -> bool:
    """Whether ``at`` is a time a Timestamp can hold (what every writer stores)."""
    return MIN_SECONDS <= at.seconds <= MAX_SECONDS and 0 <= at.nanos <= 999_999_999


def check_read(aggregate_id: str, from_version: int) -> None:
    validate_aggregate_id(aggregate_id)
    if from_version < 1:
        raise ValidationError("from_version starts at 1")


def stored_envelope(
    new: NewEvent,
    schema_version: int,
    version: int,
    payload: bytes,
    now_ns: int | None,
    metadata: Mapping[str, str] | None = None,
) -> EventEnvelope:
    """The envelope as stored. Event id, type, aggregate id and type are carried by the
    message's header and subject, and recorded_at by the stream: readers fill them in.

    ``now_ns`` stamps ``occurred_at`` when the event gives no business time (None: leave
    it out, readers take the recorded time). ``metadata`` replaces the event's own (what
    is left once personal entries are sealed). Only fields with a value are set: the
    append path builds one envelope per event, and an empty field costs as much to set
    as a full one."""
    envelope = EventEnvelope(
        schema_version=schema_version, aggregate_version=version, payload=payload
    )
    if new.parent_aggregate_id:
        envelope.parent_aggregate_id = new.parent_aggregate_id
    if new.causation_id:
        envelope.causation_id = new.causation_id
    if new.correlation_id:
        envelope.correlation_id = new.correlation_id
    if new.source:
        envelope.source = new.source
    if new.idempotency_key:
        envelope.idempotency_key = new.idempotency_key
    entries = new.metadata if metadata is None else metadata
    if entries:
        envelope.metadata.update(entries)
    occurred = new.occurred_at_ns or now_ns
    if occurred is not None:
        at = envelope.occurred_at  # (each attribute read makes a wrapper)
        at.seconds, at.nanos = divmod(occurred, NS)
    return envelope
