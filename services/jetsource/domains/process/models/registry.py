"""The ``processes`` read model (Valkey): the process registry.

Per process ``p:<id>`` (hash): kind, name, status (running | completed | failed |
cancelled | interrupted), started_at/ended_at (occurred, ns), first/last recorded_at
(ns), event count, last event type, last process_seq, error (JSON), attributes (JSON),
first (the global_seq of its first event). The tree (parent, root, depth, children)
is kept by ``TREE_LUA``. Indexes, all sorted by the process's first global_seq (the
order processes appeared in the ledger; unique, so a cursor is one number):
``idx:all``, ``idx:status:<status>``, ``idx:kind:<kind>``, ``idx:root:<root>``, and
``kids:<id>`` for a parent; and ``idx:started`` by start time (``started_at`` in µs).

Status: the first event makes a process ``running``; process_completed / _failed /
_cancelled / _interrupted set theirs (the last one recorded wins), and when a process
ends, every descendant still ``running`` becomes ``interrupted`` (ended_at = the
ancestor's ending time). A child recorded before its parent is a root (parent_pending)
until the parent's first event: then it and its whole subtree get the parent's root
and their depths.

"Still running when the ancestor ended" is a matter of the log's order (global_seq),
not of the order the model sees events in: the projector keeps each process's order
only, and after a crash an event comes back (after the ack wait) behind later events
of other processes. So the cascade is derived from positions: ``ends:<id>`` (zset)
holds a process's own endings (score global_seq, member ``<seq>|<occurred ns>``) and
``declared_at`` the global_seq of the event that named its parent (the link to the
parent exists from max(declared_at, parent's first)). A process with no ending of its
own is ``interrupted`` by the first ending (by global_seq) of an ancestor recorded
once the chain of links up to that ancestor existed, else ``running``; it is worked
out again whenever one of those inputs changes (an ending above it, a link above it).

One Lua script per batch applies every event that is the next of its process (by
process_seq) and moves the checkpoint; a redelivered event changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from valkey.asyncio import Valkey

from jetsource.core.envelope import RecordedEvent
from jetsource.domains.process.models.common import (
    ENDINGS,
    PRUNE_LUA,
    REWIND_TREE_LUA,
    SKIPPED,
    TREE_LUA,
    body_of,
    history,
    is_noop,
    lifecycle,
    occurred_ns,
    script_outcome,
)
from jetsource.domains.process.pruning import PRUNER_ID, is_tombstone, pruned_ids
from jetsource.projection.contract import Kind, ModelSpec, Outcome, RebuildStrategy
from jetsource.projection.valkey import (
    CHECKPOINT_LUA,
    PLACE_LUA,
    ValkeyModel,
    skipped,
    text,
    valkey_io,
)

PROCESSES = "processes"
# The largest integer a double (a sorted set's score) holds exactly, and every one below.
EXACT_SCORE = 2**53

_ENDINGS_LUA = "{" + ", ".join(f"{k} = '{v}'" for k, v in ENDINGS.items()) + "}"

# What the apply and rewind scripts share, after ``p`` and ``REVERT`` (a rewind: a
# status derived as interrupted may go back to running) are set: the tree, the
# status, and ``apply_event(i)``, which applies the event at ARGV[i] (14 arguments)
# and returns the index after it.
_BODY = (
    TREE_LUA
    + REWIND_TREE_LUA
    + PRUNE_LUA
    + """
local ENDINGS = """
    + _ENDINGS_LUA
    + f"""
local PRUNER = '{PRUNER_ID}'
"""
    + """
local function set_status(id, status, ended)
  local h = p .. ':p:' .. id
  local old = redis.call('HGET', h, 'status')
  if old then redis.call('ZREM', p .. ':idx:status:' .. old, id) end
  redis.call('HSET', h, 'status', status)
  redis.call('ZADD', p .. ':idx:status:' .. status, redis.call('HGET', p .. ':first', id), id)
  if ended ~= nil then
    if ended == '' then
      redis.call('HDEL', h, 'ended_at')
    else
      redis.call('HSET', h, 'ended_at', ended)
    end
  end
end
-- The status of a process without an ending of its own, from positions alone (see the
-- module's docstring): the first ending of an ancestor at or after the moment the
-- chain of links up to it existed interrupts it. Any order of application (each
-- process's own events in order) gives the status the log's order gives.
local OWN = {completed = true, failed = true, cancelled = true}
local function derive(id)
  if redis.call('EXISTS', p .. ':ends:' .. id) == 1 then return end
  local h = p .. ':p:' .. id
  local status = redis.call('HGET', h, 'status')
  -- a row kept before ends:<id> existed: its own ending stands
  if OWN[status] then return end
  local x, since, best, occ, hops = id, 0, nil, '', 0
  while hops < 100000 do
    local q = redis.call('HGET', p .. ':parent', x)
    if not q then break end
    local at = tonumber(redis.call('HGET', p .. ':declared_at', x) or '0')
    local qfirst = tonumber(redis.call('HGET', p .. ':first', q) or '0')
    if qfirst > at then at = qfirst end
    if at > since then since = at end
    local e = redis.call(
      'ZRANGEBYSCORE', p .. ':ends:' .. q, string.format('%d', since), '+inf',
      'WITHSCORES', 'LIMIT', 0, 1)
    if #e > 0 and (best == nil or tonumber(e[2]) < best) then
      best = tonumber(e[2])
      occ = string.sub(e[1], string.find(e[1], '|', 1, true) + 1)
    end
    x, hops = q, hops + 1
  end
  if best ~= nil then
    if status ~= 'interrupted' or (redis.call('HGET', h, 'ended_at') or '') ~= occ then
      set_status(id, 'interrupted', occ)
    end
  elseif REVERT and status == 'interrupted' then
    set_status(id, 'running', '')  -- the ending above it was voided
  end
end
-- Whether no process from ``q`` up to its root has an ending: a subtree attached
-- below it then keeps the statuses it has (its own links and endings are the same,
-- and its new ancestors interrupt nothing), so its nodes need no derive. Without
-- this, attaching a subtree walked up from each of its nodes: a chain of 150
-- processes recorded leaf first took 3 s of Valkey, 1,000 levels minutes (BUSY).
local function quiet_above(q)
  local x, hops = q, 0
  while x and hops < 100000 do
    if redis.call('EXISTS', p .. ':ends:' .. x) == 1 then return false end
    x, hops = redis.call('HGET', p .. ':parent', x), hops + 1
  end
  return true
end
local calm = false
local function moved(node, old, new, q)
  redis.call('ZREM', p .. ':idx:root:' .. old, node)
  redis.call('ZADD', p .. ':idx:root:' .. new, redis.call('HGET', p .. ':first', node), node)
  -- attach calls this first for the subtree's top (``old``), then for the rest
  if q and node == old then calm = not REVERT and quiet_above(q) end
  -- new ancestors: an ending above may have been applied already
  if not (q and calm) then derive(node) end
end
-- A new ending of ``id`` (global sequence ``seq``, occurred ``occ``), for its
-- descendants: a running one (nothing above interrupted it so far) is interrupted by
-- it when the links down to it are older than the ending (``since``, computed top
-- down as derive computes it bottom up); another one without an ending of its own is
-- derived again. So a root ending over a deep chain costs one pass, not a walk up
-- from every node (1,000 levels: 500,000 steps in one script).
local function ended_below(id, seq, occ)
  local out, since, i = {id}, {[id] = 0}, 1
  while i <= #out do
    local x = out[i]
    local xfirst = tonumber(redis.call('HGET', p .. ':first', x) or '0')
    for _, k in ipairs(redis.call('ZRANGE', p .. ':kids:' .. x, 0, -1)) do
      local at = tonumber(redis.call('HGET', p .. ':declared_at', k) or '0')
      if xfirst > at then at = xfirst end
      if since[x] > at then at = since[x] end
      since[k] = at
      table.insert(out, k)
    end
    i = i + 1
  end
  for k = 2, #out do
    local n = out[k]
    if redis.call('EXISTS', p .. ':ends:' .. n) == 0 then
      local status = redis.call('HGET', p .. ':p:' .. n, 'status')
      if status == 'running' then
        if since[n] <= seq then set_status(n, 'interrupted', occ) end
      elseif not OWN[status] then
        derive(n)
      end
    end
  end
end
local function remove(id)
  local h = p .. ':p:' .. id
  local f = redis.call('HMGET', h, 'status', 'kind')
  if f[1] then redis.call('ZREM', p .. ':idx:status:' .. f[1], id) end
  if f[2] then redis.call('ZREM', p .. ':idx:kind:' .. f[2], id) end
  redis.call('ZREM', p .. ':idx:all', id)
  redis.call('ZREM', p .. ':idx:started', id)
  local root = redis.call('HGET', p .. ':root', id)
  if root then redis.call('ZREM', p .. ':idx:root:' .. root, id) end
  redis.call('DEL', h, p .. ':idx:root:' .. id, p .. ':ends:' .. id)
  redis.call('HDEL', p .. ':declared_at', id)
end
"""
    + PLACE_LUA
    + """
local waiting, refused = {}, {}
local applied, maxseq = 0, 0
local function apply_event(i)
  local id, ver, seq, typ = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), ARGV[i + 3]
  local parent, occ, rec = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local kind, name, err = ARGV[i + 7], ARGV[i + 8], ARGV[i + 9]
  local attrs, skip, started_us, pruned = ARGV[i + 10], ARGV[i + 11], ARGV[i + 12], ARGV[i + 13]
  local seqtext = ARGV[i + 2]  -- exact, for keys and scores
  i = i + 14
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
      if typ == 'process_pruned' and skip ~= '1' then prune(cjson.decode(pruned), seq, remove) end
    elseif skip ~= '1' then
      local h = p .. ':p:' .. id
      if redis.call('HEXISTS', p .. ':first', id) == 0 then
        appear(id, seq, moved)
        redis.call('HSET', h, 'first', seq, 'first_rec', rec, 'count', 0)
        redis.call('ZADD', p .. ':idx:all', seq, id)
        redis.call('ZADD', p .. ':idx:root:' .. id, seq, id)
        set_status(id, 'running', nil)
      end
      if parent ~= '' and parent ~= id and redis.call('HEXISTS', p .. ':declared', id) == 0 then
        redis.call('HSET', p .. ':declared_at', id, seqtext)
      end
      declare(id, parent, seq, moved)
      redis.call('HINCRBY', h, 'count', 1)
      redis.call('HSET', h, 'last_type', typ, 'last_seq', ver, 'last_rec', rec)
      if typ == 'process_started' then
        if kind ~= '' then
          local old = redis.call('HGET', h, 'kind')
          if old then redis.call('ZREM', p .. ':idx:kind:' .. old, id) end
          redis.call('HSET', h, 'kind', kind)
          redis.call('ZADD', p .. ':idx:kind:' .. kind, redis.call('HGET', h, 'first'), id)
        end
        if name ~= '' then redis.call('HSET', h, 'name', name) end
        if occ ~= '' then
          redis.call('HSET', h, 'started_at', occ)
          redis.call('ZADD', p .. ':idx:started', started_us, id)
        end
        if attrs ~= '' then redis.call('HSET', h, 'attrs', attrs) end
      end
      local ending = ENDINGS[typ]
      if ending then
        redis.call('ZADD', p .. ':ends:' .. id, seqtext, seqtext .. '|' .. occ)
        set_status(id, ending, occ)
        -- the error is the last ending's: a completion after a failure clears it
        if ending == 'failed' and err ~= '' then
          redis.call('HSET', h, 'error', err)
        else
          redis.call('HDEL', h, 'error')
        end
        if REVERT then
          local below = subtree(id)
          for k = 2, #below do derive(below[k]) end
        else
          ended_below(id, seq, occ)
        end
      end
    end
  end
  return i
end
"""
)

_APPLY = (
    """
local p, n = ARGV[1], tonumber(ARGV[2])
local REVERT = false
"""
    + _BODY
    + """
local i = 3
for _ = 1, n do i = apply_event(i) end
"""
    + CHECKPOINT_LUA
    + """
return {applied, waiting, refused}
"""
)

# One process written again from its first ``to`` events (``rewind``), if its stored
# position is within the guard; returns the position found. ARGV: namespace, id, to,
# low, high, the number of events, the events as ``_APPLY`` takes them.
_REWIND = (
    """
local p, id, to = ARGV[1], ARGV[2], tonumber(ARGV[3])
local REVERT = true
"""
    + _BODY
    + """
local cur = tonumber(redis.call('HGET', p .. ':pos', id) or '0')
if cur < tonumber(ARGV[4]) or cur > tonumber(ARGV[5]) then return cur end
if redis.call('HEXISTS', p .. ':pruned', id) == 1 then return cur end
local affected = {}
local function around(node)
  if redis.call('HEXISTS', p .. ':first', node) == 1 then
    for _, n in ipairs(subtree(node)) do affected[n] = true end
  end
end
around(id)
unplace(id, moved)
local h = p .. ':p:' .. id
local f = redis.call('HMGET', h, 'status', 'kind')
if f[1] then redis.call('ZREM', p .. ':idx:status:' .. f[1], id) end
if f[2] then redis.call('ZREM', p .. ':idx:kind:' .. f[2], id) end
redis.call('ZREM', p .. ':idx:all', id)
redis.call('ZREM', p .. ':idx:started', id)
redis.call('ZREM', p .. ':idx:root:' .. (redis.call('HGET', p .. ':root', id) or id), id)
redis.call('DEL', h, p .. ':ends:' .. id)
redis.call('HDEL', p .. ':declared_at', id)
redis.call('HDEL', p .. ':pos', id)
redis.call('HDEL', p .. ':pseq', id)
local i = 7
for _ = 1, tonumber(ARGV[6]) do i = apply_event(i) end
around(id)
for _, c in ipairs(orphan(id, moved)) do around(c) end
for node in pairs(affected) do
  if redis.call('HEXISTS', p .. ':first', node) == 1 then derive(node) end
end
if to == 0 then redis.call('HDEL', p .. ':pos', id) end
redis.call('HINCRBY', p .. ':meta', 'applied', to - cur)
local cp = tonumber(redis.call('HGET', p .. ':meta', 'checkpoint') or '0')
if maxseq > cp then redis.call('HSET', p .. ':meta', 'checkpoint', maxseq) end
return cur
"""
)


# Per id: the hash, root, depth, linked parent, declared parent and children (false
# where absent), in one round trip.
_READ = """
local p, out = ARGV[1], {}
for i = 2, #ARGV do
  local id = ARGV[i]
  out[i - 1] = {
    redis.call('HGETALL', p .. ':p:' .. id),
    redis.call('HGET', p .. ':root', id),
    redis.call('HGET', p .. ':depth', id),
    redis.call('HGET', p .. ':parent', id),
    redis.call('HGET', p .. ':declared', id),
    redis.call('ZRANGE', p .. ':kids:' .. id, 0, -1),
  }
end
return out
"""


def processes_spec(version: int) -> ModelSpec:
    return ModelSpec(
        PROCESSES,
        version,
        Kind.SNAPSHOT,
        "valkey",
        "the process registry: status, kind, name, tree and times of each process, "
        "with indexes by status, kind and root",
        rebuild_strategy=RebuildStrategy.SIDE_BY_SIDE,
        notes="a process's events apply in process_seq order; a child recorded before "
        "its parent is attached (with its subtree) when the parent appears",
    )


@dataclass
class ProcessRow:
    """One process as the registry holds it."""

    process_id: str
    kind: str = ""
    name: str = ""
    status: str = "running"
    parent: str = ""  # linked parent
    declared: str = ""  # the parent it named (may not be recorded yet)
    root: str = ""
    depth: int = 0
    children: list[str] = field(default_factory=list)
    started_at: int | None = None
    ended_at: int | None = None
    first_recorded_at: int = 0
    last_recorded_at: int = 0
    event_count: int = 0
    last_event_type: str = ""
    last_process_seq: int = 0
    first_global_seq: int = 0
    error: str = ""
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def parent_pending(self) -> bool:
        return bool(self.declared) and not self.parent


class ProcessesModel(ValkeyModel):
    def __init__(self, spec: ModelSpec, redis: Valkey, prefix: str) -> None:
        super().__init__(spec, redis, prefix)
        self._apply = self.write_script(_APPLY)
        self._rewind = self.write_script(_REWIND)
        self._read = redis.register_script(_READ)

    async def setup(self) -> None:
        pass

    @staticmethod
    def _args(e: RecordedEvent) -> list[Any]:
        if is_noop(e):
            return [
                e.aggregate_id,
                e.version,
                e.stream_seq,
                SKIPPED,
                "",
                "",
                0,
                "",
                "",
                "",
                "",
                1,
                0,
                "",
            ]
        body = body_of(e)
        life = lifecycle(e.event_type, body)
        occ = occurred_ns(e)
        return [
            e.aggregate_id,
            e.version,
            e.stream_seq,
            e.event_type,
            e.envelope.parent_aggregate_id,
            "" if occ is None else occ,
            e.recorded_at_ns,
            life.kind,
            life.name,
            life.error,
            life.attributes,
            0,
            0 if occ is None else occ // 1000,  # idx:started's score: µs (exact to 2^53)
            json.dumps(pruned_ids(e)) if is_tombstone(e) else "",
        ]

    async def apply(self, events: Sequence[RecordedEvent]) -> Outcome:
        args: list[Any] = [self.ns, len(events)]
        for e in events:
            args += self._args(e)
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
        """Write the process as its first ``to_version`` events make it (``events``: a
        voided one is a no-op at its place), in one script: it leaves the tree with its
        subtree, its row and index entries go, its events are applied again as the
        projector applies them (it appears, names its parent, ends), and the statuses
        of its subtree are derived again (an ending voided above a process no longer
        interrupts it). With ``guard`` (low, high) nothing is written unless the stored
        position is within. Returns the position it was at."""
        kept = history(self.spec.name, aggregate_id, to_version, events)
        low, high = guard or (0, 1 << 62)
        args: list[Any] = [self.ns, aggregate_id, to_version, low, high, len(kept)]
        for e in kept:
            args += self._args(e)
        return int(await valkey_io(self._rewind(args=args)))

    # -- reads ------------------------------------------------------------------

    async def read_many(self, ids: Sequence[str]) -> list[ProcessRow | None]:
        """The rows of these processes (None for unknown ones), in one round trip."""
        if not ids:
            return []
        raw = await valkey_io(self._read(args=[self.ns, *ids]))
        out: list[ProcessRow | None] = []
        for pid, (h, root, depth, parent, declared, kids) in zip(ids, raw, strict=True):
            if not h:
                out.append(None)
                continue
            fields = {h[i]: h[i + 1] for i in range(0, len(h), 2)}
            out.append(_row(pid, fields, root, depth, parent, declared, kids))
        return out

    async def read(self, process_id: str) -> ProcessRow | None:
        return (await self.read_many([process_id]))[0]

    def index(self, name: str, value: str = "") -> str:
        """The key of an index: all, status, kind, root, kids."""
        if name == "all":
            return f"{self.ns}:idx:all"
        if name == "kids":
            return f"{self.ns}:kids:{value}"
        return f"{self.ns}:idx:{name}:{value}"

    async def scan(self, key: str, below: int | None, count: int) -> list[tuple[str, int]]:
        """(id, first global_seq) of an index, newest first, below the cursor."""
        high = "+inf" if below is None else f"({below}"
        raw = await valkey_io(
            self.redis.zrevrangebyscore(key, high, "-inf", start=0, num=count, withscores=True)
        )
        return [(text(m), int(s)) for m, s in raw]

    async def scan_started(
        self, low_us: int | None, high_us: int | None, after: tuple[int, str] | None, count: int
    ) -> list[tuple[str, int]]:
        """(id, started µs) by start time, newest first, within [low, high) and after
        the cursor (started µs, id) of the last one shown (ties: id descending).

        A score is a double, exact up to 2^53 µs (2255-06-05): past it Valkey rounds
        the stored score and the bounds alike (to 32 µs in year 9999), and a process
        whose score rounds to ``high`` is in the window as often as not. So there,
        ``high`` is taken inclusively: a few µs more, which the caller leaves out by
        the exact start time (the query service's window is exact, in ns)."""
        key = f"{self.ns}:idx:started"
        high: str = (
            "+inf" if high_us is None else str(high_us) if high_us > EXACT_SCORE else f"({high_us}"
        )
        low: str = "-inf" if low_us is None else str(low_us)
        if after is not None:
            high = str(after[0]) if high_us is None or after[0] < high_us else high
        out: list[tuple[str, int]] = []
        offset = 0
        while len(out) < count:
            raw = await valkey_io(
                self.redis.zrevrangebyscore(
                    key, high, low, start=offset, num=count + 16, withscores=True
                )
            )
            for member, score in raw:
                pid, us = text(member), int(score)
                if after is not None and us == after[0] and pid >= after[1]:
                    continue  # shown already (or the cursor itself)
                if after is not None and us > after[0]:
                    continue
                out.append((pid, us))
                if len(out) == count:
                    break
            if len(raw) < count + 16:
                break
            offset += len(raw)
        return out

    async def children(self, ids: Sequence[str]) -> list[list[str]]:
        pipe = self.redis.pipeline(transaction=False)
        for pid in ids:
            pipe.zrange(f"{self.ns}:kids:{pid}", 0, -1)
        return [[text(k) for k in kids] for kids in await valkey_io(pipe.execute())]


def _row(
    pid: str,
    h: dict[bytes, bytes],
    root: bytes | None,
    depth: bytes | None,
    parent: bytes | None,
    declared: bytes | None,
    kids: list[bytes],
) -> ProcessRow:
    # Lua's false (an absent field) arrives as None.
    def s(key: str) -> str:
        return text(h.get(key.encode(), b""))

    def n(key: str) -> int | None:
        value = h.get(key.encode())
        return int(value) if value is not None else None

    return ProcessRow(
        process_id=pid,
        kind=s("kind"),
        name=s("name"),
        status=s("status") or "running",
        parent=text(parent) if parent else "",
        declared=text(declared) if declared else "",
        root=text(root) if root else pid,
        depth=int(depth or 0),
        children=[text(k) for k in kids],
        started_at=n("started_at"),
        ended_at=n("ended_at"),
        first_recorded_at=n("first_rec") or 0,
        last_recorded_at=n("last_rec") or 0,
        event_count=n("count") or 0,
        last_event_type=s("last_type"),
        last_process_seq=n("last_seq") or 0,
        first_global_seq=n("first") or 0,
        error=s("error"),
        attributes=json.loads(s("attrs")) if s("attrs") else {},
    )
