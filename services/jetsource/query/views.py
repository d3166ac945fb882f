"""Domain and read-model values -> the query API's protobuf messages."""

from __future__ import annotations

from typing import Any

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.context.v1 import query_pb2 as pb
from jetsource.core.clock import to_timestamp
from jetsource.core.codec import UnknownEvent
from jetsource.core.envelope import RecordedEvent
from jetsource.domain.context.model import ContextState

STATUS = {"open": pb.CONTEXT_STATUS_OPEN, "closed": pb.CONTEXT_STATUS_CLOSED}
STATUS_NAME = {v: k for k, v in STATUS.items()}
_SUBTASK_STATUS = {
    "todo": ev.SUBTASK_STATUS_TODO,
    "in_progress": ev.SUBTASK_STATUS_IN_PROGRESS,
    "blocked": ev.SUBTASK_STATUS_BLOCKED,
    "done": ev.SUBTASK_STATUS_DONE,
    "cancelled": ev.SUBTASK_STATUS_CANCELLED,
}
# event message type -> ContextEvent oneof field
_EVENT_FIELD = {
    field.message_type.name: field.name
    for field in pb.ContextEvent.DESCRIPTOR.oneofs_by_name["event"].fields
    if field.message_type is not None
}


def context_view(state: dict[str, Any]) -> pb.ContextView:
    """From the state's dict form (``state_to_dict``, also the Valkey document's)."""
    view = pb.ContextView(
        context_id=state["id"],
        version=state["version"],
        title=state["title"],
        description=state["description"],
        created_by=state["created_by"],
        tags=state["tags"],
        status=pb.CONTEXT_STATUS_CLOSED if state["closed"] else pb.CONTEXT_STATUS_OPEN,
        close_reason=state["close_reason"],
    )
    view.decisions.extend(
        pb.DecisionView(**d, active=not d["superseded_by"]) for d in state["decisions"].values()
    )
    view.subtasks.extend(
        pb.SubtaskView(**{**t, "status": _SUBTASK_STATUS.get(t["status"], 0)})
        for t in state["subtasks"].values()
    )
    view.dependencies.extend(pb.Dependency(from_id=a, to_id=b) for a, b in state["dependencies"])
    return view


def event_view(record: RecordedEvent) -> pb.EventView:
    e = record.envelope
    view = pb.EventView(
        event_id=e.event_id,
        event_type=e.event_type,
        schema_version=e.schema_version,
        version=record.version,
        stream_sequence=record.stream_seq,
        correlation_id=e.correlation_id,
        causation_id=e.causation_id,
        idempotency_key=e.idempotency_key,
        source=e.source,
        metadata=dict(e.metadata),
    )
    view.recorded_at.CopyFrom(to_timestamp(record.recorded_at_ns))
    if e.HasField("occurred_at"):
        view.occurred_at.CopyFrom(e.occurred_at)
    if not isinstance(record.event, UnknownEvent):
        name = _EVENT_FIELD.get(type(record.event).__name__)
        if name:
            getattr(view.event, name).CopyFrom(record.event)
    return view


def state_view(state: ContextState) -> pb.ContextView:
    """Straight from a folded state (the same message as ``context_view`` of its
    dict form, without building the dict first)."""
    view = pb.ContextView(
        context_id=state.id,
        version=state.version,
        title=state.title,
        description=state.description,
        created_by=state.created_by,
        tags=state.tags,
        status=pb.CONTEXT_STATUS_CLOSED if state.closed else pb.CONTEXT_STATUS_OPEN,
        close_reason=state.close_reason,
    )
    decisions, subtasks = view.decisions, view.subtasks
    for key in sorted(state.decisions):
        d = state.decisions[key]
        decisions.add(
            id=d.id,
            title=d.title,
            body=d.body,
            rationale=d.rationale,
            author=d.author,
            affects=d.affects,
            superseded_by=d.superseded_by,
            revisions=d.revisions,
            active=not d.superseded_by,
        )
    for key in sorted(state.subtasks):
        t = state.subtasks[key]
        subtasks.add(
            id=t.id,
            title=t.title,
            description=t.description,
            assignee=t.assignee,
            status=t.status,
            progress=t.progress,
            status_note=t.status_note,
        )
    view.dependencies.extend(
        pb.Dependency(from_id=a, to_id=b) for a, b in sorted(state.dependencies)
    )
    return view
