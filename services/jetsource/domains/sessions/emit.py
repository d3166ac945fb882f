"""Emitting a session: ``session_started`` first, ``session_ended`` (or a failure) last.

    async with session(writer, "context generate", argv=sys.argv) as s:
        s.emit("level_started", {"level": 0, "nodes": 3})

``emit`` does not wait: events are queued in order and a background task records
them in batches (one ``RecordBatch`` per batch, per process in order). Entering the
block records ``session_started`` and waits for it, so it is always seq 1. Leaving it
flushes what is queued, then records ``session_ended``: ``completed`` on a normal
exit, ``failed`` with the error on an exception, ``interrupted`` on cancellation or
Ctrl-C (KeyboardInterrupt), and by its exit code on ``sys.exit()`` (0 or none
``completed``, another ``failed``, with ``exit_code``); the exception goes on. When
the emitter has been quiet for ``heartbeat_s`` it records a ``session_heartbeat`` so
readers can tell a quiet session from one whose emitter is gone.

An event too large for the ledger (past the stream's max message size; through the
observer, past its payload limit or gRPC's message limit) is replaced by an
``event_too_large`` marker at its place (``data``: its ``type``, ``bytes``, the
refusal as ``error``), counted in ``dropped``; the events batched with it are recorded
in order and the session goes on. Each batch is sent in pieces the writer appends
whole (one request through the observer), so a piece refused for one event recorded
nothing and is sent again with the marker: nothing is recorded twice.

When recording fails otherwise (the ledger refused or could not be reached after the
writer's retries), the session is marked failed: later emits are dropped and counted, and at
the end a best-effort ``session_ended`` with status failed and the commit error is
recorded (if even that fails, readers see the session without an end and, once quiet,
as interrupted). The queue is bounded (``max_pending``): when full, ``emit`` drops the
event and counts it in ``dropped`` rather than block the instrumented program.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import socket
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from jetsource._gen.process.v1 import events_pb2
from jetsource.core.aio import stop_task
from jetsource.core.errors import EventTooLargeError, exit_code
from jetsource.core.printable import ID_TAKES, not_id_at, not_one_line_at, refused_at
from jetsource.core.settings import GrpcClientSettings
from jetsource.domains.process.batching import requests
from jetsource.domains.process.validation import FIXED_LIMITS
from jetsource.domains.sessions.catalog import Validation, load_catalog
from jetsource.domains.sessions.format import (
    RESERVED,
    SESSION_ENDED,
    SESSION_STARTED,
    SessionEvent,
    check_numbers,
    check_type,
    new_session_id,
    to_canonical,
)
from jetsource.domains.sessions.ledger import SessionWriter
from jetsource.eventstore.jsapi import BATCH_LIMIT

HEARTBEAT = "session_heartbeat"
# Recorded in place of an event too large for the ledger (its type, size and the refusal).
TOO_LARGE = "event_too_large"


class SessionFailedError(RuntimeError):
    pass


def _count_option(name: str, value: object) -> int:
    """``max_pending`` / ``max_batch`` as an int >= 1: a whole-number float (``1e4``,
    ``500.0``, what a config file or a division gives) is taken as it was before its
    check was added (fb75049 refused it); a fraction, a bool, NaN or below 1 is refused
    naming the option."""
    taken = int(value) if isinstance(value, float) and value.is_integer() else value
    if not isinstance(taken, int) or isinstance(taken, bool) or taken < 1:
        raise ValueError(f"{name}: {value!r} must be an integer >= 1")
    return taken


class Session:
    def __init__(
        self,
        writer: SessionWriter,
        command: str,
        *,
        argv: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        session_id: str | None = None,
        validation: Validation | str = Validation.WARN,
        heartbeat_s: float = 10.0,
        max_pending: int = 10_000,
        max_batch: int = 500,
        source: str = "jetsource.sessions",
    ) -> None:
        if not command:
            raise ValueError("command: a session needs the command it runs")
        if (at := not_one_line_at(command)) is not None:
            # Its root process's name (one line, as the observer records names): said
            # here, not as the observer's refusal of session_started naming data.name.
            raise ValueError(
                f"command holds {refused_at(command, at)}: it takes one line of printable text"
            )
        if not heartbeat_s > 0:  # NaN too: it would be recorded as interval_s
            raise ValueError(f"heartbeat_s: {heartbeat_s!r} must be a number of seconds > 0")
        # The emitter's own options, said naming them: 'bogus' was "'bogus' is not a
        # valid Validation"; max_pending 0 or below made the queue unbounded; a source
        # the observer refuses (past 256 characters, a line break) failed the session's
        # start through it and was recorded on the ledger.
        try:
            validation = Validation(validation)
        except ValueError:
            raise ValueError(
                f"validation: {validation!r} is not one of {', '.join(Validation)}"
            ) from None
        max_pending = _count_option("max_pending", max_pending)
        max_batch = _count_option("max_batch", max_batch)
        if len(source) > FIXED_LIMITS.max_text:
            raise ValueError(f"source is {len(source)} characters; at most {FIXED_LIMITS.max_text}")
        if (at := not_id_at(source)) is not None:
            raise ValueError(f"source contains {refused_at(source, at)}: it takes {ID_TAKES}")
        # What the caller gives is recorded in session_started's data, stored under the
        # root process's data.session (metadata and argv at the third level): refused
        # here naming it, as emit() refuses data, rather than recorded and then refused
        # by the observer or unreadable (NaN; past 20 levels export failed).
        if metadata:
            check_numbers(metadata, "metadata", level=3)
        # sys.argv holds an undecodable byte as a lone surrogate: recorded escaped.
        argv = [_text(a) if isinstance(a, str) else a for a in argv or []]
        check_numbers(argv, "argv", level=3)
        self.id = session_id or new_session_id()
        self.command = command
        self._writer = writer
        self._validation = Validation(validation)
        self._heartbeat_s = heartbeat_s
        self._max_batch = max_batch
        self._source = source
        self._started: dict[str, Any] = {
            "command": command,
            "argv": argv,
            "cwd": _text(os.getcwd()),
            "host": _text(socket.gethostname()),
            "pid": os.getpid(),
        }
        with contextlib.suppress(Exception):
            self._started["user"] = _text(getpass.getuser())
        if metadata:
            self._started["metadata"] = metadata
        self._queue: asyncio.Queue[events_pb2.CanonicalEvent] = asyncio.Queue(max_pending)
        self._task: asyncio.Task[None] | None = None
        self._last_sent = time.monotonic()
        self._t0 = time.monotonic()
        self.error: BaseException | None = None
        self.dropped = 0
        self.recorded = 0
        self._closed = False
        # Queued and not yet recorded (or dropped): flush waits for this, not for an
        # empty queue, since an event taken off the queue is not yet in a batch (on
        # Python 3.11 wait_for gets it in a task of its own).
        self._pending = 0

    @property
    def process_id(self) -> str:
        """The session's root process, for nesting a component's own process under it:
        ``observer.process("llm call", kind="provider", parent=s)`` (jetsource.sdk)."""
        return self.id

    @property
    def last_event_id(self) -> str:
        """Empty: the emitter leaves event ids to the observer, so a process nested
        under the session names it as parent but not as a cause."""
        return ""

    def _canonical(self, event_type: str, data: dict[str, Any]) -> events_pb2.CanonicalEvent:
        # No event id: the emitter resends only a piece refused whole for one event's
        # size, nothing of it recorded (another failed record fails the session), so
        # there is nothing to deduplicate, and the observer need not claim an id per event
        # (the claim is most of RecordBatch's time).
        return to_canonical(
            SessionEvent(time.time_ns(), self.id, 0, event_type, data), source=self._source
        )

    def emit(self, event_type: str, data: dict[str, Any] | None = None) -> None:
        """Queue an event (checked against the catalog per the validation setting:
        strict raises CatalogViolation for a known type with bad data). A type that is
        not snake_case is refused here (EventFormatError naming ``type``): the ledger
        would refuse the batch carrying it, and that would fail the whole session."""
        data = dict(data or {})
        if event_type in RESERVED or event_type in (SESSION_STARTED, SESSION_ENDED):
            raise ValueError(f"type: {event_type} is recorded by the session itself")
        check_type(event_type)
        check_numbers(data, "data")
        load_catalog().check(event_type, data, self._validation)
        if self._closed or self.error is not None:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait(self._canonical(event_type, data))
        except asyncio.QueueFull:
            self.dropped += 1
        else:
            self._pending += 1

    async def _send(self, batch: list[events_pb2.CanonicalEvent]) -> None:
        # In pieces each writer sends as one atomic append (one request through the
        # observer): a piece refused for one event's size recorded nothing of it, so it
        # is sent again with that event replaced and no event is recorded twice.
        for piece in requests(batch, BATCH_LIMIT):
            events = list(piece)
            replaced: set[int] = set()
            while True:
                try:
                    await self._writer.record(events)
                except EventTooLargeError as exc:
                    i = exc.index
                    if i is None or not 0 <= i < len(events) or i in replaced:
                        raise
                    # Through the observer a piece is split for gRPC's message limit:
                    # the halves before the refused one are recorded (sent again, they
                    # were recorded twice); the ledger's append recorded none.
                    done = getattr(exc, "recorded", 0)
                    if 0 < done <= i:
                        self.recorded += done
                        events = events[done:]
                        replaced = {r - done for r in replaced if r >= done}
                        i -= done
                    events[i] = self._too_large(events[i], exc)
                    replaced.add(i)
                    self.dropped += 1
                    continue
                break
            self.recorded += len(events)
            self._last_sent = time.monotonic()

    def _too_large(
        self, event: events_pb2.CanonicalEvent, exc: EventTooLargeError
    ) -> events_pb2.CanonicalEvent:
        """What is recorded in place of an event the ledger cannot hold: a marker at
        its place naming its type, size and the refusal (the rest of its batch and the
        session go on)."""
        marker = to_canonical(
            SessionEvent(
                time.time_ns(),
                self.id,
                0,
                TOO_LARGE,
                {
                    "type": event.event_type,
                    "bytes": event.ByteSize(),
                    "error": _text(str(exc)[:500]),
                },
            ),
            source=self._source,
        )
        if event.HasField("occurred_at"):
            marker.occurred_at.CopyFrom(event.occurred_at)
        return marker

    async def _run(self) -> None:
        while True:
            queued = 1
            try:
                async with asyncio.timeout(self._heartbeat_s):  # not wait_for: see core/aio.py
                    first = await self._queue.get()
            except TimeoutError:
                if time.monotonic() - self._last_sent >= self._heartbeat_s:
                    first = self._canonical(HEARTBEAT, {"interval_s": self._heartbeat_s})
                    queued = 0
                else:
                    continue
            batch = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
                queued += 1
            before = self.recorded
            try:
                await self._send(batch)
            except Exception as exc:  # the ledger refused or is unreachable: session failed
                self.error = exc
                # Less the pieces recorded before the one that failed.
                self.dropped += max(0, queued - (self.recorded - before)) + self._queue.qsize()
                self._pending = 0
                return
            self._pending -= queued

    async def flush(self) -> None:
        """Wait until every queued event is recorded (or the session failed)."""
        while self._task is not None and not self._task.done():
            if self._pending <= 0:
                return
            await asyncio.sleep(0.001)

    async def __aenter__(self) -> Session:
        await self._send([self._canonical(SESSION_STARTED, self._started)])
        self._task = asyncio.create_task(self._run(), name=f"session {self.id}")
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        await self.close(exc)

    async def close(self, exc: BaseException | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        task = self._task
        if task is not None:
            # Let the background task drain the queue, then stop it.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())
            await stop_task(task)
        ended: dict[str, Any] = {"duration_ms": round((time.monotonic() - self._t0) * 1000, 3)}
        if self.error is not None:
            ended |= {"status": "failed", "error": f"ingest commit failed: {self.error}"}
        elif exc is None:
            ended["status"] = "completed"
        elif isinstance(exc, SystemExit):
            # sys.exit() in the tool: its exit code says how the command ended.
            code = exit_code(exc)
            ended |= {"status": "completed" if code == 0 else "failed", "exit_code": code}
            if code:
                ended["error"] = f"SystemExit: {exc.code}"
        elif isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
            ended |= {"status": "interrupted", "error": type(exc).__name__}
        else:
            ended |= {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        if self.dropped:
            ended["dropped"] = self.dropped
        if "error" in ended:
            # An exception's text may hold what no Struct holds (a lone surrogate from
            # a surrogate-escaped path): the ending would not be recorded at all.
            ended["error"] = _text(ended["error"])
        # Best effort, and never masking the exception that ended the block.
        with contextlib.suppress(Exception):
            await self._writer.record([self._canonical(SESSION_ENDED, ended)])


def _text(text: str) -> str:
    """``text`` as the ledger can record it: a lone surrogate (an undecodable byte of a
    path or name, surrogate-escaped) as its escape ``\\udcff``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@contextlib.asynccontextmanager
async def session(writer: SessionWriter, command: str, **options: Any) -> AsyncIterator[Session]:
    s = Session(writer, command, **options)
    await s.__aenter__()
    try:
        yield s
    except BaseException as exc:
        await s.close(exc)
        raise
    else:
        await s.close(None)


@contextlib.asynccontextmanager
async def observer_session(
    target: str, command: str, client: GrpcClientSettings | None = None, **options: Any
) -> AsyncIterator[Session]:
    """A session recorded through the observer at ``target`` (host:port), the
    production path: ``async with observer_session("localhost:50053", "scan") as s``.

    The channel is secured as every jetsource client's: TLS and the bearer token from
    ``client``, by default the environment's ``JETSOURCE_CLIENT__TLS__...`` and
    ``JETSOURCE_CLIENT__TOKEN`` (or the secrets directory); its ``timeout_s`` bounds
    each write. An observer that refuses the token (or has none given) fails the entry
    with ``UNAUTHENTICATED``."""
    from jetsource._gen.process.v1.observer_pb2_grpc import ObserverServiceStub
    from jetsource.client import open_channel
    from jetsource.core.settings import JetsourceSettings
    from jetsource.domains.sessions.ledger import ObserverWriter

    security = client if client is not None else JetsourceSettings.load().client
    channel, metadata = open_channel(target, security)
    try:
        writer = ObserverWriter(ObserverServiceStub(channel), security.timeout_s, metadata)
        async with session(writer, command, **options) as s:
            yield s
    finally:
        await channel.close()
