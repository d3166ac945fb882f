"""Valkey read models: ``context`` (current state per story, indexes) and ``timeline``.

Every key of a model version lives under ``<prefix>:<model>:v<version>:``, so two
versions run side by side. One Lua script per batch writes the effects of every
aggregate whose stored version is the one the batch was computed from, and moves the
checkpoint, atomically. A redelivered event finds its version already stored and
changes nothing.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from google.protobuf.message import Message
from valkey.asyncio import Valkey

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.codec import UnknownEvent
from jetsource.core.crypto import ErasureWatch
from jetsource.core.envelope import RecordedEvent
from jetsource.domains.context.history import FoldCache, history_up_to
from jetsource.domains.context.model import ContextState, EvolveError, evolve, fold
from jetsource.domains.context.serialize import StateEncoder, state_from_dict
from jetsource.eventstore.port import EventStore
from jetsource.projection.contract import Kind, ModelSpec, Outcome
from jetsource.projection.valkey import (
    CHECKPOINT_LUA,
    ValkeyModel,
    block_rest,
    group,
    next_versions,
    skipped,
    valkey_io,
)

CONTEXT = "context"
TIMELINE = "timeline"
_STATE = "\x00state\x00"  # where the state's JSON goes in a document
_NO_LIMIT = 2**52  # an open upper bound for the rewind scripts' version guard


# Per aggregate: id, base version, new version, last seq, doc, updated ms, status, count.
_CONTEXT_APPLY = (
    """
local p = ARGV[1]
local n = tonumber(ARGV[2])
local conflicts, stale = {}, {}
local applied, maxseq, i = 0, 0, 3
for _ = 1, n do
  local id, base, ver = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local seq, doc, ms = tonumber(ARGV[i + 3]), ARGV[i + 4], ARGV[i + 5]
  local status, cnt = ARGV[i + 6], tonumber(ARGV[i + 7])
  i = i + 8
  local cur = tonumber(redis.call('HGET', p .. ':pos', id) or '0')
  if cur == base then
    redis.call('SET', p .. ':doc:' .. id, doc)
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
"""
    + CHECKPOINT_LUA
    + """
return {conflicts, stale}
"""
)

# Write of one aggregate (rewind for replay): id, version, doc, ms, status, then the
# guard (low, high: nothing is written unless the stored version is within) and the
# aggregate's last sequence (moves the checkpoint forward, never back).
_CONTEXT_PUT = """
local p, id, ver = ARGV[1], ARGV[2], tonumber(ARGV[3])
local cur = tonumber(redis.call('HGET', p .. ':pos', id) or '0')
if cur < tonumber(ARGV[7]) or cur > tonumber(ARGV[8]) then return cur end
if ver == 0 then
  redis.call('DEL', p .. ':doc:' .. id)
  redis.call('HDEL', p .. ':pos', id)
  redis.call('ZREM', p .. ':idx:updated', id)
  redis.call('ZREM', p .. ':idx:status:open', id)
  redis.call('ZREM', p .. ':idx:status:closed', id)
else
  local status = ARGV[6]
  local other = status == 'closed' and 'open' or 'closed'
  redis.call('SET', p .. ':doc:' .. id, ARGV[4])
  redis.call('HSET', p .. ':pos', id, ver)
  redis.call('ZADD', p .. ':idx:updated', ARGV[5], id)
  redis.call('ZREM', p .. ':idx:status:' .. other, id)
  redis.call('ZADD', p .. ':idx:status:' .. status, ARGV[5], id)
end
redis.call('HINCRBY', p .. ':meta', 'applied', ver - cur)
local seq = tonumber(ARGV[9])
local cp = tonumber(redis.call('HGET', p .. ':meta', 'checkpoint') or '0')
if seq > cp then redis.call('HSET', p .. ':meta', 'checkpoint', seq) end
return cur
"""

# Per event: id, version, seq, entry. Applies v only right after v-1; a gap blocks the
# rest of that aggregate in this batch (returned as waiting sequences).
_TIMELINE_APPLY = (
    """
local p, keep, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local pos, blocked, waiting = {}, {}, {}
local applied, maxseq, i = 0, 0, 4
for _ = 1, n do
  local id, ver, seq, entry = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), ARGV[i + 3]
  i = i + 4
  if pos[id] == nil then pos[id] = tonumber(redis.call('HGET', p .. ':pos', id) or '0') end
  if blocked[id] then
    table.insert(waiting, seq)
  elseif ver == pos[id] + 1 then
    local key = p .. ':tl:' .. id
    redis.call('ZADD', key, ver, entry)
    redis.call('ZREMRANGEBYRANK', key, 0, -(keep + 1))
    redis.call('HSET', p .. ':pos', id, ver)
    pos[id] = ver
    applied = applied + 1
    if seq > maxseq then maxseq = seq end
  elseif ver > pos[id] + 1 then
    blocked[id] = true
    table.insert(waiting, seq)
  end
end
"""
    + CHECKPOINT_LUA
    + """
return {applied, waiting}
"""
)

# id, version, guard (low, high: nothing is written unless the stored version is
# within), n, then n (version, entry) pairs and the last sequence. n = -1: only trim
# the entries after the version (no entries known); otherwise the entries replace
# the aggregate's timeline.
_TIMELINE_REWIND = """
local p, id, ver = ARGV[1], ARGV[2], tonumber(ARGV[3])
local cur = tonumber(redis.call('HGET', p .. ':pos', id) or '0')
if cur < tonumber(ARGV[4]) or cur > tonumber(ARGV[5]) then return cur end
local n, key = tonumber(ARGV[6]), p .. ':tl:' .. id
if n < 0 then
  if cur <= ver then return cur end
  redis.call('ZREMRANGEBYSCORE', key, '(' .. ver, '+inf')
else
  redis.call('DEL', key)
  for i = 1, n do
    redis.call('ZADD', key, tonumber(ARGV[5 + 2 * i]), ARGV[6 + 2 * i])
  end
  local seq = tonumber(ARGV[7 + 2 * n])
  local cp = tonumber(redis.call('HGET', p .. ':meta', 'checkpoint') or '0')
  if seq > cp then redis.call('HSET', p .. ':meta', 'checkpoint', seq) end
end
if ver == 0 then
  redis.call('HDEL', p .. ':pos', id)
else
  redis.call('HSET', p .. ':pos', id, ver)
end
redis.call('HINCRBY', p .. ':meta', 'applied', ver - cur)
return cur
"""


def _status(state: ContextState) -> str:
    return "closed" if state.closed else "open"


class ContextModel(ValkeyModel):
    """Current state of each story: ``doc:<id>`` (JSON), ``idx:updated`` and
    ``idx:status:<open|closed>`` (sorted by last update, ms)."""

    def __init__(
        self, spec: ModelSpec, redis: Valkey, prefix: str, store: EventStore, cache_size: int
    ) -> None:
        super().__init__(spec, redis, prefix)
        self.store = store
        self.cache_size = cache_size
        # id -> (doc fields other than the state, state); what this process last wrote.
        self._cache: OrderedDict[str, tuple[dict[str, Any], ContextState]] = OrderedDict()
        self._folds = FoldCache()  # replay: a hot story's history folded once
        self._erasures = ErasureWatch()  # an erasure empties both
        self._encoder = StateEncoder()
        self._apply = redis.register_script(_CONTEXT_APPLY)
        self._put = redis.register_script(_CONTEXT_PUT)

    async def setup(self) -> None:
        pass

    def _remember(self, aggregate_id: str, meta: dict[str, Any], state: ContextState) -> None:
        if self.cache_size == 0:
            return
        self._cache[aggregate_id] = (meta, state)
        self._cache.move_to_end(aggregate_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _forget_if_erased(self) -> None:
        """States folded before an erasure may hold what now reads "<erased>"."""
        if self._erasures.moved():
            self._cache.clear()
            self._folds = FoldCache()

    async def _load(self, ids: Sequence[str]) -> dict[str, tuple[dict[str, Any], ContextState]]:
        self._forget_if_erased()
        out = {i: self._cache[i] for i in ids if i in self._cache}
        missing = [i for i in ids if i not in out]
        if missing:
            docs = await valkey_io(self.redis.mget([f"{self.ns}:doc:{i}" for i in missing]))
            for i, raw in zip(missing, docs, strict=True):
                if raw is None:
                    out[i] = ({"seq": 0, "applied": 0, "created_at": 0}, ContextState(id=i))
                else:
                    doc = json.loads(raw)
                    state = state_from_dict(doc.pop("state"))
                    out[i] = (doc, state)
        return out

    def _doc(self, meta: dict[str, Any], state: ContextState) -> str:
        """The stored document: json.dumps(..., sort_keys=True) of meta, status and the
        state, the state encoded by parts (only what changed is encoded again)."""
        shell = json.dumps(
            {**meta, "status": _status(state), "state": _STATE},
            separators=(",", ":"),
            sort_keys=True,
        )
        return shell.replace(
            f'"state":{json.dumps(_STATE)}', '"state":' + self._encoder.encode(state), 1
        )

    async def apply(self, events: Sequence[RecordedEvent]) -> Outcome:
        outcome = Outcome()
        groups = group(events)
        loaded = await self._load(list(groups))
        args: list[Any] = []
        pending: dict[str, tuple[dict[str, Any], ContextState, list[int]]] = {}
        for aggregate_id, evs in groups.items():
            meta, state = loaded[aggregate_id]
            base = state.version
            fresh = next_versions(base, evs, outcome)
            if not fresh:
                continue
            new, fresh = self._fold(state, fresh, outcome)
            if not fresh:
                continue
            last = fresh[-1]
            new_meta = {
                "seq": last.stream_seq,
                "applied": meta["applied"] + len(fresh),
                "created_at": meta["created_at"] or fresh[0].recorded_at_ns,
                "updated_at": last.recorded_at_ns,
            }
            args += [
                aggregate_id,
                base,
                new.version,
                last.stream_seq,
                self._doc(new_meta, new),
                last.recorded_at_ns // 1_000_000,
                _status(new),
                len(fresh),
            ]
            pending[aggregate_id] = (new_meta, new, [e.stream_seq for e in fresh])
        if not pending:
            return outcome
        conflicts, stale = await valkey_io(self._apply(args=[self.ns, len(pending), *args]))
        conflicted = {c.decode() for c in conflicts}
        written_before = {c.decode() for c in stale}
        for aggregate_id, (meta, state, seqs) in pending.items():
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
                self._remember(aggregate_id, meta, state)
                outcome.done.extend(seqs)
                outcome.applied += len(seqs)
        return outcome

    @staticmethod
    def _fold(
        state: ContextState, events: list[RecordedEvent], outcome: Outcome
    ) -> tuple[ContextState, list[RecordedEvent]]:
        """Fold the events; if one is refused, keep those before it and fail it."""
        try:
            return fold((e.event for e in events), state), events
        except EvolveError:
            pass
        for i, e in enumerate(events):
            try:
                state = evolve(state, e.event)
            except EvolveError as exc:
                outcome.failed[e.stream_seq] = f"{e.event_type} v{e.version}: {exc}"
                block_rest(outcome, events[i + 1 :], f"behind refused sequence {e.stream_seq}")
                return state, events[:i]
        raise AssertionError("fold failed but every event applies")

    async def skip(self, aggregate_id: str, stream_seq: int) -> bool:
        meta, state = (await self._load([aggregate_id]))[aggregate_id]
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
        script; with
        ``guard`` (low, high) only if the stored version is within. Returns the
        version it was at."""
        events = await history_up_to(self.store, aggregate_id, to_version, events)
        self._forget_if_erased()
        state = self._folds.state_at(aggregate_id, events, to_version)
        meta = {
            "seq": events[-1].stream_seq if events else 0,
            "applied": len(events),
            "created_at": events[0].recorded_at_ns if events else 0,
            "updated_at": events[-1].recorded_at_ns if events else 0,
        }
        low, high = guard or (0, _NO_LIMIT)
        self._cache.pop(aggregate_id, None)
        previous = await valkey_io(
            self._put(
                args=[
                    self.ns,
                    aggregate_id,
                    state.version,
                    self._doc(meta, state),
                    meta["updated_at"] // 1_000_000,
                    _status(state),
                    low,
                    high,
                    meta["seq"],
                ]
            )
        )
        self._cache.pop(aggregate_id, None)
        return int(previous)

    async def read(self, aggregate_id: str) -> dict[str, Any] | None:
        raw = await valkey_io(self.redis.get(f"{self.ns}:doc:{aggregate_id}"))
        return json.loads(raw) if raw else None

    async def read_many(self, ids: Sequence[str]) -> list[dict[str, Any] | None]:
        if not ids:
            return []
        raws = await valkey_io(self.redis.mget([f"{self.ns}:doc:{i}" for i in ids]))
        return [json.loads(raw) if raw else None for raw in raws]

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
        self._apply = redis.register_script(_TIMELINE_APPLY)
        self._rewind = redis.register_script(_TIMELINE_REWIND)

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
        applied, raw_waiting = await valkey_io(self._apply(args=args))
        waiting = {int(s) for s in raw_waiting}
        outcome = Outcome(applied=int(applied))
        for e in events:
            if e.stream_seq in waiting:
                outcome.waiting[e.stream_seq] = "waiting for the previous version"
            else:
                outcome.done.append(e.stream_seq)
        return outcome

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
