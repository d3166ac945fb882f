"""The observer's write path: canonical events -> claims -> per-process appends.

- Validation first: a refused event (``ValidationError`` naming ``events[i].field``)
  refuses the whole request and nothing is claimed or appended.
- Idempotent forever: each event with a caller's event id or idempotency key claims
  it (``claims.py``) before it is appended; an event whose id or key is claimed
  already gets the original positions back with ``duplicate`` and appends nothing.
  An event without an id gets a fresh UUIDv7 (nothing to deduplicate it by).
- Order: every request's events of a process join one queue in arrival order; a
  batcher writes what has queued, never two writes of one process at once, so each
  process's events are stored in arrival order. A write of many processes (or of a
  process with several events) is ONE atomic batch across processes (one commit;
  each process's first message checks that process's last sequence); a write of a
  few single events publishes each on its own (no commit to wait for). A conflict
  with another observer (the batch refused) falls back to each process on its own
  with ``ExpectedVersion.ANY``: the store reads the last version and retries. One
  request's events of one process are always in one batch: atomic, contiguous, in the
  given order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from jetsource._gen.process.v1.events_pb2 import CanonicalEvent
from jetsource.core.clock import now_ns
from jetsource.core.envelope import ANY, NewEvent
from jetsource.core.errors import ConcurrencyError, PartlyStoredError, ValidationError
from jetsource.domains.process.claims import Claims, ClaimValue, claim_key
from jetsource.domains.process.validation import Limits, to_new_event
from jetsource.eventstore.jsapi import BATCH_LIMIT
from jetsource.eventstore.port import EventStore

log = logging.getLogger("jetsource.observer")


@dataclass(frozen=True, init=False)
class Recorded:
    """What the store assigned to one event (``duplicate``: assigned before). Its
    ``__init__`` sets the fields in one step (a frozen dataclass's sets each through
    ``object.__setattr__``; one is made per event recorded)."""

    event_id: str
    process_id: str
    global_seq: int
    process_seq: int
    recorded_ns: int
    duplicate: bool = False

    def __init__(
        self,
        event_id: str,
        process_id: str,
        global_seq: int,
        process_seq: int,
        recorded_ns: int,
        duplicate: bool = False,
    ) -> None:
        self.__dict__.update(
            event_id=event_id,
            process_id=process_id,
            global_seq=global_seq,
            process_seq=process_seq,
            recorded_ns=recorded_ns,
            duplicate=duplicate,
        )


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
    # One write: at most this many bytes of payload (one request's group of a process
    # is never split, whatever its size).
    lane_batch_bytes: int = 4 * 1024 * 1024
    # Writes in flight at once (never two of one process). Few: what arrives during a
    # write queues up and goes in the next one, whole (many small writes, each its own
    # commit, measured slower than one big one here).
    max_inflight_writes: int = 2
    # A write of this many processes or more is one atomic batch (one commit) rather
    # than one publish per process.
    batch_processes_from: int = 32


Written = list[tuple[int, int]] | BaseException  # a write's positions, or its failure


@dataclass
class _Pending:
    process_id: str
    events: list[NewEvent]
    fut: asyncio.Future[list[tuple[int, int]]]
    size: int = 0  # payload bytes, counted once
    # Gets the outcome when its request was cancelled meanwhile (``fut`` cancelled): the
    # write goes on. Judged by the future, not by when the request's coroutine notices
    # its cancel: a write answered in between would be lost to both.
    written: Callable[[Written], None] | None = None

    def answer(self, outcome: Written) -> None:
        if not self.fut.done():
            if isinstance(outcome, BaseException):
                self.fut.set_exception(outcome)
            else:
                self.fut.set_result(outcome)
        elif self.fut.cancelled() and self.written is not None:
            _hand(self.written, outcome)


def _hand(written: Callable[[Written], None], outcome: Written) -> None:
    try:
        written(outcome)
    except Exception:  # never in the way of the other requests' answers
        log.exception("settling the claims of a cancelled request's write failed")


@dataclass
class _Item:
    index: int
    new: NewEvent
    keys: list[str]
    # key -> revision we created; with ``existing`` set, the claims kept because that
    # one names this item's own event (completed with whatever it resolves to)
    created: dict[str, int] = field(default_factory=dict)
    existing: tuple[str, ClaimValue, int] | None = None  # a key claimed before
    alias_of: int | None = None  # the same id or key earlier in this request
    # Its request was cancelled while its append went on: that append settles it.
    detached: bool = False


ABANDONED_KEPT = 100_000
# Marks kept per key: the first and the newest. One per key, a failed create of a retry
# (it never landed: our first claim still held the key) replaced the mark of the claim
# still pending there, and the next retry waited out that claim's lease.
MARKS_PER_KEY = 4


class _Abandoned(dict[str, "list[int | ClaimValue]"]):
    """The abandoned claims, oldest key first, at most ``ABANDONED_KEPT`` marks: each
    key with the claims of ours maybe left pending under it, by their revision (or, a
    create whose answer was lost, by the value it wrote). Only those claims are
    abandoned: one made under the key since (its delete landed after all, or released)
    is another's, in flight. Marked by key alone, another observer's fresh claim of the
    key was taken over at once and its event's id appended with another request's
    event. A key keeps up to ``MARKS_PER_KEY``: a new mark is added (a create that
    failed may never have landed, the claim met then being the one marked before), and
    past the bound the second oldest is dropped (while a claim of ours holds the key,
    creates under it never land: the first of a run is the one likely still there)."""

    def __init__(self) -> None:
        super().__init__()
        self.marks = 0

    def add(self, key: str, claim: int | ClaimValue) -> None:
        kept = self.pop(key, [])
        if claim not in kept:
            kept.append(claim)
            self.marks += 1
            if len(kept) > MARKS_PER_KEY:
                del kept[1]
                self.marks -= 1
        self[key] = kept
        while self.marks > ABANDONED_KEPT:
            self.marks -= len(self.pop(next(iter(self))))

    def update(self, claims: Iterable[tuple[str, int | ClaimValue]]) -> None:  # type: ignore[override]
        for key, claim in claims:
            self.add(key, claim)

    def discard(self, key: str) -> None:
        self.marks -= len(self.pop(key, []))

    def holds(self, key: str, value: ClaimValue, revision: int) -> bool:
        """Whether the claim met under ``key`` (``value`` at ``revision``) is one
        abandoned there."""
        return any(
            claim == value if isinstance(claim, ClaimValue) else claim == revision
            for claim in self.get(key, ())
        )


class Recorder:
    def __init__(self, store: EventStore, claims: Claims, options: RecorderOptions) -> None:
        self._store = store
        self._claims = claims
        self._o = options
        self._queue: list[_Pending] = []
        self._writing: set[str] = set()  # processes in a write in flight
        self._writers = 0
        # One atomic batch across processes, where the store offers it.
        self._many = getattr(store, "append_many", None)
        # Claims this observer holds while their append is in flight.
        self._inflight: dict[str, asyncio.Future[Recorded]] = {}
        # Pending claims of ours whose append failed: take over at once, no lease wait.
        # At most ABANDONED_KEPT, the oldest forgotten first: a claim no caller ever
        # meets again stayed here for the life of the process (one per event of every
        # request cancelled or failed during an outage); one forgotten is taken over
        # after its lease, as any other observer's is.
        self._abandoned = _Abandoned()
        self._background: set[asyncio.Task[None]] = set()

    # -- the request ------------------------------------------------------------------

    @property
    def most_per_request(self) -> int:
        """The most events a request may carry when they are all of one process."""
        return min(self._o.max_batch_events, BATCH_LIMIT)

    def check(self, event: CanonicalEvent, at: str) -> NewEvent:
        """One event as :func:`validate` checks it (``at``: its path, ``events[7]``), for
        a caller that checks each event as it arrives (``RecordStream``)."""
        return to_new_event(event, self._o.limits, at)

    def validate(
        self,
        events: Sequence[CanonicalEvent],
        at: str = "events",
        checked: Sequence[NewEvent] | None = None,
    ) -> list[NewEvent]:
        """``checked``: the events, each checked already (:meth:`check`)."""
        if not events:
            raise ValidationError(f"{at} is empty: nothing to record", at)
        if len(events) > self._o.max_batch_events:
            raise ValidationError(
                f"{at} has {len(events)} events; at most {self._o.max_batch_events} per request",
                at,
            )
        # One event alone (Record) is named ``event.<field>``, else ``events[i].<field>``.
        out = (
            list(checked)
            if checked is not None
            else [
                to_new_event(e, self._o.limits, at if at == "event" else f"{at}[{i}]")
                for i, e in enumerate(events)
            ]
        )
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

    async def record(
        self,
        events: Sequence[CanonicalEvent],
        at: str = "events",
        checked: Sequence[NewEvent] | None = None,
        settled: list[Recorded] | None = None,
    ) -> list[Recorded]:
        """Positions of ``events`` in request order (see the module's docstring).

        ``settled``, when given, receives the positions of the events this call stored
        or answered as duplicates also when it then fails: one process's append
        failing leaves the other processes' events of the request stored (each
        process's group is atomic, not the request), and the observer counts them
        recorded, not failed."""
        news = self.validate(events, at, checked)
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

        claiming = [it for it in items if it.alias_of is None and it.keys]
        takeovers: list[_Item] = []
        results: dict[int, Recorded] = {}
        try:
            await self._claim(claiming)
            fresh = [it for it in items if it.alias_of is None and it.existing is None]
            dups = [it for it in items if it.alias_of is None and it.existing is not None]
            # 1. Duplicates: the original positions, or (a claim whose owner is gone and
            #    whose event is not stored) an event to append after all.
            resolved = await asyncio.gather(
                *(self._resolve(_pid(events, it), it, takeovers) for it in dups)
            )
            append = list(fresh)
            for it, outcome in zip(dups, resolved, strict=True):
                if isinstance(outcome, Recorded):
                    results[it.index] = outcome
                else:
                    append.append(outcome)
            # 2. What is new, per process in request order: one group each (atomic).
            by_process: dict[str, list[_Item]] = {}
            for it in sorted(append, key=lambda it: it.index):
                by_process.setdefault(_pid(events, it), []).append(it)
            groups = list(by_process.items())
            claimed: list[tuple[str, ClaimValue, int]] = []
            try:
                done = await self._record_fresh(groups, claimed)
            finally:
                # The claims of what was appended, completed in one batch, also when
                # this request was cancelled (its caller's deadline) after the appends
                # settled: left pending, neither in flight nor abandoned, they made the
                # caller's retry wait out their lease.
                if claimed:
                    self._complete(claimed)
            for (_, group), written in zip(groups, done, strict=True):
                if isinstance(written, list):
                    for it, r in zip(group, written, strict=True):
                        results[it.index] = r
            for written in done:
                if isinstance(written, BaseException):
                    raise written
        except BaseException:
            self._abandon([*claiming, *takeovers])
            if settled is not None:
                settled += self._with_aliases(items, results).values()
            raise
        results = self._with_aliases(items, results)
        return [results[i] for i in range(len(items))]

    @staticmethod
    def _with_aliases(items: list[_Item], results: dict[int, Recorded]) -> dict[int, Recorded]:
        """``results`` and, for each event repeating an earlier one of the request
        whose position is known, that position as a duplicate."""
        for it in items:
            if it.alias_of is not None and it.alias_of in results:
                results[it.index] = replace(results[it.alias_of], duplicate=True)
        return results

    def _abandon(self, items: list[_Item]) -> None:
        """A request ended (refused, failed, cancelled by its caller) with claims of
        its own not settled: they stay pending, taken over at once by the next
        request that meets them (which looks the event up first)."""
        for it in items:
            if it.detached:
                continue
            for key, revision in it.created.items():
                fut = self._inflight.get(key)
                if fut is not None and not fut.done():
                    fut.set_exception(RuntimeError("the request holding this claim ended"))
                    fut.exception()
                    self._inflight.pop(key, None)
                    self._abandoned.add(key, revision)

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
        """Create every claim at once (but those an item holds already); an event with
        any key claimed before is a duplicate of what that claim names. The claims it
        did create are released, unless that claim names the item's own event (its
        id's claim, or its key's from an earlier attempt of it): then they are kept and
        completed with that event. Released, a claim an earlier attempt never made (a
        create of ``create_many``'s fallback that never reached the server) left its
        key free for another event, or its id for a second copy."""
        if not items:
            return
        now = now_ns()
        pairs = [(it, key) for it in items for key in it.keys if key not in it.created]
        try:
            revisions = await self._claims.create_many(
                [(key, ClaimValue(it.new.event_id, now)) for it, key in pairs]
            )
        except BaseException:
            # Some may have been created: whoever meets one of them (the value it
            # wrote) takes it over at once; a create that never landed marks nothing
            # (the key's claim met then is another's, or one of ours marked before:
            # that mark stays, added to, not replaced).
            self._abandoned.update((key, ClaimValue(it.new.event_id, now)) for it, key in pairs)
            raise
        for (it, key), revision in zip(pairs, revisions, strict=True):
            if revision is not None:
                it.created[key] = revision
        release = []
        unheld: list[str] = []
        for it in items:
            if len(it.created) == len(it.keys):
                self._hold(it.keys)
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
                self._hold(it.keys)
                continue
            if it.existing[1].event_id == it.new.event_id:
                self._hold(list(it.created))  # the same event's: kept (``_resolve``)
                continue
            unheld += it.created  # kept by an earlier pass of this item: not any more
            release += [(k, r) for k, r in it.created.items()]
            it.created = {}
        if release:
            # Finished even when this request is cancelled meanwhile: a claim of this
            # event's id left pending would make the retry of this request wait out its
            # lease, then take it for an event of its own (a second one under the key).
            await self._release(release, unheld)

    def _unhold(self, keys: list[str], deletes: asyncio.Task[None] | None = None) -> None:
        """Claims of ours released: their waiters re-read them, once ``deletes`` (the
        release's writes, finished in the background) is done, so none meets them
        still pending."""
        if deletes is not None and not deletes.done():
            deletes.add_done_callback(lambda _: self._unhold(keys))
            return
        for key in keys:
            fut = self._inflight.pop(key, None)
            if fut is not None and not fut.done():
                fut.set_exception(RuntimeError("the claim was released"))
                fut.exception()  # retrieved: waiters re-read the claim

    def _hold(self, keys: list[str]) -> None:
        """Claims of ours now in flight: a request meeting one awaits its outcome (a
        future this item holds already, kept by an earlier pass, stays)."""
        for key in keys:
            fut = self._inflight.get(key)
            if fut is None or fut.done():
                self._inflight[key] = asyncio.get_running_loop().create_future()

    def _settle(
        self,
        item: _Item,
        result: Recorded | BaseException,
        stored: bool,
        done: list[tuple[str, ClaimValue, int]] | None = None,
    ) -> None:
        """After an append: complete the claims (in the background: into ``done`` when
        given, written as one batch by the caller) and wake waiters. A failed append
        whose fate is unknown leaves its claims pending, abandoned."""
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
                pending = item.created.get(key, 0)  # its revision, still pending
                if done is not None:
                    done.append((key, value, pending))
                else:
                    self._complete([(key, value, pending)])
                if fut is not None and not fut.done():
                    fut.set_result(result)
            else:
                if stored:
                    if key in item.created:
                        self._abandoned.add(key, item.created[key])
                elif key in item.created:
                    self._spawn(self._claims.delete(key, item.created[key]))
                if fut is not None and not fut.done():
                    fut.set_exception(result)
                    fut.exception()  # retrieved: waiters re-read the claim

    def _complete(self, pairs: list[tuple[str, ClaimValue, int]]) -> None:
        """Write completed claims in the background. A write that fails leaves them
        pending: abandoned, so the next request meeting one looks its event up at once
        (found: the claim is completed then) instead of waiting out the lease."""

        async def run() -> None:
            try:
                await self._claims.put_many([(key, value) for key, value, _ in pairs])
            except BaseException:
                # Each left pending at the revision it had (one written is completed).
                self._abandoned.update((key, pending) for key, _, pending in pairs if pending)
                raise

        self._spawn(run())

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

    async def _record_fresh(
        self,
        groups: list[tuple[str, list[_Item]]],
        done: list[tuple[str, ClaimValue, int]] | None = None,
    ) -> list[list[Recorded] | BaseException]:
        """Append each process's ``items`` (their claims made), all queued at once; per
        group its positions or its failure. Completed claims go to ``done`` (written by
        the caller as one batch), else are written here.

        A request cancelled (its caller's deadline) while its events wait in the
        batcher's queue or are being written does not stop that write: the claims stay
        in flight and its outcome settles them, so a retry meeting them waits for it.
        Marked abandoned instead, the retry took them over while the first copy was
        still queued, and both copies went to the batcher, merged with other requests'
        events into one append that was stored only in part.

        No task per process: a request of 500 events over 500 processes made 500 (a
        third of the observer's CPU per event went to tasks, by cProfile)."""

        def settles(process_id: str, items: list[_Item]) -> Callable[[Written], None]:
            def written(outcome: Written) -> None:
                if isinstance(outcome, BaseException):
                    self._fail_fresh(items, outcome)
                else:
                    self._recorded_fresh(process_id, items, outcome)

            return written

        lanes = [(pid, [it.new for it in items], settles(pid, items)) for pid, items in groups]
        try:
            outcomes = await self._lanes(lanes)
        except asyncio.CancelledError:
            for _, items in groups:
                for it in items:
                    it.detached = True  # ``written`` settles them
            raise
        except BaseException as exc:
            for _, items in groups:
                self._fail_fresh(items, exc)
            raise
        out: list[list[Recorded] | BaseException] = []
        for (pid, items), outcome in zip(groups, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self._fail_fresh(items, outcome)
                out.append(outcome)
            else:
                out.append(self._recorded_fresh(pid, items, outcome, done))
        return out

    def _fail_fresh(self, items: list[_Item], exc: BaseException) -> None:
        """A refused append (nothing stored: the claims are released) or one whose fate
        is unknown (its claims left pending, abandoned)."""
        for it in items:
            self._settle(
                it,
                exc if isinstance(exc, Exception) else RuntimeError("cancelled"),
                stored=not isinstance(exc, ValidationError),
            )

    def _recorded_fresh(
        self,
        process_id: str,
        items: list[_Item],
        positions: list[tuple[int, int]],
        done: list[tuple[str, ClaimValue, int]] | None = None,
    ) -> list[Recorded]:
        now = now_ns()
        out = []
        mine: list[tuple[str, ClaimValue, int]] = [] if done is None else done
        for it, (version, seq) in zip(items, positions, strict=True):
            r = Recorded(it.new.event_id, process_id, seq, version, now)
            self._settle(it, r, stored=True, done=mine)
            out.append(r)
        if done is None and mine:
            self._complete(mine)
        return out

    async def _lanes(
        self, lanes: Sequence[tuple[str, list[NewEvent], Callable[[Written], None] | None]]
    ) -> list[Written]:
        """Queue one request's events of each process (one entry per process); the
        batcher appends them. Per entry its positions or its failure. Cancelled
        meanwhile, the writes go on, and each entry's ``written`` gets its outcome (at
        once, if it had one already)."""
        if not lanes:
            return []
        loop = asyncio.get_running_loop()
        pending = []
        for process_id, events, written in lanes:
            fut: asyncio.Future[list[tuple[int, int]]] = loop.create_future()
            # (one event per process is the common entry: no generator for it)
            size = (
                events[0].event.ByteSize()
                if len(events) == 1
                else sum(e.event.ByteSize() for e in events)
            )
            pending.append(_Pending(process_id, events, fut, size, written))
        self._queue += pending
        self._kick()
        try:
            await asyncio.wait([p.fut for p in pending])
        except asyncio.CancelledError:
            for p in pending:
                if not p.fut.done():
                    p.fut.cancel()  # ``answer`` hands the outcome to ``written``
                elif p.written is not None and not p.fut.cancelled():
                    # Answered as the cancel came (the future kept its outcome).
                    _hand(p.written, p.fut.exception() or p.fut.result())
            raise
        return [p.fut.exception() or p.fut.result() for p in pending]

    def _kick(self) -> None:
        while self._writers < self._o.max_inflight_writes and self._queue:
            taken = self._take()
            if not taken:
                return
            self._writers += 1
            task = asyncio.create_task(self._write(taken))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _take(self) -> dict[str, list[_Pending]]:
        """What can be written now, in queue order: no process that is being written
        already (its order would be at stake), at most one atomic batch of events. A
        process held back holds back its later events too."""
        taken: dict[str, list[_Pending]] = {}
        held: set[str] = set()
        rest: list[_Pending] = []
        count = size = 0
        for item in self._queue:
            pid = item.process_id
            n = len(item.events)
            more = item.size
            if (
                pid in self._writing
                or pid in held
                or (taken and (count + n > BATCH_LIMIT or size + more > self._o.lane_batch_bytes))
            ):
                held.add(pid)
                rest.append(item)
                continue
            taken.setdefault(pid, []).append(item)
            count, size = count + n, size + more
        self._queue = rest
        self._writing |= taken.keys()
        return taken

    async def _write(self, taken: dict[str, list[_Pending]]) -> None:
        """One write of what was taken: a single atomic batch across processes when
        there are many (one commit for all) or a process has several events (they must
        be atomic); else each process's event on its own, concurrently (no commit to
        wait for: the lowest latency)."""
        try:
            groups = [(pid, [e for it in items for e in it.events]) for pid, items in taken.items()]
            results: list[tuple[list[int], list[int]] | BaseException]
            many = self._many
            if many is not None and (
                len(groups) >= self._o.batch_processes_from or any(len(g) > 1 for _, g in groups)
            ):
                try:
                    appended = await many(groups)
                    results = [(r.versions, r.stream_seqs) for r in appended]
                except Exception:
                    # One group's fault must not fail the others: each on its own.
                    results = list(
                        await asyncio.gather(
                            *(self._append(pid, g) for pid, g in groups), return_exceptions=True
                        )
                    )
            else:
                results = list(
                    await asyncio.gather(
                        *(self._append(pid, g) for pid, g in groups), return_exceptions=True
                    )
                )
            for (pid, items), result in zip(taken.items(), results, strict=True):
                if isinstance(result, BaseException):
                    await self._one_by_one(pid, items, result)
                    continue
                versions, seqs = result
                i = 0
                for it in items:
                    n = len(it.events)
                    it.answer(list(zip(versions[i : i + n], seqs[i : i + n], strict=True)))
                    i += n
        finally:
            self._writing -= taken.keys()
            self._writers -= 1
            self._kick()

    async def _one_by_one(self, pid: str, items: list[_Pending], error: BaseException) -> None:
        """A process's merged group failed: each request's events alone, so a refusal
        is answered to the request that caused it."""
        if len(items) == 1:
            items[0].answer(error)
            return
        for it in items:
            try:
                versions, seqs = await self._append(pid, it.events)
            except Exception as exc:
                it.answer(exc)
            else:
                it.answer(list(zip(versions, seqs, strict=True)))

    async def _append(self, process_id: str, events: list[NewEvent]) -> tuple[list[int], list[int]]:
        for attempt in range(self._o.conflict_retries + 1):
            try:
                result = await self._store.append(process_id, events, ANY)
                return result.versions, result.stream_seqs
            except PartlyStoredError:
                raise  # not a conflict a retry resolves: ``_one_by_one`` splits it
            except ConcurrencyError:
                if attempt == self._o.conflict_retries:
                    raise
                await asyncio.sleep(0.002 * (attempt + 1) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    # -- duplicates -------------------------------------------------------------------

    async def _resolve(
        self, process_id: str, item: _Item, takeovers: list[_Item]
    ) -> Recorded | _Item:
        """The original positions of what ``item``'s claim names. A claim left pending
        (its owner crashed, or its request ended before its append did) is taken over:
        the event is looked up in the process's history; if it is not there, the item
        to append (under the claimed event id) is returned and put in ``takeovers``.
        The claims ``item`` kept (``_claim``: of the same event) are completed with the
        answer, or appended with the item."""
        outcome = await self._resolve_claim(process_id, item, takeovers)
        if isinstance(outcome, Recorded) and item.created:
            kept = await self._unkeep(item, outcome.event_id)
            await self._unless_carried(process_id, kept, kept.created, outcome)
            self._settle(kept, outcome, stored=True)
        return outcome

    async def _unless_carried(
        self, process_id: str, item: _Item, kept: dict[str, int], found: Recorded
    ) -> None:
        """``kept``: the claims ``item``'s request made for the stored event ``found``
        (its id's claim named it). The id's claim is always the event's own; the key's
        claim only when the event as stored carries that key (an earlier attempt of
        this very event, stopped between its two claims). A request that only shares
        the id (another key) claimed it for an event that never had it: every later
        event under that key was answered as this one and never recorded. That claim is
        released (taken from ``item``) before the duplicate is answered."""
        key = item.new.idempotency_key
        mine = claim_key("k", process_id, key) if key else ""
        if mine not in kept:
            return
        try:
            if await self._carries(process_id, key, found):
                return
        except BaseException:
            # Not proven either way: left pending, abandoned (a takeover reads the event
            # again before it completes the claim or releases it). Released here, the
            # key's claim of an event that does carry it (an attempt stopped between its
            # two claims) let a later event under the key be recorded as a second one.
            pending = kept.pop(mine)
            item.created.pop(mine, None)
            if mine in item.keys:
                item.keys.remove(mine)
            self._abandoned.add(mine, pending)
            self._unhold([mine])
            raise
        revision = kept.pop(mine)
        item.created.pop(mine, None)
        if mine in item.keys:
            item.keys.remove(mine)
        # Released before its waiters wake (they re-read it): woken first, they met it
        # pending, naming ``found``, and answered with it as a duplicate of ``found``.
        await self._release([(mine, revision)], [mine])

    async def _carries(self, process_id: str, key: str, found: Recorded) -> bool:
        """Whether the stored event ``found`` carries the idempotency key ``key`` (one
        read of that version)."""
        stored = await self._store.read_aggregate(
            process_id, from_version=found.process_seq, to_version=found.process_seq
        )
        return any(
            r.event_id == found.event_id and r.envelope.idempotency_key == key for r in stored
        )

    async def _release(self, claims: list[tuple[str, int]], unheld: list[str]) -> None:
        """Delete each claim at its revision (finished even when this request is
        cancelled), then wake the waiters on ``unheld``: they re-read the claims once
        they are gone (woken before, they met them still pending, naming this event).
        A claim whose delete fails may be left pending: abandoned, at its revision (it
        names an event no request of ours appends now, so whoever meets it takes it
        over at once, and checks it again, rather than after its lease). Only that
        claim: a delete that landed (its answer lost, or another delete of the batch
        failed) left the key free, and a claim made there since is another's."""

        async def delete_all() -> None:
            got = await asyncio.gather(
                *(self._claims.delete(k, r) for k, r in claims), return_exceptions=True
            )
            failed = [
                (c, g) for c, g in zip(claims, got, strict=True) if isinstance(g, BaseException)
            ]
            self._abandoned.update(c for c, _ in failed)  # before the waiters wake
            for _, exc in failed:
                raise exc

        deletes = asyncio.create_task(delete_all())
        self._background.add(deletes)
        deletes.add_done_callback(self._background.discard)
        try:
            await asyncio.shield(deletes)
        finally:
            self._unhold(unheld, deletes)

    def _foreign_key(self, process_id: str, item: _Item, key: str, event_id: str) -> bool:
        """``key`` is the claim of ``item``'s idempotency key and names another event
        than ``item``'s: it answers ``item`` only if that event as stored carries the
        key. A duplicate by id under another key made such a claim for a moment (until
        ``_unless_carried`` released it), or for good if its observer stopped there."""
        own = item.new.idempotency_key
        return (
            bool(own) and event_id != item.new.event_id and key == claim_key("k", process_id, own)
        )

    async def _unkeep(self, item: _Item, event_id: str) -> _Item:
        """The claims ``item`` kept, as an item of their own, taken from it: to settle
        with ``event_id``'s event. Kept for another event than the one its claim names
        now (that claim was released and made anew by another meanwhile), they are
        released instead (their waiters woken once they are gone: woken before, they
        met them pending and waited a poll, or took them over) and none are returned;
        a release that fails leaves them abandoned, and the request is answered."""
        kept = replace(item, keys=list(item.created), created=item.created)
        item.created = {}
        if event_id != item.new.event_id:
            try:
                if kept.created:
                    await self._release(list(kept.created.items()), kept.keys)
            except Exception as exc:
                log.warning("claim release failed (taken over at once later): %r", exc)
            return replace(kept, keys=[], created={})
        return kept

    async def _resolve_claim(
        self, process_id: str, item: _Item, takeovers: list[_Item]
    ) -> Recorded | _Item:
        assert item.existing is not None
        key, value, revision = item.existing
        asked = False  # the event's other claims, once per claim met
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
            elif self._ownerless(key, value, revision, now_ns()):
                taken = await self._claims.update(key, replace(value, since_ns=now_ns()), revision)
                if taken is not None:
                    outcome = await self._take_over(
                        process_id, item, key, value.event_id, taken, takeovers
                    )
                    if outcome is not None:
                        return outcome
                    asked = False  # released (not its event's key): claimed again
            else:
                dropped = False
                if not asked:
                    # Its owner may be gone with the event stored: the event's other
                    # claim, completed (by a takeover, or before a restart that forgot
                    # this one was abandoned), answers at once; no lease to wait out.
                    asked = True
                    for _, other, _ in await self._siblings(process_id, item, key, value.event_id):
                        if other.done:
                            found = _recorded(process_id, other)
                            if self._foreign_key(
                                process_id, item, key, value.event_id
                            ) and not await self._carries(
                                process_id, item.new.idempotency_key, found
                            ):
                                # Not that event's key: released (at this revision: a
                                # claim made anew meanwhile stays), then claimed again.
                                await self._release([(key, revision)], [])
                                dropped = True
                                break
                            self._spawn(self._claims.update(key, _completed(found), revision))
                            return replace(found, duplicate=True)
                if not dropped:
                    await asyncio.sleep(self._o.claim_poll_s)
            got = await self._claims.get(key)
            if got is None:  # released (its request was refused): this event is new
                item.existing = None
                await self._claim([item])
                if item.existing is None:
                    takeovers.append(item)
                    return item
                key, value, revision = item.existing
                asked = False
                continue
            if got[1] != revision:
                asked = False  # moved on (taken over): ask its event's other claims again
            value, revision = got

    async def _take_over(
        self,
        process_id: str,
        item: _Item,
        key: str,
        event_id: str,
        revision: int,
        takeovers: list[_Item],
    ) -> Recorded | _Item | None:
        """``key``'s claim is ours now (``revision``). The event's other claims (its
        id's, the request's key's) naming the same event are settled with it: one
        completed answers; one pending whose owner is gone too (abandoned here, or past
        its lease) is taken over along, so whatever becomes of the event completes
        both. Taking over one and leaving the other pending made the next request with
        the other wait out its lease after an observer restart. None: ``key`` is the
        request's key's claim naming a stored event that does not carry the key (a
        duplicate by id stopped before releasing it): released, to be claimed again."""
        self._abandoned.discard(key)
        proven = False  # the event as stored carries the request's key
        if self._foreign_key(process_id, item, key, event_id):
            try:
                stored: Recorded | None = None
                for _, other, _ in await self._siblings(process_id, item, key, event_id):
                    if other.done:
                        stored = _recorded(process_id, other)
                if stored is None:
                    stored = await self._lookup(process_id, event_id)
                carried = stored is None or await self._carries(
                    process_id, item.new.idempotency_key, stored
                )
            except BaseException:
                self._abandoned.add(key, revision)  # not proven: the next one reads again
                raise
            if not carried:
                await self._release([(key, revision)], [])
                return None
            proven = stored is not None
        # With the claims this request kept of the event (``_claim``): its key's claim
        # that an earlier attempt never made, say; whatever becomes of the event
        # completes them too.
        try:
            kept = dict((await self._unkeep(item, event_id)).created)
        except BaseException:
            self._abandoned.add(key, revision)
            raise
        self._inflight[key] = asyncio.get_running_loop().create_future()
        mine = replace(
            item,
            new=replace(item.new, event_id=event_id),
            keys=[key, *kept],
            created={key: revision, **kept},
        )
        takeovers.append(mine)
        found: Recorded | None = None
        others = await self._siblings(process_id, item, key, event_id)
        for _, other, _ in others:
            if other.done:
                found = _recorded(process_id, other)
        if found is None:
            now = now_ns()
            for other_key, other, other_revision in others:
                if other_key in self._inflight or not self._ownerless(
                    other_key, other, other_revision, now
                ):
                    continue  # its owner is alive: it completes it
                taken = await self._claims.update(
                    other_key, replace(other, since_ns=now_ns()), other_revision
                )
                if taken is not None:
                    self._abandoned.discard(other_key)
                    self._inflight[other_key] = asyncio.get_running_loop().create_future()
                    mine.keys.append(other_key)
                    mine.created[other_key] = taken
            found = await self._lookup(process_id, event_id)
        own = item.new.idempotency_key
        if found is None:
            own_key = claim_key("k", process_id, own) if own else ""
            if own and own_key not in mine.created and own_key not in {k for k, _, _ in others}:
                # The request's key is not claimed for this event (absent, or naming
                # another: its id's claim was met first, left pending by a release
                # that failed, say): appended now, it was a second event under the
                # key once that claim was released. Released; claimed again as a new
                # request is.
                takeovers[:] = [t for t in takeovers if t is not mine]
                await self._release(list(mine.created.items()), list(mine.created))
                return None
            return mine  # appended as this request has it: its key's claim is its own
        if not proven:
            # A claim of the request's key naming this event (taken over, or taken
            # along) is kept only if the event as stored carries the key: a stopped
            # duplicate's, its id's claim missing, was completed for the event.
            kept = mine.created
        await self._unless_carried(process_id, mine, kept, found)
        self._settle(mine, found, stored=True)
        return replace(found, duplicate=True)

    def _ownerless(self, key: str, value: ClaimValue, revision: int, now: int) -> bool:
        """A pending claim whose owner is gone: abandoned here (that very claim), or
        past its lease."""
        return (
            self._abandoned.holds(key, value, revision)
            or now - value.since_ns > self._o.claim_lease_s * 1e9
        )

    async def _siblings(
        self, process_id: str, item: _Item, key: str, event_id: str
    ) -> list[tuple[str, ClaimValue, int]]:
        """The other claims of the event ``key``'s claim names: its id's claim and the
        request's own keys, those that name the same event (a key's claim names its
        event, so its id's claim is found from it; an id's claim names no key)."""
        keys = [
            k for k in dict.fromkeys([claim_key("e", process_id, event_id), *item.keys]) if k != key
        ]
        got = await asyncio.gather(*(self._claims.get(k) for k in keys))
        return [
            (k, g[0], g[1])
            for k, g in zip(keys, got, strict=True)
            if g is not None and g[0].event_id == event_id
        ]

    async def _lookup(self, process_id: str, event_id: str) -> Recorded | None:
        """Where the event a pending claim names is stored, if it is: the process's
        history is read (its length: slow on a long session under load, and the caller's
        retry waits for it), so the event's completed claims are asked first."""
        for record in await self._store.read_aggregate(process_id):
            if record.event_id == event_id:
                return Recorded(
                    event_id, process_id, record.stream_seq, record.version, record.recorded_at_ns
                )
        return None


def _recorded(process_id: str, value: ClaimValue) -> Recorded:
    return Recorded(
        value.event_id, process_id, value.global_seq, value.process_seq, value.recorded_ns
    )


def _completed(r: Recorded) -> ClaimValue:
    return ClaimValue(r.event_id, now_ns(), r.global_seq, r.process_seq, r.recorded_ns)


def _pid(events: Sequence[CanonicalEvent], item: _Item) -> str:
    return events[item.index].process_id
