"""Context events, their schema versions and the upcasters from old versions."""

from __future__ import annotations

from google.protobuf.message import Message

from jetsource._gen.context.v1 import events_history_pb2 as history
from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.codec import EventRegistry

AGGREGATE_TYPE = "context"

registry = EventRegistry()

for _cls in (
    ev.ContextCreated,
    ev.DecisionRevised,
    ev.DecisionSuperseded,
    ev.SubtaskAdded,
    ev.DependencyLinked,
    ev.ContextClosed,
):
    registry.register(_cls.DESCRIPTOR.name, 1, _cls)

registry.register("DecisionAdded", 1, history.DecisionAddedV1, current=False)
registry.register("DecisionAdded", 2, ev.DecisionAdded)
registry.register("SubtaskUpdated", 1, history.SubtaskUpdatedV1, current=False)
registry.register("SubtaskUpdated", 2, ev.SubtaskUpdated)


@registry.upcaster("DecisionAdded", 1)
def upcast_decision_added_v1_to_v2(old: Message) -> Message:
    assert isinstance(old, history.DecisionAddedV1)
    # v1 recorded neither rationale nor author: they stay empty, never invented.
    return ev.DecisionAdded(
        decision_id=old.decision_id, title=old.title, body=old.body, affects=list(old.affects)
    )


_STATUS_WORDS = {
    ev.SUBTASK_STATUS_TODO: {"todo", "to do", "open", "new", "pending"},
    ev.SUBTASK_STATUS_IN_PROGRESS: {"in progress", "in_progress", "doing", "wip", "started"},
    ev.SUBTASK_STATUS_BLOCKED: {"blocked", "waiting", "on hold"},
    ev.SUBTASK_STATUS_DONE: {"done", "complete", "completed", "finished", "closed"},
    ev.SUBTASK_STATUS_CANCELLED: {"cancelled", "canceled", "dropped", "abandoned"},
}


def status_from_text(text: str) -> ev.SubtaskStatus.ValueType:
    normalized = " ".join(text.strip().lower().replace("-", " ").split())
    for status, words in _STATUS_WORDS.items():
        if normalized in words:
            return status
    return ev.SUBTASK_STATUS_UNSPECIFIED


@registry.upcaster("SubtaskUpdated", 1)
def upcast_subtask_updated_v1_to_v2(old: Message) -> Message:
    assert isinstance(old, history.SubtaskUpdatedV1)
    status = status_from_text(old.status)
    return ev.SubtaskUpdated(
        subtask_id=old.subtask_id,
        status=status,
        assignee=old.assignee,
        progress=old.progress,
        # Keep words that did not map, so no information is lost.
        status_note=old.status if status == ev.SUBTASK_STATUS_UNSPECIFIED else "",
    )


registry.validate()
