"""Command handling, independent of gRPC: load, check idempotency, decide, check the
story's size, append.

State is folded from the event store and kept per context in a bounded cache; a
command reads only the events after the cached version. Within one process the
commands of one context run one at a time (fewer conflicts); across processes the
event store's optimistic concurrency decides, and a loser reloads and retries.

A story's state is answered whole (GetContext, time travel, every watch message), and
a gRPC message has a size limit (4 MiB): a command that would make the state's encoded
view larger than ``max_context_bytes`` is refused (:class:`ContextTooLargeError`), so
every version of a story stays readable. The check is cheap: each cached story keeps an
upper bound of its view's size (exact at the last exact count, plus the encoded size
of every event since and a few bytes each), and the view is counted exactly only when
that bound passes the cap.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf.message import Message
from prometheus_client import Counter

from jetsource.core.crypto import ErasureWatch, erasures_heard
from jetsource.core.envelope import AppendResult, NewEvent, RecordedEvent
from jetsource.core.errors import ConcurrencyError, JetsourceError, ValidationError
from jetsource.core.ids import validate_aggregate_id
from jetsource.domains.context.history import Keys, StateLoader, fold_records
from jetsource.domains.context.model import (
    Command,
    ContextState,
    DomainError,
    Maps,
    decide,
    fold,
    fold_touched,
)
from jetsource.domains.context.views import view_growth, view_size
from jetsource.eventstore.horizon import BeyondHorizonError
from jetsource.eventstore.port import EventStore

MAX_KEY = 128
# Half the gRPC message limit: a watch message holds the state and the event that made
# it (an event is at most 1 MiB, the stream's message limit), and every answer a few
# bytes around the state.
DEFAULT_MAX_CONTEXT_BYTES = 2 * 1024 * 1024
# How many stories' size bounds are kept beside the state cache.
SIZES_KEPT = 10_000

CONFLICTS = Counter(
    "jetsource_publisher_conflicts_total", "Appends rejected because the context had moved on"
)
RETRIES = Counter(
    "jetsource_publisher_retries_total", "Commands reloaded and retried after a conflict"
)


class ExpectedVersionMismatchError(JetsourceError):
    """The caller's expected version is not the context's: nothing was appended."""

    def __init__(self, context_id: str, expected: int, actual: int) -> None:
        self.expected, self.actual = expected, actual
        super().__init__(
            f"context {context_id!r} is at version {actual}, the command expected {expected}"
        )


class RetriesExhaustedError(JetsourceError):
    pass


class ContextTooLargeError(DomainError):
    """The command would make the story's state larger than the cap: nothing was
    appended, and the same command sent again is refused again."""

    def __init__(self, context_id: str, size: int, after: int, cap: int) -> None:
        self.size, self.after, self.cap = size, after, cap
        super().__init__(
            f"context {context_id!r} is {size:,} bytes encoded and this command would make it "
            f"{after:,}, past the cap of {cap:,} bytes (publisher.max_context_bytes), so "
            "that it stays readable in one answer; retrying will not help: shorten its "
            "texts (ReviseDecision) or continue in another context"
        )


@dataclass(frozen=True)
class CommandOptions:
    idempotency_key: str
    expected_version: int | None = None
    correlation_id: str = ""
    causation_id: str = ""
    actor: str = ""


@dataclass
class Loaded:
    state: ContextState
    last_seq: int = 0
    # idempotency key -> the result of the command that used it
    results: dict[str, AppendResult] = field(default_factory=dict)
    # keys known from a snapshot load: key -> (first, last version); read when repeated
    older: Keys = field(default_factory=dict)
    # The dicts behind ``state``'s maps once an append of this process folded them
    # (private to this entry; None while they may be shared, e.g. with the loader's
    # cache): the next append folds into them in place instead of copying every node
    # of the story. Whoever sets ``state`` otherwise sets this to None.
    maps: Maps | None = None
    # An upper bound of the encoded size of ``state``'s view (None: not counted yet).
    view_bytes: int | None = None

    def remember(self, records: Sequence[RecordedEvent]) -> None:
        """Note the stored events' positions and idempotency keys (state folded apart)."""
        for record in records:
            self.last_seq = record.stream_seq
            key = record.envelope.idempotency_key
            if not key:
                continue
            prior = self.results.get(key)
            if prior is None:
                self.results[key] = AppendResult(
                    record.aggregate_id,
                    [record.version],
                    [record.stream_seq],
                    [record.event_id],
                    duplicate=True,
                )
            else:
                prior.versions.append(record.version)
                prior.stream_seqs.append(record.stream_seq)
                prior.event_ids.append(record.event_id)

    def appended(self, events: list[Message], result: AppendResult, key: str) -> None:
        """Fold our own successful append in without reading it back."""
        folded = fold_touched(events, self.state, own=self.maps)
        self.state, self.maps = folded.state, folded.maps
        self.last_seq = result.stream_seqs[-1]
        self.results[key] = AppendResult(
            result.aggregate_id, result.versions, result.stream_seqs, result.event_ids, True
        )


class CommandHandler:
    def __init__(
        self,
        store: EventStore,
        conflict_retries: int = 20,
        conflict_backoff_s: float = 0.005,
        cache_size: int = 10_000,
        loader: StateLoader | None = None,
        max_context_bytes: int = DEFAULT_MAX_CONTEXT_BYTES,
        history: EventStore | None = None,
    ) -> None:
        self._store = store
        # Where a repeated key's original events are read back (``store`` unless given):
        # on a compacted stream, one that reads the archive before the horizon.
        self._history = history or store
        self._loader = loader
        self.max_context_bytes = max_context_bytes
        self._retries = conflict_retries
        self._backoff = conflict_backoff_s
        self._cache_size = cache_size
        self._cache: OrderedDict[str, Loaded] = OrderedDict()
        # context id -> (stream sequence of its last event, a bound of its view's size
        # then): kept apart from the states (a few bytes each), so a story loaded again
        # at the same point (the state cache off, or full) is not counted again.
        self._sizes: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._erasures = ErasureWatch()  # an erasure empties the cache and the sizes
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def load(self, context_id: str) -> Loaded:
        """Current state: the cached fold plus whatever was appended since; not cached,
        the latest snapshot plus the events after it."""
        heard = erasures_heard()  # what is folded from here on may be cached
        if self._erasures.moved():
            self._cache.clear()
            self._sizes.clear()
        loaded = self._cache.get(context_id)
        if loaded is None and self._loader is not None:
            point = await self._loader.load(context_id, keys=True)
            loaded = Loaded(point.state, point.last_seq, older=point.keys)
        else:
            loaded = loaded or Loaded(ContextState(id=context_id))
            tail = await self._store.read_aggregate(
                context_id, from_version=loaded.state.version + 1, from_seq=loaded.last_seq + 1
            )
            loaded.state = await fold_records(self._store, tail, loaded.state)
            loaded.maps = None
            if loaded.view_bytes is not None:
                loaded.view_bytes += view_growth(r.event for r in tail)
            loaded.remember(tail)
        if heard != erasures_heard():
            # An erasure heard meanwhile: what was read may hold opened values (and a
            # call that began after it may already have emptied the cache).
            self._cache.pop(context_id, None)
        elif self._cache_size:
            self._cache[context_id] = loaded
            self._cache.move_to_end(context_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return loaded

    async def execute(
        self, context_id: str, command: Command, options: CommandOptions
    ) -> AppendResult:
        validate_aggregate_id(context_id, field="context_id")
        key = options.idempotency_key
        if not key.strip():
            raise ValidationError("options.idempotency_key is required", field="idempotency_key")
        if len(key) > MAX_KEY:
            raise ValidationError(
                f"options.idempotency_key is {len(key)} characters; at most {MAX_KEY}",
                field="idempotency_key",
            )
        lock, users = self._locks.get(context_id) or (asyncio.Lock(), 0)
        self._locks[context_id] = (lock, users + 1)
        try:
            async with lock:
                return await self._execute(context_id, command, options)
        finally:
            lock, users = self._locks[context_id]
            if users == 1:
                del self._locks[context_id]
            else:
                self._locks[context_id] = (lock, users - 1)

    async def _recall(
        self, context_id: str, loaded: Loaded, key: str, first: int, last: int
    ) -> AppendResult:
        """The original result of a key known from a snapshot: read its events back.
        Compacted into an archive this handler does not read, the key is still a
        duplicate: answered with its versions (stream sequences and event ids unknown)."""
        try:
            records = await self._history.read_aggregate(context_id, first, last)
        except BeyondHorizonError:
            result = AppendResult(context_id, list(range(first, last + 1)), [], [], True)
            loaded.results[key] = result
            return result
        result = AppendResult(
            context_id,
            [r.version for r in records],
            [r.stream_seq for r in records],
            [r.event_id for r in records],
            duplicate=True,
        )
        loaded.results[key] = result
        return result

    def _cached(self, context_id: str) -> Loaded | None:
        if self._erasures.moved():
            self._cache.clear()  # states folded before an erasure may hold opened values
            self._sizes.clear()  # (and an erased value may be longer than the original)
        return self._cache.get(context_id)

    async def _execute(
        self, context_id: str, command: Command, options: CommandOptions
    ) -> AppendResult:
        key, expected = options.idempotency_key, options.expected_version
        for attempt in range(self._retries + 1):
            heard = erasures_heard()
            # Optimistic: a cached fold is trusted for the happy path (a stale one makes
            # the append conflict); a refusal is only given after a fresh read.
            loaded = self._cached(context_id)
            fresh = loaded is None
            if loaded is None:
                loaded = await self.load(context_id)
            try:
                plan = _plan(context_id, loaded, command, key, expected)
                size = self._fits(context_id, loaded, plan)
            except (ExpectedVersionMismatchError, DomainError):
                if fresh:
                    raise
                loaded = await self.load(context_id)  # read what the cache may have missed
                plan = _plan(context_id, loaded, command, key, expected)
                size = self._fits(context_id, loaded, plan)
            if isinstance(plan, AppendResult):
                return plan  # this key was used before: the original result
            if isinstance(plan, tuple):
                return await self._recall(context_id, loaded, key, *plan)
            events = plan
            metadata = {"actor": options.actor} if options.actor else {}
            new = [
                NewEvent(
                    event,
                    idempotency_key=key,
                    correlation_id=options.correlation_id,
                    causation_id=options.causation_id,
                    source="publisher",
                    metadata=metadata,
                )
                for event in events
            ]
            try:
                result = await self._store.append(context_id, new, loaded.state.version)
            except ConcurrencyError as exc:
                CONFLICTS.inc()
                self._cache.pop(context_id, None)
                if expected is not None:
                    # The key before the version: the context may have moved by this very
                    # command (a reply lost to a deadline, a retry that raced it).
                    fresh_load = await self.load(context_id)
                    if key in fresh_load.results:
                        return fresh_load.results[key]
                    if key in fresh_load.older:
                        return await self._recall(
                            context_id, fresh_load, key, *fresh_load.older[key]
                        )
                    raise ExpectedVersionMismatchError(context_id, expected, exc.actual) from exc
                RETRIES.inc()
                await asyncio.sleep(self._backoff * (attempt + 1) * random.random())
                continue
            if result.duplicate or heard != erasures_heard():
                # Stored before by someone, or an erasure heard meanwhile (the state may
                # hold opened values): read again next time.
                self._cache.pop(context_id, None)
            else:
                loaded.appended(events, result, key)
                loaded.view_bytes = size
                if size is not None:
                    self._sizes[context_id] = (loaded.last_seq, size)
                    self._sizes.move_to_end(context_id)
                    if len(self._sizes) > SIZES_KEPT:
                        self._sizes.popitem(last=False)
            return result
        raise RetriesExhaustedError(
            f"context {context_id!r} kept changing: gave up after {self._retries} retries"
        )

    def _fits(
        self, context_id: str, loaded: Loaded, plan: AppendResult | tuple[int, int] | list[Message]
    ) -> int | None:
        """An upper bound of the view's size once ``plan``'s events are folded in, or
        ContextTooLargeError. Counted exactly only when the bound says it may not fit
        (or no bound is known yet, after a load)."""
        if not isinstance(plan, list):
            return None  # nothing to append
        cap = self.max_context_bytes
        if loaded.view_bytes is None:
            known = self._sizes.get(context_id)
            if known is not None and known[0] == loaded.last_seq:
                loaded.view_bytes = known[1]
            else:
                loaded.view_bytes = view_size(loaded.state)
        bound = loaded.view_bytes + view_growth(plan)
        if bound <= cap:
            return bound
        after = view_size(fold(plan, loaded.state))  # a copy: the cached state stays
        if after > cap:
            loaded.view_bytes = size = view_size(loaded.state)
            raise ContextTooLargeError(context_id, size, after, cap)
        return after


def _plan(
    context_id: str, loaded: Loaded, command: Command, key: str, expected: int | None
) -> AppendResult | tuple[int, int] | list[Message]:
    """The original result if ``key`` was used before (or the versions it appended,
    when only a snapshot said so), else the events to append."""
    if key in loaded.results:
        return loaded.results[key]
    if key in loaded.older:
        return loaded.older[key]
    if expected is not None and expected != loaded.state.version:
        raise ExpectedVersionMismatchError(context_id, expected, loaded.state.version)
    return decide(command, loaded.state)
