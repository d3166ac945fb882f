"""Pruning whole process trees from the ledger: tombstones first, then the purge.

The pruner (the one role whose NATS user may call ``$JS.API.STREAM.PURGE`` on the
ledger's stream) removes a tree in three steps, each safe to repeat:

1. it appends a ``process_pruned`` tombstone naming the tree's process ids, as an event
   of its own aggregate ``jetsource-pruner`` (subject
   ``process.events.jetsource-pruner.process_pruned``, never one of a tree's subjects);
2. it purges each named process's subjects (``process.events.<id>.>``) and its
   idempotency claims (``$KV.<claims>.e.<id>.*`` and ``k.<id>.*``);
3. after the last tree of a run it appends ``process_prune_completed``.

The read models apply a tombstone by forgetting the named processes and everything
hanging below them (linked children, and processes that named one of them as parent
before it appeared), and ignore any later event of a forgotten process. A rebuild
after the purge sees the tombstone but not the purged events, and ends in the same
state as the models that applied the events and then the tombstone.

A pruner killed between steps converges on its next run: it first finishes every
tombstone recorded after the last ``process_prune_completed`` (purging again is
harmless), then chooses what to prune.

Callers never write these types: the observer refuses the reserved event types and
the pruner's process id.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import struct_pb2

from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.envelope import NewEvent, RecordedEvent

PRUNER_ID = "jetsource-pruner"
PROCESS_PRUNED = "process_pruned"
PRUNE_COMPLETED = "process_prune_completed"
RESERVED_TYPES = (PROCESS_PRUNED, PRUNE_COMPLETED)
# Ids per tombstone (a tombstone stays far below the stream's message size limit).
MAX_IDS_PER_TOMBSTONE = 5000


def tombstone(root: str, ids: Sequence[str], reason: str = "") -> NewEvent:
    """The event announcing that these processes (a tree under ``root``) are pruned."""
    data = struct_pb2.Struct()
    data.update({"root": root, "processes": list(ids), "reason": reason})
    return NewEvent(
        ProcessEventBody(data=data),
        event_type=PROCESS_PRUNED,
        source="jetsource sessions prune",
    )


def completed(through_version: int) -> NewEvent:
    """Every tombstone up to ``through_version`` of the pruner's aggregate is purged."""
    data = struct_pb2.Struct()
    data.update({"through": through_version})
    return NewEvent(
        ProcessEventBody(data=data),
        event_type=PRUNE_COMPLETED,
        source="jetsource sessions prune",
    )


def is_tombstone(e: RecordedEvent) -> bool:
    return e.aggregate_id == PRUNER_ID and e.event_type == PROCESS_PRUNED


def pruned_ids(e: RecordedEvent) -> list[str]:
    """The process ids a tombstone names (none for any other event)."""
    if not is_tombstone(e):
        return []
    body = e.event
    if not isinstance(body, ProcessEventBody):
        body = ProcessEventBody()
        body.ParseFromString(e.envelope.payload)
    if body.WhichOneof("payload") != "data":
        return []
    value = body.data.fields.get("processes")
    if value is None:
        return []
    return [v.string_value for v in value.list_value.values if v.string_value]


__all__ = [
    "MAX_IDS_PER_TOMBSTONE",
    "PROCESS_PRUNED",
    "PRUNER_ID",
    "PRUNE_COMPLETED",
    "RESERVED_TYPES",
    "completed",
    "is_tombstone",
    "pruned_ids",
    "tombstone",
]
