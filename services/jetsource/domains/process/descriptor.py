"""The process domain as the engine sees it: its stream, events and read models.

Stream ``PROCESS_EVENTS``, subjects ``process.events.<process_id>.<event_type>``,
the event-store defaults of the context stream; every event's payload is a
``ProcessEventBody`` under the caller's snake_case type. The read models are the read
side's (``jetsource.domains.process.models.MODELS``).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.envelope import NewEvent
from jetsource.domains.process.events import (
    AGGREGATE_TYPE,
    PROCESS_COMPLETED,
    PROCESS_FAILED,
    PROCESS_STARTED,
    STREAM,
    SUBJECT_PREFIX,
    registry,
)
from jetsource.domains.process.models import MODELS
from jetsource.projection.domain import Domain, Retention, StreamPolicy


def _body(**data: Any) -> ProcessEventBody:
    s = struct_pb2.Struct()
    s.update(data)
    return ProcessEventBody(data=s, attributes={"sample": "yes"})


def process_events(process_id: str, n: int, seed: int = 0) -> list[NewEvent]:
    """A valid generated history of one process: started, ``n - 2`` steps, then
    completed or failed; every third process (by seed) is a child of ``root-<seed>``."""
    parent = f"root-{seed}" if seed % 3 == 1 else ""
    out = [
        NewEvent(
            _body(kind="pipeline" if seed % 2 else "agent", name=f"{process_id} run"),
            event_type=PROCESS_STARTED,
            parent_aggregate_id=parent,
            source="sample",
        )
    ]
    for i in range(max(0, n - 2)):
        out.append(
            NewEvent(
                _body(step=i, note=f"step {i} [x]"),
                event_type=("level_started", "tool_called", "token_counted")[(i + seed) % 3],
                parent_aggregate_id=parent,
                causation_id=out[-1].event_id,
                source="sample",
            )
        )
    if n >= 2:
        end = PROCESS_FAILED if seed % 4 == 3 else PROCESS_COMPLETED
        extra = {"error": "boom"} if end == PROCESS_FAILED else {}
        out.append(
            NewEvent(
                _body(**extra),
                event_type=end,
                parent_aggregate_id=parent,
                causation_id=out[-1].event_id,
                source="sample",
            )
        )
    return out[:n]


DOMAIN = Domain(
    name="process",
    stream=STREAM,
    subject_prefix=SUBJECT_PREFIX,
    aggregate_type=AGGREGATE_TYPE,
    registry=registry,
    models=MODELS,
    # The ledger keeps every event, except that the sessions pruner (its role alone:
    # NATS permissions on $JS.API.STREAM.PURGE.PROCESS_EVENTS) removes whole ended
    # session trees, each announced first by a process_pruned tombstone that the read
    # models apply (see jetsource.domains.process.pruning).
    policy=StreamPolicy(Retention.FOREVER, purge_roles=("pruner",)),
    # Runtimes name their events: an id is unique within its process (as the observer's
    # claims are), so the stream's duplicate check is per process too.
    event_ids="aggregate",
    services=("jetsource-observer", "jetsource-projector"),
    sample_history=process_events,
)
