"""The ``process_timeline`` read model (Valkey): every event, so a timeline is read
from the model, never from the log.

- ``ev`` (hash): global_seq -> the event as the query service answers it
  (``StoredEvent``, protobuf bytes), stored once;
- ``tl:<process>`` (zset): the process's events (score and member = global_seq; within
  a process, global_seq order is process_seq order);
- ``tree:<root>`` (zset): the whole tree of a root in global_seq order. When a child
  recorded before its parent is attached, its tree is merged into the parent's root's;
- ``all`` (zset): every event, for ListEvents across processes;
- the tree itself (``TREE_LUA``), the model's own copy.

One Lua script per batch applies each event that is the next of its process, moves the
checkpoint, and publishes the highest global_seq applied on ``<ns>:applied`` (what a
watch waits on; a watcher also polls, so a lost message only delays it).
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Sequence
from typing import Any

from valkey.asyncio import Valkey

from jetsource._gen.process.v1.events_pb2 import StoredEvent
from jetsource.core.envelope import RecordedEvent
from jetsource.domains.process.models.common import (
    PRUNE_LUA,
    REWIND_TREE_LUA,
    SKIPPED,
    TREE_LUA,
    history,
    is_noop,
    script_outcome,
    stored_event,
)
from jetsource.domains.process.pruning import PRUNER_ID, pruned_ids
from jetsource.projection.contract import Kind, ModelSpec, Outcome, RebuildStrategy
from jetsource.projection.valkey import (
    CHECKPOINT_LUA,
    PLACE_LUA,
    ValkeyModel,
    skipped,
    text,
    valkey_io,
)

TIMELINE = "process_timeline"

# What the apply and rewind scripts share, after ``p`` is set and ``moved`` declared:
# the tree and ``apply_event(i)``, which applies the event at ARGV[i] (7 arguments)
# and returns the index after it.
_BODY = (
    TREE_LUA
    + REWIND_TREE_LUA
    + PRUNE_LUA
    + f"""
local PRUNER = '{PRUNER_ID}'
"""
    + """
local function remove(id)
  local root = redis.call('HGET', p .. ':root', id)
  local seqs = redis.call('ZRANGE', p .. ':tl:' .. id, 0, -1)
  for k = 1, #seqs, 500 do
    local part = {unpack(seqs, k, math.min(k + 499, #seqs))}
    redis.call('HDEL', p .. ':ev', unpack(part))
    redis.call('ZREM', p .. ':all', unpack(part))
    if root then redis.call('ZREM', p .. ':tree:' .. root, unpack(part)) end
  end
  redis.call('DEL', p .. ':tl:' .. id, p .. ':tree:' .. id)
end
"""
    + PLACE_LUA
    + """
local waiting, refused = {}, {}
local applied, maxseq = 0, 0
local function apply_event(i)
  local id, ver, seq = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local parent, entry, skip, typ = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local seqtext = ARGV[i + 2]  -- exact
  i = i + 7
  -- a pruned process's later event: nothing (a rebuild never sees it either)
  local at = 'done'
  if redis.call('HEXISTS', p .. ':pruned', id) == 0 then at = place(id, ver, seq, seqtext) end
  if at == 'wait' then
    table.insert(waiting, seq)
  elseif at == 'refuse' then
    table.insert(refused, seq)
    table.insert(refused, pos[id])
  elseif at == 'apply' then
    advance(id, ver, seq, seqtext)
    applied = applied + 1
    if seq > maxseq then maxseq = seq end
    if id == PRUNER then
      -- the tombstone names the pruned processes (in ``entry``); not a timeline event
      if typ == 'process_pruned' and skip ~= '1' then prune(cjson.decode(entry), seq, remove) end
    elseif skip ~= '1' then
      if redis.call('HEXISTS', p .. ':first', id) == 0 then appear(id, seq, moved) end
      if parent ~= '' and parent ~= id and redis.call('HEXISTS', p .. ':declared', id) == 0 then
        redis.call('HSET', p .. ':declared_at', id, seqtext)
      end
      declare(id, parent, seq, moved)
      redis.call('HSET', p .. ':ev', seq, entry)
      redis.call('ZADD', p .. ':tl:' .. id, seq, seq)
      redis.call('ZADD', p .. ':all', seq, seq)
      redis.call('ZADD', p .. ':tree:' .. redis.call('HGET', p .. ':root', id), seq, seq)
    end
  end
  return i
end
"""
)

_APPLY = (
    """
local p, n = ARGV[1], tonumber(ARGV[2])
-- A subtree's tree timeline is merged into its new root's: the smaller into the larger
-- (ZUNIONSTORE rewrites its whole destination: a parent arriving after its 10,000
-- children rewrote its growing tree once per child, quadratic, and blocked Valkey).
local function moved(node, old, new)
  if node == old then
    local src, dst = p .. ':tree:' .. old, p .. ':tree:' .. new
    if redis.call('ZCARD', src) <= redis.call('ZCARD', dst) then
      local n = redis.call('ZCARD', src)
      for k = 0, n - 1, 500 do
        local part = redis.call('ZRANGE', src, k, k + 499, 'WITHSCORES')
        local args = {}
        for j = 1, #part, 2 do
          args[#args + 1] = part[j + 1]
          args[#args + 1] = part[j]
        end
        redis.call('ZADD', dst, unpack(args))
      end
    else
      redis.call('ZUNIONSTORE', dst, 2, dst, src)
    end
    redis.call('DEL', src)
  end
end
"""
    + _BODY
    + """
local i = 3
for _ = 1, n do i = apply_event(i) end
"""
    + CHECKPOINT_LUA
    + """
if applied > 0 then redis.call('PUBLISH', p .. ':applied', maxseq) end
return {applied, waiting, refused}
"""
)

# One process written again from its first ``to`` events (``rewind``), if its stored
# position is within the guard; returns the position found. ARGV: namespace, id, to,
# low, high, the number of events, the events as ``_APPLY`` takes them. The trees its
# subtree left or joined are written again from their processes' timelines.
_REWIND = (
    """
local p, id, to = ARGV[1], ARGV[2], tonumber(ARGV[3])
local touched = {}
local function moved(node, old, new)
  touched[old] = true
  touched[new] = true
end
"""
    + _BODY
    + """
local cur = tonumber(redis.call('HGET', p .. ':pos', id) or '0')
if cur < tonumber(ARGV[4]) or cur > tonumber(ARGV[5]) then return cur end
if redis.call('HEXISTS', p .. ':pruned', id) == 1 then return cur end
touched[id] = true
local root = redis.call('HGET', p .. ':root', id)
if root then touched[root] = true end
unplace(id, moved)
local seqs = redis.call('ZRANGE', p .. ':tl:' .. id, 0, -1)
for k = 1, #seqs, 500 do
  local part = {unpack(seqs, k, math.min(k + 499, #seqs))}
  redis.call('HDEL', p .. ':ev', unpack(part))
  redis.call('ZREM', p .. ':all', unpack(part))
end
redis.call('DEL', p .. ':tl:' .. id)
redis.call('HDEL', p .. ':declared_at', id)
redis.call('HDEL', p .. ':pos', id)
redis.call('HDEL', p .. ':pseq', id)
local i = 7
for _ = 1, tonumber(ARGV[6]) do i = apply_event(i) end
for _, c in ipairs(orphan(id, moved)) do touched[c] = true end
for r in pairs(touched) do
  local key = p .. ':tree:' .. r
  redis.call('DEL', key)
  if redis.call('HGET', p .. ':root', r) == r then
    for _, n in ipairs(subtree(r)) do
      local s = redis.call('ZRANGE', p .. ':tl:' .. n, 0, -1)
      for k = 1, #s, 500 do
        local args = {}
        for j = k, math.min(k + 499, #s) do
          args[#args + 1] = s[j]
          args[#args + 1] = s[j]
        end
        redis.call('ZADD', key, unpack(args))
      end
    end
  end
end
if to == 0 then redis.call('HDEL', p .. ':pos', id) end
redis.call('HINCRBY', p .. ':meta', 'applied', to - cur)
-- (a tree's set of events may come back the same with other members under a process:
-- what a reader kept of a subtree is checked against this too; not in the digest)
redis.call('HINCRBY', p .. ':meta', 'rewound', 1)
local cp = tonumber(redis.call('HGET', p .. ':meta', 'checkpoint') or '0')
if maxseq > cp then redis.call('HSET', p .. ':meta', 'checkpoint', maxseq) end
return cur
"""
)

# The ids of a process's subtree (itself first), breadth first.
_SUBTREE = (
    """
local p = ARGV[1]
"""
    + TREE_LUA
    + """
if redis.call('HEXISTS', p .. ':first', ARGV[2]) == 0 then return {} end
return subtree(ARGV[2])
"""
)


# One round trip for a page of a process (or of a root's tree): 0 if the process is
# unknown; 2 if a subtree was asked of a process that is not a root (the caller merges
# its processes' timelines); else 1, the global sequences after the cursor and their
# events.
_PAGE = """
local p, pid, subtree, after, count = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
if redis.call('HEXISTS', p .. ':first', pid) == 0 then return {0} end
local key = p .. ':tl:' .. pid
if subtree == '1' then
  if redis.call('HGET', p .. ':root', pid) ~= pid then return {2} end
  key = p .. ':tree:' .. pid
end
local seqs = redis.call('ZRANGEBYSCORE', key, '(' .. after, '+inf', 'LIMIT', 0, count)
if #seqs == 0 then return {1, seqs, {}} end
return {1, seqs, redis.call('HMGET', p .. ':ev', unpack(seqs))}
"""


# What a subtree's events depend on, for a reader that keeps them (``tree_stamp``):
# the process's root, its tree's size and last global sequence, and how many rewinds
# the model has had. Every write that changes a subtree's events changes one of them:
# an event applied or a process joining adds to the root's tree, a tree attached
# below changes the root's tree (or, above, the root), pruning removes from it, and
# a rewind (which may rebuild a tree the same size with other members) counts.
_STAMP = """
local p, pid = ARGV[1], ARGV[2]
local root = redis.call('HGET', p .. ':root', pid)
if not root then return {} end
local tree = p .. ':tree:' .. root
local last = redis.call('ZRANGE', tree, -1, -1)[1] or '0'
local rewound = redis.call('HGET', p .. ':meta', 'rewound') or '0'
return {root, redis.call('ZCARD', tree), last, rewound}
"""


def timeline_spec(version: int) -> ModelSpec:
    return ModelSpec(
        TIMELINE,
        version,
        Kind.TIMELINE,
        "valkey",
        "every event: per process in process_seq order, per root tree and across "
        "processes in global_seq order",
        rebuild_strategy=RebuildStrategy.SIDE_BY_SIDE,
    )


class ProcessTimelineModel(ValkeyModel):
    def __init__(self, spec: ModelSpec, redis: Valkey, prefix: str) -> None:
        super().__init__(spec, redis, prefix)
        self._apply = self.write_script(_APPLY)
        self._rewind = self.write_script(_REWIND)
        self._subtree = redis.register_script(_SUBTREE)
        self._page = redis.register_script(_PAGE)
        self._stamp = redis.register_script(_STAMP)

    @property
    def channel(self) -> str:
        return f"{self.ns}:applied"

    async def setup(self) -> None:
        pass

    @staticmethod
    def _event_args(e: RecordedEvent) -> list[Any]:
        if is_noop(e):
            return [e.aggregate_id, e.version, e.stream_seq, "", "", 1, SKIPPED]
        if e.aggregate_id == PRUNER_ID:
            ids = json.dumps(pruned_ids(e))
            return [e.aggregate_id, e.version, e.stream_seq, "", ids, 0, e.event_type]
        entry = stored_event(e).SerializeToString(deterministic=True)
        return [
            e.aggregate_id,
            e.version,
            e.stream_seq,
            e.envelope.parent_aggregate_id,
            entry,
            0,
            e.event_type,
        ]

    async def apply(self, events: Sequence[RecordedEvent]) -> Outcome:
        args: list[Any] = [self.ns, len(events)]
        for e in events:
            args += self._event_args(e)
        applied, waiting, refused = await valkey_io(self._apply(args=args))
        return script_outcome(events, applied, waiting, refused)

    async def skip(self, aggregate_id: str, stream_seq: int) -> bool:
        placeholder = skipped(aggregate_id, await self.position(aggregate_id) + 1, stream_seq, 0)
        return stream_seq in (await self.apply([placeholder])).done

    async def rewind(
        self,
        aggregate_id: str,
        to_version: int,
        *,
        events: Sequence[RecordedEvent] | None = None,
        guard: tuple[int, int] | None = None,
    ) -> int:
        """Write the process's timeline as its first ``to_version`` events make it
        (``events``: a voided one is a no-op at its place), in one script: its events
        go, it leaves the tree with its subtree, its events are applied again as the
        projector applies them, and every tree its subtree left or joined is written
        again from its processes' timelines. With ``guard`` (low, high) nothing is
        written unless the stored position is within. Returns the position it was at."""
        kept = history(self.spec.name, aggregate_id, to_version, events)
        low, high = guard or (0, 1 << 62)
        args: list[Any] = [self.ns, aggregate_id, to_version, low, high, len(kept)]
        for e in kept:
            args += self._event_args(e)
        return int(await valkey_io(self._rewind(args=args)))

    # -- reads ------------------------------------------------------------------

    async def page(
        self, process_id: str, subtree: bool, after: int, count: int
    ) -> tuple[int, list[int], list[bytes]]:
        """(1, sequences, encoded events) of a process's timeline (or a root's tree)
        after ``after``, in one round trip; (0, [], []) for an unknown process;
        (2, [], []) for the subtree of a process that is not a root."""
        raw = await valkey_io(
            self._page(args=[self.ns, process_id, 1 if subtree else 0, after, count])
        )
        status = int(raw[0])
        if status != 1:
            return status, [], []
        seqs = [int(s) for s in raw[1]]
        return 1, seqs, [r for r in raw[2] if r is not None]

    async def exists(self, process_id: str) -> bool:
        return bool(await valkey_io(self.redis.hexists(f"{self.ns}:first", process_id)))

    async def root_of(self, process_id: str) -> str | None:
        root = await valkey_io(self.redis.hget(f"{self.ns}:root", process_id))
        return text(root) if root else None

    async def subtree(self, process_id: str) -> list[str]:
        ids = await valkey_io(self._subtree(args=[self.ns, process_id]))
        return [text(i) for i in ids]

    def process_key(self, process_id: str) -> str:
        return f"{self.ns}:tl:{process_id}"

    def tree_key(self, root: str) -> str:
        return f"{self.ns}:tree:{root}"

    @property
    def all_key(self) -> str:
        return f"{self.ns}:all"

    async def seqs(self, key: str, after: int, upto: int | None, count: int) -> list[int]:
        """Global sequences of one index above ``after`` (and at most ``upto``)."""
        high = "+inf" if upto is None else upto
        raw = await valkey_io(self.redis.zrangebyscore(key, f"({after}", high, start=0, num=count))
        return [int(s) for s in raw]

    async def count(self, key: str, upto: int) -> int:
        """How many global sequences of one index are at most ``upto``."""
        return int(await valkey_io(self.redis.zcount(key, "-inf", upto)))

    async def tree_stamp(self, process_id: str) -> tuple[str, int, int, int] | None:
        """(root, its tree's size, its tree's last global sequence, rewinds so far):
        unchanged, so are the events of every subtree of that tree (``_STAMP``);
        None for an unknown process."""
        raw = await valkey_io(self._stamp(args=[self.ns, process_id]))
        if not raw:
            return None
        return text(raw[0]), int(raw[1]), int(raw[2]), int(raw[3])

    async def sizes(self, keys: Sequence[str]) -> int:
        """How many global sequences the indexes hold in all."""
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.zcard(key)
        return sum(int(n) for n in await valkey_io(pipe.execute()))

    async def merged_all(self, keys: Sequence[str]) -> list[int]:
        """Every global sequence of several indexes, merged."""
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.zrange(key, 0, -1)
        lists = await valkey_io(pipe.execute())
        return list(heapq.merge(*([int(s) for s in raw] for raw in lists)))

    async def merged_seqs(
        self, keys: Sequence[str], after: int, upto: int | None, count: int
    ) -> list[int]:
        """The first ``count`` global sequences of several indexes, merged."""
        high = "+inf" if upto is None else upto
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.zrangebyscore(key, f"({after}", high, start=0, num=count)
        lists = await valkey_io(pipe.execute())
        merged = heapq.merge(*([int(s) for s in raw] for raw in lists))
        return [s for _, s in zip(range(count), merged, strict=False)]

    async def events(self, seqs: Sequence[int]) -> list[StoredEvent]:
        """The stored events of these global sequences (those the model has), in order."""
        if not seqs:
            return []
        raws = await valkey_io(self.redis.hmget(f"{self.ns}:ev", list(seqs)))
        return [StoredEvent.FromString(raw) for raw in raws if raw is not None]
