"""The observer's write path: canonical events -> claims -> per-process appends.

- Validation first: a refused event (``ValidationError`` naming ``events[i].field``)
  refuses the whole request and nothing is claimed or appended.
- Idempotent forever: each event with a caller's event id or idempotency key claims
  it (``claims.py``) before it is appended; an event whose id or key is claimed
  already gets the original positions back with ``duplicate`` and appends nothing.
  An event without an id gets a fresh UUIDv7 (nothing to deduplicate it by).
- Order: a process's events go through one lane per process in this observer, in
  arrival order; the lane appends what has queued up as one atomic batch
  (``ExpectedVersion.ANY``: the store reads the last version and retries on a
  conflict with another observer). One request's events of one process are always in
  one batch: atomic, contiguous, in the given order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from jetsource._gen.process.v1.events_pb2 import CanonicalEvent
from jetsource.core.clock import now_ns
from jetsource.core.envelope import ANY, NewEvent
from jetsource.core.errors import ConcurrencyError, ValidationError
from jetsource.domains.process.claims import Claims, ClaimValue, claim_key
from jetsource.domains.process.validation import Limits, to_new_event
from jetsource.eventstore.jsapi import BATCH_LIMIT
from jetsource.eventstore.port import EventStore

log = logging.getLogger("jetsource.observer")


@dataclass(frozen=True)
class Recorded:
    """What the store assigned to one event (``duplicate``: assigned before)."""

    event_id: str
    process_id: str
    global_seq: int
    process_seq: int
    recorded_ns: int
    duplicate: bool = False


@dataclass(frozen=True)
class RecorderOptions:
    limits: Limits = field(default_factory=Limits)
    max_batch_events: int = 10_000
    # A pending claim older than this is taken over (its owner is presumed gone). Longer
    # than an append can take with the event store's retries.
    claim_lease_s: float = 60.0
    claim_poll_s: float = 0.05
    # Conflicts with other observers beyond the event store's own retries.
    conflict_retries: int = 20
    # One lane batch: at most this many bytes of payload (one request's group of a
    # process is never split, whatever its size).
    lane_batch_bytes: int = 4 * 1024 * 1024


@dataclass
class _Lane:
    pending: list[tuple[list[NewEvent], asyncio.Future[list[tuple[int, int]]]]] = field(
        default_factory=list
    )
    task: asyncio.Task[None] | None = None


@dataclass
class _Item:
    index: int
    new: NewEvent
    keys: list[str]
    created: dict[str, int] = field(default_factory=dict)  # key -> revision we created
    existing: tuple[str, ClaimValue, int] | None = None  # a key claimed before
    alias_of: int | None = None  # the same id or key earlier in this request


class Recorder:
    def __init__(self, store: EventStore, claims: Claims, options: RecorderOptions) -> None:
        self._store = store
        self._claims = claims
        self._o = options
        self._lanes: dict[str, _Lane] = {}
        # Claims this observer holds while their append is in flight.
        self._inflight: dict[str, asyncio.Future[Recorded]] = {}
        # Pending claims of ours whose append failed: take over at once, no lease wait.
        self._abandoned: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    # -- the request ------------------------------------------------------------------

    def validate(self, events: Sequence[CanonicalEvent], at: str = "events") -> list[NewEvent]:
        if not events:
            raise ValidationError(f"{at} is empty: nothing to record", at)
        if len(events) > self._o.max_batch_events:
            raise ValidationError(
                f"{at} has {len(events)} events; at most {self._o.max_batch_events} per request",
                at,
            )
        # One event alone (Record) is named ``event.<field>``, else ``events[i].<field>``.
        out = [
            to_new_event(e, self._o.limits, at if at == "event" else f"{at}[{i}]")
            for i, e in enumerate(events)
        ]
        per_process: dict[str, int] = {}
        for e in events:
            per_process[e.process_id] = per_process.get(e.process_id, 0) + 1
        for pid, n in per_process.items():
            if n > BATCH_LIMIT:
                raise ValidationError(
                    f"{at} has {n} events of process {pid!r}; at most {BATCH_LIMIT} per process "
                    "per request (they are appended as one atomic batch)",
                    at,
                )
        return out

    async def record(self, events: Sequence[CanonicalEvent], at: str = "events") -> list[Recorded]:
        """Positions of ``events`` in request order (see the module's docstring)."""
        news = self.validate(events, at)
        items = [
            _Item(i, new, self._keys(e, new))
            for i, (e, new) in enumerate(zip(events, news, strict=True))
        ]
        seen: dict[str, int] = {}
        for item in items:
            for key in item.keys:
                if key in seen:
                    item.alias_of = seen[key]
                    break
            if item.alias_of is None:
                for key in item.keys:
                    seen[key] = item.index

        await self._claim([it for it in items if it.alias_of is None and it.keys])
        fresh = [it for it in items if it.alias_of is None and it.existing is None]
        dups = [it for it in items if it.alias_of is None and it.existing is not None]

        by_process: dict[str, list[_Item]] = {}
        for it in fresh:
            by_process.setdefault(_pid(events, it), []).append(it)
        groups = list(by_process.items())
        done = await asyncio.gather(
            *(self._record_fresh(pid, group) for pid, group in groups),
            *(self._resolve(_pid(events, it), it) for it in dups),
            return_exceptions=True,
        )
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome
        results: dict[int, Recorded] = {}
        for (_, group), outcome in zip(groups, done[: len(groups)], strict=True):
            assert isinstance(outcome, list)
            for it, r in zip(group, outcome, strict=True):
                results[it.index] = r
        for it, outcome in zip(dups, done[len(groups) :], strict=True):
            assert isinstance(outcome, Recorded)
            results[it.index] = outcome
        for it in items:
            if it.alias_of is not None:
                results[it.index] = replace(results[it.alias_of], duplicate=True)
        return [results[i] for i in range(len(items))]

    @staticmethod
    def _keys(event: CanonicalEvent, new: NewEvent) -> list[str]:
        keys = []
        if event.event_id:
            keys.append(claim_key("e", event.process_id, event.event_id))
        if event.idempotency_key:
            keys.append(claim_key("k", event.process_id, event.idempotency_key))
        return keys

    # -- claims -----------------------------------------------------------------------

    async def _claim(self, items: list[_Item]) -> None:
        """Create every claim at once; an event with any key claimed before is a
        duplicate of what that claim names (the claims it did create are released)."""
        if not items:
            return
        now = now_ns()
        pairs = [(it, key) for it in items for key in it.keys]
        revisions = await asyncio.gather(
            *(self._claims.create(key, ClaimValue(it.new.event_id, now)) for it, key in pairs)
        )
        for (it, key), revision in zip(pairs, revisions, strict=True):
            if revision is not None:
                it.created[key] = revision
        release = []
        for it in items:
            if len(it.created) == len(it.keys):
                for key in it.keys:
                    self._inflight[key] = asyncio.get_running_loop().create_future()
                continue
            # The event id's claim names the original first; else the key's.
            for key in it.keys:
                if key not in it.created:
                    got = await self._claims.get(key)
                    if got is None:  # released meanwhile by a refused request: retry
                        revision = await self._claims.create(key, ClaimValue(it.new.event_id, now))
                        if revision is not None:
                            it.created[key] = revision
                            continue
                        got = await self._claims.get(key)
                    if got is not None and got[0] == ClaimValue(it.new.event_id, now):
                        it.created[key] = got[1]  # our own create, its answer lost: ours
                        continue
                    if got is not None and it.existing is None:
                        it.existing = (key, got[0], got[1])
            if it.existing is None:  # every key ours after all
                for key in it.keys:
                    self._inflight[key] = asyncio.get_running_loop().create_future()
                continue
            release += [(k, r) for k, r in it.created.items()]
            it.created = {}
        if release:
            await asyncio.gather(*(self._claims.delete(k, r) for k, r in release))

    def _settle(self, item: _Item, result: Recorded | BaseException, stored: bool) -> None:
        """After an append: complete the claims (in the background) and wake waiters.
        A failed append whose fate is unknown leaves its claims pending, abandoned."""
        for key in item.keys:
            fut = self._inflight.pop(key, None)
            if isinstance(result, Recorded):
                self._abandoned.discard(key)
                value = ClaimValue(
                    result.event_id,
                    now_ns(),
                    result.global_seq,
                    result.process_seq,
                    result.recorded_ns,
                )
                self._spawn(self._claims.put(key, value))
                if fut is not None and not fut.done():
                    fut.set_result(result)
            else:
                if stored:
                    self._abandoned.add(key)
                elif key in item.created:
                    self._spawn(self._claims.delete(key, item.created[key]))
                if fut is not None and not fut.done():
                    fut.set_exception(result)
                    fut.exception()  # retrieved: waiters re-read the claim

    def _spawn(self, coro: object) -> None:
        async def run() -> None:
            try:
                await coro  # type: ignore[misc]
            except Exception as exc:  # the claim stays pending: resolved by lookup later
                log.warning("claim write failed (resolved by lookup later): %r", exc)

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def flush(self) -> None:
        """Wait for the claim writes in the background (shutdown, tests)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # -- fresh events -----------------------------------------------------------------

    async def _record_fresh(self, process_id: str, items: list[_Item]) -> list[Recorded]:
        try:
            positions = await self._lane_append(process_id, [it.new for it in items])
        except ValidationError as exc:
            for it in items:
                self._settle(it, exc, stored=False)
            raise
        except BaseException as exc:
            for it in items:
                self._settle(
                    it,
                    exc if isinstance(exc, Exception) else RuntimeError("cancelled"),
                    stored=True,
                )
            raise
        now = now_ns()
        out = []
        for it, (version, seq) in zip(items, positions, strict=True):
            r = Recorded(it.new.event_id, process_id, seq, version, now)
            self._settle(it, r, stored=True)
            out.append(r)
        return out

    async def _lane_append(self, process_id: str, events: list[NewEvent]) -> list[tuple[int, int]]:
        lane = self._lanes.get(process_id)
        if lane is None:
            lane = self._lanes[process_id] = _Lane()
        fut: asyncio.Future[list[tuple[int, int]]] = asyncio.get_running_loop().create_future()
        lane.pending.append((events, fut))
        if lane.task is None:
            lane.task = asyncio.create_task(self._drain(process_id, lane))
        return await fut

    async def _drain(self, process_id: str, lane: _Lane) -> None:
        try:
            while lane.pending:
                take = [lane.pending.pop(0)]
                count = len(take[0][0])
                size = sum(e.event.ByteSize() for e in take[0][0])
                while lane.pending:
                    nxt = lane.pending[0][0]
                    more = sum(e.event.ByteSize() for e in nxt)
                    if count + len(nxt) > BATCH_LIMIT or size + more > self._o.lane_batch_bytes:
                        break
                    take.append(lane.pending.pop(0))
                    count, size = count + len(nxt), size + more
                await self._append_groups(process_id, take)
        finally:
            lane.task = None
            if not lane.pending and self._lanes.get(process_id) is lane:
                del self._lanes[process_id]

    async def _append_groups(
        self,
        process_id: str,
        take: list[tuple[list[NewEvent], asyncio.Future[list[tuple[int, int]]]]],
    ) -> None:
        events = [e for group, _ in take for e in group]
        try:
            versions, seqs = await self._append(process_id, events)
        except Exception as exc:
            if len(take) == 1:
                if not take[0][1].done():
                    take[0][1].set_exception(exc)
                return
            for group, fut in take:  # one group's fault must not fail the others
                try:
                    v, s = await self._append(process_id, group)
                except Exception as one:
                    if not fut.done():
                        fut.set_exception(one)
                else:
                    if not fut.done():
                        fut.set_result(list(zip(v, s, strict=True)))
            return
        i = 0
        for group, fut in take:
            n = len(group)
            if not fut.done():
                fut.set_result(list(zip(versions[i : i + n], seqs[i : i + n], strict=True)))
            i += n

    async def _append(self, process_id: str, events: list[NewEvent]) -> tuple[list[int], list[int]]:
        for attempt in range(self._o.conflict_retries + 1):
            try:
                result = await self._store.append(process_id, events, ANY)
                return result.versions, result.stream_seqs
            except ConcurrencyError:
                if attempt == self._o.conflict_retries:
                    raise
                await asyncio.sleep(0.002 * (attempt + 1) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    # -- duplicates -------------------------------------------------------------------

    async def _resolve(self, process_id: str, item: _Item) -> Recorded:
        """The original positions of what ``item``'s claim names; a claim left pending
        (its owner crashed, or its append failed) is taken over: the event is looked up
        in the process's history and appended only if it is not there."""
        assert item.existing is not None
        key, value, revision = item.existing
        while True:
            if value.done:
                return Recorded(
                    value.event_id,
                    process_id,
                    value.global_seq,
                    value.process_seq,
                    value.recorded_ns,
                    duplicate=True,
                )
            fut = self._inflight.get(key)
            if fut is not None:
                with contextlib.suppress(Exception):
                    r = await asyncio.shield(fut)
                    return replace(r, duplicate=True)
            elif key in self._abandoned or now_ns() - value.since_ns > self._o.claim_lease_s * 1e9:
                taken = await self._claims.update(key, replace(value, since_ns=now_ns()), revision)
                if taken is not None:
                    return await self._take_over(process_id, item, key, value.event_id, taken)
            else:
                await asyncio.sleep(self._o.claim_poll_s)
            got = await self._claims.get(key)
            if got is None:  # released (its request was refused): this event is new
                return await self._record_fresh_alone(process_id, item)
            value, revision = got

    async def _take_over(
        self, process_id: str, item: _Item, key: str, event_id: str, revision: int
    ) -> Recorded:
        fut: asyncio.Future[Recorded] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        mine = replace(
            item, new=replace(item.new, event_id=event_id), keys=[key], created={key: revision}
        )
        try:
            found = await self._lookup(process_id, event_id)
            if found is not None:
                self._settle(mine, found, stored=True)
                return replace(found, duplicate=True)
            [r] = await self._record_fresh(process_id, [mine])
            return r
        except BaseException as exc:
            self._abandoned.add(key)
            if not fut.done():
                fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
                fut.exception()
            self._inflight.pop(key, None)
            raise

    async def _record_fresh_alone(self, process_id: str, item: _Item) -> Recorded:
        item.existing = None
        await self._claim([item])
        if item.existing is not None:
            return await self._resolve(process_id, item)
        [r] = await self._record_fresh(process_id, [item])
        return r

    async def _lookup(self, process_id: str, event_id: str) -> Recorded | None:
        for record in await self._store.read_aggregate(process_id):
            if record.event_id == event_id:
                return Recorded(
                    event_id, process_id, record.stream_seq, record.version, record.recorded_at_ns
                )
        return None


def _pid(events: Sequence[CanonicalEvent], item: _Item) -> str:
    return events[item.index].process_id
