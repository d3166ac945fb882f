"""Processing status of a normalized event, event-sourced on the event's own aggregate
after its EventReceived. A consumer (the action engine) records each step; the
omni_events read model shows the current one with the retry count.

The lifecycle (``decide`` refuses anything else, naming the field, and writes nothing):

- received -> processing (attempt n >= 1);
- processing n -> completed n | failed n (the same attempt ends);
- processing n -> processing m > n (the worker of attempt n was lost: a new attempt);
- failed n with ``will_retry`` -> processing m > n;
- completed and a failure without ``will_retry`` are terminal;
- the exact step recorded last, again (a worker's retry of its own request), is
  answered with the version it has and appends nothing.

Attempts never go back, and a step of another attempt than the one in progress is
refused (``attempt``); a step the state does not allow is refused (``state``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import Message

from jetsource._gen.omni.v1.lifecycle_pb2 import (
    ProcessingCompleted,
    ProcessingFailed,
    ProcessingStarted,
)
from jetsource.core.envelope import NewEvent
from jetsource.core.errors import ValidationError
from jetsource.core.ids import validate_aggregate_id
from jetsource.core.printable import ID_TAKES, as_lines, not_id_at, refused_at
from jetsource.domains.omni.events import is_identity
from jetsource.domains.omni.normalize.common import has_surrogate
from jetsource.eventstore.jetstream import JetStreamEventStore

STATES = ("processing", "completed", "failed")
MAX_OUTCOME, MAX_REASON = 1000, 2000  # what a step keeps of its outcome / reason


class EventNotFoundError(ValidationError):
    pass


class StatusTransitionError(ValidationError):
    """A step the event's processing status does not allow now (the lifecycle's rule,
    not a malformed field): nothing was written. ``field`` is ``state`` or ``attempt``."""


@dataclass(frozen=True)
class Status:
    """Where an event's processing is: the state and attempt of the last step."""

    state: str = "received"
    attempt: int = 0
    worker: str = ""
    detail: str = ""  # the outcome of a completion, the reason of a failure
    will_retry: bool = False

    @property
    def terminal(self) -> bool:
        return self.state == "completed" or (self.state == "failed" and not self.will_retry)


def evolve(status: Status, event: object) -> Status:
    if isinstance(event, ProcessingStarted):
        return Status("processing", event.attempt, event.worker)
    if isinstance(event, ProcessingCompleted):
        return Status("completed", event.attempt, event.worker, event.outcome)
    if isinstance(event, ProcessingFailed):
        return Status("failed", event.attempt, event.worker, event.reason, event.will_retry)
    return status


def fold(events: Iterable[object]) -> Status:
    status = Status()
    for event in events:
        status = evolve(status, event)
    return status


def decide(
    status: Status,
    state: str,
    worker: str,
    attempt: int,
    reason: str = "",
    will_retry: bool = False,
) -> Message | None:
    """The event one step appends, None when it is the step recorded last (nothing to
    append), or StatusTransitionError naming the field when the lifecycle refuses it.
    The arguments are well-formed already (``check_step``)."""
    event: Message
    if state == "processing":
        event = ProcessingStarted(worker=worker, attempt=attempt)
    elif state == "completed":
        event = ProcessingCompleted(worker=worker, attempt=attempt, outcome=reason[:MAX_OUTCOME])
    else:
        event = ProcessingFailed(
            worker=worker, attempt=attempt, reason=reason[:MAX_REASON], will_retry=will_retry
        )
    if status.state != "received" and evolve(Status(), event) == status:
        return None  # the same step again: done already
    now = f"{status.state} (attempt {status.attempt})" if status.attempt else status.state
    if status.terminal:
        raise StatusTransitionError(
            f"state {state!r} refused: processing is {now}, which is final; no step follows",
            field="state",
        )
    if state == "processing":
        if attempt <= status.attempt:
            again = " by another worker" if attempt == status.attempt else ""
            raise StatusTransitionError(
                f"attempt {attempt} refused{again}: processing is {now}; a new attempt is "
                f"numbered above {status.attempt}",
                field="attempt",
            )
        return event
    if status.state != "processing":
        raise StatusTransitionError(
            f"state {state!r} refused: processing is {now}; record 'processing' for the "
            "attempt first",
            field="state",
        )
    if attempt != status.attempt:
        raise StatusTransitionError(
            f"attempt {attempt} refused: attempt {status.attempt} is in progress; "
            f"{state!r} ends that attempt",
            field="attempt",
        )
    return event


def check_step(event_id: str, state: str, worker: str, attempt: int, reason: str) -> None:
    """The fields one by one, before anything is read."""
    validate_aggregate_id(event_id, "event_id")
    if is_identity(event_id):
        raise ValidationError(f"{event_id} is an identity, not an event", field="event_id")
    if state not in STATES:
        raise ValidationError(f"state must be one of {', '.join(STATES)}", field="state")
    if not worker or len(worker) > 200:
        raise ValidationError("worker must be 1..200 characters", field="worker")
    for name, text in (("worker", worker), ("reason", reason)):
        if has_surrogate(text):
            # A JSON escape \ud800 not part of a pair: no character, nothing stores it.
            raise ValidationError(
                f"{name} holds a lone UTF-16 surrogate, which is no Unicode character",
                field=name,
            )
    at = not_id_at(worker)
    if at is not None:
        # Recorded as the step's worker and its event's source, shown and logged as one
        # line: an ESC or a line end in it recoloured a terminal or forged a log line. An
        # id the caller chose, as the process observer's source: no bidi embedding,
        # override or isolate either (printable.NOT_ID).
        raise ValidationError(
            f"worker holds {refused_at(worker, at)}: it takes {ID_TAKES}",
            field="worker",
        )
    if attempt < 1:
        raise ValidationError("attempt starts at 1", field="attempt")
    if state == "failed" and not reason:
        raise ValidationError("a failure needs a reason", field="reason")


async def record_status(
    store: JetStreamEventStore,
    event_id: str,
    state: str,
    worker: str,
    attempt: int,
    reason: str = "",
    will_retry: bool = False,
) -> int:
    """Append one status step; returns the aggregate's version with it (the version it
    has already when the step is the one recorded last). The append expects the version
    it read, so two workers racing on one event do not both succeed (ConcurrencyError)."""
    # The reason is a worker's failure text (a tool's output, a traceback), shown as
    # the event's last_error and outcome in reads and terminals: its line breaks (CR
    # LF, a lone CR) are LF and any other control character (a colour code's ESC, a
    # NUL) its visible escape (the four characters \x1b). Refused, the failure was
    # never recorded and each retry of the worker failed the same way. Cut to what a
    # step keeps after the escaping and never inside an escape: a plain cut kept "\x"
    # of a "\x1b" at the end of a long traceback.
    reason = as_lines(reason, MAX_OUTCOME if state == "completed" else MAX_REASON)
    check_step(event_id, state, worker, attempt, reason)
    history = await store.read_aggregate(event_id)
    if not history:
        raise EventNotFoundError(f"no event {event_id!r}", field="event_id")
    version = history[-1].version
    event = decide(fold(r.event for r in history), state, worker, attempt, reason, will_retry)
    if event is None:
        return version
    result = await store.append(event_id, [NewEvent(event, source=worker)], version)
    return result.last_version
