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

- ``i:<identity id>`` hash: ``name``, ``by``, ``seq``, ``into`` (merged into) and
  ``intoseq`` (that merge's stream sequence);
- ``i:<identity id>:h`` hash: handle ``provider:external id`` -> instance;
- ``i:<identity id>:m`` hash: identities merged into it;
- ``ia`` sorted set of identity ids by creation sequence, ``ip:<provider>`` by provider;
- ``h`` hash: handle -> identity id; ``hs`` hash: handle -> the order of that
  assignment (its stream sequence; 0 for a first contact's link). The assignment of
  the highest order (a link, a merge's record kept by the receiving identity) holds
  it whatever order they are applied in, as in the bucket (``identity_rules``): an
  explicit link outranks a first contact that raced it. ``into`` is not kept for a
  merge that closes a cycle (in a cycle, the merge latest in the stream): void.

Both models keep, per aggregate, ``pos`` (hash: the stream sequence applied last),
``ver`` (hash: the aggregate version applied last) and ``refused`` (hash: the
sequences refused as a second event for a version). Each event is turned into a rule
and commands in Python and sent to one Lua script per batch, which checks each
aggregate's chain (versions 1, 2, 3, ... as every reader of the stream does) and the
domain's rules, applies an event's commands only when it is the aggregate's next
version and the domain takes it, and moves positions and checkpoint in the same step:

- the next version: applied, unless the domain refuses it (an EventReceived or
  IdentityCreated anywhere but at version 1; a processing status of an event never
  received; a link or merge of an identity never created);
- a version applied already, from this sequence or an earlier one: a redelivery
  (done, nothing changes, whatever the batching);
- a version applied already, from a later sequence: a second event for one version,
  refused (and remembered, so a retry stays refused after a later event applied);
- a version past the next: the versions between are read from the stream and applied
  first (after a crash, redelivery comes in any order); types the model does not
  consume and voided messages are no-ops at their place; a gap the stream cannot fill
  is refused.

A refused event is reported failed (the runtime retries it, then files it as a dead
letter and parks its aggregate); its aggregate's later events in the batch wait
behind it, and a later one alone finds the version it did not take missing (read
from the stream, it is refused again). A sequence an operator voided (``jetsource
repair void``) is a no-op at its place, or, with no place in the history, nothing at
all, exactly as a rebuild reads it.

Aggregates written before ``ver`` was kept (a ``pos`` without a ``ver``) are taken
as before: an event above the stored sequence is applied (domain rules checked) and
records its version, from which on the chain is checked; nothing needs a rebuild.
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
from jetsource.core.errors import CorruptEventError
from jetsource.domains.omni.events import EVENT_TYPES, IDENTITY_TYPES, handle_name
from jetsource.domains.omni.identity_rules import assignment_order
from jetsource.eventstore.jetstream import voided_event
from jetsource.projection.bootstrap import ModelEnv
from jetsource.projection.contract import (
    BY_STREAM_SEQUENCE,
    Kind,
    ModelSpec,
    Outcome,
    ReadModel,
    RebuildStrategy,
    TransientError,
)
from jetsource.projection.history import history_up_to
from jetsource.projection.valkey import CHECKPOINT_LUA, ValkeyModel, skipped, text, valkey_io

OMNI_EVENTS, OMNI_IDENTITIES = "omni_events", "omni_identities"
REWIND_ATTEMPTS = 5  # a row rewritten between reading it and the script: read again

# Each command of an event, in both scripts: a Valkey command, or CLAIM (a handle to an
# identity, from whoever holds it, with its instance, when it is the handle's latest
# assignment in the stream: a link or a merge).
_RUN = """
local function run(name, args)
  if name == 'CLAIM' then
    -- keys: the handle index, the handle's assignment sequences, the identities'
    -- prefix; then handle, identity, sequence, instance, '1' to keep the instance it
    -- has. The latest assignment in the stream holds the handle, in any order.
    -- The order is the stream sequence, 0 for a first contact (claims a handle
    -- nobody holds, outranked by any explicit assignment).
    local index, at, ip, handle, owner, seq = args[1], args[2], args[3], args[4], args[5], args[6]
    local held = redis.call('HGET', at, handle)
    if not held and redis.call('HEXISTS', index, handle) == 1 then held = '0' end
    if held and tonumber(held) >= tonumber(seq) then return end
    local instance, old = args[7], redis.call('HGET', index, handle)
    if old then
      if args[8] == '1' then instance = redis.call('HGET', ip .. old .. ':h', handle) or '' end
      redis.call('HDEL', ip .. old .. ':h', handle)
    end
    redis.call('HSET', ip .. owner .. ':h', handle, instance)
    redis.call('HSET', index, handle, owner)
    redis.call('HSET', at, handle, seq)
  elseif name == 'INTO' then
    -- keys: the identities' prefix; then the merged identity, its survivor, the
    -- merge's sequence. A merge that closes a cycle (two identities merged into each
    -- other at once) is void: in any cycle the merge latest in the stream is the one
    -- that closed it, whatever order they are applied in, so it is taken out again.
    local ip, me, survivor, seq = args[1], args[2], args[3], tonumber(args[4])
    if redis.call('HEXISTS', ip .. me, 'into') == 1 then return end
    redis.call('HSET', ip .. me, 'into', survivor, 'intoseq', seq)
    local current, last, lastseq = survivor, me, seq
    for _ = 1, 10000 do
      if current == me then
        redis.call('HDEL', ip .. last, 'into', 'intoseq')
        return
      end
      local nxt = redis.call('HGET', ip .. current, 'into')
      if not nxt then return end
      local at = tonumber(redis.call('HGET', ip .. current, 'intoseq') or '0')
      if at > lastseq then last, lastseq = current, at end
      current = nxt
    end
  else
    redis.call(name, unpack(args))
  end
end
"""

# ARGV: namespace, number of events, then per event: aggregate id, version, stream
# sequence, the domain's rule for it ('' none, 'first', 'received', 'created'), number
# of commands, then per command: name, number of leading key arguments, number of
# arguments, the arguments (keys relative to the namespace). Returns the number
# applied and, per event, what became of it ('a' applied, 'd' a redelivery, 'w' a
# version past the next, 'r' a version again, 'b' behind one of these, or the rule
# that refused it) and the aggregate's version after it (-1: not known, a row of
# the previous code).
_APPLY = (
    _RUN
    + """
local p, n = ARGV[1], tonumber(ARGV[2])
local ver, last, blocked, out = {}, {}, {}, {}
local applied, maxseq, i = 0, 0, 3
local function allowed(rule, id, v)
  if rule == 'first' then return v == 1 end
  if rule == 'received' then return redis.call('HEXISTS', p .. ':e:' .. id, 'ev') == 1 end
  if rule == 'created' then return redis.call('HEXISTS', p .. ':i:' .. id, 'seq') == 1 end
  if rule == 'own' then return false end
  return true
end
for _ = 1, n do
  local id, v, seqtext, rule = ARGV[i], tonumber(ARGV[i+1]), ARGV[i+2], ARGV[i+3]
  local seq, ncmd = tonumber(seqtext), tonumber(ARGV[i+4])
  i = i + 5
  if ver[id] == nil then
    last[id] = tonumber(redis.call('HGET', p .. ':pos', id) or '0')
    local stored = redis.call('HGET', p .. ':ver', id)
    -- no version stored beside a sequence: a row of the previous code (-1, unknown)
    ver[id] = tonumber(stored or (last[id] > 0 and '-1' or '0'))
  end
  local at
  if blocked[id] then
    at = 'b'
  elseif ver[id] < 0 then
    if seq > last[id] then at = 'a' else at = 'd' end
  elseif v == ver[id] + 1 then
    at = 'a'
  elseif v > ver[id] + 1 then
    at = 'w'
  else
    local seen = redis.call('HGET', p .. ':refused', id) or ' '
    local again = string.find(seen, ' ' .. seqtext .. ' ', 1, true) ~= nil
    if seq <= last[id] and not again then
      at = 'd'
    else
      at = 'r'
      if not again then redis.call('HSET', p .. ':refused', id, seen .. seqtext .. ' ') end
    end
  end
  if at == 'a' and not allowed(rule, id, v) then at = rule end
  for _ = 1, ncmd do
    local name, nkeys, argc = ARGV[i], tonumber(ARGV[i+1]), tonumber(ARGV[i+2])
    i = i + 3
    if at == 'a' then
      local args = {}
      for k = 1, argc do
        local a = ARGV[i + k - 1]
        if k <= nkeys then a = p .. ':' .. a end
        args[k] = a
      end
      run(name, args)
    end
    i = i + argc
  end
  if at == 'a' then
    redis.call('HSET', p .. ':pos', id, seqtext)
    redis.call('HSET', p .. ':ver', id, v)
    ver[id], last[id] = v, seq
    applied = applied + 1
    if seq > maxseq then maxseq = seq end
  elseif at ~= 'd' then
    blocked[id] = true
  end
  out[#out + 1] = at
  out[#out + 1] = ver[id]
end
"""
    + CHECKPOINT_LUA
    + """
return {applied, out}
"""
)

# One aggregate written again from its history, in one step: ARGV namespace, id, the
# version to write, the guard (low, high) on the stored version, the row's ``ev`` the
# caller read ('' none), the index keys it listed the aggregate in (count, keys), then
# the commands of the history's events (count; name, leading keys, count, arguments),
# the stream sequence of the last event. Returns {0, the version found} (nothing
# written unless it was within the guard) or {1, version}: the row is no longer the
# one the caller read (read it again).
_REWIND = (
    _RUN
    + """
local p, id, to = ARGV[1], ARGV[2], tonumber(ARGV[3])
local cur = tonumber(redis.call('HGET', p .. ':ver', id) or '0')
if cur < tonumber(ARGV[4]) or cur > tonumber(ARGV[5]) then return {0, cur} end
local row = p .. ':e:' .. id
if (redis.call('HGET', row, 'ev') or '') ~= ARGV[6] then return {1, cur} end
local nk, i = tonumber(ARGV[7]), 8
for k = 0, nk - 1 do redis.call('ZREM', p .. ':' .. ARGV[i + k], id) end
i = i + nk
redis.call('DEL', row)
local nc = tonumber(ARGV[i])
i = i + 1
for _ = 1, nc do
  local name, nkeys, argc = ARGV[i], tonumber(ARGV[i+1]), tonumber(ARGV[i+2])
  i = i + 3
  local args = {}
  for k = 1, argc do
    local a = ARGV[i + k - 1]
    if k <= nkeys then a = p .. ':' .. a end
    args[k] = a
  end
  run(name, args)
  i = i + argc
end
local seq = ARGV[i]
if to == 0 then
  redis.call('HDEL', p .. ':pos', id)
  redis.call('HDEL', p .. ':ver', id)
else
  redis.call('HSET', p .. ':pos', id, seq)
  redis.call('HSET', p .. ':ver', id, to)
end
redis.call('HINCRBY', p .. ':meta', 'applied', to - cur)
local cp = tonumber(redis.call('HGET', p .. ':meta', 'checkpoint') or '0')
if tonumber(seq) > cp then redis.call('HSET', p .. ':meta', 'checkpoint', seq) end
return {0, cur}
"""
)

# What an event the domain refuses breaks (the rule named by the script).
_REFUSED = {
    "first": "{type} opens its aggregate (version 1 only); this one carries version {version}",
    "received": "{type} of event {id!r}, which was never received (no EventReceived before it)",
    "created": "{type} of identity {id!r}, which was never created (no IdentityCreated before it)",
    "own": "{type} of aggregate {id!r} names {named} as its {field} (an event names its own)",
}


def short_type(value: int) -> str:
    """The type's short name; a value this code does not name (a newer writer's, as
    protobuf keeps unknown enum values) is its number. It raised ValueError: the model
    dead-lettered the event as a handler error and every read of it failed."""
    try:
        return EventType.Name(EventType.ValueType(value)).removeprefix("EVENT_TYPE_").lower()
    except ValueError:
        return str(value)


def short_direction(value: int) -> str:
    """As :func:`short_type`, for the direction."""
    try:
        return Direction.Name(Direction.ValueType(value)).removeprefix("DIRECTION_").lower()
    except ValueError:
        return str(value)


Command = tuple[str, int, list[Any]]


def index_keys(e: NormalizedEvent) -> list[str]:
    """The sorted sets a normalized event is listed in (its id scored by its sequence)."""
    keys = [
        "r:all",
        f"r:i:{e.instance_name}",
        f"r:p:{e.provider}",
        f"r:t:{short_type(e.event_type)}",
        f"r:d:{short_direction(e.direction)}",
    ]
    if e.conversation_id:
        keys.append(f"c:{e.provider}:{e.instance_name}:{e.conversation_id}")
    for identity in dict.fromkeys((e.sender_identity_id, e.recipient_identity_id)):
        if identity:
            keys.append(f"tl:{identity}")
    return keys


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
        ]
        return out + [("ZADD", 1, [index, seq, member]) for index in index_keys(e)]
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
    order = assignment_order(record)  # a first contact's is 0: any explicit link outranks it
    if isinstance(e, IdentityCreated):
        return [
            ("HSET", 1, [f"i:{me}", "name", e.display_name, "by", e.created_by, "seq", seq]),
            ("ZADD", 1, ["ia", seq, me]),
        ]
    if isinstance(e, ExternalIdLinked):
        handle = handle_name(e.provider, e.external_id)
        # From whoever holds it (not previous_identity_id: two links of one handle at
        # once both name the holder before them), if this is its latest assignment.
        out: list[Command] = [
            ("CLAIM", 3, ["h", "hs", "i:", handle, me, order, e.instance, "0"]),
            # LT: an identity keeps the place of its first handle of the provider (the
            # lowest sequence, in any order of applying); moved up by each later link,
            # it jumped over a paging cursor and a scan of ListIdentities missed it.
            ("ZADD", 1, [f"ip:{e.provider}", "LT", seq, me]),
        ]
        if e.display_name:
            out.append(("HSETNX", 1, [f"i:{me}", "name", e.display_name]))
        return out
    if isinstance(e, IdentitiesMerged):
        if me == e.merged_id:
            return [("INTO", 1, ["i:", me, e.survivor_id, seq])]
        # kept by the identity receiving the handles: the survivor, or the end of its
        # chain when the survivor was merged meanwhile
        out = [("HSET", 1, [f"i:{me}:m", e.merged_id, seq])]
        for handle in e.handles:
            provider = handle.partition(":")[0]
            out += [
                # with its instance (the event names handles only), if this is its
                # latest assignment: CLAIM is the apply script's own
                ("CLAIM", 3, ["h", "hs", "i:", handle, me, seq, "", "1"]),
                ("ZADD", 1, [f"ip:{provider}", "LT", seq, me]),
            ]
        return out
    return []


def named_id(record: RecordedEvent) -> tuple[str, str] | None:
    """(field, id) where an event's payload names an aggregate other than its own, or
    None. Every writer names the aggregate it appends to (a normalized event's ``id``,
    an identity's ``identity_id``); one naming another, or a message of another type
    parsed as this one, was published raw: the model listed a row under one id that
    showed another, which no read by that other id found."""
    e = record.event
    if isinstance(e, NormalizedEvent) and e.id != record.aggregate_id:
        return "id", e.id
    if isinstance(e, IdentityCreated | ExternalIdLinked) and e.identity_id != record.aggregate_id:
        return "identity_id", e.identity_id
    return None


def event_rule(record: RecordedEvent) -> str:
    """What the domain asks before an event of a normalized event's aggregate is taken."""
    if named_id(record):
        return "own"
    if isinstance(record.event, NormalizedEvent):
        return "first"
    if isinstance(record.event, ProcessingStarted | ProcessingCompleted | ProcessingFailed):
        return "received"
    return ""  # not consumed, unknown or voided: a no-op at its place


def identity_rule(record: RecordedEvent) -> str:
    """What the domain asks before an event of an identity's aggregate is taken."""
    if named_id(record):
        return "own"
    if isinstance(record.event, IdentityCreated):
        return "first"
    if isinstance(record.event, ExternalIdLinked | IdentitiesMerged):
        return "created"
    return ""


Held = list[tuple[RecordedEvent, str]]


class OmniModel(ValkeyModel):
    """A Valkey model whose events become commands applied by one script per batch."""

    def __init__(self, spec: ModelSpec, env: ModelEnv, commands: Any, rule: Any) -> None:
        super().__init__(spec, env.redis, env.options.valkey_prefix)
        self._commands = commands
        self._rule = rule
        self._apply = self.write_script(_APPLY)
        self.store = env.store

    async def setup(self) -> None:
        pass

    async def apply(self, events: Sequence[RecordedEvent]) -> Outcome:
        outcome = Outcome()
        if not events:
            return outcome
        mine = {e.stream_seq for e in events}
        held = await self._run(events, mine, outcome)
        for aggregate_id, (position, evs) in held.items():
            await self._settle(aggregate_id, position, evs, mine, outcome)
        return outcome

    async def _run(
        self, events: Sequence[RecordedEvent], mine: set[int], outcome: Outcome
    ) -> dict[str, tuple[int, Held]]:
        """One script call. What is done (applied or a redelivery) goes into
        ``outcome`` for the events of ``mine`` (those delivered: events read from the
        stream to fill a gap are not counted as applied by this call); the rest is
        returned per aggregate, with its position, for :meth:`_settle`."""
        args: list[Any] = [self.ns, len(events)]
        for record in events:
            commands = self._commands(record)
            args += [
                record.aggregate_id,
                record.version,
                record.stream_seq,
                self._rule(record),
                len(commands),
            ]
            for name, nkeys, cargs in commands:
                args += [name, nkeys, len(cargs), *cargs]
        _, out = await valkey_io(self._apply(args=args))
        held: dict[str, tuple[int, Held]] = {}
        for k, record in enumerate(events):
            at, position = text(out[2 * k]), int(out[2 * k + 1])
            if at in ("a", "d"):
                if record.stream_seq in mine:
                    outcome.done.append(record.stream_seq)
                    outcome.applied += 1 if at == "a" else 0
                continue
            entry = held.setdefault(record.aggregate_id, (position, []))
            entry[1].append((record, at))
        return held

    async def _settle(
        self, aggregate_id: str, position: int, held: Held, mine: set[int], outcome: Outcome
    ) -> None:
        """The first held event of an aggregate decides for the rest: voided by an
        operator, it is a no-op at its place (or nothing, with no place); past the
        next version, the versions between are read from the stream and applied
        first; refused, it is failed and the rest waits behind it."""
        for _ in range(4):
            first, at = held[0]
            rest = [e for e, _ in held[1:]]
            again: list[RecordedEvent]
            if at == "w":
                await self.store.start()
                try:
                    missing = await self.store.read_aggregate(
                        aggregate_id,
                        from_version=position + 1,
                        to_version=first.version - 1,
                        to_seq=first.stream_seq - 1,
                    )
                except CorruptEventError as exc:
                    # The corrupt message is refused on its own delivery.
                    _wait(held, mine, outcome, f"behind corrupt sequence {exc.stream_seq}")
                    return
                if [m.version for m in missing] == list(range(position + 1, first.version)):
                    again = [*missing, first, *rest]
                elif await self.store.voided(aggregate_id, first.stream_seq):
                    _done(first, mine, outcome)  # no place in the history
                    again = rest
                else:
                    _refuse(
                        held,
                        mine,
                        outcome,
                        f"version gap: {aggregate_id!r} has no version {position + 1} before "
                        f"sequence {first.stream_seq} (this event says version {first.version})",
                    )
                    return
            elif at == "b":  # behind an event this call does not see (cannot happen)
                _wait(held, mine, outcome, "behind an event not applied")
                return
            elif await self.store.voided(aggregate_id, first.stream_seq):
                if first.version == position + 1:
                    again = [voided_event(first), *rest]  # a no-op at its place
                else:
                    _done(first, mine, outcome)
                    again = rest
            else:
                _refuse(held, mine, outcome, _why(first, at, position))
                return
            if not again:
                return
            found = await self._run(again, mine, outcome)
            if aggregate_id not in found:
                return
            position, held = found[aggregate_id]
        _wait(held, mine, outcome, "still held after filling the versions before it")

    async def skip(self, aggregate_id: str, stream_seq: int) -> bool:
        """A discarded dead letter: a no-op at the aggregate's next version. False when
        the aggregate is at or past that sequence already."""
        stored = await valkey_io(self.redis.hget(f"{self.ns}:ver", aggregate_id))
        pos = f"{self.ns}:pos"
        current = int(await valkey_io(self.redis.hget(pos, aggregate_id)) or 0)
        if current >= stream_seq:
            return False
        if stored is None and current:
            # A row of the previous code: by stream sequence, as it was.
            await valkey_io(self.redis.hset(pos, aggregate_id, stream_seq))
            return True
        placeholder = skipped(aggregate_id, int(stored or 0) + 1, stream_seq, 0)
        outcome = Outcome()
        await self._run([placeholder], {stream_seq}, outcome)
        return stream_seq in outcome.done

    async def position(self, aggregate_id: str) -> int:
        """The aggregate's version applied last (0: nothing, or a row of the previous
        code, which kept its stream sequence only)."""
        return int(await valkey_io(self.redis.hget(f"{self.ns}:ver", aggregate_id)) or 0)

    async def rewind(
        self,
        aggregate_id: str,
        to_version: int,
        *,
        events: Sequence[RecordedEvent] | None = None,
        guard: tuple[int, int] | None = None,
    ) -> int:
        # A merge writes into two identities (the merged one's handles move to the
        # survivor, the handle index follows), and a link takes a handle from the
        # identity that held it: one identity written again alone would leave the
        # others as the voided event left them.
        raise NotImplementedError(
            f"{self.spec.name}: an identity's events change other identities (merges "
            "and relinks move handles), so one identity cannot be written again alone; "
            f"rebuild it side by side: `jetsource projector rebuild {self.spec.name} "
            f"--to-version {self.spec.version + 1}`, then `jetsource projector cutover "
            f"{self.spec.name}`"
        )


class OmniEventsModel(OmniModel):
    """``omni_events``: an aggregate (one normalized event and its processing status)
    touches only its own row and the indexes that list it, so it can be written again
    alone from its history (`repair void` of an accepted event)."""

    def __init__(self, spec: ModelSpec, env: ModelEnv) -> None:
        super().__init__(spec, env, event_commands, event_rule)
        self._rewind = self.write_script(_REWIND)

    async def rewind(
        self,
        aggregate_id: str,
        to_version: int,
        *,
        events: Sequence[RecordedEvent] | None = None,
        guard: tuple[int, int] | None = None,
    ) -> int:
        """Write the aggregate as its first ``to_version`` events make it (``events``,
        else read from the store; a voided one is a no-op at its place), in one script:
        its row and index entries are taken out and written from the events. With
        ``guard`` (low, high) nothing is written unless the stored version is within.
        Returns the version it was at. Refused (ValueError, nothing written) when the
        domain would refuse one of the events: a processing status with no
        EventReceived before it (its EventReceived voided) is a dead letter in a
        rebuild, which parks the aggregate; no write from the history gives that."""
        history = await history_up_to(self.store, aggregate_id, to_version, events)
        received = False
        commands: list[Command] = []
        for record in history:
            rule = event_rule(record)
            if not taken(rule, record, received):
                at = rule
                raise ValueError(
                    f"{self.spec.name}: {aggregate_id!r} cannot be written from its history: "
                    f"{_why(record, at, record.version - 1)}; a rebuild dead-letters it "
                    f"(`jetsource projector rebuild {self.spec.name} --to-version "
                    f"{self.spec.version + 1}`)"
                )
            received = received or rule == "first"
            commands += event_commands(record)
        low, high = guard or (0, 1 << 62)
        last = history[-1].stream_seq if history else 0
        for _ in range(REWIND_ATTEMPTS):
            raw = await valkey_io(self.redis.hget(f"{self.ns}:e:{aggregate_id}", "ev"))
            listed = index_keys(NormalizedEvent.FromString(raw)) if raw else []
            args: list[Any] = [self.ns, aggregate_id, to_version, low, high, raw or b""]
            args += [len(listed), *listed, len(commands)]
            for name, nkeys, cargs in commands:
                args += [name, nkeys, len(cargs), *cargs]
            args.append(last)
            moved, previous = await valkey_io(self._rewind(args=args))
            if not int(moved):
                return int(previous)
        raise TransientError(f"{self.spec.name}: {aggregate_id!r} kept changing under a rewind")


def taken(rule: str, record: RecordedEvent, received: bool) -> bool:
    """Whether the domain takes an event of a normalized event's aggregate at its
    place in the history (``received``: an EventReceived was taken before it), as the
    apply script asks."""
    if rule == "own":
        return False
    if rule == "first":
        return record.version == 1
    return rule != "received" or received


def _why(record: RecordedEvent, at: str, position: int) -> str:
    if at == "r":
        return (
            f"it carries version {record.version} where {position + 1} belongs: version "
            f"{record.version} of {record.aggregate_id!r} was applied from an earlier stream "
            "sequence (a second event for one version, not a redelivery)"
        )
    template = _REFUSED.get(at, "refused by the domain ({rule})")
    field, named = named_id(record) or ("", "")
    return template.format(
        type=record.event_type,
        version=record.version,
        id=record.aggregate_id,
        rule=at,
        field=field,
        named=repr(named[:80]) if named else "no aggregate",
    )


def _done(record: RecordedEvent, mine: set[int], outcome: Outcome) -> None:
    if record.stream_seq in mine:
        outcome.done.append(record.stream_seq)


def _wait(held: Held, mine: set[int], outcome: Outcome, reason: str) -> None:
    for record, _ in held:
        if record.stream_seq in mine:
            outcome.waiting[record.stream_seq] = reason


def _refuse(held: Held, mine: set[int], outcome: Outcome, reason: str) -> None:
    """The first held event is refused, the rest waits behind it. Read from the stream
    (not delivered in this call), it is refused on its own delivery: ours wait."""
    first = held[0][0]
    if first.stream_seq in mine:
        outcome.failed[first.stream_seq] = reason
        _wait(held[1:], mine, outcome, f"behind refused sequence {first.stream_seq}")
    else:
        _wait(held, mine, outcome, f"behind sequence {first.stream_seq}: {reason}")


_NOTES = (
    "each aggregate's chain is checked by version as well (versions missing before an "
    "event are read from the stream; types not consumed are no-ops at their place); "
    "events the domain refuses are dead-lettered"
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
        notes=_NOTES,
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
        notes=_NOTES,
    )


def build_events(env: ModelEnv, spec: ModelSpec) -> ReadModel:
    return OmniEventsModel(spec, env)


def build_identities(env: ModelEnv, spec: ModelSpec) -> ReadModel:
    return OmniModel(spec, env, identity_commands, identity_rule)
