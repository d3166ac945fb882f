"""Sessions on the process ledger: the ports the emitter, the CLI, the TUI and the
pruner use, and their adapters.

- ``SessionWriter`` records canonical events. ``ObserverWriter`` sends them to the
  observer (``ObserverService.RecordBatch``: idempotent forever, the production path);
  ``LedgerWriter`` appends them to the ``PROCESS_EVENTS`` stream through the engine's
  event store with the observer's envelope mapping (aggregate = process, version =
  process_seq), for tools and tests that run without an observer.
- ``SessionReader`` reads sessions back: ``LedgerReader`` from the stream through the
  engine's event store (histories by direct get, live follow by an ordered JetStream
  consumer on the session's subjects, so an event is seen once it is committed).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import grpc
from google.protobuf import json_format

from jetsource._gen.process.v1 import events_pb2
from jetsource.core.clock import from_timestamp, parse_rfc3339_ns, to_timestamp
from jetsource.core.codec import PayloadDecodeError
from jetsource.core.envelope import ANY, Expected, NewEvent, RecordedEvent
from jetsource.core.errors import CorruptEventError, EventTooLargeError
from jetsource.core.ids import uuid7, validate_aggregate_id
from jetsource.domains.process.batching import requests, too_large
from jetsource.domains.process.models.common import is_noop
from jetsource.domains.sessions.format import (
    ENDED_STATUS,
    PROCESS_STARTED,
    SESSION_ENDED,
    SESSION_KIND,
    SessionEvent,
    ending_error,
    ending_said,
    error_text,
    from_message,
    from_stored,
)
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import void_prefix
from jetsource.eventstore.jsapi import BATCH_LIMIT


class SessionWriter(Protocol):
    async def record(
        self, events: Sequence[events_pb2.CanonicalEvent]
    ) -> list[events_pb2.Position]:
        """Record events (per process in the given order); their positions back."""


class SessionReader(Protocol):
    async def processes(self) -> dict[str, ProcessSummary]:
        """Every process the ledger knows, by id (sessions are the roots of kind
        ``session``)."""

    async def sessions(self) -> list[ProcessSummary]:
        """The sessions: the roots of kind ``session`` (what ``processes`` holds of
        them, read without the rest where the reader can)."""

    async def subtree(self, root_id: str) -> dict[str, ProcessSummary]:
        """The process ``root_id`` and every process nested under it (children of
        children too), by id; nothing of any other tree. Empty when unknown."""

    async def take_errors(self, roots: Sequence[ProcessSummary]) -> None:
        """Give sessions of ``sessions()`` about to be listed the error of their
        endings (``format.ending_error``), where the reader's summaries lack it."""

    async def events(self, session_id: str, after_seq: int = 0) -> list[Recorded]:
        """The session's events with seq above ``after_seq``, in seq order."""

    async def first(self, process_id: str) -> Recorded | None:
        """The process's first event (seq 1) alone, read as a session's; None when
        there is none (unknown, or unreadable: its reads name it)."""

    async def tail(self, process_id: str) -> tuple[int, int]:
        """(last seq, when it was recorded in ns) of a process; (0, 0) if unknown."""

    async def endings(self, session_id: str) -> list[int]:
        """The seqs of the session's ``session_ended`` events (the ledger's endings), in
        order; usually one, none while it runs."""

    def follow(self, session_id: str, after_seq: int = 0) -> AsyncIterator[Recorded]:
        """The session's events above ``after_seq``, then live as they commit."""


@dataclass(frozen=True)
class Recorded:
    """A session event and when the store recorded it (for the interrupted rule)."""

    event: SessionEvent
    recorded_ns: int
    global_seq: int


@dataclass(frozen=True)
class StreamMark:
    """Where the ledger's stream stands (one STREAM.INFO): which stream it is (when it
    was created), its last sequence and how many messages it holds."""

    created: str
    last_seq: int
    messages: int

    def appended_to(self, before: StreamMark) -> bool:
        """Nothing but appends since ``before``: the same stream, and every sequence
        after ``before.last_seq`` is there while nothing before it went (a purge, a
        pruned session, an age limit: each one removes messages)."""
        grown = self.last_seq - before.last_seq
        return (
            self.created == before.created
            and grown >= 0
            and self.messages - before.messages == grown
        )


class LedgerBehindError(Exception):
    """A read of what was appended saw less than the stream said it holds."""


@dataclass
class Appended:
    """What was appended to the ledger in a range of sequences (``LedgerReader.appended``)."""

    # the lifecycle events (started, ended), in stream order
    lifecycle: list[RecordedEvent]
    # each process's messages in stream order: (stream seq, version, recorded ns), or
    # None for one that tells nothing by itself (not an event, voided, or an operator's
    # void of an earlier one)
    messages: dict[str, list[tuple[int, int, int] | None]]


@dataclass
class ProcessSummary:
    process_id: str
    parent: str = ""
    kind: str = ""
    name: str = ""
    status: str = "running"
    started_ns: int = 0
    ended_ns: int = 0
    last_recorded_ns: int = 0
    error: str = ""
    # What the stream reader's fold keeps for the interrupted rule (``interrupter``),
    # from the lifecycle events: the stream seq of the first, and of the one that
    # named the parent, and the process's own endings (stream seq, ended_ns), in
    # stream order.
    first_seq: int = field(default=0, compare=False, repr=False)
    linked_seq: int = field(default=0, compare=False, repr=False)
    ends: tuple[tuple[int, int], ...] = field(default=(), compare=False, repr=False)


LIFECYCLE = frozenset({PROCESS_STARTED, *ENDED_STATUS})


def fold_lifecycle(found: dict[str, ProcessSummary], lifecycle: list[RecordedEvent]) -> None:
    """Lifecycle events (started, ended) folded into ``found`` in stream order: folding
    a ledger in pieces, one after the other, gives what one fold of it gives."""
    touched: set[str] = set()
    for r in sorted(lifecycle, key=lambda r: r.stream_seq):
        env = r.envelope
        p = found.setdefault(env.aggregate_id, ProcessSummary(env.aggregate_id))
        touched.add(p.process_id)
        p.first_seq = p.first_seq or r.stream_seq
        p.last_recorded_ns = max(p.last_recorded_ns, r.recorded_at_ns)
        occurred = from_timestamp(env.occurred_at) if env.HasField("occurred_at") else 0
        named = env.parent_aggregate_id
        if named and named != p.process_id and not p.parent:
            # The first parent a process names is its parent, as the registry has it:
            # a later process_started naming another took the process out of its
            # session's tree here (so `sessions prune` left its events in the stream).
            p.parent = named
            p.linked_seq = r.stream_seq
        if env.event_type == PROCESS_STARTED:
            data = _data(r)
            # Text only, as the registry reads them: a kind of 5 is no kind.
            kind, name = data.get("kind"), data.get("name")
            p.kind = kind if isinstance(kind, str) else ""
            p.name = name if isinstance(name, str) else ""
            p.started_ns = occurred or r.recorded_at_ns
        elif env.event_type in ENDED_STATUS:
            p.status = {"process_cancelled": "cancelled"}.get(
                env.event_type, ENDED_STATUS[env.event_type]
            )
            p.ended_ns = occurred or r.recorded_at_ns
            p.ends += ((r.stream_seq, p.ended_ns),)
            if p.kind == SESSION_KIND and not p.parent:
                # A session's error by the rule `sessions show` folds its endings with
                # (ending_error): any ending's, kept through a later one naming none.
                # The query reader takes it the same way (QueryReader.take_errors).
                p.error = ending_error(p.error, ending_said(env.event_type, _data(r)))
            else:
                # Any other process (one of kind session under a parent too), as the
                # registry has it, the query reader's: the last ending's.
                p.error = registry_error(env.event_type, _data(r))
    interrupt_below(found, touched)


def interrupt_below(found: dict[str, ProcessSummary], touched: set[str]) -> None:
    """The statuses of the processes without an ending of their own under ``touched``
    (those of the events just folded: a new ending, link or parent can change only
    theirs and their descendants') worked out again by the registry's interrupted rule
    (``interrupter``): ``interrupted`` (ended at the ending's time, no error), else
    ``running``. From the kept positions alone, so a fold in pieces gives one fold's."""
    if not touched:
        return
    kids: dict[str, list[str]] = {}
    for p in found.values():
        if p.parent:
            kids.setdefault(p.parent, []).append(p.process_id)
    todo, seen = list(touched), set()
    while todo:
        pid = todo.pop()
        if pid in seen:  # a forged parent link makes no cycle here
            continue
        seen.add(pid)
        todo += kids.get(pid, [])
        p = found[pid]
        if p.ends:
            continue  # its own ending stands
        by = interrupter(found, p)
        p.status, p.ended_ns = ("running", 0) if by is None else ("interrupted", by)


def interrupter(found: dict[str, ProcessSummary], p: ProcessSummary) -> int | None:
    """When the ancestor's ending that interrupts ``p`` (a process without an ending of
    its own) ended (its ``ended_ns``), or None: the process registry's rule
    (models/registry.py, docs/process-ledger.md): the first ending (stream order) of an
    ancestor stored once the chain of links up to it existed (a link exists from the
    later of the event naming the parent and the parent's first). An ending stored
    before that interrupts nothing, whatever the events' times (the registry's
    documented limitation: a child stored after its parent's ending stays running)."""
    best: tuple[int, int] | None = None  # (stream seq, ended_ns) of the ending
    since = 0
    x, seen = p, {p.process_id}
    while x.parent and x.parent in found and x.parent not in seen:
        q = found[x.parent]
        seen.add(q.process_id)
        since = max(since, x.linked_seq, q.first_seq)
        for seq, ended in q.ends:
            if best is not None and seq >= best[0]:
                break
            if seq >= since:
                best = (seq, ended)
                break
        x = q
    return None if best is None else best[1]


def registry_error(event_type: str, data: dict[str, Any]) -> str:
    """A process's error once its ending ``event_type`` (payload ``data``) is read, by
    the process registry's rule (models/registry.py): the last ending's, a failure's
    ``data.error`` (as ``error_text``) and none for another ending, which clears the
    one a failure before it named. The stream reader's fold of any process but a
    session; the query reader has it from the registry."""
    return error_text(data.get("error")) if event_type == "process_failed" else ""


def stored_event(record: RecordedEvent) -> events_pb2.StoredEvent:
    """A recorded event of PROCESS_EVENTS as the ledger's StoredEvent."""
    env = record.envelope
    body = record.event
    if not isinstance(body, events_pb2.ProcessEventBody):
        body = events_pb2.ProcessEventBody()
        with contextlib.suppress(Exception):
            body.ParseFromString(env.payload)
    ce = events_pb2.CanonicalEvent(
        event_id=env.event_id,
        process_id=env.aggregate_id,
        parent_process_id=env.parent_aggregate_id,
        event_type=env.event_type,
        source=env.source,
        schema_version=env.schema_version,
        causation_id=env.causation_id,
        correlation_id=env.correlation_id,
        idempotency_key=env.idempotency_key,
        attributes=dict(body.attributes),
    )
    if env.HasField("occurred_at"):
        ce.occurred_at.CopyFrom(env.occurred_at)
    if body.WhichOneof("payload") == "data":
        ce.data.CopyFrom(body.data)
    elif body.WhichOneof("payload") == "typed":
        ce.typed.CopyFrom(body.typed)
    return events_pb2.StoredEvent(
        event=ce,
        global_seq=record.stream_seq,
        process_seq=env.aggregate_version,
        recorded_at=to_timestamp(record.recorded_at_ns),
    )


class LedgerWriter:
    """Appends canonical events through the engine's event store (the process domain's
    stream). Order per process is the store's: each batch of one process is appended
    atomically after whatever is there (in pieces of at most ``BATCH_LIMIT`` events)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    async def record(
        self,
        events: Sequence[events_pb2.CanonicalEvent],
        expected: Mapping[str, int] | None = None,
    ) -> list[events_pb2.Position]:
        """``expected``: the seq a process is at before these events, for a writer that
        means them to land at exact seqs (an import): appended there or not at all
        (ConcurrencyError when the process moved; a repeat of the same append finds
        its events). A process not in it is appended after whatever is there."""
        at = dict(expected or {})
        out: list[events_pb2.Position] = []
        i = 0
        while i < len(events):
            j = i
            while j < len(events) and events[j].process_id == events[i].process_id:
                j += 1
            # One atomic append per process, in pieces of at most BATCH_LIMIT events
            # (a longer session failed whole): each piece at the seq the last one left.
            for k in range(i, j, BATCH_LIMIT):
                run = events[k : min(j, k + BATCH_LIMIT)]
                news = [_new_event(ce) for ce in run]
                pid = run[0].process_id
                expect: Expected = at.get(pid, ANY)
                try:
                    result = await self._store.append(pid, news, expect)
                except EventTooLargeError as exc:
                    if exc.index is not None:  # its place among ``events``, not the piece's
                        exc.index += k
                    raise
                if pid in at:
                    at[pid] += len(run)
                for ce, news_i, version, seq in zip(
                    run, news, result.versions, result.stream_seqs, strict=True
                ):
                    out.append(
                        events_pb2.Position(
                            event_id=news_i.event_id,
                            process_id=ce.process_id,
                            global_seq=seq,
                            process_seq=version,
                            duplicate=result.duplicate,
                        )
                    )
            i = j
        return out


def _new_event(ce: events_pb2.CanonicalEvent) -> NewEvent:
    body = events_pb2.ProcessEventBody(attributes=dict(ce.attributes))
    if ce.WhichOneof("payload") == "data":
        body.data.CopyFrom(ce.data)
    elif ce.WhichOneof("payload") == "typed":
        body.typed.CopyFrom(ce.typed)
    return NewEvent(
        body,
        event_id=ce.event_id or uuid7(),
        occurred_at_ns=from_timestamp(ce.occurred_at) if ce.HasField("occurred_at") else None,
        causation_id=ce.causation_id,
        correlation_id=ce.correlation_id,
        idempotency_key=ce.idempotency_key,
        source=ce.source,
        parent_aggregate_id=ce.parent_process_id,
        event_type=ce.event_type,
        schema_version=ce.schema_version,
    )


async def recorded_at(
    store: Any, session_id: str, from_seq: int = 1
) -> tuple[int, dict[int, SessionEvent | None]]:
    """What the ledger's stream holds of a session, for an import: its last seq and
    the events from ``from_seq`` on by seq (None: a place an operator voided). One
    look-up of the last seq, and one read only when it is at ``from_seq`` or beyond
    (a session the ledger does not know costs the look-up alone)."""
    last = int(await store.last_version(session_id))
    found: dict[int, SessionEvent | None] = {}
    if last >= from_seq:
        for r in await store.read_aggregate(session_id, from_version=from_seq):
            found[r.version] = None if is_noop(r) else _recorded(r, session_id).event
            last = max(last, r.version)
    return last, found


# The observer's refusal of an event past its payload limit (validation.py).
_PAYLOAD_TOO_LARGE = re.compile(r"events\[(\d+)\]\.(?:data|typed): the payload is \d+ bytes")


# What the observer says of one event of a request it refused as bad input:
# ``events[3].data.name: ...`` (validation.py's field paths).
_EVENT_REFUSED = re.compile(r"events\[(\d+)\](?:\.|: )(.*)", re.DOTALL)


class RefusedTooLargeError(EventTooLargeError):
    """The observer refused an event for its size (``index``: its place among the
    events given to ``ObserverWriter.record``); ``recorded``: how many of those before
    it were recorded all the same (the pieces, and the halves of a request split for
    its size, sent before the refused request): sent again, they would be recorded
    twice."""

    def __init__(self, message: str, index: int, recorded: int) -> None:
        super().__init__(message, index=index)
        self.recorded = recorded


class EventRefusedError(grpc.aio.AioRpcError):  # type: ignore[misc]
    """The observer refused one event as bad input (INVALID_ARGUMENT, as it said it:
    still an ``AioRpcError``); ``index``: its place among the events given to
    ``ObserverWriter.record`` (the observer's ``events[i]`` counts from its request,
    a piece or a half of one), ``said``: what it said of it without ``events[i].``."""

    def __init__(self, exc: grpc.aio.AioRpcError, index: int, said: str) -> None:
        super().__init__(
            exc.code(),
            exc.initial_metadata(),
            exc.trailing_metadata(),
            exc.details(),
            exc.debug_error_string(),
        )
        self.index, self.said = index, said


class ObserverWriter:
    """Records through the observer's gRPC ``RecordBatch`` (a stub of ObserverService)."""

    def __init__(
        self, stub: Any, timeout_s: float = 10.0, metadata: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self._stub = stub
        self._timeout = timeout_s
        self._metadata = metadata or None

    async def record(
        self, events: Sequence[events_pb2.CanonicalEvent]
    ) -> list[events_pb2.Position]:
        """One ``RecordBatch`` per piece of at most ``BATCH_LIMIT`` events and
        ``MAX_REQUEST_BYTES``, in order (the observer takes at most that many of one
        process per request, and gRPC no message over its limit): a long import or a
        batch of large events is recorded, not refused whole."""
        out: list[events_pb2.Position] = []
        start = 0
        for piece in requests(events, BATCH_LIMIT):
            out += await self._send(list(piece), start)
            start += len(piece)
        return out

    async def _send(
        self, events: list[events_pb2.CanonicalEvent], at: int
    ) -> list[events_pb2.Position]:
        """``at``: the place of ``events`` among those given to ``record``, a half of a
        request split for its size too (the half before it may be recorded, as the
        pieces before are): a refusal of one event names it by its place among them.
        A half's refusal counted its events from the half: the import named the wrong
        line."""
        from jetsource._gen.process.v1 import observer_pb2

        try:
            reply = await self._stub.RecordBatch(
                observer_pb2.RecordBatchRequest(events=events),
                timeout=self._timeout,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            # Over a server's smaller message limit: the same bytes would never pass.
            if too_large(exc) and len(events) > 1:
                half = len(events) // 2
                return await self._send(events[:half], at) + await self._send(
                    events[half:], at + half
                )
            # One event too large (over the observer's payload limit, or alone over
            # gRPC's), the request refused whole, nothing of it recorded:
            # EventTooLargeError with its index among the events given to ``record``,
            # as LedgerWriter says it, saying what the server said.
            details = exc.details() or ""
            if too_large(exc):
                raise RefusedTooLargeError(details, index=at, recorded=at) from exc
            m = _PAYLOAD_TOO_LARGE.match(details)
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and m:
                index = at + int(m.group(1))
                raise RefusedTooLargeError(details, index=index, recorded=at) from exc
            # Another refusal of one event (``events[i].field: ...``): the same error
            # naming it by its place among the events given to ``record``.
            refused = _EVENT_REFUSED.match(details)
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and refused:
                raise EventRefusedError(exc, at + int(refused.group(1)), refused.group(2)) from exc
            raise
        return list(reply.positions)


def _data(record: RecordedEvent) -> dict[str, Any]:
    body = record.event
    if isinstance(body, events_pb2.ProcessEventBody) and body.WhichOneof("payload") == "data":
        out: dict[str, Any] = json_format.MessageToDict(body.data)
        return out
    return {}


class LedgerReader:
    """Reads sessions from the process domain's stream through the engine's event
    store: ``store`` is a JetStreamEventStore of PROCESS_EVENTS, ``js`` the NATS
    JetStream context for live follow."""

    def __init__(
        self,
        store: Any,
        js: Any,
        stream: str,
        subject_prefix: str,
        wait_s: float = 10.0,
        replies: jsapi.Replies | None = None,
    ) -> None:
        self._store = store
        self._js = js
        self._stream = stream
        self._prefix = subject_prefix
        # Started, for the raw reads of what was appended (``appended``): without it
        # only whole reads are offered (``incremental`` is False).
        self._replies = replies
        # How long follow waits for the first event of a session the stream does not
        # know (one about to begin) before it says NOT_FOUND, as QueryReader does.
        self._wait_s = wait_s

    async def processes(self) -> dict[str, ProcessSummary]:
        found = await self._summaries()
        for p in found.values():
            await self._running_tail(p)
        return found

    async def subtree(self, root_id: str) -> dict[str, ProcessSummary]:
        """The stream has no index by root: the lifecycle of every process is read
        (as for ``processes``), the tree under ``root_id`` kept."""
        found = await self._summaries()
        if root_id not in found:
            return {}
        below: dict[str, list[str]] = {}
        for p in found.values():
            if p.parent:
                below.setdefault(p.parent, []).append(p.process_id)
        out: dict[str, ProcessSummary] = {}
        todo = [root_id]
        while todo:
            pid = todo.pop()
            if pid in out:  # a forged parent link makes no cycle here
                continue
            out[pid] = found[pid]
            todo.extend(below.get(pid, []))
        await self._running_tail(out[root_id])
        return out

    async def _running_tail(self, p: ProcessSummary) -> None:
        if p.kind == SESSION_KIND and not p.parent and p.status == "running":
            # a running session's last event is rarely a lifecycle one (a poisoned
            # one is named where its events are read, not here)
            with contextlib.suppress(CorruptEventError):
                last = (await self.tail(p.process_id))[1]
                p.last_recorded_ns = max(p.last_recorded_ns, last)

    async def started_since(self, after_seq: int) -> dict[str, ProcessSummary]:
        """The processes started after stream sequence ``after_seq`` (a ``mark``'s
        ``last_seq``), from their start events alone: one filtered read from there,
        not the lifecycle of every process."""
        started = await self._lifecycle(f"{self._prefix}.*.{PROCESS_STARTED}", after_seq + 1)
        found: dict[str, ProcessSummary] = {}
        fold_lifecycle(found, started)
        return found

    async def _summaries(self) -> dict[str, ProcessSummary]:
        """Every process from its lifecycle events (started, ended)."""
        return await self.lifecycle()

    async def lifecycle(self, to_seq: int | None = None) -> dict[str, ProcessSummary]:
        """Every process from its lifecycle events (started, ended) up to ``to_seq``;
        no running session's tail is read here."""
        lifecycle: list[RecordedEvent] = []
        for event_type in (PROCESS_STARTED, *ENDED_STATUS):
            lifecycle += await self._lifecycle(f"{self._prefix}.*.{event_type}", 1, to_seq)
        found: dict[str, ProcessSummary] = {}
        fold_lifecycle(found, lifecycle)
        return found

    async def _lifecycle(
        self, subject: str, start: int = 1, to_seq: int | None = None
    ) -> list[RecordedEvent]:
        """Every message on ``subject`` (from ``start`` up to ``to_seq``) that is an
        event. A message that is not (a hostile publish: undecodable, or naming another
        process) is no process's lifecycle: it is stepped over here, so one poisoned
        process does not take the list of every session down; reading that process
        names it."""
        out: list[RecordedEvent] = []
        while to_seq is None or start <= to_seq:
            try:
                async for r in self._store.read_all(
                    from_seq=start, to_seq=to_seq, subject_filter=subject
                ):
                    if not is_noop(r):
                        out.append(r)
                return out
            except CorruptEventError as exc:
                start = exc.stream_seq + 1
        return out

    @property
    def incremental(self) -> bool:
        """Whether ``mark`` and ``appended`` can be asked (a list kept between reads)."""
        return self._replies is not None

    async def mark(self) -> StreamMark:
        """Where the stream stands now: one STREAM.INFO, however long the ledger."""
        info = await self._store.stream_info()
        state = info.get("state", {})
        return StreamMark(
            str(info.get("created", "")),
            int(state.get("last_seq", 0)),
            int(state.get("messages", 0)),
        )

    async def server_now_ns(self) -> int:
        """The time now by the NATS server that records the stream (one STREAM.INFO:
        its ``ts``, nats-server 2.10 and later; else the stream's newest message's
        time, ``state.last_ts``, which is never later than the server's now), never
        the local clock: the times a session's events were recorded are the server's,
        so a quiet measured against it is not moved by a local clock set wrong. 0 if
        the stream says neither (empty, an older server)."""
        info = await self._store.stream_info()
        for text in (info.get("ts"), info.get("state", {}).get("last_ts")):
            if isinstance(text, str) and text:
                try:
                    ns = parse_rfc3339_ns(text)
                except ValueError:
                    continue
                if ns > 0:  # an empty stream's last_ts is year 1
                    return ns
        return 0

    async def tail_at(self, process_id: str) -> tuple[int, int, int]:
        """``tail`` and the stream sequence of the message it read: (last seq, when it
        was recorded in ns, its stream sequence); (0, 0, 0) if unknown."""
        version = await self._store.last_version(process_id)
        if not version:
            return 0, 0, 0
        last = await self._store.read_aggregate(process_id, from_version=version)
        if not last:
            return 0, 0, 0
        return version, int(last[-1].recorded_at_ns), int(last[-1].stream_seq)

    async def appended(self, after_seq: int, to_seq: int) -> Appended:
        """What was appended in (``after_seq``, ``to_seq``], every sequence of which
        the stream holds (``StreamMark.appended_to``), from one read of the range in
        unfiltered pages (cheap on the server however long the stream): its lifecycle
        events as ``lifecycle`` reads them, and each process's messages. Fewer
        messages than the range holds (a replica behind the one that said where the
        stream stands answered, or something was removed meanwhile) is
        LedgerBehindError: nothing of it is to be taken."""
        if self._replies is None:
            raise RuntimeError("appended needs the reader's replies (open_sessions gives them)")
        events, voids = f"{self._prefix}.", f"{void_prefix(self._prefix)}."
        timeout = self._store.settings.request_timeout_s
        out = Appended([], {})
        seq, seen = after_seq + 1, 0
        while seq <= to_seq:
            batch = min(jsapi.DIRECT_GET_PAGE, to_seq - seq + 1)
            page = await jsapi.direct_get_page(
                self._replies, self._stream, None, seq, batch, timeout
            )
            for raw in page.messages:
                if raw.seq > to_seq:
                    break
                seen += 1
                if raw.subject.startswith(voids):  # an operator's void of one of its events
                    pid = raw.subject[len(voids) :].split(".", 1)[0]
                    out.messages.setdefault(pid, []).append(None)
                elif raw.subject.startswith(events):
                    await self._take(raw, raw.subject[len(events) :], out)
            if not page.messages:
                break
            seq = page.messages[-1].seq + 1
        if seen != to_seq - after_seq:
            raise LedgerBehindError(
                f"{self._stream}: read {seen} of the {to_seq - after_seq} messages "
                f"after sequence {after_seq}"
            )
        return out

    async def _take(self, raw: jsapi.RawMessage, rest: str, out: Appended) -> None:
        pid, _, event_type = rest.partition(".")
        try:
            r: RecordedEvent = await self._store.open(raw)
        except PayloadDecodeError:
            # no event (corrupt, or voided): no lifecycle, as ``_lifecycle`` steps over
            # it; what the process's history says is for ``tail`` to tell
            out.messages.setdefault(pid, []).append(None)
            return
        if event_type in LIFECYCLE and not is_noop(r):
            out.lifecycle.append(r)
        voided = self._store.known_voided(raw.seq)
        out.messages.setdefault(pid, []).append(
            None if voided else (raw.seq, r.version, r.recorded_at_ns)
        )

    async def sessions(self) -> list[ProcessSummary]:
        return [
            p for p in (await self.processes()).values() if p.kind == SESSION_KIND and not p.parent
        ]

    async def take_errors(self, roots: Sequence[ProcessSummary]) -> None:
        """Nothing to take: the lifecycle's fold gave each its endings' error."""

    async def events(self, session_id: str, after_seq: int = 0) -> list[Recorded]:
        records = await self._store.read_aggregate(session_id, from_version=after_seq + 1)
        return [_recorded(r, session_id) for r in records if not is_noop(r)]

    async def first(self, process_id: str) -> Recorded | None:
        try:
            got = await self._store.read_aggregate(process_id, from_version=1, to_version=1)
        except CorruptEventError:
            return None
        return next((_recorded(r, process_id) for r in got if not is_noop(r)), None)

    async def tail(self, process_id: str) -> tuple[int, int]:
        version = await self._store.last_version(process_id)
        if not version:
            return 0, 0
        last = await self._store.read_aggregate(process_id, from_version=version)
        return (version, int(last[-1].recorded_at_ns)) if last else (0, 0)

    async def held(self, process_id: str) -> int | None:
        """How many messages the stream holds on the process's subjects, whatever they
        are (a corrupt one too): what a purge of them removes. One STREAM.INFO with a
        subject filter, nothing decoded; None without the reader's replies."""
        validate_aggregate_id(process_id)
        if self._replies is None:
            return None
        replies = self._replies
        # Through the store's retries and error mapping, as ``stream_info``: one
        # timeout raised a bare TimeoutError ("unexpected ... (a bug)", exit 1).
        info = await self._store._call(
            lambda: jsapi.api(
                replies,
                f"STREAM.INFO.{self._stream}",
                {"subjects_filter": f"{self._prefix}.{process_id}.>"},
                self._store.settings.request_timeout_s,
            )
        )
        return sum(int(n) for n in (info.get("state", {}).get("subjects") or {}).values())

    async def endings(self, session_id: str) -> list[int]:
        """Read from the session's ending subjects alone (a filtered read each), not
        its whole history."""
        validate_aggregate_id(session_id)
        seqs: list[int] = []
        for event_type in ENDED_STATUS:
            got = await self._lifecycle(f"{self._prefix}.{session_id}.{event_type}")
            seqs += [r.version for r in got]
        return sorted(seqs)

    async def _live(self, session_id: str, raw: Any, after: int) -> RecordedEvent | None:
        return await _checked(self._store, session_id, raw, after)

    async def follow(self, session_id: str, after_seq: int = 0) -> AsyncIterator[Recorded]:
        from nats.js.api import ConsumerConfig, DeliverPolicy

        from jetsource.eventstore.jsapi import raw_of_delivery

        backlog = await self._store.read_aggregate(session_id, from_version=after_seq + 1)
        start = 1
        for r in backlog:
            if not is_noop(r):  # a voided one keeps its place, and shows nothing
                yield _recorded(r, session_id)
            after_seq, start = r.version, r.stream_seq + 1
        # A session with no event at all (unknown, or pruned) is waited for a while,
        # then NOT_FOUND: following it must not hang for ever while show and export
        # say it does not exist.
        known = start > 1 or bool(await self._store.last_version(session_id))
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def on_message(msg: Any) -> None:
            await queue.put(msg)

        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        if start == 1:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        sub = await self._js.subscribe(
            f"{self._prefix}.{session_id}.>",
            stream=self._stream,
            ordered_consumer=True,
            cb=on_message,
            config=config,
            idle_heartbeat=2.0,
        )
        try:
            while True:
                if known:
                    msg = await queue.get()
                else:
                    try:
                        async with asyncio.timeout(self._wait_s):
                            msg = await queue.get()
                    except TimeoutError:
                        from jetsource.domains.sessions.service import SessionNotFoundError

                        raise SessionNotFoundError(f"session {session_id!r} not found") from None
                    known = True
                raw = raw_of_delivery(msg)
                record = await self._live(session_id, raw, after_seq)
                if record is None:
                    continue  # already delivered from the backlog, or voided
                after_seq = record.version
                if not is_noop(record):
                    yield _recorded(record, session_id)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


# How many running sessions' tails a whole read of the kept process list reads at once.
PROCESS_TAILS_AT_ONCE = 16


class ProcessList:
    """Every process of the ledger kept between reads, for a screen that reads it every
    few seconds (the TUI's process tree): what ``reader.processes()`` gives, without
    reading the ledger whole each time. The first read is whole (every process's
    lifecycle, every running session's tail); each later one asks the stream where it
    stands (one STREAM.INFO) and reads only the messages appended since, once: their
    lifecycle events are folded into the kept summaries, and a running session's new
    events, when they follow its kept tail one by one, are its new tail (the
    interrupted rule reads ``last_recorded_ns``). A running session whose new messages
    do not (one that is not an event, a void, a version out of place, a tail that named
    a corrupt event), or one that has no kept tail yet, has its tail read from its
    history, as the whole read does. Nothing appended: nothing read but the mark.
    Anything but appends (a purge, a pruned session, an age limit, another stream of
    the name) or a failure makes the next read whole; a read of the range that comes
    back short (a replica behind) takes nothing and is asked again. A read cancelled
    half-way is finished by the next one.

    A reader that cannot say what was appended (``QueryReader``, or a ``LedgerReader``
    without replies) is read whole each time."""

    def __init__(self, reader: SessionReader) -> None:
        self._reader = reader
        self._mark: StreamMark | None = None
        self._found: dict[str, ProcessSummary] = {}
        # each running session's tail: (last seq, recorded ns, its stream seq), or None
        # when its history named a corrupt event (the lifecycle alone tells then)
        self._tails: dict[str, tuple[int, int, int] | None] = {}
        self._stale: set[str] = set()  # running sessions whose tails are to be read again
        self._lock = asyncio.Lock()
        self.whole_reads = 0  # how many reads were whole (the first, and after a removal)
        self.tail_reads = 0  # how many sessions' tails were read from their histories

    async def read(self) -> dict[str, ProcessSummary]:
        """Every process by id, as ``reader.processes()`` gives it (copies: the caller
        may keep or change them)."""
        reader = self._reader
        if not isinstance(reader, LedgerReader) or not reader.incremental:
            return await reader.processes()
        async with self._lock:
            try:
                await self._catch_up(reader)
            except LedgerBehindError:
                pass  # the processes as they were; the next read asks for the range again
            except Exception:
                self._mark = None  # the next read is whole
                raise
            return self._result()

    def _result(self) -> dict[str, ProcessSummary]:
        out: dict[str, ProcessSummary] = {}
        for pid, p in self._found.items():
            p = replace(p)
            tail = self._tails.get(pid)
            if tail is not None and _running_session(p):
                p.last_recorded_ns = max(p.last_recorded_ns, tail[1])
            out[pid] = p
        return out

    async def _catch_up(self, reader: LedgerReader) -> None:
        """Each step leaves what is kept whole: what was read is taken at once (no
        await between), so a read cancelled anywhere is finished by the next one, and
        nothing is taken twice."""
        mark = await reader.mark()
        if self._mark is None or not mark.appended_to(self._mark):
            found = await reader.lifecycle(to_seq=mark.last_seq)
            self._found, self._tails, self._mark = found, {}, mark
            self._stale.clear()
            self.whole_reads += 1
        elif mark.last_seq > self._mark.last_seq:
            got = await reader.appended(self._mark.last_seq, mark.last_seq)
            fold_lifecycle(self._found, got.lifecycle)
            for pid, messages in got.messages.items():
                if pid in self._tails and not self._follow(pid, messages):
                    self._stale.add(pid)
            self._mark = mark
        # in the order the ledger began them (a list, not a set): the server finds the
        # tails of sessions in stream order several times faster (0.6 s against 3 s for
        # 200 running sessions of 200,000 events)
        running = [pid for pid, p in self._found.items() if _running_session(p)]
        for pid in self._tails.keys() - set(running):
            del self._tails[pid]  # ended (or no session): its tail tells nothing more
        wanted = [pid for pid in running if pid in self._stale or pid not in self._tails]
        self.tail_reads += len(wanted)
        for i in range(0, len(wanted), PROCESS_TAILS_AT_ONCE):
            await asyncio.gather(
                *(self._read_tail(reader, pid) for pid in wanted[i : i + PROCESS_TAILS_AT_ONCE])
            )
        self._stale.clear()  # what is left is no running session's

    async def _read_tail(self, reader: LedgerReader, pid: str) -> None:
        try:
            tail: tuple[int, int, int] | None = await reader.tail_at(pid)
        except CorruptEventError:
            tail = None  # as ``processes`` does: the lifecycle alone tells
        self._tails[pid] = tail
        self._stale.discard(pid)

    def _follow(self, pid: str, messages: list[tuple[int, int, int] | None]) -> bool:
        """The kept tail moved over a session's new messages: True when each one not
        in it yet is its next event (its seq above the tail's event's, its version the
        next one), as the tail read from its history would say."""
        tail = self._tails.get(pid)
        moved = None if tail is None else tail_over(tail, messages)
        if moved is None:
            return False
        self._tails[pid] = moved
        return True


def tail_over(
    tail: tuple[int, int, int], messages: list[tuple[int, int, int] | None]
) -> tuple[int, int, int] | None:
    """A session's tail (its last seq, when that was recorded in ns, its stream seq)
    moved over its new messages ((stream seq, version, recorded ns) each, None for one
    that is no event of it): the new tail when each one not in it yet is its next event
    (its stream seq above the tail's, its version the next one), as the tail read from
    its history would say; None when one is not (read the tail from its history)."""
    count, recorded, at = tail
    for message in messages:
        if message is None:
            return None
        seq, version, recorded_ns = message
        if seq <= at:
            continue  # appended before the tail was read: it is in it
        if version != count + 1:
            return None
        count, recorded, at = version, recorded_ns, seq
    return count, recorded, at


def _running_session(p: ProcessSummary) -> bool:
    """A session (a root) still running: the processes whose tails the list reads."""
    return p.kind == SESSION_KIND and not p.parent and p.status == "running"


async def _checked(store: Any, session_id: str, raw: Any, after: int) -> RecordedEvent | None:
    """A live message as the session's next event (version ``after + 1``), None when
    it was delivered before or an operator voided it, else CorruptEventError naming
    its sequence: what a history read would say of it."""
    try:
        record: RecordedEvent = await store.open(raw)
        problem = None
        if record.version <= after:
            return None
        if record.version != after + 1:
            problem = f"it carries version {record.version} where {after + 1} belongs"
    except PayloadDecodeError as exc:
        problem = str(exc)
    if problem is None:
        return record
    if await store.voided(session_id, raw.seq):
        return None
    raise CorruptEventError(session_id, raw.seq, problem)


def _recorded(record: RecordedEvent, session_id: str) -> Recorded:
    return Recorded(
        from_stored(stored_event(record), session_id), record.recorded_at_ns, record.stream_seq
    )


# Ended sessions whose endings the query reader reads at once when listing.
ENDINGS_AT_ONCE = 16

# Codes that say the query service itself does not answer: the endings of the
# sessions after are not asked for.
_SERVICE_DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

_STATUS_NAMES = {1: "running", 2: "completed", 3: "failed", 4: "cancelled", 5: "interrupted"}


class QueryReader:
    """Reads sessions from the ledger's read models through ``ProcessQueryService``
    (a stub): processes from ``ListProcesses``, a session's events from
    ``GetProcessTimeline``, live follow from ``WatchSession``. What the read models
    forget (a pruned session) is gone from here too."""

    # What it answers is what the projector has applied, behind the stream: a prune
    # reads its processes again before it tombstones (``Sessions._with_started_since``).
    lags_the_stream = True

    def __init__(
        self,
        stub: Any,
        timeout_s: float = 10.0,
        page_size: int = 1000,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._stub = stub
        self._timeout = timeout_s
        self._page = page_size
        self._metadata = metadata

    async def processes(self) -> dict[str, ProcessSummary]:
        return await self._list()

    async def sessions(self) -> list[ProcessSummary]:
        """``ListProcesses`` of kind ``session``: the registry's sessions, not every
        process of every tree (a ledger of 50,000 processes under 500 sessions was
        paged through whole for ``sessions list``)."""
        found = await self._list(kind=SESSION_KIND)
        return [p for p in found.values() if p.kind == SESSION_KIND and not p.parent]

    async def take_errors(self, roots: Sequence[ProcessSummary]) -> None:
        """The registry keeps the last ending's error (a failure's, none for another
        ending); a session's is its endings' by the rule `show` folds them with (the
        ledger reader's too: any ending's, kept through a later one naming none): an
        ended session's is read from its endings (only those, by type), for the
        sessions listed only, a few at a time. A session whose endings cannot be read
        keeps the registry's error, the last ending's (one poisoned session neither
        hides nor takes the list down); once the
        query service is unreachable or too slow, the sessions after keep theirs
        without asking (each would wait for the deadline)."""
        ended = [p for p in roots if p.status != "running"]
        for at in range(0, len(ended), ENDINGS_AT_ONCE):
            chunk = ended[at : at + ENDINGS_AT_ONCE]
            read = await asyncio.gather(*(self._ending_error(p) for p in chunk))
            for p, said in zip(chunk, read, strict=True):
                if isinstance(said, str):
                    p.error = said
            if any(said in _SERVICE_DOWN for said in read):
                return

    async def _ending_error(self, p: ProcessSummary) -> str | grpc.StatusCode:
        """The session's error from its endings on the ledger (``ending_error``), or
        the code reading them failed with (a parked timeline's DATA_LOSS, a deadline,
        an unreachable service; NOT_FOUND: pruned since listed)."""
        from jetsource._gen.process.v1 import query_pb2

        error, token = "", ""
        while True:
            try:
                reply = await self._stub.GetProcessTimeline(
                    query_pb2.GetProcessTimelineRequest(
                        process_id=p.process_id,
                        event_types=sorted(ENDED_STATUS),
                        page_size=self._page,
                        page_token=token,
                    ),
                    timeout=self._timeout,
                    metadata=self._metadata,
                )
            except grpc.aio.AioRpcError as exc:
                code: grpc.StatusCode = exc.code()
                return code
            for stored in reply.events:
                ce = stored.event
                data = json_format.MessageToDict(ce.data) if ce.HasField("data") else {}
                error = ending_error(error, ending_said(ce.event_type, data))
            token = reply.next_page_token
            if not token:
                return error

    async def subtree(self, root_id: str) -> dict[str, ProcessSummary]:
        """``ListProcesses`` by root (the registry's index of the root's tree): the
        session's processes alone, however many others there are. A process that
        is not a root (or not known) has no tree of its own there: empty."""
        return await self._list(root_id)

    async def _list(self, root_id: str = "", kind: str = "") -> dict[str, ProcessSummary]:
        from jetsource._gen.process.v1 import query_pb2

        found: dict[str, ProcessSummary] = {}
        token = ""
        while True:
            reply = await self._stub.ListProcesses(
                query_pb2.ListProcessesRequest(
                    root_process_id=root_id, kind=kind, page_size=self._page, page_token=token
                ),
                timeout=self._timeout,
                metadata=self._metadata,
            )
            for p in reply.processes:
                # Any JSON, as text by the rendering `show` reads the ending's with: a
                # number or an object read as none here (list said null).
                error = (
                    error_text(json_format.MessageToDict(p.error)) if p.HasField("error") else ""
                )
                found[p.process_id] = ProcessSummary(
                    process_id=p.process_id,
                    parent=p.parent_process_id,
                    kind=p.kind,
                    name=p.name,
                    status=_STATUS_NAMES.get(p.status, "running"),
                    started_ns=from_timestamp(p.started_at) if p.HasField("started_at") else 0,
                    ended_ns=from_timestamp(p.ended_at) if p.HasField("ended_at") else 0,
                    last_recorded_ns=(
                        from_timestamp(p.last_recorded_at) if p.HasField("last_recorded_at") else 0
                    ),
                    error=error,
                )
            token = reply.next_page_token
            if not token:
                return found

    async def first(self, process_id: str) -> Recorded | None:
        import grpc

        from jetsource._gen.process.v1 import query_pb2

        try:
            reply = await self._stub.GetProcessTimeline(
                query_pb2.GetProcessTimelineRequest(process_id=process_id, page_size=1),
                timeout=self._timeout,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return next((_from_query(e, process_id) for e in reply.events), None)

    async def tail(self, process_id: str) -> tuple[int, int]:
        import grpc

        from jetsource._gen.process.v1 import query_pb2

        try:
            got = await self._stub.GetProcess(
                query_pb2.GetProcessRequest(process_id=process_id),
                timeout=self._timeout,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return 0, 0
            raise
        p = got.process
        last = from_timestamp(p.last_recorded_at) if p.HasField("last_recorded_at") else 0
        return int(p.last_process_seq), last

    async def events(self, session_id: str, after_seq: int = 0) -> list[Recorded]:
        import grpc

        from jetsource._gen.process.v1 import query_pb2

        out: list[Recorded] = []
        token = ""
        while True:
            try:
                reply = await self._stub.GetProcessTimeline(
                    query_pb2.GetProcessTimelineRequest(
                        process_id=session_id, page_size=self._page, page_token=token
                    ),
                    timeout=self._timeout,
                    metadata=self._metadata,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return []
                raise
            for stored in reply.events:
                if stored.process_seq > after_seq:
                    out.append(_from_query(stored, session_id))
            token = reply.next_page_token
            if not token:
                return out

    async def endings(self, session_id: str) -> list[int]:
        return [r.event.seq for r in await self.events(session_id) if r.event.type == SESSION_ENDED]

    async def follow(self, session_id: str, after_seq: int = 0) -> AsyncIterator[Recorded]:
        """``WatchSession``: the service maps the root's timeline to session events.
        A session the read models have not caught up with yet (NOT_FOUND right after
        it began) is asked for again for up to ``timeout_s``."""
        import grpc

        from jetsource._gen.process.v1 import query_pb2

        deadline = asyncio.get_running_loop().time() + self._timeout
        got = False
        while True:
            call = self._stub.WatchSession(
                query_pb2.WatchSessionRequest(session_id=session_id, after_seq=after_seq),
                metadata=self._metadata,
            )
            try:
                async for reply in call:
                    event = from_message(reply.event)
                    after_seq, got = event.seq, True
                    yield Recorded(event, 0, 0)
                return
            except grpc.aio.AioRpcError as exc:
                late = asyncio.get_running_loop().time() > deadline
                if exc.code() != grpc.StatusCode.NOT_FOUND or got:
                    raise
                if late:
                    from jetsource.domains.sessions.service import SessionNotFoundError

                    raise SessionNotFoundError(f"session {session_id!r} not found") from exc
                await asyncio.sleep(0.1)
            finally:
                call.cancel()


def _from_query(stored: events_pb2.StoredEvent, session_id: str) -> Recorded:
    recorded = from_timestamp(stored.recorded_at) if stored.HasField("recorded_at") else 0
    return Recorded(from_stored(stored, session_id), recorded, stored.global_seq)
