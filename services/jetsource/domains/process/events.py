"""The process domain's events: any snake_case type, one payload message.

Callers name their own event types (``level_started``, ``tool_called``), so the
registry has no class per type: every event is stored as a ``ProcessEventBody`` (a
JSON object or typed bytes, and attributes) under the type the caller gave, and
decoded as one whatever its type. The lifecycle vocabulary every process understands
is named here.
"""

from __future__ import annotations

import re

from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.codec import EventRegistry

AGGREGATE_TYPE = "process"
STREAM = "PROCESS_EVENTS"
SUBJECT_PREFIX = "process.events"

PROCESS_STARTED = "process_started"
PROCESS_COMPLETED = "process_completed"
PROCESS_FAILED = "process_failed"
PROCESS_CANCELLED = "process_cancelled"
LIFECYCLE = (PROCESS_STARTED, PROCESS_COMPLETED, PROCESS_FAILED, PROCESS_CANCELLED)
# The statuses a lifecycle event ends a process in.
ENDS = {
    PROCESS_COMPLETED: "completed",
    PROCESS_FAILED: "failed",
    PROCESS_CANCELLED: "cancelled",
}

MAX_EVENT_TYPE_LENGTH = 64
EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]{0,63}")

registry = EventRegistry(
    fallback=ProcessEventBody,
    event_types=EVENT_TYPE,
    event_types_rule=(
        "must be snake_case: a lowercase letter, then lowercase letters, digits and '_' "
        f"(at most {MAX_EVENT_TYPE_LENGTH})"
    ),
)

__all__ = [
    "AGGREGATE_TYPE",
    "ENDS",
    "EVENT_TYPE",
    "LIFECYCLE",
    "PROCESS_CANCELLED",
    "PROCESS_COMPLETED",
    "PROCESS_FAILED",
    "PROCESS_STARTED",
    "STREAM",
    "SUBJECT_PREFIX",
    "ProcessEventBody",
    "registry",
]
