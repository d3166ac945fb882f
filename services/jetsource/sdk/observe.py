"""The Python SDK of the process ledger: processes as ``async with`` blocks, events
emitted without waiting, sent in batches by a background flush.

    observer = Observer("127.0.0.1:50053", source="trainer")
    async with observer:
        async with observer.process("generate", kind="pipeline") as p:
            p.emit("level_started", {"level": 1})
            async with observer.process("level-1", kind="stage"):   # a child of p
                ...

- ``process()`` emits ``process_started`` (kind, name, attributes; the parent from the
  enclosing ``process()``, kept in a ``contextvars`` variable, so asyncio tasks
  created inside a process are its children) and, on leaving the block,
  ``process_completed``, ``process_failed`` (``error``: the exception) or
  ``process_cancelled`` (``asyncio.CancelledError``; ``KeyboardInterrupt`` and other
  non-``Exception`` exits too, with ``error_type``). ``SystemExit`` ends it by its exit
  code, as a shell would: ``sys.exit()``/``sys.exit(0)`` ``process_completed``, any
  other code ``process_failed``, each with ``exit_code``.
- ``emit()`` never blocks the instrumented code and never raises for the observer's
  sake (a value that cannot be sent, e.g. a ``datetime`` in ``data``, is a TypeError at
  the call naming it: ``data['at']``): it stamps an event id (UUIDv7, so a resend is
  a duplicate, never a double) and the time, and queues the event.
- A background task sends what is queued with ``RecordBatch`` (at most
  ``batch_size`` events and ``max_batch_bytes`` encoded, at least every
  ``flush_interval_s``), in emit order.

Policy when the observer is unreachable (or slow): the batch is resent with the same
event ids, backing off up to ``max_backoff_s``; meanwhile events queue up to
``buffer_size`` (the batch being sent counts: the client never holds more than
``buffer_size`` events once a send settles). When the buffer is full, the **oldest**
queued event is dropped (the oldest that is not a lifecycle event, so a process keeps
its start and end; a batch in flight is not touched, since it may yet be recorded) and
counted (``stats.dropped``, with a warning at most every 10 s): the instrumented code
keeps running and the newest history is kept. ``close()`` (leaving ``async with
observer``) waits up to ``close_timeout_s`` for the buffer to drain, then counts what is
left as dropped (an event loop that ends without ``close()`` loses what is queued:
counted in ``stats.dropped`` too, with a warning); an event emitted after ``close()``
(until ``start()`` again) is dropped and counted at once, with one warning. An event the
observer refuses (INVALID_ARGUMENT) is dropped alone and counted in ``stats.refused``;
the rest of its batch is resent. A batch over the server's gRPC message limit
(RESOURCE_EXHAUSTED "larger than max": a server whose limit is below
``max_batch_bytes``) is never resent as it was: it is split in two, in order, down to
one event, which is then refused alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from jetsource._gen.process.v1 import events_pb2 as epb
from jetsource._gen.process.v1 import observer_pb2 as pb
from jetsource._gen.process.v1 import observer_pb2_grpc as pb_grpc
from jetsource.core.aio import stop_task, wait_event, wait_for
from jetsource.core.errors import ValidationError, exit_code
from jetsource.core.ids import uuid7
from jetsource.core.structvalue import NotAStructValue, check_struct_value
from jetsource.domains.process.batching import MAX_REQUEST_BYTES, fitting, too_large
from jetsource.domains.process.validation import FIXED_LIMITS, STARTED_TEXT, to_new_event

if TYPE_CHECKING:
    from jetsource.domains.sessions.emit import Session

log = logging.getLogger("jetsource.sdk")

_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]{0,63}")
# RESOURCE_EXHAUSTED is retried when it means too many calls, never when the message
# was over the size limit (batching.too_large, checked first).
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}

# The observer's checks of the strings a caller passes (ids, kind, source, correlation
# id, idempotency key, attributes), run at the call; sizes the observer's settings
# may raise (payload bytes, attribute count) are left to it.
_CALL_LIMITS = FIXED_LIMITS

_LIFECYCLE = frozenset(
    {
        "process_started",
        "process_completed",
        "process_failed",
        "process_cancelled",
        "process_interrupted",
    }
)

_current: contextvars.ContextVar[Process | None] = contextvars.ContextVar(
    "jetsource_process", default=None
)


@dataclass
class Stats:
    emitted: int = 0
    sent: int = 0  # acknowledged by the observer (duplicates included)
    duplicates: int = 0
    dropped: int = 0  # the buffer was full (oldest first), or left at close
    refused: int = 0  # INVALID_ARGUMENT for that event
    retries: int = 0  # batches resent after a failure


def current_process() -> Process | None:
    """The process whose ``async with`` block (or a task started in it) runs here."""
    return _current.get()


def _check_json(value: Any, where: str) -> None:
    """TypeError naming the field (``data['a'][0]``) of a value a ``Struct`` cannot
    hold, here at the call rather than a bare "Unexpected type" from protobuf; a
    ValueError for a number it would change (an integer beyond 2^53, NaN, infinity)."""
    try:
        check_struct_value(value, where, _subscript)
    except NotAStructValue as exc:
        raise (TypeError if exc.wrong_type else ValueError)(str(exc)) from None


def _subscript(where: str, key: str) -> str:
    return f"{where}[{key!r}]"


def _struct(data: Mapping[str, Any] | None, where: str = "data") -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if data:
        if not isinstance(data, Mapping):
            raise TypeError(f"{where} must be a mapping, not {type(data).__name__}")
        data = dict(data)  # any mapping at the top; a Struct holds dicts below it
        _check_json(data, where)
        s.update(data)
    return s


def _attributes(attributes: Mapping[str, str] | None) -> dict[str, str]:
    for key, value in (attributes or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"attributes[{key!r}]: attributes are str -> str, not "
                f"{type(key).__name__} -> {type(value).__name__}"
            )
    return dict(attributes or {})


class Process:
    """One process: emit its events; its lifecycle is emitted by the ``async with``."""

    def __init__(
        self,
        observer: Observer,
        name: str,
        kind: str,
        process_id: str,
        parent: Process | None,
        attributes: Mapping[str, Any],
    ) -> None:
        self.observer = observer
        self.name = name
        self.kind = kind
        self.process_id = process_id
        # None: the enclosing process when the block is entered (contextvars).
        self.parent = parent
        self._explicit_parent = parent is not None
        self.attributes = dict(attributes)
        self.last_event_id = ""
        self._token: contextvars.Token[Process | None] | None = None
        self._ended = False

    @property
    def parent_process_id(self) -> str:
        return self.parent.process_id if self.parent else ""

    def emit(
        self,
        event_type: str,
        data: Mapping[str, Any] | None = None,
        *,
        causation_id: str = "",
        idempotency_key: str = "",
        attributes: Mapping[str, str] | None = None,
        correlation_id: str = "",
    ) -> str:
        """Queue an event of this process; returns its event id. A malformed event type
        is a programming error: ValueError here, at the call; a value in ``data`` (or
        ``attributes``) that cannot be sent is a TypeError naming it."""
        if not _EVENT_TYPE.fullmatch(event_type):
            raise ValueError(
                f"event type {event_type!r} must be snake_case (a lowercase letter, then "
                "lowercase letters, digits and '_', at most 64)"
            )
        event = epb.CanonicalEvent(
            event_id=uuid7(),
            process_id=self.process_id,
            parent_process_id=self.parent_process_id,
            event_type=event_type,
            source=self.observer.source,
            causation_id=causation_id,
            correlation_id=correlation_id,
            idempotency_key=idempotency_key,
            attributes=_attributes(attributes),
        )
        started = event_type == "process_started"
        if not started and (causation_id or correlation_id or idempotency_key or attributes):
            # What the observer would refuse later, in the flush, said here (a
            # ValidationError, a ValueError, naming ``event.<field>``); no data yet.
            to_new_event(event, _CALL_LIMITS)
        event.data.CopyFrom(_struct(data))
        if started:
            # Its kind and name too (text the registry reads), emitted by hand or not.
            to_new_event(event, _CALL_LIMITS)
        event.occurred_at.FromNanoseconds(time.time_ns())
        self.observer._queue(event)
        self.last_event_id = event.event_id
        return event.event_id

    async def __aenter__(self) -> Process:
        if not self._explicit_parent:
            self.parent = _current.get()
        data = {"kind": self.kind, "name": self.name, **self.attributes}
        # Started because of what its parent did last (explicit causation).
        cause = self.parent.last_event_id if self.parent else ""
        self.emit("process_started", data, causation_id=cause)
        self._token = _current.set(self)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            with contextlib.suppress(ValueError):  # left from another context: no reset
                _current.reset(self._token)
        if self._ended:
            return
        self._ended = True
        if exc is None:
            self.emit("process_completed")
        elif isinstance(exc, SystemExit):
            # sys.exit() in a command-line tool: its exit code says how the work ended.
            code = exit_code(exc)
            if code == 0:
                self.emit("process_completed", {"exit_code": 0})
            else:
                self.emit(
                    "process_failed",
                    {"error": f"SystemExit: {exc.code}"[:4000], "error_type": "SystemExit"}
                    | {"exit_code": code},
                )
        elif isinstance(exc, asyncio.CancelledError):
            self.emit("process_cancelled")
        elif not isinstance(exc, Exception):
            # KeyboardInterrupt, GeneratorExit: the block was stopped from
            # outside, not failed by its own work; the sessions emitter records Ctrl-C
            # as ``interrupted``, which is ``process_cancelled`` on the ledger.
            self.emit("process_cancelled", {"error_type": type(exc).__name__})
        else:
            self.emit(
                "process_failed",
                {"error": f"{type(exc).__name__}: {exc}"[:4000], "error_type": type(exc).__name__},
            )


class Observer:
    """A client of ``jetsource-observer`` with a buffer and a background flush (see the
    module docstring for the policy when the observer is unreachable)."""

    def __init__(
        self,
        target: str = "127.0.0.1:50053",
        *,
        source: str = "",
        batch_size: int = 500,
        max_batch_bytes: int = MAX_REQUEST_BYTES,
        flush_interval_s: float = 0.05,
        buffer_size: int = 10_000,
        call_timeout_s: float = 5.0,
        max_backoff_s: float = 2.0,
        close_timeout_s: float = 10.0,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if batch_size < 1 or buffer_size < batch_size:
            raise ValueError("batch_size >= 1 and buffer_size >= batch_size")
        if max_batch_bytes < 1:
            raise ValueError("max_batch_bytes >= 1")
        if not isinstance(target, str) or not target.strip():
            raise ValueError(f"target must be host:port, got {target!r}")
        # 0 would spin the flush (flush_interval_s, max_backoff_s) or fail every send
        # at once and resend it forever (call_timeout_s); NaN compares false.
        for name, value in (
            ("flush_interval_s", flush_interval_s),
            ("call_timeout_s", call_timeout_s),
            ("max_backoff_s", max_backoff_s),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        if not close_timeout_s >= 0:
            raise ValueError(f"close_timeout_s must be >= 0 seconds, got {close_timeout_s!r}")
        self.target = target
        self.source = source
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.flush_interval_s = flush_interval_s
        self.buffer_size = buffer_size
        self.call_timeout_s = call_timeout_s
        self.max_backoff_s = max_backoff_s
        self.close_timeout_s = close_timeout_s
        self.stats = Stats()
        self._token = token
        self._credentials = credentials
        self._channel_options = list(channel_options)  # e.g. a TLS server-name override
        self._buffer: deque[epb.CanonicalEvent] = deque()
        self._inflight: list[epb.CanonicalEvent] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.ObserverServiceStub | None = None
        self._last_drop_warning = 0.0
        self._closing = False
        # Closed (and not started again): an emit is dropped and counted at once, not
        # held in a buffer nothing sends.
        self._closed = False
        self._warned_closed = False

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._begin()

    def _begin(self) -> None:
        if self._task is not None:
            return
        self._closed = False
        self._closing = False
        # Fresh events for this loop (an asyncio.Event is bound to the loop that first
        # waits on it): an observer closed in one asyncio.run starts again in the next.
        self._wake, self._idle = asyncio.Event(), asyncio.Event()
        self._idle.set()
        if self._buffer:
            self._wake.set()
        if self._credentials is not None:
            self._channel = grpc.aio.secure_channel(
                self.target, self._credentials, options=self._channel_options
            )
        else:
            self._channel = grpc.aio.insecure_channel(self.target, options=self._channel_options)
        self._stub = pb_grpc.ObserverServiceStub(self._channel)
        self._task = asyncio.create_task(self._run(), name="jetsource-sdk-flush")

    async def close(self) -> None:
        """Send what is queued (up to ``close_timeout_s``), then stop."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await wait_for(self.flush(), self.close_timeout_s)
        await stop_task(self._task)
        self._task = None
        left = len(self._buffer) + len(self._inflight)
        if left:
            self.stats.dropped += left
            log.warning("observer unreachable at close: %d events dropped", left)
            self._buffer.clear()
            self._inflight = []
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        self._closing = False
        self._closed = True

    async def __aenter__(self) -> Observer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def flush(self) -> None:
        """Wait until everything emitted so far is acknowledged (or dropped)."""
        if self._task is None and self._buffer and not self._closed:
            self._begin()  # emitted with no loop running (not started): nothing sends
        while self._buffer or self._inflight:
            self._wake.set()
            self._idle.clear()
            await self._idle.wait()

    # -- processes --------------------------------------------------------------------

    def process(
        self,
        name: str,
        kind: str = "",
        *,
        process_id: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        parent: Process | None = None,
    ) -> Process:
        """A process as an ``async with`` block; its parent is the process enclosing
        the block when it is entered (or ``parent``). ``process_id`` defaults to a
        fresh UUIDv7. Attribute values that cannot be sent are a TypeError here."""
        _check_json(dict(attributes or {}), "attributes")
        # The data of its process_started (attributes may name a kind or a name).
        started = {"kind": kind, "name": name, **dict(attributes or {})}
        for key in STARTED_TEXT:
            if not isinstance(started[key], str):
                # Not a Struct question (TypeError): the observer's refusal, said here.
                field = f"event.data.{key}"
                raise ValidationError(
                    f"{field} must be a string, not {type(started[key]).__name__}", field
                )
        # A process id, kind, name or source the observer would refuse would lose every
        # event of the process, refused one by one in the flush: said here.
        probe = epb.CanonicalEvent(
            process_id=process_id or uuid7(),
            event_type="process_started",
            source=self.source,
        )
        probe.data.update({k: started[k] for k in STARTED_TEXT})
        to_new_event(probe, _CALL_LIMITS)
        return Process(
            self,
            name,
            kind,
            process_id or uuid7(),
            parent,
            attributes or {},
        )

    @contextlib.asynccontextmanager
    async def session(
        self, command: str, *, argv: Sequence[str] | None = None, **options: Any
    ) -> AsyncIterator[Session]:
        """A session (docs/sessions.md) recorded through this observer:

            async with observer.session("context generate", argv=sys.argv) as s:
                s.emit("level_started", {"level": 0})

        The emitter is ``jetsource.domains.sessions.emit``'s: ``session_started`` is
        recorded (and waited for) on entering, so it is seq 1; leaving records
        ``session_ended`` last: completed, failed (an exception), interrupted
        (cancellation or KeyboardInterrupt); the exception goes on. Its events go
        through the session's own ordered batches, not this observer's buffer (a
        failed commit fails the session; see emit.py). ``process()`` blocks inside
        nest under the session. ``options``: those of ``emit.Session`` (metadata,
        session_id, validation, heartbeat_s, max_pending, max_batch)."""
        from jetsource.domains.sessions.emit import session
        from jetsource.domains.sessions.ledger import ObserverWriter

        self._begin()
        assert self._stub is not None
        metadata = (("authorization", f"Bearer {self._token}"),) if self._token else ()
        writer = ObserverWriter(self._stub, timeout_s=self.call_timeout_s, metadata=metadata)
        options.setdefault("source", self.source or "jetsource.sessions")
        async with session(writer, command, argv=argv, **options) as s:
            # The session is the enclosing process of what runs inside the block (it
            # has the process_id and last_event_id a parent needs).
            token = _current.set(cast(Process, s))
            try:
                yield s
            finally:
                _current.reset(token)

    # -- the buffer and the flush -----------------------------------------------------

    def _queue(self, event: epb.CanonicalEvent) -> None:
        self.stats.emitted += 1
        if self._closed:
            # Nothing would ever send it: dropped now, counted, and said (once).
            self.stats.dropped += 1
            if not self._warned_closed:
                self._warned_closed = True
                log.warning(
                    "observer %s is closed: events emitted after close() are dropped "
                    "(stats.dropped); start() it again to send",
                    self.target,
                )
            return
        if self._task is None and not self._closing:
            # Not started: start lazily when a loop runs (emit needs no await).
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop()
                self._begin()
        # The batch in flight counts, so what is held does not depend on whether the
        # emit came while a send was pending.
        while self._buffer and len(self._buffer) + len(self._inflight) >= self.buffer_size:
            self._drop_oldest()
        self._buffer.append(event)
        if len(self._buffer) >= self.batch_size:
            self._wake.set()

    def _drop_oldest(self) -> None:
        """Drop the oldest queued event that is not a lifecycle event (a process keeps
        its start and end while its steps can go); the oldest of all if every queued
        event is one."""
        for i, e in enumerate(self._buffer):
            if e.event_type not in _LIFECYCLE:
                del self._buffer[i]
                break
        else:
            self._buffer.popleft()
        self._dropped(1)

    def _dropped(self, n: int) -> None:
        self.stats.dropped += n
        now = time.monotonic()
        if now - self._last_drop_warning > 10:
            self._last_drop_warning = now
            log.warning(
                "observer buffer full (%d events): dropping the oldest; %d dropped so far",
                self.buffer_size,
                self.stats.dropped,
            )

    async def _run(self) -> None:
        try:
            await self._flush_loop()
        except asyncio.CancelledError:
            if not self._closing:
                # Cancelled without close(): the loop is ending (asyncio.run returning)
                # with events that will never be sent. Counted and said, not silent.
                left = len(self._buffer) + len(self._inflight)
                if left:
                    self.stats.dropped += left
                    self._buffer.clear()
                    self._inflight = []
                    log.warning(
                        "observer %s was not closed before its event loop ended: %d "
                        "events not sent (leave `async with observer` or await "
                        "observer.close() to send them)",
                        self.target,
                        left,
                    )
                self._task = None
            raise

    async def _flush_loop(self) -> None:
        backoff = 0.05
        while True:
            if not self._buffer:
                self._idle.set()
                self._wake.clear()
                await wait_event(self._wake, self.flush_interval_s)
                continue
            if (
                len(self._buffer) < self.batch_size
                and not self._closing
                and not self._wake.is_set()
            ):
                await wait_event(self._wake, self.flush_interval_s)
            self._wake.clear()
            n = fitting(self._buffer, self.batch_size, self.max_batch_bytes)
            self._inflight = [self._buffer.popleft() for _ in range(n)]
            try:
                ok = await self._send(self._inflight)
            except asyncio.CancelledError:
                self._buffer.extendleft(reversed(self._inflight))
                self._inflight = []
                raise
            if ok:
                self._inflight = []
                backoff = 0.05
                continue
            # Not sent: back to the front, in order; the oldest go first if over capacity.
            self._buffer.extendleft(reversed(self._inflight))
            self._inflight = []
            while len(self._buffer) > self.buffer_size:
                self._drop_oldest()
            self.stats.retries += 1
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(self.max_backoff_s, backoff * 2)

    async def _send(self, batch: list[epb.CanonicalEvent]) -> bool:
        """True when the batch is settled (recorded, or its refused events dropped and
        the rest recorded); False to resend later what is left of it (``_inflight``)."""
        assert self._stub is not None
        metadata = (("authorization", f"Bearer {self._token}"),) if self._token else None
        parts = [batch]  # sent in order; a part over the message limit becomes two
        while parts:
            part = parts[0]
            try:
                response = await self._stub.RecordBatch(
                    pb.RecordBatchRequest(events=part),
                    timeout=self.call_timeout_s,
                    metadata=metadata,
                )
            except grpc.aio.AioRpcError as exc:
                if too_large(exc):
                    if len(part) > 1:
                        half = len(part) // 2
                        parts[0:1] = [part[:half], part[half:]]
                        continue
                    log.warning(
                        "observer refused an event of %d bytes: over the server's message "
                        "limit (%s)",
                        part[0].ByteSize(),
                        exc.details(),
                    )
                    self.stats.refused += 1
                    del parts[0]
                    self._inflight = [e for p in parts for e in p]
                    continue
                if exc.code() in _RETRYABLE:
                    log.debug("observer call failed (%s): resending", exc.code().name)
                    return False
                bad = _refused_index(exc)
                if (
                    exc.code() != grpc.StatusCode.INVALID_ARGUMENT
                    or bad is None
                    or bad >= len(part)
                ):
                    log.warning("observer refused a batch of %d: %s", len(part), exc.details())
                    self.stats.refused += len(part)
                    del parts[0]
                else:
                    log.warning("observer refused an event: %s", exc.details())
                    self.stats.refused += 1
                    parts[0] = part[:bad] + part[bad + 1 :]
                    if not parts[0]:
                        del parts[0]
                self._inflight = [e for p in parts for e in p]
                continue
            self.stats.sent += len(response.positions)
            self.stats.duplicates += sum(1 for p in response.positions if p.duplicate)
            del parts[0]
            self._inflight = [e for p in parts for e in p]
        return True


def _refused_index(exc: grpc.aio.AioRpcError) -> int | None:
    """``i`` of the ``events[i]...`` field the observer named."""
    for key, value in exc.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                for v in bad.field_violations:
                    m = re.match(r"events\[(\d+)\]", v.field)
                    if m:
                        return int(m.group(1))
    return None
