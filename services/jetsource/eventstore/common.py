"""What both event store adapters share: argument checks and the stored envelope."""

from __future__ import annotations

from collections.abc import Sequence

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.clock import to_timestamp
from jetsource.core.envelope import Expected, NewEvent
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
    if len(set(ids)) != len(ids):
        raise ValidationError("event ids within one append must be unique")
    return ids


def check_read(aggregate_id: str, from_version: int) -> None:
    validate_aggregate_id(aggregate_id)
    if from_version < 1:
        raise ValidationError("from_version starts at 1")


def stored_envelope(
    new: NewEvent, schema_version: int, version: int, payload: bytes, now_ns: int
) -> EventEnvelope:
    """The envelope as stored. Event id, type, aggregate id and type are carried by the
    message's header and subject, and recorded_at by the stream: readers fill them in."""
    return EventEnvelope(
        schema_version=schema_version,
        aggregate_version=version,
        parent_aggregate_id=new.parent_aggregate_id,
        causation_id=new.causation_id,
        correlation_id=new.correlation_id,
        source=new.source,
        idempotency_key=new.idempotency_key,
        metadata=new.metadata,
        payload=payload,
        occurred_at=to_timestamp(new.occurred_at_ns or now_ns),
    )
