"""What goes into the event store and what comes out of it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from google.protobuf.message import Message

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.codec import UnknownEvent
from jetsource.core.ids import uuid7


class ExpectedVersion(Enum):
    """Special expectations for append; an int expects that exact current version."""

    ANY = "any"  # append after whatever is there (versions stay contiguous)
    NO_STREAM = "no_stream"  # the aggregate must not exist yet


ANY = ExpectedVersion.ANY
NO_STREAM = ExpectedVersion.NO_STREAM
Expected = int | ExpectedVersion


_DEFAULT: Any = object()  # an argument not given (its field's default_factory applies)


@dataclass(frozen=True, init=False)
class NewEvent:
    """An event to append. Keep ``event_id`` to make a retry idempotent.

    Its ``__init__`` is the one dataclass would write, setting the fields in one step
    instead of one ``object.__setattr__`` each (every command builds one per event)."""

    event: Message
    event_id: str = field(default_factory=uuid7)
    occurred_at_ns: int | None = None
    causation_id: str = ""
    correlation_id: str = ""
    idempotency_key: str = ""
    source: str = ""
    parent_aggregate_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Only for a domain whose registry has a fallback message (the caller names the
    # type): the event type and its schema version (0: 1). Registered messages name
    # their own.
    event_type: str = ""
    schema_version: int = 0

    def __init__(
        self,
        event: Message,
        event_id: str = _DEFAULT,
        occurred_at_ns: int | None = None,
        causation_id: str = "",
        correlation_id: str = "",
        idempotency_key: str = "",
        source: str = "",
        parent_aggregate_id: str = "",
        metadata: Mapping[str, str] = _DEFAULT,
        event_type: str = "",
        schema_version: int = 0,
    ) -> None:
        self.__dict__.update(
            event=event,
            event_id=uuid7() if event_id is _DEFAULT else event_id,
            occurred_at_ns=occurred_at_ns,
            causation_id=causation_id,
            correlation_id=correlation_id,
            idempotency_key=idempotency_key,
            source=source,
            parent_aggregate_id=parent_aggregate_id,
            metadata={} if metadata is _DEFAULT else metadata,
            event_type=event_type,
            schema_version=schema_version,
        )


@dataclass(frozen=True)
class RecordedEvent:
    """A stored event: its envelope, the decoded (current-version) event, its position."""

    envelope: EventEnvelope
    event: Message | UnknownEvent
    stream_seq: int
    recorded_at_ns: int

    @property
    def event_id(self) -> str:
        return self.envelope.event_id

    @property
    def event_type(self) -> str:
        return self.envelope.event_type

    @property
    def aggregate_id(self) -> str:
        return self.envelope.aggregate_id

    @property
    def version(self) -> int:
        return self.envelope.aggregate_version


def recorded_by(records: Iterable[RecordedEvent], time_ns: int) -> int:
    """How many of ``records`` (consecutive versions of one aggregate, in version
    order) lead them all recorded at or before ``time_ns``.

    The one meaning of "an aggregate at a time" every reader uses: the longest prefix
    of its events all recorded by then, i.e. the version before the first one recorded
    after it. A stream's recorded times are its leader's wall clock and may step back
    (NTP, a leader moved to a server whose clock is behind): an event stamped at or
    before the time that follows one stamped after it is not part of the state at that
    time. So the answer never goes down as the time goes up, and is the same whether it
    is read, looked up or found in what a reader kept."""
    n = 0
    for r in records:
        if r.recorded_at_ns > time_ns:
            break
        n += 1
    return n


@dataclass(frozen=True, init=False)
class AppendResult:
    aggregate_id: str
    versions: list[int]
    stream_seqs: list[int]
    event_ids: list[str]
    # True when these events were already stored (an idempotent retry).
    duplicate: bool = False

    def __init__(
        self,
        aggregate_id: str,
        versions: list[int],
        stream_seqs: list[int],
        event_ids: list[str],
        duplicate: bool = False,
    ) -> None:  # dataclass's, in one step (one per append)
        self.__dict__.update(
            aggregate_id=aggregate_id,
            versions=versions,
            stream_seqs=stream_seqs,
            event_ids=event_ids,
            duplicate=duplicate,
        )

    @property
    def last_version(self) -> int:
        return self.versions[-1]
