"""Processing status of a normalized event, event-sourced on the event's own aggregate
after its EventReceived: received -> processing (attempt n) -> completed or failed
(with a reason; will_retry keeps it queued). A consumer (the action engine) records
each step; the omni_events read model shows the current one with the retry count."""

from __future__ import annotations

from google.protobuf.message import Message

from jetsource._gen.omni.v1.lifecycle_pb2 import (
    ProcessingCompleted,
    ProcessingFailed,
    ProcessingStarted,
)
from jetsource.core.envelope import NewEvent
from jetsource.core.errors import ValidationError
from jetsource.core.ids import validate_aggregate_id
from jetsource.domains.omni.events import is_identity
from jetsource.eventstore.jetstream import JetStreamEventStore

STATES = ("processing", "completed", "failed")


class EventNotFoundError(ValidationError):
    pass


async def record_status(
    store: JetStreamEventStore,
    event_id: str,
    state: str,
    worker: str,
    attempt: int,
    reason: str = "",
    will_retry: bool = False,
) -> int:
    """Append one status step; returns the aggregate's new version. The append expects
    the version it read, so two workers racing on one event do not both succeed."""
    validate_aggregate_id(event_id, "event_id")
    if is_identity(event_id):
        raise ValidationError(f"{event_id} is an identity, not an event", field="event_id")
    if state not in STATES:
        raise ValidationError(f"state must be one of {', '.join(STATES)}", field="state")
    if not worker or len(worker) > 200:
        raise ValidationError("worker must be 1..200 characters", field="worker")
    if attempt < 1:
        raise ValidationError("attempt starts at 1", field="attempt")
    if state == "failed" and not reason:
        raise ValidationError("a failure needs a reason", field="reason")
    version = await store.last_version(event_id)
    if version == 0:
        raise EventNotFoundError(f"no event {event_id!r}", field="event_id")
    event: Message
    if state == "processing":
        event = ProcessingStarted(worker=worker, attempt=attempt)
    elif state == "completed":
        event = ProcessingCompleted(worker=worker, attempt=attempt, outcome=reason[:1000])
    else:
        event = ProcessingFailed(
            worker=worker, attempt=attempt, reason=reason[:2000], will_retry=will_retry
        )
    result = await store.append(event_id, [NewEvent(event, source=worker)], version)
    return result.last_version
