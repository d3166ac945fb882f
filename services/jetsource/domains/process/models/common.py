"""What the process read models share: reading a stored process event (envelope +
``ProcessEventBody``), the lifecycle vocabulary, where an event stands against its
process's applied position (``PLACE_LUA``, :func:`next_events`), and the Lua that keeps
the process tree (parent, root, depth, children; a child recorded before its parent is
attached, with its whole subtree, when the parent appears).

Only the engine's public pieces are used here (no event store): the query service
reads these models without importing the event store.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from jetsource._gen.process.v1.events_pb2 import (
    CanonicalEvent,
    ProcessEventBody,
    StoredEvent,
)
from jetsource.core.clock import from_timestamp
from jetsource.core.codec import UnknownEvent
from jetsource.core.envelope import RecordedEvent
from jetsource.domains.process.events import registry
from jetsource.domains.process.pruning import PRUNER_ID
from jetsource.projection.contract import Outcome
from jetsource.projection.valkey import next_versions
from jetsource.projection.valkey import script_outcome as engine_outcome

STARTED = "process_started"
ENDINGS = {
    "process_completed": "completed",
    "process_failed": "failed",
    "process_cancelled": "cancelled",
    "process_interrupted": "interrupted",
}
STATUSES = ("running", "completed", "failed", "cancelled", "interrupted")
# The stand-in of a discarded dead letter (projection.valkey.skipped): it only moves
# the process's position.
SKIPPED = "Skipped"


def is_noop(e: RecordedEvent) -> bool:
    """An event that only takes its place in its process (its position moves, nothing
    else): the stand-in of a discarded dead letter, a message an operator voided (read
    at its place as an unknown event), or an event type the ledger cannot name (not
    snake_case: no writer of the ledger writes one). Unknown events are skipped by
    every reader, never fatal; applied as events they would count, show in timelines
    and, with a lifecycle payload, end processes."""
    if e.event_type == SKIPPED and not e.envelope.payload:
        return True
    if not isinstance(e.event, UnknownEvent):
        return False
    return e.event.reason in NOOP_REASONS or not registry.valid_type(e.event_type)


# What the engine's stand-ins say (voided_event, projection.valkey.skipped).
NOOP_REASONS = ("voided", "discarded dead letter")


def body_of(e: RecordedEvent) -> ProcessEventBody:
    """The event's body: decoded by the domain's registry, else from the envelope's
    payload bytes (an unknown or undecodable payload reads as an empty body)."""
    if isinstance(e.event, ProcessEventBody):
        return e.event
    body = ProcessEventBody()
    try:
        body.ParseFromString(e.envelope.payload)
    except DecodeError:
        body.Clear()
    return body


def occurred_ns(e: RecordedEvent) -> int | None:
    env = e.envelope
    return from_timestamp(env.occurred_at) if env.HasField("occurred_at") else None


def stored_event(e: RecordedEvent, body: ProcessEventBody | None = None) -> StoredEvent:
    """The event as the query service answers it: the canonical event and its positions."""
    env = e.envelope
    body = body if body is not None else body_of(e)
    canonical = CanonicalEvent(
        event_id=env.event_id,
        process_id=env.aggregate_id,
        parent_process_id=env.parent_aggregate_id,
        event_type=env.event_type,
        source=env.source,
        schema_version=env.schema_version,
        causation_id=env.causation_id,
        correlation_id=env.correlation_id,
        idempotency_key=env.idempotency_key,
    )
    if env.HasField("occurred_at"):
        canonical.occurred_at.CopyFrom(env.occurred_at)
    which = body.WhichOneof("payload")
    if which == "data":
        canonical.data.CopyFrom(body.data)
    elif which == "typed":
        canonical.typed.CopyFrom(body.typed)
    canonical.attributes.update(body.attributes)
    out = StoredEvent(event=canonical, global_seq=e.stream_seq, process_seq=e.version)
    out.recorded_at.FromNanoseconds(e.recorded_at_ns)
    return out


@dataclass(frozen=True)
class Lifecycle:
    """What the registry takes from one event."""

    kind: str = ""
    name: str = ""
    error: str = ""  # JSON of data["error"] (a google.protobuf.Value), when failed
    attributes: str = ""  # JSON object of the body's attributes, for process_started


def lifecycle(event_type: str, body: ProcessEventBody) -> Lifecycle:
    if event_type not in (STARTED, "process_failed"):
        return Lifecycle()
    fields = body.data.fields if body.WhichOneof("payload") == "data" else {}
    if event_type == "process_failed":
        error = fields.get("error")
        return Lifecycle(error=json_format.MessageToJson(error, indent=None) if error else "")

    def text(key: str) -> str:
        value = fields.get(key)
        return value.string_value if value is not None else ""

    return Lifecycle(
        kind=text("kind"),
        name=text("name"),
        attributes=json.dumps(dict(sorted(body.attributes.items())), separators=(",", ":")),
    )


# The process tree, kept in the model's own keys (each model keeps its own copy: models
# are built and rebuilt independently):
#   <p>:first   hash id -> global_seq of its first event (also: "the process exists")
#   <p>:root, <p>:depth, <p>:parent (linked parent)    hashes by id
#   <p>:kids:<id>      zset of linked children, score = the child's first global_seq
#   <p>:pending:<id>   zset of processes that named <id> as parent before it appeared
# ``moved(node, old_root, new_root, new_parent)`` is called for every node of a subtree
# that gets a new root (``new_parent``: the process the subtree's top was attached to;
# nil when the subtree is detached). A link that would close a cycle is refused (the
# child stays a root, pending).
TREE_LUA = """
local function subtree(id)
  local out, i = {id}, 1
  while i <= #out do
    local kids = redis.call('ZRANGE', p .. ':kids:' .. out[i], 0, -1)
    for _, k in ipairs(kids) do table.insert(out, k) end
    i = i + 1
  end
  return out
end

local function attach(c, q, moved)
  local qroot = redis.call('HGET', p .. ':root', q)
  if qroot == c then return false end
  local qdepth = tonumber(redis.call('HGET', p .. ':depth', q))
  redis.call('HSET', p .. ':parent', c, q)
  redis.call('ZADD', p .. ':kids:' .. q, redis.call('HGET', p .. ':first', c), c)
  for _, n in ipairs(subtree(c)) do
    local d = tonumber(redis.call('HGET', p .. ':depth', n)) + qdepth + 1
    redis.call('HSET', p .. ':root', n, qroot)
    redis.call('HSET', p .. ':depth', n, d)
    moved(n, c, qroot, q)
  end
  return true
end

-- A process's first event: it exists from now on; children that named it before
-- are attached to it.
local function appear(id, gseq, moved)
  redis.call('HSET', p .. ':first', id, gseq)
  redis.call('HSET', p .. ':root', id, id)
  redis.call('HSET', p .. ':depth', id, 0)
  local waiting = redis.call('ZRANGE', p .. ':pending:' .. id, 0, -1)
  for _, c in ipairs(waiting) do attach(c, id, moved) end
  redis.call('DEL', p .. ':pending:' .. id)
end

-- The first parent a process names is its parent.
local function declare(id, parent, gseq, moved)
  if parent == '' or parent == id then return end
  if redis.call('HSETNX', p .. ':declared', id, parent) == 0 then return end
  if redis.call('HEXISTS', p .. ':first', parent) == 1 then
    attach(id, parent, moved)
  else
    redis.call('ZADD', p .. ':pending:' .. parent, gseq, id)
  end
end
"""


# A ``process_pruned`` tombstone (jetsource.domains.process.pruning), after TREE_LUA:
# ``prune(listed, tseq, remove)`` forgets the listed processes and everything below
# them (linked children, and processes waiting for one of them as their parent),
# recursively: ``remove(id)`` first drops the model's own keys of a process (the tree
# bookkeeping is still there), then its tree entries, its position and the events it
# counted in ``applied`` go, and ``<p>:pruned`` remembers it so that a later event of
# it changes nothing. What stays is what a rebuild from the purged stream gives.
PRUNE_LUA = """
local function prune(listed, tseq, remove)
  local out, seen, i = {}, {}, 1
  for _, id in ipairs(listed) do
    if not seen[id] then seen[id] = true; table.insert(out, id) end
  end
  while i <= #out do
    local id = out[i]
    for _, key in ipairs({p .. ':kids:' .. id, p .. ':pending:' .. id}) do
      for _, k in ipairs(redis.call('ZRANGE', key, 0, -1)) do
        if not seen[k] then seen[k] = true; table.insert(out, k) end
      end
    end
    i = i + 1
  end
  for _, id in ipairs(out) do
    if redis.call('HEXISTS', p .. ':first', id) == 1 then remove(id) end
  end
  local gone = 0
  for _, id in ipairs(out) do
    local parent = redis.call('HGET', p .. ':parent', id)
    if parent then redis.call('ZREM', p .. ':kids:' .. parent, id) end
    local declared = redis.call('HGET', p .. ':declared', id)
    if declared then redis.call('ZREM', p .. ':pending:' .. declared, id) end
    redis.call('DEL', p .. ':kids:' .. id, p .. ':pending:' .. id)
    for _, h in ipairs({'first', 'root', 'depth', 'parent', 'declared'}) do
      redis.call('HDEL', p .. ':' .. h, id)
    end
    gone = gone + tonumber(redis.call('HGET', p .. ':pos', id) or '0')
    redis.call('HDEL', p .. ':pos', id)
    redis.call('HDEL', p .. ':pseq', id)
    redis.call('HDEL', p .. ':refused', id)
    redis.call('HDEL', p .. ':declared_at', id)
    redis.call('HSET', p .. ':pruned', id, tseq)
  end
  if gone > 0 then redis.call('HINCRBY', p .. ':meta', 'applied', -gone) end
  return #out
end
"""


# A process folded again from its history (``rewind``), after TREE_LUA: ``unplace``
# takes it out of the tree before (its subtree goes along, as a tree of its own; what
# it declared and when it appeared are forgotten), the fold puts it back (``appear``
# and ``declare`` as for any event), and ``orphan`` after it hands the children of a
# process that no longer appears (its only real events voided) back to waiting for
# it, as a rebuild leaves them. ``moved(node, old_root, new_root)`` as for TREE_LUA.
# ``<p>:declared_at`` (id -> the global_seq of the event that named the parent) is
# the score a waiting child had.
REWIND_TREE_LUA = """
local function detach(c, moved)
  local q = redis.call('HGET', p .. ':parent', c)
  if not q then return end
  redis.call('ZREM', p .. ':kids:' .. q, c)
  redis.call('HDEL', p .. ':parent', c)
  local old = redis.call('HGET', p .. ':root', c)
  local base = tonumber(redis.call('HGET', p .. ':depth', c))
  for _, n in ipairs(subtree(c)) do
    redis.call('HSET', p .. ':root', n, c)
    redis.call('HSET', p .. ':depth', n, tonumber(redis.call('HGET', p .. ':depth', n)) - base)
    moved(n, old, c)
  end
end
local function unplace(id, moved)
  detach(id, moved)
  local d = redis.call('HGET', p .. ':declared', id)
  if d then redis.call('ZREM', p .. ':pending:' .. d, id) end
  redis.call('HDEL', p .. ':declared', id)
  redis.call('HDEL', p .. ':first', id)
end
local function orphan(id, moved)
  if redis.call('HEXISTS', p .. ':first', id) == 1 then return {} end
  local kids = redis.call('ZRANGE', p .. ':kids:' .. id, 0, -1)
  for _, c in ipairs(kids) do
    local at = redis.call('HGET', p .. ':declared_at', c) or redis.call('HGET', p .. ':first', c)
    detach(c, moved)
    redis.call('ZADD', p .. ':pending:' .. id, at, c)
  end
  redis.call('HDEL', p .. ':root', id)
  redis.call('HDEL', p .. ':depth', id)
  return kids
end
"""


def history(
    model: str, aggregate_id: str, to_version: int, events: Sequence[RecordedEvent] | None
) -> list[RecordedEvent]:
    """The process's first ``to_version`` events, which a rewind folds: given by the
    caller (these models read no stream), versions 1..n. The pruner's tombstones
    forget whole subtrees of other processes: its story is not written again alone."""
    if aggregate_id == PRUNER_ID:
        raise NotImplementedError(
            f"{model}: the pruner's tombstones forget other processes, which a write of "
            f"one story cannot bring back; rebuild it side by side: `jetsource projector "
            f"rebuild {model} --to-version N+1` (N the active version), then cutover"
        )
    if events is None:
        raise ValueError(f"{model}: a rewind of {aggregate_id} needs its events")
    out = list(events[:to_version])
    if [e.version for e in out] != list(range(1, to_version + 1)):
        raise ValueError(f"rewind of {aggregate_id} to {to_version}: events are not 1..n")
    return out


# The chain rule (``PLACE_LUA``, ``next_versions``, ``script_outcome``) is the engine's
# (jetsource.projection.valkey), shared with the context and omni models: a version
# applied already is a redelivery from its own stream sequence or an earlier one, and a
# second event for that version from a later one (refused, remembered).


def script_outcome(
    events: Sequence[RecordedEvent],
    applied: int,
    waiting: Sequence[bytes],
    refused: Sequence[bytes],
) -> Outcome:
    """The engine's ``script_outcome``, waiting events named by process_seq."""
    return engine_outcome(events, applied, waiting, refused, "waiting for the previous process_seq")


def next_events(
    version: int,
    last_seq: int,
    events: Sequence[RecordedEvent],
    outcome: Outcome,
    refused: Collection[int] = (),
) -> list[RecordedEvent]:
    """The events (of one process, in order) that continue it from ``version``, applied
    last from stream sequence ``last_seq`` (0: unknown), ``refused`` the sequences
    refused before: the engine's ``next_versions``, for a model that is not a Valkey
    script."""
    return next_versions(version, events, outcome, last_seq, refused)
