"""Raw `$JS.API` requests that nats-py 2.16 has no helpers for.

- atomic batch publish (ADR-50, server 2.12+), pipelined: one round trip per batch;
- batched direct get (ADR-31): one page of a given size, or paging through all, and
  single direct gets by sequence, last message of a (wildcard) subject, or first
  message at or after a time; an answer from another stream than the one asked (a
  mirror, see :func:`direct_get`) is never taken for the stream's;
- stream create/update/info, consumers, message deletion and purge by subject as plain JSON;
- a continuous pull from a durable consumer that returns what has arrived.

Every reply comes through one wildcard inbox subscription (:class:`Replies`), so a
request costs no SUB/UNSUB and replies can be awaited out of order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from nats import errors as nats_errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.transport import TcpTransport

from jetsource.core.aio import wait_for
from jetsource.core.clock import format_rfc3339_ns, parse_rfc3339_ns
from jetsource.core.deadline import bound as call_bound
from jetsource.core.deadline import cut_short, detached
from jetsource.core.deadline import wait as call_wait
from jetsource.core.errors import AccessDeniedError, DeadlineCutError, EventStoreUnavailableError
from jetsource.core.natsping import hand_over_pending, within

BATCH_LIMIT = 1000  # server default maximum messages per atomic batch
DIRECT_GET_PAGE = 1000

# JetStream error codes we act on.
ERR_WRONG_LAST_SEQUENCE = 10071
# The same lost compare-and-set from a clustered stream while another write of the subject
# is in flight ("wrong last sequence", no number): answered as 10071 (parse_response).
ERR_WRONG_LAST_SEQUENCE_CONSTANT = 10164
ERR_STREAM_NOT_FOUND = 10059
ERR_STREAM_NAME_IN_USE = 10058  # exists with a different configuration
ERR_SUBJECTS_OVERLAP = 10065  # subjects overlap with an existing stream
ERR_BATCH_DUPLICATE_MSG_ID = 10201
# A publish whose message id an earlier publish still in process has (not stored yet: a
# clustered stream's leader waits for a quorum of its replicas to store it).
ERR_DUPLICATE_IN_PROCESS = 10158
ERR_MESSAGE_TOO_LARGE = 10054
ERR_CONSUMER_NOT_FOUND = 10014
ERR_SEQUENCE_NOT_FOUND = 10037
# STREAM.MSG.DELETE of a sequence deleted already (or past the end): 500/10057.
ERR_NO_MESSAGE_FOUND = 10057
ERR_NO_SUITABLE_PEERS = 10005  # no servers to place a stream's replicas on
ERR_CLUSTER_UNAVAILABLE = 10008  # 503: JetStream has no meta leader (cluster forming, quorum lost)
# A cluster that is still forming (or a peer restarting) answers "no suitable peers ...,
# peer offline" for a while, and one without a meta leader yet does not answer a create
# at all: a stream is created once its peers and leader are there, within this.
PLACEMENT_WAIT_S = 15.0

T = TypeVar("T")


class JsApiError(Exception):
    # A lost compare-and-set answered 10164 (made 10071 here): another write of the
    # subject was in flight at the stream's leader, which may not be stored yet.
    in_flight = False

    def __init__(self, code: int, err_code: int, description: str) -> None:
        self.code = code
        self.err_code = err_code
        self.description = description
        super().__init__(f"JetStream error {code}/{err_code}: {description}")


class ReplyHandOverError(Exception):
    """A reply read by the client could not be handed over to the request awaiting it
    (the hand-over raised ``cause``); that request waits out its timeout, and the
    client's reader goes on reading. Reported to the client's error callback."""

    def __init__(self, subject: bytes, cause: Exception) -> None:
        self.cause = cause
        said = str(cause) or type(cause).__name__
        super().__init__(
            f"a reply on {subject.decode(errors='replace')} could not be handed over to the "
            f"request awaiting it ({said}); that request times out; the reader goes on"
        )


class NoRespondersError(Exception):
    """Nothing listens on the subject: for JetStream, the stream does not exist."""


@dataclass(slots=True)
class PubAck:
    """A publish acknowledgement. Not frozen: one is made per append, and a frozen
    dataclass costs several times as much to build."""

    stream: str
    seq: int
    duplicate: bool = False
    batch: str | None = None
    count: int = 1


@dataclass(frozen=True)
class RawMessage:
    subject: str
    seq: int
    time_ns: int
    headers: Mapping[str, str]
    data: bytes


@dataclass(frozen=True, init=False)
class OutMessage:
    """A message to publish. Its ``__init__`` is the one dataclass would write, setting
    the fields in one step instead of one ``object.__setattr__`` each (one is made per
    appended event)."""

    subject: str
    data: bytes
    headers: Mapping[str, str]

    def __init__(self, subject: str, data: bytes, headers: Mapping[str, str]) -> None:
        self.__dict__.update(subject=subject, data=data, headers=headers)


def _status(msg: Msg) -> str | None:
    return msg.headers.get("Status") if msg.headers else None


def parse_response(msg: Msg) -> dict[str, Any]:
    if _status(msg) == "503":
        raise NoRespondersError(msg.subject)
    body: dict[str, Any] = json.loads(msg.data) if msg.data else {}
    if err := body.get("error"):
        code = err.get("err_code", 0)
        in_flight = code == ERR_WRONG_LAST_SEQUENCE_CONSTANT
        if in_flight:
            # Every compare-and-set checks for 10071; an R3 stream answers a lost race
            # 10164 too, which went up as an error (a crashed append, a failed write).
            code = ERR_WRONG_LAST_SEQUENCE
        error = JsApiError(err.get("code", 0), code, err.get("description", ""))
        error.in_flight = in_flight
        raise error
    return body


# A plain PubAck as nats-server writes it (Go's field order: stream, seq, domain,
# duplicate); anything else (an error, a batch's ack, a status, escapes in the name)
# goes through JSON.
_PLAIN_ACK = re.compile(
    rb'\{"stream":"([^"\\]*)","seq":(\d+)(?:,"domain":"[^"\\]*")?(,"duplicate":true)?\}'
)


def parse_puback(msg: Msg) -> PubAck:
    if not msg.headers and (m := _PLAIN_ACK.fullmatch(msg.data)) is not None:
        return PubAck(m[1].decode(), int(m[2]), m[3] is not None)
    body = parse_response(msg)
    return PubAck(
        stream=body["stream"],
        seq=body["seq"],
        duplicate=bool(body.get("duplicate", False)),
        batch=body.get("batch"),
        count=int(body.get("count", 1)),
    )


# Metadata a direct get adds to a message it returns: not part of the stored message.
DIRECT_GET_HEADERS = frozenset(
    {
        "Nats-Stream",
        "Nats-Sequence",
        "Nats-Time-Stamp",
        "Nats-Subject",
        "Nats-Last-Sequence",
        "Nats-Num-Pending",
        "Nats-UpTo-Sequence",
    }
)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: '*' is one token, '>' the rest."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or token not in ("*", s[i]):
            return False
    return len(p) == len(s)


def raw_of_delivery(msg: Any) -> RawMessage:
    """A message delivered by a JetStream consumer (nats-py's ``Msg`` with its
    metadata) as a RawMessage: the same shape a direct get returns."""
    meta = msg.metadata
    return RawMessage(
        subject=msg.subject,
        seq=meta.sequence.stream,
        time_ns=int(meta.timestamp.timestamp() * 1e9),
        headers=dict(msg.headers or {}),
        data=msg.data,
    )


def _raw(msg: Msg) -> RawMessage:
    h = msg.headers or {}
    return RawMessage(
        subject=h["Nats-Subject"],
        seq=int(h["Nats-Sequence"]),
        time_ns=parse_rfc3339_ns(h["Nats-Time-Stamp"]),
        headers=h,
        data=msg.data,
    )


# Header names seen, and the key each stands for (None: a name nats-py drops).
_HEADER_NAMES: dict[bytes, str | None] = {}
_MAX_HEADER_NAMES = 4096


def _header_name(name: bytes) -> str | None:
    try:
        key = name.strip().decode("ascii")
    except UnicodeDecodeError:
        return None
    return None if any(c.isspace() for c in key) else key


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """nats-py's ``Client._parse_header_lines`` (``Name: Value`` lines), the same
    result in a third of the time: each distinct name is checked once, not in every
    message. A stored event comes back from a direct get with a dozen headers, and
    checking their names was 40% of the client's cost of a message."""
    out: dict[str, str] = {}
    names = _HEADER_NAMES
    for line in raw.split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        if name in names:
            key = names[name]
        else:
            key = _header_name(name)
            if len(names) < _MAX_HEADER_NAMES:
                names[name] = key
        if key is not None:
            out[key] = value.strip().decode("utf-8", "replace")
    return out


def use_lean_headers(nc: NATS) -> None:
    """Have this connection parse headers with :func:`parse_header_lines` (where
    nats-py parses them with its own function, as 2.16 does; else nothing changes)."""
    if callable(getattr(type(nc), "_parse_header_lines", None)):
        nc.__dict__["_parse_header_lines"] = parse_header_lines


_GONE = (
    nats_errors.ConnectionClosedError,
    nats_errors.ConnectionReconnectingError,
    nats_errors.ConnectionDrainingError,
    nats_errors.BadSubscriptionError,
)


# nats-py 2.16's checks on what it sends (``nats.aio.client``): a subject with blanks
# or line breaks is refused, a header name must be an HTTP token, a value's line breaks
# become spaces.
_SUBJECT_INVALID = re.compile(r"[ \t\r\n]")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
# Header names seen -> the text that starts their line ("": a blank name, skipped).
_NAME_LINES: dict[str, str] = {}


def _name_line(name: str) -> str:
    key = name.strip()
    if key and not _HEADER_NAME.fullmatch(key):
        raise nats_errors.BadHeaderError(key)
    line = key + ": " if key else ""
    if len(_NAME_LINES) < _MAX_HEADER_NAMES:
        _NAME_LINES[name] = line
    return line


def header_block(headers: Mapping[str, str]) -> bytes:
    """The header block nats-py's ``publish`` sends for ``headers``: the same bytes,
    the same error for a bad name, each name checked once per process."""
    block = "NATS/1.0\r\n"
    lines = _NAME_LINES
    for name, value in headers.items():
        line = lines.get(name)
        if line is None:
            line = _name_line(name)
        if line:
            value = value.strip()
            if "\n" in value or "\r" in value:  # (translate looks up every character)
                value = value.translate(_VALUE_NEWLINES)
            block += line + value + "\r\n"
    return (block + "\r\n").encode()


def _lean_client(nc: NATS) -> bool:
    """Can :meth:`Replies.send` put its commands on this connection itself (nats-py
    2.16's client, whose internals it uses)? Else it goes through ``nc.publish``."""
    return isinstance(nc, NATS) and all(
        hasattr(nc, name)
        for name in (
            "_send_command",
            "_flush_pending",
            "_flush_queue",
            "_pending_data_size",
            "_max_pending_size",
            "_max_payload",
            "_skip_subject_validation",
            "stats",
            "_pending",
            "_flusher_task",
            "_transport",
            "_process_msg",
            "_process_headers",
            "_build_message",
        )
    )


# Timeouts of requests awaited through :class:`Replies` are checked together, at most
# this late (seconds): one timer for all the requests in flight, not one each.
TIMEOUT_GRAIN_S = 0.01


class _Wire:
    """One connection's writes and inbox replies without nats-py's task hops (issue 23).

    nats-py 2.16 hands every flush to its flusher task (a future through an
    ``asyncio.Queue``, a task step, ``drain``) and every message of a subscription with
    a callback to that subscription's task (another queue, another task step): two task
    steps per request-reply, about a tenth of the CPU of an append or a command in
    process (without gRPC), ~20 us of a command's ~200 at one writer. Here:

    - a command's flush is one loop callback (``call_soon``), shared by every command
      written in the same loop iteration (written together, as the flusher writes
      them); the connection's pending commands are written straight to its socket
      while its transport buffers nothing, else handed to nats-py's flusher as before
      (which waits for the socket to drain: the client's bound on pending bytes, and
      its waits, stay as they are). Nothing is written while the connection is not
      connected: nats-py flushes what is pending once it reconnects;
    - a message to an inbox of :class:`Replies` is routed when the parser reads it (the
      same ``Msg``, the same header parsing), not queued for the subscription's task;
      a route that raises is reported to the client's error callback, as a callback's
      error is, and the reader reads on.
    """

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._scheduled = False
        self._flushing: asyncio.Task[Any] | None = None  # see room()
        self.routes: dict[int, Callable[[Msg], None]] = {}
        process = nc._process_msg
        routes = self.routes

        async def process_msg(
            sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
        ) -> None:
            route = routes.get(sid)
            if route is None:
                await process(sid, subject, reply, data, headers)
                return
            stats = nc.stats
            stats["in_msgs"] += 1
            stats["in_bytes"] += len(data)
            hdr = await nc._process_headers(headers)
            try:
                route(nc._build_message(sid, subject, reply, data, hdr))
            except Exception as exc:
                # This runs in the client's reader: an error let through stopped it
                # (connected, every later reply lost until the stale-ping check, ~80
                # s). Reported as a subscription callback's error is, saying what
                # happened (the connection's callback said "retrying"); the reader goes on.
                await nc._error_cb(ReplyHandOverError(subject, exc))

        nc.__dict__["_process_msg"] = process_msg

    async def room(self, size: int, deadline: float) -> None:
        """Wait until ``size`` more bytes fit in the client's pending buffer, until the
        loop time ``deadline``: TimeoutError then, nothing having been added to it.

        nats-py's own wait for room (``_send_command``: a flush forced past the bound)
        has no end of its own (``flush_timeout`` None): with the server hung (SIGSTOP,
        a full socket) a request waited there past its timeout, until the server came
        back. Here the wait is one forced flush per connection at a time, awaited by
        everyone who waits for room; a flush that raises (the socket died) raises that,
        as the send did."""
        nc = self._nc
        loop = asyncio.get_running_loop()
        while (
            nc.is_connected
            and nc._max_pending_size > 0  # 0 or less: no bound (nats-py's meaning)
            and nc._pending_data_size
            and nc._pending_data_size + size > nc._max_pending_size
        ):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            flushing = self._flushing
            if flushing is None or flushing.done() or flushing.get_loop() is not loop:
                flushing = loop.create_task(nc._flush_pending(force_flush=True))
                flushing.add_done_callback(_retrieve)
                self._flushing = flushing
            await asyncio.wait((flushing,), timeout=remaining)
            if not flushing.done():
                raise TimeoutError
            flushing.result()

    def flush_soon(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        nc = self._nc
        if not nc._pending_data_size or not nc.is_connected:
            return  # flushed already, or kept for the reconnect
        transport = nc._transport
        writer = getattr(transport, "_io_writer", None)
        flusher = nc._flusher_task
        if (
            type(transport) is TcpTransport
            and writer is not None
            and flusher is not None
            and not flusher.done()
            and not writer.transport.is_closing()
            and writer.transport.get_write_buffer_size() == 0
            and hand_over_pending(nc, writer.writelines)
        ):
            return
        # Not written (busy, closing, or the write failed: then the flusher meets the
        # same error and handles it).
        if flusher is None or flusher.done():
            # The dead-socket window: the flusher stopped on a write to a socket that
            # died, the client says connected until its reader sees the end of the
            # stream. A future queued for it was read by nobody and nothing started the
            # reconnect: a request waited until the reader or the ping check noticed.
            # The commands stay pending; the reconnect, started now, sends them.
            if flusher_cancelled(nc):
                return  # a shutdown cancelled it (aio.stop_others): no reconnect
            start_reconnect(nc, ConnectionResetError("nats: the flusher stopped, connected"))
            return
        queue = nc._flush_queue
        if queue is not None and queue.empty():
            queue.put_nowait(asyncio.get_running_loop().create_future())


def start_reconnect(nc: NATS, exc: Exception) -> None:
    """Start the reconnect nats-py's reader would start on the end of the stream
    (``_process_op_err``), once: not again while one started is yet to run (the client
    says connected until it has). For a socket that died before the client noticed
    (:func:`jetsource.eventstore.bootstrap.survive_a_dead_socket`, :meth:`_Wire._flush`)."""
    if not reconnect_started(nc):
        task = asyncio.get_running_loop().create_task(nc._process_op_err(exc))
        nc.__dict__["_jetsource_reconnect"] = task


def flusher_cancelled(nc: NATS) -> bool:
    """Whether nats-py's flusher task was cancelled (a shutdown's ``aio.stop_others``
    cancels every task), not stopped by a write to a dead socket (it ends then, not
    cancelled): a cancelled flusher starts no reconnect."""
    flusher = nc._flusher_task
    return flusher is not None and flusher.cancelled()


def reconnect_started(nc: NATS) -> bool:
    """Whether a reconnect :func:`start_reconnect` started is yet to run."""
    task: asyncio.Task[None] | None = nc.__dict__.get("_jetsource_reconnect")
    return task is not None and not task.done()


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A flush whose waiters all timed out: its error (if any) is theirs no more."""
    if not task.cancelled():
        task.exception()


# The headers an atomic batch adds to each of its messages.
_BATCH_HEADERS = frozenset({"Nats-Batch-Id", "Nats-Batch-Sequence", "Nats-Batch-Commit"})


def _buffer(nc: NATS, command: bytes, size: int) -> None:
    """One command in the client's buffer, counted, its flush scheduled (``size``: its
    payload's, as nats-py counts out_bytes)."""
    _count(nc, 1, size)
    nc._pending.append(command)
    nc._pending_data_size += len(command)
    _wire(nc).flush_soon()


def _count(nc: NATS, msgs: int, size: int) -> None:
    """Commands put in the buffer, counted as nats-py counts its sends."""
    stats = nc.stats
    stats["out_msgs"] += msgs
    stats["out_bytes"] += size


def _wire(nc: NATS) -> _Wire:
    wire = nc.__dict__.get("_jetsource_wire")
    if wire is None:
        wire = nc.__dict__["_jetsource_wire"] = _Wire(nc)
    return wire


class Replies:
    """One wildcard inbox subscription routing replies to per-request queues.

    A request (:meth:`request`, :func:`publish`) costs no SUB/UNSUB, no timer of its
    own (one sweep finds those past their time, :data:`TIMEOUT_GRAIN_S` late at most)
    and, on nats-py 2.16, no header dict walked by the client: the command is written
    here, with the client's own checks."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        use_lean_headers(nc)
        self._prefix = nc.new_inbox()
        self._queues: dict[str, asyncio.Queue[Msg]] = {}
        self._futures: dict[str, asyncio.Future[Msg]] = {}
        self._next = 0
        self._sub: Any = None
        self._lean = _lean_client(nc)
        # (deadline, token) of the requests awaited, deadlines in order; one timer.
        self._deadlines: deque[tuple[float, str]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_loop: asyncio.AbstractEventLoop | None = None
        self._sweep_at = 0.0  # when the sweeper is armed for
        # Streams seen answered by a mirror -> until when (monotonic); see direct_get.
        self.mirrored: dict[str, float] = {}

    @property
    def started(self) -> bool:
        return self._sub is not None

    async def start(self) -> None:
        if self._sub is None:
            # Its task (it delivers every reply) outlives the call that started it.
            with detached():
                self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._route)
            if self._lean:
                _wire(self._nc).routes[self._sub._id] = self._route_now

    async def _route(self, msg: Msg) -> None:
        self._route_now(msg)

    def _route_now(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        future = self._futures.get(token)
        if future is not None:
            if not future.done():
                future.set_result(msg)
            return
        queue = self._queues.get(token)
        if queue is not None:
            queue.put_nowait(msg)

    def open(self) -> tuple[str, asyncio.Queue[Msg]]:
        self._next += 1
        token = str(self._next)
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._queues[token] = queue
        return f"{self._prefix}.{token}", queue

    def close(self, reply: str) -> None:
        self._queues.pop(reply.rsplit(".", 1)[-1], None)

    async def send(
        self,
        subject: str,
        data: bytes,
        reply: str,
        headers: Mapping[str, str] | None,
        deadline: float | None = None,
    ) -> None:
        """``nc.publish(subject, data, reply, headers)``: the same checks, errors and
        bytes on the wire (nats-py 2.16's ``publish`` and ``_send_publish``), with the
        header block from :func:`header_block` (names checked once).

        With a ``deadline`` (the event loop's time), a wait for room in the client's
        pending buffer ends then with TimeoutError, the command not sent (nats-py waits
        for room without end: :meth:`_Wire.room`)."""
        nc = self._nc
        if not self._lean:
            publishing = nc.publish(subject, data, reply=reply, headers=headers)  # type: ignore[arg-type]
            if deadline is None:
                await publishing
            else:  # its wait for room, bounded (what it buffered may still go out)
                await within(publishing, deadline - asyncio.get_running_loop().time())
            return
        if not nc._skip_subject_validation and (
            not subject or _SUBJECT_INVALID.search(subject) or _SUBJECT_INVALID.search(reply)
        ):
            raise nats_errors.BadSubjectError
        if nc.is_closed:
            raise nats_errors.ConnectionClosedError
        if nc.is_draining_pubs:
            raise nats_errors.ConnectionDrainingError
        size = len(data)
        if not nc.is_connected and (
            nc._max_pending_size <= 0 or size + nc._pending_data_size > nc._max_pending_size
        ):
            raise nats_errors.OutboundBufferLimitError
        if size > nc._max_payload:
            raise nats_errors.MaxPayloadError
        if not subject:
            raise nats_errors.BadSubjectError
        if headers is None:
            command = b"PUB %b %b %d\r\n%b\r\n" % (subject.encode(), reply.encode(), size, data)
        else:
            block = header_block(headers)
            n = len(block)
            command = b"HPUB %b %b %d %d\r\n%b%b\r\n" % (
                subject.encode(),
                reply.encode(),
                n,
                n + size,
                block,
                data,
            )
        if nc._pending_data_size + len(command) <= nc._max_pending_size:  # room: at once
            _buffer(nc, command, size)
            return
        await self._send_command(command, size, deadline)

    async def _send_command(self, command: bytes, size: int, deadline: float | None) -> None:
        """Put one command built by :meth:`send` in the client's buffer (``size``: its
        payload's), waiting for room until ``deadline`` when given."""
        nc = self._nc
        if deadline is not None and nc._pending_data_size + len(command) > nc._max_pending_size:
            await _wire(nc).room(len(command), deadline)
            if nc.is_closed:
                raise nats_errors.ConnectionClosedError
            if asyncio.get_running_loop().time() >= deadline:
                # The wait for room took the whole deadline: TimeoutError, the command
                # not put in the buffer (an atomic batch's commit, not committed).
                raise TimeoutError
        if nc._pending_data_size + len(command) <= nc._max_pending_size or (
            # One command larger than the whole buffer, nothing ahead of it: no room to
            # wait for. nats-py takes it too, then waits for a forced flush's drain with
            # no end (a hung server held a request past its timeout): handed to the
            # writer here, the request's wait for its reply bounded as any.
            not nc._pending_data_size and nc._max_pending_size > 0
        ):
            _buffer(nc, command, size)
            return
        _count(nc, 1, size)
        await nc._send_command(command)
        flushes = nc._flush_queue
        if flushes is not None and flushes.empty():
            await nc._flush_pending()

    async def send_batch(
        self,
        messages: Sequence[OutMessage],
        batch_id: str,
        first_reply: str,
        commit_reply: str,
        deadline: float,
    ) -> None:
        """The messages of an atomic batch (:func:`publish_atomic_batch`), the last one
        its commit: each as :meth:`send` sends it with the batch's headers added after
        its own (the same bytes on the wire), the header block built from parts made
        once per batch and every command that fits put in the client's buffer at once,
        with one flush (a 500-message batch awaited 500 sends, a merged header dict
        and a header block each: a tenth of the observer's CPU per event with ids).
        TimeoutError, the commit not sent, when the sends took the whole ``deadline``
        (the loop's time): committed then, a retry under a new batch id stored it twice.
        """
        loop = asyncio.get_running_loop()
        last = len(messages)
        if not self._lean or last < 2:
            for i, m in enumerate(messages, start=1):
                merged = {**m.headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)}
                if i == last:
                    if loop.time() >= deadline:
                        raise TimeoutError
                    merged["Nats-Batch-Commit"] = "1"
                    reply = commit_reply
                else:
                    reply = first_reply if i == 1 else ""
                await self.send(m.subject, m.data, reply, merged, deadline)
            return
        # "Nats-Batch-Id: <id>" as header_block writes it (checked, stripped, one line).
        id_line = header_block({"Nats-Batch-Id": batch_id})[len(b"NATS/1.0\r\n") : -2]
        seq_name = b"Nats-Batch-Sequence: "
        commit_line = b"Nats-Batch-Commit: 1\r\n"
        nc = self._nc
        skip_check = nc._skip_subject_validation
        wire = _wire(nc)
        replies = (first_reply.encode(), b"", commit_reply.encode())
        headers: Mapping[str, str] | None = None
        head = b""
        # The client's state is looked at again only after an await (nothing changes it
        # between two messages put in the buffer without one); counts and the flush
        # once per stretch, as many sends in one loop iteration share one flush, and on
        # every way out (a message refused part-way: those before it went out, counted).
        state = True
        msgs = out = 0
        try:
            for i, m in enumerate(messages, start=1):
                subject, data = m.subject, m.data
                if i == last:
                    if loop.time() >= deadline:
                        raise TimeoutError
                    reply = commit_reply
                    tail = id_line + seq_name + str(i).encode() + b"\r\n" + commit_line + b"\r\n"
                else:
                    reply = first_reply if i == 1 else ""
                    tail = id_line + seq_name + str(i).encode() + b"\r\n\r\n"
                if not skip_check and (
                    not subject
                    or _SUBJECT_INVALID.search(subject)
                    or _SUBJECT_INVALID.search(reply)
                ):
                    raise nats_errors.BadSubjectError
                if state:
                    if nc.is_closed:
                        raise nats_errors.ConnectionClosedError
                    if nc.is_draining_pubs:
                        raise nats_errors.ConnectionDrainingError
                    connected = nc.is_connected
                    max_payload = nc._max_payload  # (a reconnect may have changed it)
                    state = False
                size = len(data)
                if not connected and (
                    nc._max_pending_size <= 0 or size + nc._pending_data_size > nc._max_pending_size
                ):
                    raise nats_errors.OutboundBufferLimitError
                if size > max_payload:
                    raise nats_errors.MaxPayloadError
                if not subject:
                    raise nats_errors.BadSubjectError
                own = m.headers
                if own is not headers:  # (a batch's claims share one header dict)
                    headers = own
                    if not own:
                        head = b"NATS/1.0\r\n"
                    elif _BATCH_HEADERS.isdisjoint(own):
                        head = header_block(own)[:-2]
                    else:  # its own batch header, replaced in place as the merged dict did
                        headers = None  # (not kept: its sequence differs per message)
                        merged = {**own, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)}
                        if i == last:
                            merged["Nats-Batch-Commit"] = "1"
                        head, tail = header_block(merged)[:-2], b"\r\n"
                block = head + tail
                n = len(block)
                command = b"HPUB %b %b %d %d\r\n%b%b\r\n" % (
                    subject.encode(),
                    replies[0 if i == 1 else 2 if i == last else 1],
                    n,
                    n + size,
                    block,
                    data,
                )
                if nc._pending_data_size + len(command) <= nc._max_pending_size:
                    nc._pending.append(command)
                    nc._pending_data_size += len(command)
                    msgs += 1
                    out += size
                    continue
                # No room: this one as send does it (a wait for room, bounded by the
                # deadline), after what went before is counted and flushed.
                _count(nc, msgs, out)
                msgs = out = 0
                wire.flush_soon()
                await self._send_command(command, size, deadline)
                state = True
        finally:
            if msgs:
                _count(nc, msgs, out)
                wire.flush_soon()

    async def request(
        self, subject: str, data: bytes, headers: Mapping[str, str] | None, timeout: float
    ) -> Msg:
        """One request, one reply: a bare future (no queue) on the hot append path.
        TimeoutError when no reply came within ``timeout``; DeadlineCutError when the
        deadline of the call being served (``jetsource.core.deadline``) came first."""
        # Within the call's deadline: every wait for a reply (direct gets, STREAM.INFO,
        # the key store's) ended past it, answered a bare DEADLINE_EXCEEDED.
        timeout, cut = call_wait(timeout, f"the answer to {subject}")
        self._next += 1
        token = str(self._next)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._futures[token] = future
        deadline = loop.time() + timeout  # also for the send: room in the client's buffer
        try:
            await self.send(subject, data, f"{self._prefix}.{token}", headers, deadline)
            if self._watch(loop, token, deadline):
                return await future
            async with asyncio.timeout_at(deadline):  # sooner than a request before it
                return await future
        except TimeoutError as exc:
            if cut:
                raise cut_short(f"the answer to {subject}", timeout) from exc
            raise
        finally:
            self._futures.pop(token, None)

    def _watch(self, loop: asyncio.AbstractEventLoop, token: str, deadline: float) -> bool:
        """Have the sweep time this request out at ``deadline`` (the loop's time; False:
        it comes before one already waiting, so it needs a timer of its own)."""
        deadlines, futures = self._deadlines, self._futures
        if deadlines and deadline < deadlines[-1][0]:
            while deadlines and deadlines[-1][1] not in futures:
                deadlines.pop()  # answered: nothing to time out
            if deadlines and deadline < deadlines[-1][0]:
                return False
        if len(deadlines) > 2 * len(futures) + 64:
            # Mostly answered: keep those still waiting (memory in what is in flight).
            self._deadlines = deadlines = deque(e for e in deadlines if e[1] in futures)
        deadlines.append((deadline, token))
        sweeper = self._sweeper
        at = deadlines[0][0] + TIMEOUT_GRAIN_S
        # Armed for a later deadline (answered and dropped above), or in a loop since gone.
        if sweeper is None or at < self._sweep_at or self._sweep_loop is not loop:
            if sweeper is not None:
                sweeper.cancel()
            self._sweep_loop, self._sweep_at = loop, at
            self._sweeper = loop.call_at(at, self._sweep, loop)
        return True

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the requests past their deadline with TimeoutError."""
        self._sweeper = None
        now = loop.time()
        deadlines, futures = self._deadlines, self._futures
        while deadlines and deadlines[0][0] <= now:
            _, token = deadlines.popleft()
            future = futures.get(token)
            if future is not None and not future.done():
                future.set_exception(TimeoutError())
        if deadlines:
            self._sweep_at = deadlines[0][0] + TIMEOUT_GRAIN_S
            self._sweeper = loop.call_at(self._sweep_at, self._sweep, loop)

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            if self._lean:
                _wire(self._nc).routes.pop(sub._id, None)
            # A connection that is gone or reconnecting takes the subscription with it.
            with contextlib.suppress(
                nats_errors.ConnectionClosedError,
                nats_errors.ConnectionReconnectingError,
                nats_errors.ConnectionDrainingError,
                nats_errors.BadSubscriptionError,
            ):
                await sub.unsubscribe()


async def api(
    replies: Replies, subject: str, body: Mapping[str, Any], timeout: float
) -> dict[str, Any]:
    msg = await replies.request(f"$JS.API.{subject}", json.dumps(body).encode(), None, timeout)
    return parse_response(msg)


async def publish(replies: Replies, message: OutMessage, timeout: float) -> PubAck:
    msg = await replies.request(message.subject, message.data, message.headers, timeout)
    return parse_puback(msg)


async def publish_stored(
    replies: Replies, stream: str, message: OutMessage, timeout: float
) -> PubAck:
    """Publish, deduplicated by its ``Nats-Msg-Id`` as usual, but stored for sure:
    the server also deduplicates against a message it has since deleted (within its
    duplicate window), which would drop a snapshot written again after a drop, or a
    dead letter filed again after a retry. Such a publish is made again under a new
    id. The ack says ``duplicate`` only when the original is still stored."""
    ack = await publish(replies, message, timeout)
    if not ack.duplicate or await direct_get(replies, stream, {"seq": ack.seq}, timeout):
        return ack
    headers = dict(message.headers or {})
    headers["Nats-Msg-Id"] = f"{headers.get('Nats-Msg-Id', '')}~{uuid.uuid4().hex[:12]}"
    return await publish(replies, OutMessage(message.subject, message.data, headers), timeout)


async def publish_atomic_batch(
    replies: Replies, messages: Sequence[OutMessage], batch_id: str, timeout: float
) -> PubAck:
    """Store all ``messages`` or none (stream needs ``allow_atomic``).

    Pipelined: the first message (a request, as the protocol asks) is not awaited
    before the rest are sent, so the batch costs one round trip. A rejected first
    message also fails the commit; its error is the one reported.
    """
    if not 1 <= len(messages) <= BATCH_LIMIT:
        raise ValueError(f"a batch holds 1..{BATCH_LIMIT} messages, got {len(messages)}")
    timeout, cut = call_wait(timeout, f"the acknowledgement of a batch to {messages[0].subject}")
    first_reply, first_queue = replies.open()
    commit_reply, commit_queue = replies.open()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout  # also for the sends: room in the client's buffer
    try:
        last = len(messages)
        try:
            # The sends took the deadline: TimeoutError, the batch not committed (the
            # server abandons it); committed, a retry under a new batch id stored it twice.
            await replies.send_batch(messages, batch_id, first_reply, commit_reply, deadline)
            commit = await wait_for(commit_queue.get(), deadline - loop.time())
        except TimeoutError as exc:
            if cut:
                raise cut_short(f"the acknowledgement of a batch of {last}", timeout) from exc
            raise
        if last > 1 and not first_queue.empty():
            first = first_queue.get_nowait()
            if first.data or _status(first):
                parse_response(first)  # raises the first message's own error
        return parse_puback(commit)
    finally:
        replies.close(first_reply)
        replies.close(commit_reply)


# Who may answer a direct get, and why an answer is checked (nats-server 2.10-2.15):
# every mirror of a stream that allows direct gets joins that stream's direct-get
# responders (``mirror_direct`` is turned on for it, even when its configuration asks
# for false), and a request goes to one responder at random. A mirror that maps its
# subjects (the projector's partition mirrors) answers a read by subject with "not
# found" and a read by sequence with its own subject; any mirror may lag. So an
# answer from another stream is asked again of the stream's leader, and so is every
# "not found" (it carries no stream name): only ``STREAM.MSG.GET`` (answered by the
# stream's leader alone) can say that nothing matches.
FOREIGN_RETRIES = 16  # batched gets asked again before reading one message at a time
# A stream seen answered by a mirror (a foreign ``Nats-Stream``, the only proof: a "not
# found" then found by the leader may be a write in between) has its single gets sent
# to the leader at once for this long (as fast as a direct get on one server). Kept
# per connection (:attr:`Replies.mirrored`): another server may hold a stream so named.
MIRRORED_FOR_S = 60.0


def _seen_mirrored(replies: Replies, stream: str) -> None:
    if len(replies.mirrored) > 1024:
        replies.mirrored.clear()
    replies.mirrored[stream] = time.monotonic() + MIRRORED_FOR_S


def _foreign(msg: Msg, stream: str) -> bool:
    """Answered by another stream than ``stream`` (a mirror of it)."""
    name = msg.headers.get("Nats-Stream") if msg.headers else None
    return name is not None and name != stream


class LeaderUnansweredError(EventStoreUnavailableError, TimeoutError):
    """A read only a stream's leader answers was not answered (or answered 503/10008):
    the stream has no leader, or its NATS cluster lost quorum. Unavailable (UNAVAILABLE
    over gRPC, naming the stream), and a TimeoutError, so retried where those are."""


def _no_leader(stream: str, said: str) -> str:
    return (
        f"stream {stream}: its leader did not answer a read (STREAM.MSG.GET {said}): the "
        "stream has no leader, or its NATS cluster lost quorum (more than half of its "
        "servers down or cut off); it answers again once a majority is back"
    )


async def leader_get(
    replies: Replies, stream: str, request: Mapping[str, Any], timeout: float
) -> RawMessage | None:
    """A direct get's request (by sequence, last or next by subject, start time; no
    batch) answered by the stream's leader through ``STREAM.MSG.GET``: slower than a
    direct get (JSON, base64), but never by a mirror. The message's headers come back
    with the ``Nats-*`` headers a direct get adds."""
    # Within the deadline of the call being served (a gRPC call's): it ended in this
    # wait, answered a bare DEADLINE_EXCEEDED. A wait the deadline cut says nothing of
    # the leader (DeadlineCutError): it named a lost quorum.
    what = f"stream {stream}'s answer to a read (STREAM.MSG.GET)"
    timeout, cut = call_wait(timeout, what)
    try:
        msg = await replies.request(
            f"$JS.API.STREAM.MSG.GET.{stream}", json.dumps(request).encode(), None, timeout
        )
    except DeadlineCutError:
        raise
    except TimeoutError as exc:
        if cut:
            raise cut_short(what, timeout) from exc
        raise LeaderUnansweredError(
            _no_leader(stream, f"not answered within {timeout:.1f} s")
        ) from exc
    try:
        body = parse_response(msg)
    except JsApiError as exc:
        if exc.err_code == ERR_SEQUENCE_NOT_FOUND:
            return None
        if exc.err_code == ERR_STREAM_NOT_FOUND:  # as a direct get says it
            raise NoRespondersError(stream) from exc
        if exc.err_code == ERR_CLUSTER_UNAVAILABLE:  # was INTERNAL over gRPC
            raise LeaderUnansweredError(_no_leader(stream, str(exc))) from exc
        raise
    m = body["message"]
    hdrs = m.get("hdrs")
    headers = parse_header_lines(base64.b64decode(hdrs)) if hdrs else {}
    time_ns = parse_rfc3339_ns(m["time"])
    headers.update(
        {
            "Nats-Stream": stream,
            "Nats-Subject": m["subject"],
            "Nats-Sequence": str(m["seq"]),
            "Nats-Time-Stamp": m["time"],
        }
    )
    data = m.get("data")
    return RawMessage(
        subject=m["subject"],
        seq=int(m["seq"]),
        time_ns=time_ns,
        headers=headers,
        data=base64.b64decode(data) if data else b"",
    )


async def direct_get(
    replies: Replies, stream: str, request: Mapping[str, Any], timeout: float
) -> RawMessage | None:
    if replies.mirrored and replies.mirrored.get(stream, 0.0) > time.monotonic():
        return await leader_get(replies, stream, request, timeout)
    msg = await replies.request(
        f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), None, timeout
    )
    status = _status(msg)
    if status is None:
        if not _foreign(msg, stream):
            return _raw(msg)
        _seen_mirrored(replies, stream)
        return await leader_get(replies, stream, request, timeout)
    if status == "404":  # maybe a mirror's
        return await leader_get(replies, stream, request, timeout)
    if status == "503":
        raise NoRespondersError(stream)
    raise JsApiError(int(status), 0, (msg.headers or {}).get("Description", ""))


async def last_for_subject(
    replies: Replies, stream: str, subject: str, timeout: float
) -> RawMessage | None:
    """The newest message whose subject matches ``subject`` (wildcards allowed)."""
    return await direct_get(replies, stream, {"last_by_subj": subject}, timeout)


async def first_at_or_after(
    replies: Replies, stream: str, time_ns: int, subject: str | None, timeout: float
) -> RawMessage | None:
    request: dict[str, Any] = {"start_time": format_rfc3339_ns(time_ns)}
    if subject:
        request["next_by_subj"] = subject
    return await direct_get(replies, stream, request, timeout)


@dataclass(frozen=True)
class Page:
    """One batched direct get: the messages, and how many more match after them."""

    messages: list[RawMessage]
    pending: int  # matching messages stored after the last one returned (0: none)


async def direct_get_page(
    replies: Replies, stream: str, subject: str | None, from_seq: int, batch: int, timeout: float
) -> Page:
    """Up to ``batch`` messages matching ``subject`` (wildcards allowed; None: any) at
    or after ``from_seq``, in stream order, in one request (ADR-31 batched direct get:
    the server sends them, then an end-of-batch status 204 saying how many more match).

    A page from a mirror is asked for again, and an empty one is checked with the
    stream's leader (see :data:`FOREIGN_RETRIES`): a mirror answers one request in
    (mirrors + 1), so it takes about two requests on average with one mirror; after
    :data:`FOREIGN_RETRIES` the page is the leader's next message alone.

    Cost on the server (nats-server 2.12-2.15): with a subject, the count of what is
    left grows with the part of the stream after ``from_seq`` (about 1 ms per 10,000
    messages), however small the batch; without one it does not (0.3 ms for 50)."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    start = max(from_seq, 1)
    next_match = {"seq": start, "next_by_subj": subject or ">"}  # the leader's first match
    for _ in range(FOREIGN_RETRIES):
        page = await _direct_page(replies, stream, subject, start, batch, timeout)
        if page is None:  # a mirror answered
            _seen_mirrored(replies, stream)
            continue
        if page.messages:
            return page
        if await leader_get(replies, stream, next_match, timeout) is None:
            return page  # nothing matches: the leader says so
    first = await leader_get(replies, stream, next_match, timeout)
    return Page([first], 1) if first is not None else Page([], 0)


async def _direct_page(
    replies: Replies, stream: str, subject: str | None, start: int, batch: int, timeout: float
) -> Page | None:
    """One batched direct get; None when another stream (a mirror) answered it."""
    what = f"stream {stream}'s answer to a read (DIRECT.GET from {start})"
    per_reply = timeout
    timeout, cut = call_wait(timeout, what)
    reply, queue = replies.open()
    messages: list[RawMessage] = []
    try:
        body: dict[str, Any] = {"seq": start, "batch": batch}
        if subject is not None:
            body["next_by_subj"] = subject
        # Sent as a request is (Replies.send): nats-py's publish waited for room in a
        # full pending buffer with no end (a hung server held the read past its timeout).
        # The send ends within ``timeout``; each reply then comes within ``per_reply`` of
        # the one before (a page of 1000 large messages streaming steadily takes longer
        # than one timeout), and no wait runs past the call's deadline when one is set
        # (``call_end``): a page whose send waited for room ran past it.
        loop = asyncio.get_running_loop()
        started = loop.time()
        call_end = started + call_bound(math.inf)  # inf: no call deadline
        reply_cut = False
        try:
            await replies.send(
                f"$JS.API.DIRECT.GET.{stream}",
                json.dumps(body).encode(),
                reply,
                None,
                started + timeout,
            )
            while True:
                msg = queue.get_nowait() if not queue.empty() else None
                if msg is None:
                    end = loop.time() + per_reply
                    reply_cut = call_end < end
                    async with asyncio.timeout_at(call_end if reply_cut else end):
                        msg = await queue.get()
                status = _status(msg)
                if status is None:
                    if not messages and _foreign(msg, stream):
                        return None  # the rest of its answer is dropped with the queue
                    messages.append(_raw(msg))
                    continue
                if status == "204":  # end of this batch
                    pending = int((msg.headers or {}).get("Nats-Num-Pending", "0"))
                    return Page(messages, pending)
                if status == "404":  # nothing (more) matches
                    return Page(messages, 0)
                if status == "503":
                    raise NoRespondersError(stream)
                raise JsApiError(int(status), 0, (msg.headers or {}).get("Description", ""))
        except TimeoutError as exc:
            if cut or reply_cut:  # the call's deadline ended the send or this wait
                raise cut_short(what, loop.time() - started) from exc
            raise
    finally:
        replies.close(reply)


async def direct_get_batch(
    replies: Replies,
    stream: str,
    subject: str,
    from_seq: int,
    timeout: float,
    page: int = DIRECT_GET_PAGE,
) -> AsyncIterator[RawMessage]:
    """Every message matching ``subject`` from ``from_seq`` on, in stream order,
    fetched ``page`` at a time with batched direct get."""
    seq = max(from_seq, 1)
    while True:
        got = await direct_get_page(replies, stream, subject, seq, page, timeout)
        for raw in got.messages:
            yield raw
        if got.pending == 0 or not got.messages:
            return
        seq = got.messages[-1].seq + 1


# -- pull consumers ---------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """A message delivered by a pull consumer, with its position from the ack subject."""

    subject: str
    data: bytes
    headers: Mapping[str, str]
    reply: str
    stream_seq: int
    delivered: int  # 1 on first delivery
    time_ns: int
    pending: int  # messages left in the consumer after this one


def parse_ack_subject(reply: str) -> tuple[int, int, int, int]:
    """(delivered, stream seq, timestamp ns, pending) from a ``$JS.ACK`` subject.

    v1: ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``;
    v2 adds the domain and account hash after ``ACK`` and a random token at the end.
    """
    tokens = reply.split(".")
    if len(tokens) == 9:
        fields = tokens[4:9]
    elif len(tokens) >= 11:
        fields = tokens[6:11]
    else:
        raise ValueError(f"not a JetStream ack subject: {reply!r}")
    delivered, sseq, _cseq, ts, pending = (int(x) for x in fields)
    return delivered, sseq, ts, pending


def consumer_config(
    durable: str,
    filter_subject: str,
    ack_wait_s: float,
    max_ack_pending: int,
    opt_start_seq: int | None = None,
) -> dict[str, Any]:
    """A durable pull consumer that never gives up on a message by itself
    (``max_deliver`` -1): dead-lettering is the projector's decision, not the server's."""
    config: dict[str, Any] = {
        "durable_name": durable,
        "filter_subject": filter_subject,
        "ack_policy": "explicit",
        "ack_wait": int(ack_wait_s * 1_000_000_000),
        "max_deliver": -1,
        "max_ack_pending": max_ack_pending,
        "replay_policy": "instant",
        "deliver_policy": "all",
        "max_waiting": 16,
    }
    if opt_start_seq is not None and opt_start_seq > 1:
        config["deliver_policy"] = "by_start_sequence"
        config["opt_start_seq"] = opt_start_seq
    return config


# A replica the leader has not heard from for this long is not counted in its quorum,
# though nats-server still calls it current (it does for 10 s): heartbeats come about
# every second. Nothing else in the answer decides it sooner (measured on nats-server
# 2.15, two of three servers killed, the leader left asked every 0.5 s): ``current``
# stays true for 10 s, ``offline`` stays false (a killed server is not reported offline
# for the whole loss), ``lag`` is absent; only ``active`` grows, from the kill. On a
# healthy idle R3 stream ``active`` reached 1.84 s (polled every 0.1 s for 20 s; a
# heartbeat or two late), so a bound near 2 s would call a busy but healthy cluster
# leaderless: 5 s keeps more than twice that margin.
STALE_PEER_S = 5.0


def quorum_lost(info: Mapping[str, Any]) -> str | None:
    """Why a replicated stream (or consumer) that answered its INFO cannot serve as it
    should: it has no leader, or its leader has fewer current replicas than a quorum
    (the answer of a leader cut off from the others: it still answers reads and
    holds every write). None when it has both, or is not replicated."""
    config = info.get("config") or {}
    replicas = int(config.get("num_replicas") or 1)
    cluster = info.get("cluster") or {}
    peers = cluster.get("replicas") or []
    if replicas <= 1 and not peers:
        return None
    replicas = max(replicas, len(peers) + 1)
    leader = cluster.get("leader")
    if not leader:
        return "no leader"
    current = [
        p.get("name")
        for p in peers
        if p.get("current") and not p.get("offline") and p.get("active", 0) < STALE_PEER_S * 1e9
    ]
    if 1 + len(current) >= replicas // 2 + 1:
        return None
    away = [str(p.get("name")) for p in peers if p.get("name") not in current]
    return f"its leader {leader} lost quorum (replicas {', '.join(away)} not current)"


async def stream_leadership(
    replies: Replies, stream: str, timeout: float, absent: bool = False
) -> str | None:
    """Why ``stream`` has no leader it can work with (:func:`quorum_lost`; its INFO not
    answered, or answered 503/10008: no JetStream meta leader), or None: it has one, or
    it is not there (a missing stream is said by its callers). With ``absent`` a stream
    that is not there (JsApiError 10059) or no JetStream at all (NoRespondersError:
    JetStream off, as nats-server turns it off when its disk fills) is raised, not
    None: a caller that reads None as "a leader with its quorum" tells them apart."""
    try:
        info = await api(replies, f"STREAM.INFO.{stream}", {}, timeout)
    except JsApiError as exc:
        if exc.err_code == ERR_CLUSTER_UNAVAILABLE:
            return f"no JetStream meta leader ({exc})"
        if exc.err_code == ERR_STREAM_NOT_FOUND and not absent:
            return None
        raise
    except NoRespondersError:  # no JetStream: said by its callers
        if absent:
            raise
        return None
    except DeadlineCutError:  # the call's deadline ended the wait: nothing said of it
        raise
    except TimeoutError:
        return f"STREAM.INFO not answered within {timeout:g} s"
    return quorum_lost(info)


class ClusterUnavailableError(EventStoreUnavailableError):
    """A stream or bucket could not be created because the NATS cluster had no
    JetStream meta leader for the whole wait (forming, or quorum lost)."""


def _leaderless(exc: BaseException) -> bool:
    """No meta leader to answer: a create request not answered at all (a cluster
    forming or re-electing drops JetStream API requests; a new replicated stream is
    answered once its own group elected a leader), or answered 503/10008."""
    return (
        isinstance(exc, TimeoutError) or getattr(exc, "err_code", None) == ERR_CLUSTER_UNAVAILABLE
    )


def _peer_offline(exc: BaseException) -> bool:
    return getattr(exc, "err_code", None) == ERR_NO_SUITABLE_PEERS and "offline" in str(
        getattr(exc, "description", None) or exc
    )


# Permission violations NATS reported to this process's clients (the error callback of
# eventstore.bootstrap.connect): (monotonic time, text), newest last. A request to a
# subject its user may not publish to gets no answer, only that report: a stream create
# waited out PLACEMENT_WAIT_S and said the cluster had no meta leader.
_DENIALS: deque[tuple[float, str]] = deque(maxlen=16)


def note_denial(text: str) -> None:
    _DENIALS.append((time.monotonic(), text))


def latest_denial(within_s: float) -> str | None:
    """The newest permission violation of a JetStream API subject within ``within_s``."""
    return denial_of("", within_s)


def refused_instead(where: str, within_s: float) -> AccessDeniedError | None:
    """What to raise instead of "NATS did not answer" when its requests went unanswered
    because NATS refused them (a permission violation within ``within_s``), or None."""
    denied = latest_denial(within_s)
    if denied is None:
        return None
    return AccessDeniedError(
        f"NATS at {where} refused this client: {denied}; the NATS server's permissions "
        "for this client's user (JETSOURCE_NATS__USER, __CREDS_FILE or __NKEY_SEED_FILE) "
        "must allow the JetStream API ($JS.API.>)"
    )


# The JetStream API subject a permission violation names (quoted by nats-server).
_API_SUBJECT = re.compile(r"\$js\.api\.([^\s\"'`]+)")


def denial_of(name: str, within_s: float, exact: bool = False, stream: bool = False) -> str | None:
    """The newest permission violation within ``within_s`` naming a JetStream API
    subject of ``name`` (nats-py reports subjects in lower case), or None. ``exact``:
    naming the subject ``$JS.API.<name>`` itself; ``stream``: a subject of stream (or
    bucket stream) ``name`` itself, ``$JS.API.STREAM.<...>.<name>`` (its CREATE, INFO,
    UPDATE). A part of it matched another's (a denial of STREAM.INFO.CE_SNAPSHOTS was
    taken for one of stream CE)."""
    now, key = time.monotonic(), name.lower()
    for at, text in reversed(_DENIALS):
        said = text.lower()
        if now - at > within_s or "$js.api." not in said:
            continue
        if stream:
            subjects = _API_SUBJECT.findall(said)
            if any(s.startswith("stream.") and s.rsplit(".", 1)[-1] == key for s in subjects):
                return text
        elif exact:
            if key in _API_SUBJECT.findall(said):
                return text
        elif key in said:
            return text
    return None


async def create_waiting(
    create: Callable[[], Awaitable[T]], name: str, replicas: int, what: str = "stream"
) -> T:
    """``create()`` (a STREAM.CREATE of ``name``, or a bucket's), asked again for up
    to ``PLACEMENT_WAIT_S`` while the cluster cannot place it yet: a peer it needs is
    offline (a cluster forming, a server restarting), or there is no meta leader (no
    answer, or 503/10008). A create of the same configuration is idempotent, so asking
    again after an unanswered one is safe. Then, or when there are not enough servers
    at all, the error says what it needs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PLACEMENT_WAIT_S
    pause = 0.1
    while True:
        try:
            return await create()
        except DeadlineCutError:
            # The deadline of the call being served (the key store's bucket, made by a
            # command's first personal field) is spent: asking again until
            # PLACEMENT_WAIT_S outlived it (a bare DEADLINE_EXCEEDED).
            raise
        except Exception as exc:
            offline, leaderless = _peer_offline(exc), _leaderless(exc)
            if not (
                offline or leaderless or getattr(exc, "err_code", None) == ERR_NO_SUITABLE_PEERS
            ):
                raise
            # A denial of this stream's own subjects (exact: one of CE_SNAPSHOTS was
            # taken for stream CE's, and CE's create said access denied).
            if leaderless and (denied := denial_of(name, PLACEMENT_WAIT_S + 10, stream=True)):
                raise AccessDeniedError(
                    f"{what} {name} was not created: NATS refused this client: {denied}; "
                    "the NATS server's permissions for this client's user "
                    "(JETSOURCE_NATS__USER, __CREDS_FILE or __NKEY_SEED_FILE) must allow "
                    "the JetStream API ($JS.API.>)"
                ) from exc
            if (offline or leaderless) and loop.time() + pause < deadline:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            if leaderless:
                said = str(exc) or "no answer"
                raise ClusterUnavailableError(
                    f"{what} {name} was not created: the NATS cluster has no JetStream "
                    f"meta leader ({said}, asked for {PLACEMENT_WAIT_S:g} s); it is still "
                    "forming or lost quorum (more than half of its servers down or cut "
                    "off): start the missing servers, then run this again"
                ) from exc
            description = str(getattr(exc, "description", None) or exc)
            raise JsApiError(
                getattr(exc, "code", None) or 400,
                ERR_NO_SUITABLE_PEERS,
                f"{description}: {what} {name} wants {replicas} replicas, one per "
                f"server of the cluster online (asked for {PLACEMENT_WAIT_S:g} s); start "
                "the missing servers, or lower the replicas setting",
            ) from exc


async def _create_stream(
    replies: Replies, config: Mapping[str, Any], timeout: float
) -> dict[str, Any]:
    """STREAM.CREATE, waiting for a cluster that cannot place it yet (``create_waiting``)."""
    name = config["name"]
    return await create_waiting(
        lambda: api(replies, f"STREAM.CREATE.{name}", dict(config), timeout),
        name,
        int(config.get("num_replicas", 1)),
    )


async def ensure_stream(
    replies: Replies, config: Mapping[str, Any], timeout: float
) -> dict[str, Any]:
    """Create the stream, or bring an existing one to this configuration."""
    name = config["name"]
    try:
        return await _create_stream(replies, config, timeout)
    except JsApiError as exc:
        if exc.err_code == ERR_SUBJECTS_OVERLAP:
            # The server names neither stream; say which one and what to change.
            raise JsApiError(
                exc.code,
                exc.err_code,
                f"{exc.description}: stream {name} wants {', '.join(config['subjects'])}; "
                "each stream needs subjects of its own (move them with its subject "
                "prefix setting, whose first token is shared by its voids subject)",
            ) from exc
        if exc.err_code != ERR_STREAM_NAME_IN_USE:
            raise
    return await api(replies, f"STREAM.UPDATE.{name}", dict(config), timeout)


async def ensure_consumer(
    replies: Replies, stream: str, config: Mapping[str, Any], timeout: float
) -> dict[str, Any]:
    """Create the durable consumer, or return the existing one unchanged."""
    name = config["durable_name"]
    try:
        return await api(replies, f"CONSUMER.INFO.{stream}.{name}", {}, timeout)
    except JsApiError as exc:
        if exc.err_code != ERR_CONSUMER_NOT_FOUND:
            raise
    body = {"stream_name": stream, "config": dict(config), "action": "create"}
    return await api(replies, f"CONSUMER.CREATE.{stream}.{name}", body, timeout)


async def consumer_info(
    replies: Replies, stream: str, name: str, timeout: float
) -> dict[str, Any] | None:
    try:
        return await api(replies, f"CONSUMER.INFO.{stream}.{name}", {}, timeout)
    except JsApiError as exc:
        if exc.err_code == ERR_CONSUMER_NOT_FOUND:
            return None
        raise


async def delete_consumer(replies: Replies, stream: str, name: str, timeout: float) -> bool:
    try:
        await api(replies, f"CONSUMER.DELETE.{stream}.{name}", {}, timeout)
    except JsApiError as exc:
        if exc.err_code == ERR_CONSUMER_NOT_FOUND:
            return False
        raise
    return True


async def delete_message(replies: Replies, stream: str, seq: int, timeout: float) -> bool:
    try:
        body = await api(replies, f"STREAM.MSG.DELETE.{stream}", {"seq": seq}, timeout)
    except JsApiError as exc:
        if exc.err_code in (ERR_SEQUENCE_NOT_FOUND, ERR_NO_MESSAGE_FOUND):
            return False  # gone already: another run removed it
        raise
    return bool(body.get("success"))


async def purge_subject_before(
    replies: Replies, stream: str, subject: str, before_seq: int, timeout: float
) -> int:
    """Purge the messages matching ``subject`` whose sequence is below ``before_seq``
    (``$JS.API.STREAM.PURGE`` with filter and seq); returns how many went. Refused
    (10110) by a stream with ``deny_purge``; only the archiver's credentials may ask."""
    body = await api(
        replies, f"STREAM.PURGE.{stream}", {"filter": subject, "seq": before_seq}, timeout
    )
    return int(body.get("purged", 0))


# Idle heartbeats asked of the server for a pull request (at most; a quarter of the
# request's expiry when that is shorter), and the slack on two of them before the
# request is taken for lost.
HEARTBEAT_S = 1.0
LOST_SLACK_S = 0.25


class PullConsumer:
    """A continuous pull from one durable consumer.

    Pull requests are kept outstanding (up to two of ``batch`` messages, each expiring
    after ``expires_s``), so messages flow as soon as they are stored and
    :meth:`next_batch` returns whatever has arrived without waiting to fill a batch:
    low latency when idle, full batches under load. nats-py's ``fetch`` instead waits
    for the whole batch (or its timeout) once the first message is in.

    The requests ask for idle heartbeats: the server says every ``heartbeat_s`` that
    a request still waits. Requests lost with a connection or a server restart are
    noticed when nothing (message, heartbeat or status) has come for two heartbeats,
    and asked again, instead of after their whole expiry.
    """

    def __init__(
        self, nc: NATS, stream: str, consumer: str, batch: int = 256, expires_s: float = 5.0
    ) -> None:
        self._nc = nc
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._batch = batch
        self._expires_s = expires_s
        self._inbox = nc.new_inbox()
        self._buffer: deque[Delivery] = deque()
        self._arrived = asyncio.Event()
        self._owed = 0  # messages the server may still send for our open requests
        self._last_request = 0.0
        # The server refuses a heartbeat over half the expiry.
        self.heartbeat_s = min(HEARTBEAT_S, expires_s / 4)
        self._heard = 0.0  # when the server last sent anything for our requests
        self._sub: Any = None
        self._stopping = False
        self.error: str | None = None

    async def start(self) -> None:
        if self._sub is None:
            self._sub = await self._nc.subscribe(self._inbox, cb=self._on_message)

    async def stop(self) -> None:
        """Hand back what this puller holds. The server cannot cancel a pull request,
        so until the open ones are spent or expired, whatever still arrives (and what is
        buffered) is nak'd for immediate redelivery to the next puller, instead of
        waiting out the ack wait in an inbox nobody reads."""
        if self._sub is None:
            return
        self._stopping = True
        while self._buffer:
            await self._nc.publish(self._buffer.popleft().reply, b"-NAK")
        deadline = time.monotonic() + self._expires_s + 0.5
        while self._owed and time.monotonic() < deadline and self._nc.is_connected:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                    await self._arrived.wait()
        await self._sub.unsubscribe()
        self._sub = None
        self._stopping = False

    async def _on_message(self, msg: Msg) -> None:
        self._heard = time.monotonic()
        status = _status(msg)
        if status is None and self._stopping:
            self._owed = max(self._owed - 1, 0)
            await self._nc.publish(msg.reply, b"-NAK")
            self._arrived.set()
            return
        if status is None:
            self._owed = max(self._owed - 1, 0)
            delivered, seq, ts, pending = parse_ack_subject(msg.reply)
            self._buffer.append(
                Delivery(
                    msg.subject, msg.data, msg.headers or {}, msg.reply, seq, delivered, ts, pending
                )
            )
            self._arrived.set()
            return
        if status == "100":  # idle heartbeat
            return
        headers = msg.headers or {}
        # 404/408: a request ran out or expired; 409: the server dropped it (its reason
        # in Description). Either way its unsent messages are no longer owed.
        left = int(headers.get("Nats-Pending-Messages", "0") or 0)
        self._owed = max(self._owed - left, 0) if left else 0
        if status == "409":
            self.error = headers.get("Description", "409")
        self._arrived.set()

    def _lost(self, now: float) -> bool:
        """Outstanding requests gone (reconnect, server restart): no heartbeat (nor
        anything else) for two heartbeats, or past their expiry."""
        quiet = now - max(self._heard, self._last_request)
        return quiet > 2 * self.heartbeat_s + LOST_SLACK_S or (
            now - self._last_request > self._expires_s + 1.0
        )

    async def _request(self) -> None:
        now = time.monotonic()
        if self._owed and self._lost(now):
            self._owed = 0
        if self._owed <= self._batch:
            body = {
                "batch": self._batch,
                "expires": int(self._expires_s * 1_000_000_000),
                "idle_heartbeat": int(self.heartbeat_s * 1_000_000_000),
            }
            await self._nc.publish(self._subject, json.dumps(body).encode(), reply=self._inbox)
            self._owed += self._batch
            self._last_request = now

    async def next_batch(self, max_messages: int, max_wait_s: float) -> list[Delivery]:
        """Up to ``max_messages`` delivered messages; waits at most ``max_wait_s`` for one."""
        await self.start()
        await self._request()
        if not self._buffer:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max_wait_s):
                    await self._arrived.wait()
        out: list[Delivery] = []
        while self._buffer and len(out) < max_messages:
            out.append(self._buffer.popleft())
        return out

    def clear(self) -> None:
        """Drop buffered messages (they will be redelivered after the ack wait)."""
        self._buffer.clear()


async def ack(nc: NATS, delivery: Delivery) -> None:
    await nc.publish(delivery.reply, b"+ACK")


async def nak(nc: NATS, delivery: Delivery, delay_s: float = 0.0) -> None:
    payload = b"-NAK"
    if delay_s > 0:
        payload += b" " + json.dumps({"delay": int(delay_s * 1_000_000_000)}).encode()
    await nc.publish(delivery.reply, payload)
