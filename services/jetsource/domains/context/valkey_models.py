"""Valkey read models: ``context`` (current state per story, indexes) and ``timeline``.

Every key of a model version lives under ``<prefix>:<model>:v<version>:``, so two
versions run side by side. One Lua script per batch writes the effects of every
aggregate whose stored version is the one the batch was computed from, and moves the
checkpoint, atomically. A redelivered event finds its version already stored and
changes nothing.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from itertools import compress, islice
from operator import is_not
from types import MappingProxyType
from typing import Any

from google.protobuf.message import Message
from valkey.asyncio import Valkey
from valkey.exceptions import ResponseError

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.codec import UnknownEvent
from jetsource.core.crypto import ErasureWatch, erasures_heard
from jetsource.core.envelope import RecordedEvent
from jetsource.domains.context.history import FoldCache, history_up_to
from jetsource.domains.context.model import (
    ContextState,
    Decision,
    EvolveError,
    Maps,
    Subtask,
    evolve,
    fold_touched,
)
from jetsource.domains.context.serialize import StateEncoder, shell_to_dict, state_from_dict
from jetsource.eventstore.port import EventStore
from jetsource.projection.contract import Kind, ModelSpec, Outcome
from jetsource.projection.valkey import (
    CHECKPOINT_LUA,
    PLACE_LUA,
    REMEMBER_REFUSED_LUA,
    ValkeyModel,
    block_rest,
    group,
    may_repeat,
    next_versions,
    refused_seqs,
    script_outcome,
    skipped,
    valkey_io,
)

CONTEXT = "context"
TIMELINE = "timeline"
_NO_LIMIT = 2**52  # an open upper bound for the rewind scripts' version guard

# A story is one hash, ``doc:<id>``: the field "s" holds the document without its
# nodes (meta, status and the state's scalars, with empty decisions, subtasks and
# dependencies), and one field per node holds that node's JSON: "d:<id>" and "t:<id>"
# the ``"<id>":{...}`` member of the decisions / subtasks object, "e:<[from,to]>" the
# ``[from,to]`` of a dependency. A batch writes the shell and the nodes that changed
# (issue 23: writing a 1,700-node story's whole 300 kB document per batch was what
# held freshness back under load); a read joins the members in key order.
_SHELL = "s"
_DECISION, _SUBTASK, _DEPENDENCY = "d:", "t:", "e:"
_COMPACT: dict[str, Any] = {"separators": (",", ":"), "sort_keys": True}
_EMPTY: MappingProxyType[str, Any] = MappingProxyType({})

# HSET / HDEL of fields given in ARGV, in chunks (Lua's unpack has a limit).
_HASH_LUA = """
local function hset_from(key, from, count)
  local done = 0
  while done < count do
    local m = math.min(count - done, 500)
    local t = {}
    for k = 1, 2 * m do t[k] = ARGV[from + 2 * done + k - 1] end
    redis.call('HSET', key, unpack(t))
    done = done + m
  end
end
local function hdel_from(key, from, count)
  local done = 0
  while done < count do
    local m = math.min(count - done, 1000)
    local t = {}
    for k = 1, m do t[k] = ARGV[from + done + k - 1] end
    redis.call('HDEL', key, unpack(t))
    done = done + m
  end
end
"""

# Per aggregate: id, base version, new version, last seq, updated ms, status, count,
# whole (1: the story's hash is written anew, from nothing), then the number of
# fields set and of fields deleted, the (field, value) pairs and the deleted fields.
# A partial write applies only to a story stored as a hash: one stored otherwise (by
# an earlier layout, a whole JSON string) is a conflict, and the model loads it and
# writes it whole. Then the number of sequences refused (a second event for a version
# applied already, see ``next_versions``) and (id, seq) pairs: remembered in
# ``refused`` (id -> " <seq> <seq> "), so a retried one stays refused once a later
# event is applied (its sequence is below the stored one then).
_CONTEXT_APPLY = (
    _HASH_LUA
    + """
local p = ARGV[1]
local n = tonumber(ARGV[2])
"""
    + REMEMBER_REFUSED_LUA
    + """
local conflicts, stale = {}, {}
local applied, maxseq, i = 0, 0, 3
for _ = 1, n do
  local id, base, ver = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local seq, ms, status = tonumber(ARGV[i + 3]), ARGV[i + 4], ARGV[i + 5]
  local cnt, whole = tonumber(ARGV[i + 6]), ARGV[i + 7] == '1'
  local nset, ndel = tonumber(ARGV[i + 8]), tonumber(ARGV[i + 9])
  local sets = i + 10
  local dels = sets + 2 * nset
  i = dels + ndel
  local key = p .. ':doc:' .. id
  local cur = tonumber(redis.call('HGET', p .. ':pos', id) or '0')
  if cur == base and not whole and redis.call('TYPE', key).ok ~= 'hash' then
    table.insert(conflicts, id)
  elseif cur == base then
    if whole then redis.call('DEL', key) end
    hset_from(key, sets, nset)
    if ndel > 0 then hdel_from(key, dels, ndel) end
    redis.call('HSET', p .. ':pos', id, ver)
    redis.call('ZADD', p .. ':idx:updated', ms, id)
    local other = status == 'closed' and 'open' or 'closed'
    redis.call('ZREM', p .. ':idx:status:' .. other, id)
    redis.call('ZADD', p .. ':idx:status:' .. status, ms, id)
    applied = applied + cnt
    if seq > maxseq then maxseq = seq end
  elseif cur < ver then
    table.insert(conflicts, id)
  else
    table.insert(stale, id)
  end
end
local nref = tonumber(ARGV[i])
for k = 1, nref do remember_refused(ARGV[i + 2 * k - 1], ARGV[i + 2 * k]) end
"""
    + CHECKPOINT_LUA
    + """
return {conflicts, stale}
"""
)

# Write of one aggregate (rewind for replay): id, version, ms, status, then the guard
# (low, high: nothing is written unless the stored version is within), the
# aggregate's last sequence (moves the checkpoint forward, never back), the number of
# fields and the (field, value) pairs: the story's hash is written anew.
_CONTEXT_PUT = (
    _HASH_LUA
    + """
local p, id, ver = ARGV[1], ARGV[2], tonumber(ARGV[3])
local cur = tonumber(redis.call('HGET', p .. ':pos', id) or '0')
if cur < tonumber(ARGV[6]) or cur > tonumber(ARGV[7]) then return cur end
local key = p .. ':doc:' .. id
redis.call('DEL', key)
if ver == 0 then
  redis.call('HDEL', p .. ':pos', id)
  redis.call('ZREM', p .. ':idx:updated', id)
  redis.call('ZREM', p .. ':idx:status:open', id)
  redis.call('ZREM', p .. ':idx:status:closed', id)
else
  local status = ARGV[5]
  local other = status == 'closed' and 'open' or 'closed'
  hset_from(key, 10, tonumber(ARGV[9]))
  redis.call('HSET', p .. ':pos', id, ver)
  redis.call('ZADD', p .. ':idx:updated', ARGV[4], id)
  redis.call('ZREM', p .. ':idx:status:' .. other, id)
  redis.call('ZADD', p .. ':idx:status:' .. status, ARGV[4], id)
end
redis.call('HINCRBY', p .. ':meta', 'applied', ver - cur)
local seq = tonumber(ARGV[8])
local cp = tonumber(redis.call('HGET', p .. ':meta', 'checkpoint') or '0')
if seq > cp then redis.call('HSET', p .. ':meta', 'checkpoint', seq) end
return cur
"""
)

# Per event: id, version, seq, entry. Applies v only right after v-1 (``place``: a
# gap or a refusal blocks the rest of that aggregate in this call, a version applied
# already is a redelivery only from the sequence it was applied from or an earlier
# one); answers the waiting and the refused (seq, position) sequences.
_TIMELINE_APPLY = (
    """
local p, keep, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
"""
    + PLACE_LUA
    + """
local waiting, refused = {}, {}
local applied, maxseq, i = 0, 0, 4
for _ = 1, n do
  local id, ver, seq, entry = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), ARGV[i + 3]
  local seqtext = ARGV[i + 2]
  i = i + 4
  local at = place(id, ver, seq, seqtext)
  if at == 'wait' then
    table.insert(waiting, seq)
  elseif at == 'refuse' then
    table.insert(refused, seq)
    table.insert(refused, pos[id])
  elseif at == 'apply' then
    local key = p .. ':tl:' .. id
    redis.call('ZADD', key, ver, entry)
    redis.call('ZREMRANGEBYRANK', key, 0, -(keep + 1))
    advance(id, ver, seq, seqtext)
    applied = applied + 1
    if seq > maxseq then maxseq = seq end
  end
end
"""
    + CHECKPOINT_LUA
    + """
return {applied, waiting, refused}
"""
)

# id, version, guard (low, high: nothing is written unless the stored version is
# within), n, then n (version, entry) pairs and the last sequence. n = -1: only trim
# the entries after the version (no entries known: the sequence the version was
# applied from is read from its entry, if kept, else unknown); otherwise the entries
# replace the aggregate's timeline. The refused sequences stay (a second event for a
# version is one whatever the position).
_TIMELINE_REWIND = """
local p, id, ver = ARGV[1], ARGV[2], tonumber(ARGV[3])
local cur = tonumber(redis.call('HGET', p .. ':pos', id) or '0')
if cur < tonumber(ARGV[4]) or cur > tonumber(ARGV[5]) then return cur end
local n, key = tonumber(ARGV[6]), p .. ':tl:' .. id
local pseq = nil
if n < 0 then
  if cur <= ver then return cur end
  redis.call('ZREMRANGEBYSCORE', key, '(' .. ver, '+inf')
  local at = redis.call('ZRANGEBYSCORE', key, ver, ver)
  if #at == 1 then pseq = tostring(cjson.decode(at[1])['seq']) end
else
  redis.call('DEL', key)
  for i = 1, n do
    redis.call('ZADD', key, tonumber(ARGV[5 + 2 * i]), ARGV[6 + 2 * i])
  end
  local seq = tonumber(ARGV[7 + 2 * n])
  if n > 0 then pseq = ARGV[7 + 2 * n] end
  local cp = tonumber(redis.call('HGET', p .. ':meta', 'checkpoint') or '0')
  if seq > cp then redis.call('HSET', p .. ':meta', 'checkpoint', seq) end
end
if ver == 0 then
  redis.call('HDEL', p .. ':pos', id)
  redis.call('HDEL', p .. ':pseq', id)
else
  redis.call('HSET', p .. ':pos', id, ver)
  if pseq then
    redis.call('HSET', p .. ':pseq', id, pseq)
  else
    redis.call('HDEL', p .. ':pseq', id)
  end
end
redis.call('HINCRBY', p .. ':meta', 'applied', ver - cur)
return cur
"""


def _status(state: ContextState) -> str:
    return "closed" if state.closed else "open"


def _diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(keys of ``after`` whose item is not the same object in ``before``, keys of
    ``before`` missing from ``after``). A fold copies its state's maps (same keys,
    same order) and appends what it adds: then the items are compared in C, position
    by position, and the keys after ``before``'s are the new ones (a story of
    thousands of nodes in tens of microseconds); otherwise key by key."""
    n = len(before)
    if n <= len(after) and list(before) == list(islice(after, n)):
        same = map(is_not, before.values(), after.values())
        return [*compress(after, same), *islice(after, n, None)], []
    get = before.get
    changed = [k for k, item in after.items() if get(k) is not item]
    return changed, [k for k in before if k not in after]


def _dependency(edge: tuple[str, str]) -> str:
    return json.dumps(list(edge), separators=(",", ":"))


def _members(fields: dict[bytes, bytes], keys: list[bytes], prefix: bytes) -> bytes:
    """The values of the fields named ``prefix...``, in field order, comma-joined."""
    low = bisect_left(keys, prefix)
    high = bisect_left(keys, prefix[:-1] + bytes([prefix[-1] + 1]), low)
    return b",".join([fields[k] for k in keys[low:high]])


def assemble(fields: dict[bytes, bytes]) -> dict[str, Any] | None:
    """A story's document from its hash: what ``json.loads`` of the whole document
    gives (the same keys in the same order; the nodes in key order)."""
    shell = fields.get(_SHELL.encode())
    if shell is None:
        return None
    keys = sorted(fields)
    doc: dict[str, Any] = json.loads(shell)
    state = doc["state"]
    state["decisions"] = json.loads(b"{" + _members(fields, keys, _DECISION.encode()) + b"}")
    state["subtasks"] = json.loads(b"{" + _members(fields, keys, _SUBTASK.encode()) + b"}")
    dependencies = json.loads(b"[" + _members(fields, keys, _DEPENDENCY.encode()) + b"]")
    dependencies.sort()  # field order is byte order: the same for ids, checked anyway
    state["dependencies"] = dependencies
    return doc


def _document(raw: dict[bytes, bytes] | bytes | None) -> dict[str, Any] | None:
    """A stored story: a hash, or a whole JSON document (the layout before the hash,
    read as it is until the story is written again)."""
    if isinstance(raw, dict):
        return assemble(raw)
    return json.loads(raw) if raw else None


def _wrong_type(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE")


class ContextModel(ValkeyModel):
    """Current state of each story: ``doc:<id>`` (a hash: the document's shell and
    one field per node, see ``_SHELL``), ``idx:updated`` and
    ``idx:status:<open|closed>`` (sorted by last update, ms)."""

    def __init__(
        self, spec: ModelSpec, redis: Valkey, prefix: str, store: EventStore, cache_size: int
    ) -> None:
        super().__init__(spec, redis, prefix)
        self.store = store
        self.cache_size = cache_size
        # id -> (doc fields other than the state, state, the dicts behind its maps or
        # None); what this process last wrote. An apply takes its stories' entries out
        # while it works: their dicts are folded in place (nothing else holds them).
        self._cache: OrderedDict[str, tuple[dict[str, Any], ContextState, Maps | None]] = (
            OrderedDict()
        )
        self._folds = FoldCache()  # replay: a hot story's history folded once
        self._erasures = ErasureWatch()  # an erasure empties both
        self._encoder = StateEncoder()
        self._apply = self.write_script(_CONTEXT_APPLY)
        self._put = self.write_script(_CONTEXT_PUT)

    async def setup(self) -> None:
        pass

    def _remember(
        self,
        aggregate_id: str,
        meta: dict[str, Any],
        state: ContextState,
        maps: Maps | None = None,
    ) -> None:
        if self.cache_size == 0:
            return
        self._cache[aggregate_id] = (meta, state, maps)
        self._cache.move_to_end(aggregate_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def forget(self) -> None:
        self._cache.clear()
        self._folds = FoldCache()

    def _forget_if_erased(self) -> bool:
        """States folded before an erasure may hold what now reads "<erased>" (True:
        an erasure was heard of since the last call, and both were emptied)."""
        if not self._erasures.moved():
            return False
        self._cache.clear()
        self._folds = FoldCache()
        return True

    async def _fetch(self, ids: Sequence[str]) -> list[dict[bytes, bytes] | bytes | None]:
        """Each story as stored: its hash's fields, a whole JSON document (the earlier
        layout), or None."""
        keys = [f"{self.ns}:doc:{i}" for i in ids]
        if len(keys) == 1:
            try:
                one: dict[bytes, bytes] = await valkey_io(self.redis.hgetall(keys[0]))
            except ResponseError as exc:
                if not _wrong_type(exc):
                    raise
                return [await valkey_io(self.redis.get(keys[0]))]
            return [one or None]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        found: list[Any] = await valkey_io(pipe.execute(raise_on_error=False))
        out: list[dict[bytes, bytes] | bytes | None] = []
        for key, raw in zip(keys, found, strict=True):
            if isinstance(raw, BaseException):
                if not _wrong_type(raw):
                    raise raw
                out.append(await valkey_io(self.redis.get(key)))
            else:
                out.append(raw or None)
        return out

    async def _load(
        self, ids: Sequence[str], take: bool = False
    ) -> dict[str, tuple[dict[str, Any], ContextState, bool, Maps | None, bool]]:
        """Each story's meta and state, whether its hash holds that state (so a write
        may send only what changed from it), the dicts behind its maps when this
        process owns them, and whether it came from the cache. ``take``: the cached
        entries are taken out (before anything is awaited), so no other call reads
        or folds them until they are remembered again."""
        self._forget_if_erased()
        out: dict[str, tuple[dict[str, Any], ContextState, bool, Maps | None, bool]] = {}
        for i in ids:
            entry = self._cache.pop(i, None) if take else self._cache.get(i)
            if entry is not None:
                meta, state, maps = entry
                out[i] = (meta, state, True, maps if take else None, True)
        missing = [i for i in ids if i not in out]
        if missing:
            for i, raw in zip(missing, await self._fetch(missing), strict=True):
                doc = _document(raw)
                if doc is None:
                    empty: dict[str, Any] = {"seq": 0, "applied": 0, "created_at": 0}
                    out[i] = (empty, ContextState(id=i), False, None, False)
                else:
                    state = state_from_dict(doc.pop("state"))
                    out[i] = (doc, state, isinstance(raw, dict), None, False)
        return out

    @staticmethod
    def _shell(meta: dict[str, Any], state: ContextState) -> str:
        """The document without its nodes: json.dumps(..., sort_keys=True) of meta,
        status and the state with empty decisions, subtasks and dependencies."""
        return json.dumps(
            {**meta, "status": _status(state), "state": shell_to_dict(state)}, **_COMPACT
        )

    def _fields(
        self,
        meta: dict[str, Any],
        old: ContextState | None,
        new: ContextState,
        put: tuple[Mapping[str, None], Mapping[str, None]] | None = None,
    ) -> tuple[list[str], list[str]]:
        """(field, value, ...) to set and fields to delete so that the hash holding
        ``old`` (None: nothing) holds ``new``. States share the nodes an event did not
        touch, so a node is written again only if it is not the same object. ``put``:
        the decisions and subtasks the fold from ``old`` to ``new`` put (every other
        node is the same object and none is removed), so nothing is compared."""
        sets = [_SHELL, self._shell(meta, new)]
        dels: list[str] = []
        entry = self._encoder.entry
        nodes: tuple[tuple[str, Mapping[str, Decision | Subtask], Mapping[str, Any]], ...] = (
            (_DECISION, old.decisions if old else _EMPTY, new.decisions),
            (_SUBTASK, old.subtasks if old else _EMPTY, new.subtasks),
        )
        for i, (prefix, before, after) in enumerate(nodes):
            if before is after:
                continue
            if put is not None and old is not None:
                for k in put[i]:
                    sets += (prefix + k, entry(k, after[k]))
                continue
            changed, removed = _diff(before, after)
            for k in changed:
                sets += (prefix + k, entry(k, after[k]))
            dels += [prefix + k for k in removed]
        edges_before = old.dependencies if old else frozenset()
        if edges_before is not new.dependencies:
            for edge in sorted(new.dependencies - edges_before):
                text = _dependency(edge)
                sets += (_DEPENDENCY + text, text)
            dels += [_DEPENDENCY + _dependency(e) for e in sorted(edges_before - new.dependencies)]
        return sets, dels

    async def apply(self, events: Sequence[RecordedEvent]) -> Outcome:
        outcome = Outcome()
        groups = group(events)
        heard = erasures_heard()  # states folded from here on may be remembered
        loaded = await self._load(list(groups), take=True)
        args: list[Any] = []
        pending: dict[str, tuple[dict[str, Any], ContextState, list[int], Maps | None]] = {}
        # A version applied already, from at or below the sequence it was applied
        # from: a redelivery unless refused before (read only then).
        refused = await self._refused(
            [
                i
                for i, evs in groups.items()
                if may_repeat(loaded[i][1].version, int(loaded[i][0].get("seq") or 0), evs)
            ]
        )
        refusals: list[str] = []
        for aggregate_id, evs in groups.items():
            meta, state, stored, maps, cached = loaded[aggregate_id]
            base = state.version
            known = refused.get(aggregate_id, frozenset())
            fresh = next_versions(base, evs, outcome, int(meta.get("seq") or 0), known)
            for e in evs:
                if e.stream_seq in outcome.failed and e.stream_seq not in known:
                    refusals += (aggregate_id, str(e.stream_seq))
            if fresh:
                new, fresh, put, new_maps = self._fold_touched(state, fresh, outcome, maps)
            if not fresh:  # nothing to write: the entry taken (unchanged) goes back
                if cached and heard == erasures_heard():
                    self._remember(aggregate_id, meta, state, maps)
                continue
            last = fresh[-1]
            new_meta = {
                "seq": last.stream_seq,
                "applied": meta["applied"] + len(fresh),
                "created_at": meta["created_at"] or fresh[0].recorded_at_ns,
                "updated_at": last.recorded_at_ns,
            }
            sets, dels = self._fields(new_meta, state if stored else None, new, put)
            args += [
                aggregate_id,
                base,
                new.version,
                last.stream_seq,
                last.recorded_at_ns // 1_000_000,
                _status(new),
                len(fresh),
                0 if stored else 1,
                len(sets) // 2,
                len(dels),
                *sets,
                *dels,
            ]
            pending[aggregate_id] = (new_meta, new, [e.stream_seq for e in fresh], new_maps)
        if not pending and not refusals:
            return outcome
        args += [len(refusals) // 2, *refusals]
        conflicts, stale = await valkey_io(self._apply(args=[self.ns, len(pending), *args]))
        conflicted = {c.decode() for c in conflicts}
        written_before = {c.decode() for c in stale}
        for aggregate_id, (meta, state, seqs, maps) in pending.items():
            if aggregate_id in conflicted:
                self._cache.pop(aggregate_id, None)  # somebody else wrote it: reload next time
                for s in seqs:
                    outcome.waiting[s] = "the stored version moved; recomputing"
            elif aggregate_id in written_before:
                # Somebody else (a replay) stored these versions already: done, not
                # applied by us (the script counted nothing for them).
                self._cache.pop(aggregate_id, None)
                outcome.done.extend(seqs)
            else:
                if heard == erasures_heard():
                    self._remember(aggregate_id, meta, state, maps)
                # else an erasure was heard meanwhile: the state may hold opened values
                # (the entry was taken out of the cache: it is read again next time)
                outcome.done.extend(seqs)
                outcome.applied += len(seqs)
        return outcome

    async def _refused(self, ids: Sequence[str]) -> dict[str, frozenset[int]]:
        """The sequences refused before, of the stories named (one read, if any)."""
        if not ids:
            return {}
        found = await valkey_io(self.redis.hmget(f"{self.ns}:refused", list(ids)))
        return {i: refused_seqs(raw) for i, raw in zip(ids, found, strict=True) if raw}

    @classmethod
    def _fold(
        cls, state: ContextState, events: list[RecordedEvent], outcome: Outcome
    ) -> tuple[ContextState, list[RecordedEvent]]:
        """Fold the events; if one is refused, keep those before it and fail it."""
        new, applied, _, _ = cls._fold_touched(state, events, outcome)
        return new, applied

    @staticmethod
    def _fold_touched(
        state: ContextState,
        events: list[RecordedEvent],
        outcome: Outcome,
        own: Maps | None = None,
    ) -> tuple[
        ContextState,
        list[RecordedEvent],
        tuple[Mapping[str, None], Mapping[str, None]] | None,
        Maps | None,
    ]:
        """:meth:`_fold`, with the decisions and subtasks the fold put (None when an
        event was refused: the nodes are compared then) and the dicts behind the new
        state's maps (None then too). ``own``: the dicts behind ``state``'s maps,
        given up by the caller, folded in place (as they were if an event is
        refused)."""
        try:
            new, decisions, subtasks, maps = fold_touched((e.event for e in events), state, own=own)
            return new, events, (decisions, subtasks), maps
        except EvolveError:
            pass
        for i, e in enumerate(events):
            try:
                state = evolve(state, e.event)
            except EvolveError as exc:
                outcome.failed[e.stream_seq] = f"{e.event_type} v{e.version}: {exc}"
                block_rest(outcome, events[i + 1 :], f"behind refused sequence {e.stream_seq}")
                return state, events[:i], None, None
        raise AssertionError("fold failed but every event applies")

    async def skip(self, aggregate_id: str, stream_seq: int) -> bool:
        meta, state, *_ = (await self._load([aggregate_id]))[aggregate_id]
        placeholder = skipped(
            aggregate_id, state.version + 1, stream_seq, meta.get("updated_at", 0)
        )
        outcome = await self.apply([placeholder])
        return stream_seq in outcome.done

    async def rewind(
        self,
        aggregate_id: str,
        to_version: int,
        *,
        events: Sequence[RecordedEvent] | None = None,
        guard: tuple[int, int] | None = None,
    ) -> int:
        """Write the story as it is at ``to_version`` (folded from ``events``, its
        first ``to_version`` events, else read from the store; the fold kept) in one
        script, its hash written anew; with ``guard`` (low, high) only if the stored
        version is within. Returns the version it was at."""
        heard = erasures_heard()  # events read from here on may be kept folded
        events = await history_up_to(self.store, aggregate_id, to_version, events)
        # An erasure first heard here may be younger than events the caller read: the
        # fold is not kept (nor one of events read while an erasure was heard).
        erased = self._forget_if_erased()
        state = self._folds.state_at(
            aggregate_id, events, to_version, heard=None if erased else heard
        )
        meta = {
            "seq": events[-1].stream_seq if events else 0,
            "applied": len(events),
            "created_at": events[0].recorded_at_ns if events else 0,
            "updated_at": events[-1].recorded_at_ns if events else 0,
        }
        low, high = guard or (0, _NO_LIMIT)
        self._cache.pop(aggregate_id, None)
        fields = self._fields(meta, None, state)[0] if state.version else []
        previous = await valkey_io(
            self._put(
                args=[
                    self.ns,
                    aggregate_id,
                    state.version,
                    meta["updated_at"] // 1_000_000,
                    _status(state),
                    low,
                    high,
                    meta["seq"],
                    len(fields) // 2,
                    *fields,
                ]
            )
        )
        self._cache.pop(aggregate_id, None)
        return int(previous)

    async def read(self, aggregate_id: str) -> dict[str, Any] | None:
        """The story's document: what json.loads of the whole document gives."""
        return _document((await self._fetch([aggregate_id]))[0])

    async def read_many(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        if not ids:
            return []
        return [_document(raw) for raw in await self._fetch(ids)]

    async def read_shells(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Each story's meta, status and state scalars, for listings: the document
        with its decisions, subtasks and dependencies left empty (a story still in the
        earlier layout comes whole), one field per story read."""
        if not ids:
            return []
        keys = [f"{self.ns}:doc:{i}" for i in ids]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, _SHELL)
        found: list[Any] = await valkey_io(pipe.execute(raise_on_error=False))
        out: list[dict[str, Any] | None] = []
        for key, raw in zip(keys, found, strict=True):
            if isinstance(raw, BaseException):
                if not _wrong_type(raw):
                    raise raw
                raw = await valkey_io(self.redis.get(key))
            out.append(json.loads(raw) if raw else None)
        return out

    async def recent(self, status: str | None, offset: int, count: int) -> list[str]:
        """Story ids, most recently updated first; ``status`` "open", "closed" or None."""
        index = f"{self.ns}:idx:status:{status}" if status else f"{self.ns}:idx:updated"
        ids: list[Any] = await valkey_io(self.redis.zrevrange(index, offset, offset + count - 1))
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


def _skipped_envelope(aggregate_id: str, version: int) -> Any:

    return EventEnvelope(aggregate_id=aggregate_id, aggregate_version=version, event_type="Skipped")


def _scalars(event: Message | UnknownEvent) -> Iterator[tuple[str, Any]]:
    if isinstance(event, UnknownEvent):
        yield "unknown", event.reason
        return
    for fd, value in event.ListFields():
        if isinstance(value, str):
            yield fd.name, value[:200]
        elif isinstance(value, int | bool):
            yield fd.name, value


class TimelineModel(ValkeyModel):
    """The most recent ``keep`` events of each story: ``tl:<id>`` sorted by version."""

    def __init__(self, spec: ModelSpec, redis: Valkey, prefix: str, keep: int) -> None:
        super().__init__(spec, redis, prefix)
        self.keep = keep
        self._apply = self.write_script(_TIMELINE_APPLY)
        self._rewind = self.write_script(_TIMELINE_REWIND)

    async def setup(self) -> None:
        pass

    @staticmethod
    def entry(e: RecordedEvent) -> str:
        return json.dumps(
            {
                "seq": e.stream_seq,
                "version": e.version,
                "type": e.event_type,
                "event_id": e.event_id,
                "recorded_at": e.recorded_at_ns,
                "data": dict(_scalars(e.event)),
            },
            separators=(",", ":"),
        )

    async def apply(self, events: Sequence[RecordedEvent]) -> Outcome:
        args: list[Any] = [self.ns, self.keep, len(events)]
        for e in events:
            args += [e.aggregate_id, e.version, e.stream_seq, self.entry(e)]
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
        """Without ``events``: drop the entries after ``to_version``. With them (the
        aggregate's first ``to_version`` events): its timeline is written as it is at
        ``to_version``, in one script. With ``guard`` (low, high) nothing changes
        unless the stored version is within. Returns the version it was at."""
        low, high = guard or (0, _NO_LIMIT)
        args: list[Any] = [self.ns, aggregate_id, to_version, low, high]
        if events is None:
            args.append(-1)
        else:
            kept = list(events[:to_version])
            if [e.version for e in kept] != list(range(1, to_version + 1)):
                raise ValueError(f"rewind of {aggregate_id} to {to_version}: events are not 1..n")
            kept = kept[-self.keep :]
            args.append(len(kept))
            for e in kept:
                args += [e.version, self.entry(e)]
            args.append(kept[-1].stream_seq if kept else 0)
        return int(await valkey_io(self._rewind(args=args)))

    async def read(self, aggregate_id: str, limit: int = 50) -> list[dict[str, Any]]:
        raw = await valkey_io(self.redis.zrevrange(f"{self.ns}:tl:{aggregate_id}", 0, limit - 1))
        return [json.loads(r) for r in raw]


def context_spec(version: int) -> ModelSpec:
    return ModelSpec(
        CONTEXT,
        version,
        Kind.SNAPSHOT,
        "valkey",
        "current state of each story, with indexes by update time and status",
    )


def timeline_spec(version: int) -> ModelSpec:
    return ModelSpec(
        TIMELINE, version, Kind.TIMELINE, "valkey", "the most recent events of each story"
    )
