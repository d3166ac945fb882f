"""The omni read models on Valkey, projected by the engine's projector.

``omni_events`` (EventReceived and the processing status events), keys under
``<prefix>:omni_events:v<version>:``:

- ``e:<event id>`` hash: ``ev`` (the NormalizedEvent as stored), ``seq`` (its stream
  sequence: the global order), processing ``st``/``att``/``wk``/``err``/``upd``;
- ``r:all``, ``r:i:<instance>``, ``r:p:<provider>``, ``r:t:<type>``, ``r:d:<direction>``:
  sorted sets of event ids scored by stream sequence (recent events by filter);
- ``c:<provider>:<instance>:<conversation>``: a conversation's events;
- ``tl:<identity id>``: the events an identity sent or received.

``omni_identities`` (IdentityCreated, ExternalIdLinked, IdentitiesMerged):

- ``i:<identity id>`` hash: ``name``, ``by``, ``seq``, ``into`` (merged into);
- ``i:<identity id>:h`` hash: handle ``provider:external id`` -> instance;
- ``i:<identity id>:m`` hash: identities merged into it;
- ``ia`` sorted set of identity ids by creation sequence, ``ip:<provider>`` by provider;
- ``h`` hash: handle -> identity id.

Each event is turned into commands in Python and sent to one Lua script per batch,
which applies an aggregate's commands only when the event's stream sequence is above
the aggregate's stored one, and moves the checkpoint in the same step: redelivery
applies nothing twice, whatever the batching.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jetsource._gen.omni.v1.events_pb2 import Direction, EventType, NormalizedEvent
from jetsource._gen.omni.v1.lifecycle_pb2 import (
    ExternalIdLinked,
    IdentitiesMerged,
    IdentityCreated,
    ProcessingCompleted,
    ProcessingFailed,
    ProcessingStarted,
)
from jetsource.core.envelope import RecordedEvent
from jetsource.domains.omni.events import EVENT_TYPES, IDENTITY_TYPES, handle_name
from jetsource.projection.bootstrap import ModelEnv
from jetsource.projection.contract import (
    BY_STREAM_SEQUENCE,
    Kind,
    ModelSpec,
    Outcome,
    ReadModel,
    RebuildStrategy,
)
from jetsource.projection.valkey import CHECKPOINT_LUA, ValkeyModel, valkey_io

OMNI_EVENTS, OMNI_IDENTITIES = "omni_events", "omni_identities"

# ARGV: namespace, number of events, then per event: aggregate id, stream sequence,
# number of commands, then per command: name, number of leading key arguments, number
# of arguments, the arguments (keys relative to the namespace).
_APPLY = (
    """
local p, n = ARGV[1], tonumber(ARGV[2])
local applied, maxseq, i = 0, 0, 3
for _ = 1, n do
  local id, seq, ncmd = ARGV[i], tonumber(ARGV[i+1]), tonumber(ARGV[i+2])
  i = i + 3
  local cur = tonumber(redis.call('HGET', p .. ':pos', id) or '0')
  local fresh = seq > cur
  for _ = 1, ncmd do
    local name, nkeys, argc = ARGV[i], tonumber(ARGV[i+1]), tonumber(ARGV[i+2])
    i = i + 3
    if fresh then
      local args = {}
      for k = 1, argc do
        local a = ARGV[i + k - 1]
        if k <= nkeys then a = p .. ':' .. a end
        args[k] = a
      end
      redis.call(name, unpack(args))
    end
    i = i + argc
  end
  if fresh then
    redis.call('HSET', p .. ':pos', id, seq)
    applied = applied + 1
    if seq > maxseq then maxseq = seq end
  end
end
"""
    + CHECKPOINT_LUA
    + """
return applied
"""
)


def short_type(value: int) -> str:
    return EventType.Name(EventType.ValueType(value)).removeprefix("EVENT_TYPE_").lower()


def short_direction(value: int) -> str:
    return Direction.Name(Direction.ValueType(value)).removeprefix("DIRECTION_").lower()


Command = tuple[str, int, list[Any]]


def event_commands(record: RecordedEvent) -> list[Command]:
    """What one event of a normalized event's aggregate does to the model."""
    e, seq, key = record.event, record.stream_seq, f"e:{record.aggregate_id}"
    at = str(record.recorded_at_ns)
    if isinstance(e, NormalizedEvent):
        member = record.aggregate_id
        out: list[Command] = [
            (
                "HSET",
                1,
                [
                    key,
                    "ev",
                    e.SerializeToString(deterministic=True),
                    "seq",
                    seq,
                    "st",
                    "received",
                    "att",
                    0,
                    "upd",
                    at,
                    # The filter fields, for reads that filter on more than one.
                    "i",
                    e.instance_name,
                    "p",
                    e.provider,
                    "t",
                    short_type(e.event_type),
                    "d",
                    short_direction(e.direction),
                ],
            ),
            ("ZADD", 1, ["r:all", seq, member]),
            ("ZADD", 1, [f"r:i:{e.instance_name}", seq, member]),
            ("ZADD", 1, [f"r:p:{e.provider}", seq, member]),
            ("ZADD", 1, [f"r:t:{short_type(e.event_type)}", seq, member]),
            ("ZADD", 1, [f"r:d:{short_direction(e.direction)}", seq, member]),
        ]
        if e.conversation_id:
            conversation = f"c:{e.provider}:{e.instance_name}:{e.conversation_id}"
            out.append(("ZADD", 1, [conversation, seq, member]))
        for identity in dict.fromkeys((e.sender_identity_id, e.recipient_identity_id)):
            if identity:
                out.append(("ZADD", 1, [f"tl:{identity}", seq, member]))
        return out
    if isinstance(e, ProcessingStarted):
        return [("HSET", 1, [key, "st", "processing", "att", e.attempt, "wk", e.worker, "upd", at])]
    if isinstance(e, ProcessingCompleted):
        return [("HSET", 1, [key, "st", "completed", "att", e.attempt, "wk", e.worker, "upd", at])]
    if isinstance(e, ProcessingFailed):
        return [
            (
                "HSET",
                1,
                [
                    key,
                    "st",
                    "failed",
                    "att",
                    e.attempt,
                    "wk",
                    e.worker,
                    "err",
                    e.reason[:1000],
                    "upd",
                    at,
                ],
            )
        ]
    return []


def identity_commands(record: RecordedEvent) -> list[Command]:
    """What one event of an identity's aggregate does to the model."""
    e, seq, me = record.event, record.stream_seq, record.aggregate_id
    if isinstance(e, IdentityCreated):
        return [
            ("HSET", 1, [f"i:{me}", "name", e.display_name, "by", e.created_by, "seq", seq]),
            ("ZADD", 1, ["ia", seq, me]),
        ]
    if isinstance(e, ExternalIdLinked):
        handle = handle_name(e.provider, e.external_id)
        out: list[Command] = []
        if e.previous_identity_id and e.previous_identity_id != me:
            out.append(("HDEL", 1, [f"i:{e.previous_identity_id}:h", handle]))
        out += [
            ("HSET", 1, [f"i:{me}:h", handle, e.instance]),
            ("HSET", 1, ["h", handle, me]),
            ("ZADD", 1, [f"ip:{e.provider}", seq, me]),
        ]
        if e.display_name:
            out.append(("HSETNX", 1, [f"i:{me}", "name", e.display_name]))
        return out
    if isinstance(e, IdentitiesMerged):
        if me == e.merged_id:
            return [("HSET", 1, [f"i:{me}", "into", e.survivor_id])]
        out = [("HSET", 1, [f"i:{me}:m", e.merged_id, seq])]
        for handle in e.handles:
            provider = handle.partition(":")[0]
            out += [
                ("HDEL", 1, [f"i:{e.merged_id}:h", handle]),
                ("HSET", 1, [f"i:{me}:h", handle, ""]),
                ("HSET", 1, ["h", handle, me]),
                ("ZADD", 1, [f"ip:{provider}", seq, me]),
            ]
        return out
    return []


class OmniModel(ValkeyModel):
    """A Valkey model whose events become commands applied by one script per batch."""

    def __init__(self, spec: ModelSpec, env: ModelEnv, commands: Any) -> None:
        super().__init__(spec, env.redis, env.options.valkey_prefix)
        self._commands = commands
        self._apply = self.redis.register_script(_APPLY)

    async def setup(self) -> None:
        pass

    async def apply(self, events: Sequence[RecordedEvent]) -> Outcome:
        outcome = Outcome()
        args: list[Any] = []
        n = 0
        for record in events:
            commands = self._commands(record)
            args += [record.aggregate_id, record.stream_seq, len(commands)]
            for name, nkeys, cargs in commands:
                args += [name, nkeys, len(cargs), *cargs]
            n += 1
            outcome.done.append(record.stream_seq)
        if n:
            applied = await valkey_io(self._apply(args=[self.ns, n, *args]))
            outcome.applied = int(applied)
        return outcome

    async def skip(self, aggregate_id: str, stream_seq: int) -> bool:
        """A discarded dead letter: the aggregate's position steps over it."""
        key = f"{self.ns}:pos"
        current = int(await valkey_io(self.redis.hget(key, aggregate_id)) or 0)
        if current >= stream_seq:
            return False
        await valkey_io(self.redis.hset(key, aggregate_id, stream_seq))
        return True

    async def rewind(self, aggregate_id: str, to_version: int) -> int:
        raise NotImplementedError(
            f"{self.spec.name} is rebuilt side by side (projector rebuild), not rewound"
        )


def events_spec(version: int) -> ModelSpec:
    return ModelSpec(
        OMNI_EVENTS,
        version,
        Kind.AGGREGATE,
        "valkey",
        "normalized events with their processing status; recent by instance, provider, "
        "type and direction; conversations; identity timelines",
        consumed_events=EVENT_TYPES,
        idempotency_key=BY_STREAM_SEQUENCE,
        rebuild_strategy=RebuildStrategy.SIDE_BY_SIDE,
    )


def identities_spec(version: int) -> ModelSpec:
    return ModelSpec(
        OMNI_IDENTITIES,
        version,
        Kind.AGGREGATE,
        "valkey",
        "identities with their linked handles and merges",
        consumed_events=IDENTITY_TYPES,
        idempotency_key=BY_STREAM_SEQUENCE,
        rebuild_strategy=RebuildStrategy.SIDE_BY_SIDE,
    )


def build_events(env: ModelEnv, spec: ModelSpec) -> ReadModel:
    return OmniModel(spec, env, event_commands)


def build_identities(env: ModelEnv, spec: ModelSpec) -> ReadModel:
    return OmniModel(spec, env, identity_commands)
