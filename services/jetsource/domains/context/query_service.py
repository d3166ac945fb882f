"""ContextQueryService: reads only, from the read models and the event stream.

- current state from the Valkey context model (its active version), with
  read-your-writes: ``min_version`` waits within the deadline, then answers with what
  the model has and says it is behind (or FAILED_PRECONDITION when ``strict``);
- state at a version or time: latest usable snapshot + the events after it;
- history, story listing, the decision graph (graph model) and a live watch.

Errors: a malformed id, negative or absurd numbers, an invalid Timestamp, a bad page
token -> INVALID_ARGUMENT naming the field; an unknown context, or a time before it
existed -> NOT_FOUND; a version past the current one -> OUT_OF_RANGE; stores away ->
UNAVAILABLE; a corrupt stored event -> DATA_LOSS naming its stream sequence; a point
before a compacted stream's horizon when this service does not read the archive ->
FAILED_PRECONDITION (reason BEFORE_HORIZON, naming the horizon's version, sequence and
time). Errors are raised; the server's interceptor (``jetsource.core.grpcserver``)
answers them.

Page tokens are opaque: a version byte, the cursor and an HMAC-SHA256 tag (truncated)
over the method, what the token is bound to (the context, or the status filter) and
the cursor. Any change to a token is refused as INVALID_ARGUMENT naming page_token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import struct
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter, Histogram
from valkey import exceptions as valkey_errors

from jetsource._gen.context.v1 import query_pb2 as pb
from jetsource._gen.context.v1 import query_pb2_grpc as pb_grpc
from jetsource.archive.history import history_store
from jetsource.archive.objectstore import ObjectStoreError
from jetsource.archive.segment import SegmentError
from jetsource.core import telemetry
from jetsource.core.aio import wait_event
from jetsource.core.clock import format_rfc3339_ns, from_timestamp, to_timestamp
from jetsource.core.crypto import ErasureWatch, erasures_heard
from jetsource.core.errors import (
    CorruptEventError,
    EventStoreUnavailableError,
    StreamMissingError,
    ValidationError,
)
from jetsource.core.grpcserver import RpcError, answer_within, call_outcome
from jetsource.core.heap import HeapKeeper
from jetsource.core.ids import validate_aggregate_id
from jetsource.domains.context.graph_model import GRAPH, GraphModel
from jetsource.domains.context.history import (
    KeptPoint,
    PointInTime,
    StateLoader,
    fold_records,
)
from jetsource.domains.context.model import is_node_id
from jetsource.domains.context.query_settings import QueryOptions
from jetsource.domains.context.valkey_models import CONTEXT, ContextModel
from jetsource.domains.context.views import (
    STATUS,
    STATUS_NAME,
    ViewEncoder,
    context_view,
    entry_head,
    event_view,
    state_view,
    with_context,
)
from jetsource.eventstore.horizon import BeyondHorizonError
from jetsource.eventstore.jsapi import JsApiError, NoRespondersError
from jetsource.projection.bootstrap import Projection
from jetsource.projection.contract import ModelSpec, TransientError

log = logging.getLogger("jetsource.query")
SERVICE = pb.DESCRIPTOR.services_by_name["ContextQueryService"].full_name
T = TypeVar("T")
MAX_VERSION = 10**12  # beyond any real history: a larger number is a mistake

REQUESTS = Counter(
    "jetsource_query_requests_total", "Query RPCs by method and outcome", ["method", "outcome"]
)
LATENCY = Histogram(
    "jetsource_query_seconds",
    "Query RPC latency by method",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


# method -> its ok counter and latency histogram (labels looked up once, not per call)
_OK: dict[str, tuple[Any, Any]] = {}


def _ok_metrics(method: str) -> tuple[Any, Any]:
    found = _OK[method] = (REQUESTS.labels(method, "ok"), LATENCY.labels(method))
    return found


class QueryError(RpcError):
    """A refusal of this service (the interceptor answers it with its code)."""


def invalid(field: str, message: str) -> QueryError:
    return QueryError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}", field=field)


def too_large(context_id: str, what: str, size: int, limit: int) -> QueryError:
    """An answer past the gRPC message limit: only a story written before the
    publisher capped a story's size (``publisher.max_context_bytes``) has one.
    FAILED_PRECONDITION, not the RESOURCE_EXHAUSTED gRPC would answer after the
    handler (clients retry that one, and asking again cannot help)."""
    return QueryError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"context {context_id!r}: {what} is {size:,} bytes encoded, past the "
        f"{limit:,}-byte message limit (grpc.max_message_bytes); the story grew past "
        "the size the publisher now refuses (publisher.max_context_bytes): read its "
        "events with ListEvents, and its state at an earlier version with "
        "GetContextAtVersion",
        reason="CONTEXT_TOO_LARGE",
        metadata={"context_bytes": str(size), "max_message_bytes": str(limit)},
    )


def not_found(context_id: str) -> QueryError:
    """An unknown context: NOT_FOUND naming ``context_id`` (in the details' field
    violation, as every refusal of a request's field names it)."""
    return QueryError(
        grpc.StatusCode.NOT_FOUND, f"context {context_id!r} not found", field="context_id"
    )


_UNAVAILABLE = (
    EventStoreUnavailableError,
    StreamMissingError,
    TransientError,
    NoRespondersError,
    JsApiError,
    ConnectionError,
    OSError,
)


def _context_id(value: str) -> str:
    try:
        return validate_aggregate_id(value, field="context_id")
    except ValidationError as exc:
        raise invalid("context_id", str(exc)) from exc


def _number(field: str, value: int, low: int, high: int = MAX_VERSION) -> int:
    if value < low or value > high:
        raise invalid(field, f"must be between {low} and {high}, got {value}")
    return value


def _page_size(field: str, value: int, default: int, high: int) -> int:
    return default if value == 0 else _number(field, value, 1, high)


# -- timestamps ---------------------------------------------------------------------

# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799


def timestamp_ns(field: str, ts: Timestamp) -> int:
    """A valid Timestamp as ns since the epoch (negative before 1970), or INVALID_ARGUMENT."""
    if not 0 <= ts.nanos < 1_000_000_000:
        raise invalid(field, f"nanos must be in [0, 999999999], got {ts.nanos}")
    if not MIN_SECONDS <= ts.seconds <= MAX_SECONDS:
        raise invalid(field, f"seconds {ts.seconds} is outside years 1..9999 (a Timestamp's range)")
    return from_timestamp(ts)


# -- page tokens ------------------------------------------------------------------------

TOKEN_VERSION = 1
_TAG_BYTES = 16
_TOKEN_FAULT = "not a page token this method returned for this request (start without one)"


class PageTokens:
    """Opaque, tamper-evident page tokens: base64url(version | cursor | tag), the tag an
    HMAC over the method, the request it belongs to and the cursor. The key is derived
    from the deployment's stream and read-model names, so every replica accepts every
    replica's tokens."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _tag(self, kind: str, bound: str, body: bytes) -> bytes:
        text = f"{kind}\0{bound}\0".encode()
        return hmac.new(self._key, text + body, hashlib.sha256).digest()[:_TAG_BYTES]

    def make(self, kind: str, bound: str, cursor: bytes) -> str:
        body = bytes([TOKEN_VERSION]) + cursor
        raw = body + self._tag(kind, bound, body)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def read(self, kind: str, bound: str, token: str) -> bytes:
        try:
            raw = base64.urlsafe_b64decode(token.encode("ascii") + b"=" * (-len(token) % 4))
        except (ValueError, binascii.Error, UnicodeEncodeError) as exc:
            raise invalid("page_token", _TOKEN_FAULT) from exc
        if len(raw) < 1 + _TAG_BYTES or raw[0] != TOKEN_VERSION:
            raise invalid("page_token", _TOKEN_FAULT)
        body, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(kind, bound, body)):
            raise invalid("page_token", _TOKEN_FAULT)
        return body[1:]


_EV = struct.Struct(">Q")  # ListEvents: the next version
_CTX = struct.Struct(">d")  # ListContexts: the last score shown, then its id (UTF-8)


@dataclass
class _Active:
    version: int
    at: float


AnswerKind = type[pb.GetContextAtVersionResponse] | type[pb.GetContextAtTimeResponse]


def _layout(kind: AnswerKind) -> list[tuple[Any, ...]]:
    return [
        (f.number, f.type, f.name, f.message_type and f.message_type.full_name)
        for f in kind.DESCRIPTOR.fields
    ]


# The two time-travel answers carry the same fields (numbers and types), so the
# same point encodes to the same bytes in either: one kept answer serves both.
_SAME_ANSWERS = _layout(pb.GetContextAtVersionResponse) == _layout(pb.GetContextAtTimeResponse)


def _answer_key(kind: AnswerKind, context_id: str, point: KeptPoint) -> tuple[Any, ...]:
    return (None if _SAME_ANSWERS else kind, context_id, *point)


class EncodedViews:
    """Encoded ``ContextView`` of states at points of history, most recently used
    first, at most ``budget`` bytes: the state at a version never changes, so its
    view is encoded once however often the point is asked for. The whole answers
    around them are kept too (at most ``budget`` bytes more), so an answer asked for
    again is sent as it is, not copied nor encoded. An erasure empties both (and the
    encoder's pieces): views and states hold opened personal values."""

    def __init__(self, budget: int = 32 * 1024 * 1024) -> None:
        self.budget = budget
        self._encoder = ViewEncoder()
        self._views: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._bytes = 0
        # (answer type, the point's facts) -> the encoded answer
        self._answers: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._answer_bytes = 0
        self._erasures = ErasureWatch()
        self.kept = 0  # views and answers kept so far (grows with what is held)

    def _erased(self) -> bool:
        if not self._erasures.moved():
            return False
        self._views.clear()
        self._bytes = 0
        self._answers.clear()
        self._answer_bytes = 0
        self._encoder = ViewEncoder()
        return True

    def encode(self, point: PointInTime, heard: int) -> bytes:
        """The view of ``point``, loaded when ``heard`` erasures had been heard of
        (:func:`erasures_heard` before the load began)."""
        state = point.state
        key = (state.id, state.version, point.last_seq)
        view = None if self._erased() else self._views.get(key)
        if view is not None:
            self._views.move_to_end(key)
            return view
        view = self._encoder.encode(state, point.base)
        # An erasure heard since this point's load began: the state may hold what the
        # erasure destroyed, so its view is answered once and not kept.
        if len(view) <= self.budget // 4 and heard == erasures_heard() and not self._erased():
            self._views[key] = view
            self._bytes += len(view)
            self.kept += 1
            while self._bytes > self.budget:
                _, dropped = self._views.popitem(last=False)
                self._bytes -= len(dropped)
        return view

    def kept_answer(self, kind: AnswerKind, context_id: str, point: KeptPoint) -> bytes | None:
        """The answer kept for the point (as :meth:`StateLoader.peek` places it), if any."""
        if self._erased():
            return None
        key = _answer_key(kind, context_id, point)
        answer = self._answers.get(key)
        if answer is not None:
            self._answers.move_to_end(key)
        return answer

    def answer(self, kind: AnswerKind, point: PointInTime, heard: int) -> bytes:
        """The encoded ``kind`` answer of ``point`` (loaded when ``heard`` erasures
        had been heard of), around its view's bytes, which are never parsed here."""
        facts = KeptPoint(
            point.state.version,
            point.last_seq,
            point.recorded_at_ns,
            point.snapshot_version,
            point.events_folded,
        )
        key = _answer_key(kind, point.state.id, facts)
        answer = None if self._erased() else self._answers.get(key)
        if answer is not None:
            self._answers.move_to_end(key)
            return answer
        rest = kind(
            last_stream_sequence=point.last_seq,
            snapshot_version=point.snapshot_version,
            events_folded=point.events_folded,
        )
        rest.recorded_at.CopyFrom(to_timestamp(point.recorded_at_ns))
        answer = with_context(rest, self.encode(point, heard))
        if len(answer) <= self.budget // 4 and heard == erasures_heard() and not self._erased():
            self._answers[key] = answer
            self._answer_bytes += len(answer)
            self.kept += 1
            while self._answer_bytes > self.budget:
                _, dropped = self._answers.popitem(last=False)
                self._answer_bytes -= len(dropped)
        return answer


class ContextQueryService(pb_grpc.ContextQueryServiceServicer):
    def __init__(self, projection: Projection, loader: StateLoader, options: QueryOptions) -> None:
        self.p = projection
        # History before a compacted stream's horizon comes from the archive (when
        # this service reads it; else FAILED_PRECONDITION names the horizon).
        self.store = history_store(projection.store, projection.settings)
        if loader.store is projection.store:
            loader.store = self.store
        self.loader = loader
        self.o = options
        # What one answer may hold: gRPC refuses to send more (RESOURCE_EXHAUSTED after
        # the handler returned); answers are encoded here and checked first.
        self.max_message_bytes = projection.settings.grpc.max_message_bytes
        # ListEvents pages end before this many bytes of events (at least one event).
        self.page_bytes = min(options.max_page_bytes, self.max_message_bytes - PAGE_MARGIN)
        self._active: dict[str, _Active] = {}
        self._models: dict[tuple[str, int], Any] = {}
        # Views of time-travel answers: kept, else encoded from the snapshot states
        # they start from.
        self._views = EncodedViews()
        self.heap = HeapKeeper()
        seed = f"jetsource page tokens v{TOKEN_VERSION}|{projection.store.settings.stream}"
        self._tokens = PageTokens(hashlib.sha256(seed.encode()).digest())
        # (model, version) -> (valid until, monotonic; the dead-letter subjects of the
        # stories it parked), and the read of them under way.
        self._parked: dict[tuple[str, int], tuple[float, frozenset[str]]] = {}
        self._parked_reads: dict[tuple[str, int], asyncio.Future[frozenset[str]]] = {}

    # -- plumbing ---------------------------------------------------------------

    async def _model(self, name: str) -> Any:
        """The active version of a read model: looked up every ``control_ttl_s``; while
        NATS does not answer, the last one known is served for ``control_max_stale_s``."""
        from jetsource.projection.control import active_version

        version = await active_version(
            self.p.control, name, self.o.control_ttl_s, self.o.control_max_stale_s
        )
        key = (name, version)
        if key not in self._models:
            self._models[key] = self.p.model(name, version)
        return self._models[key]

    def _budget(self, context: grpc.aio.ServicerContext) -> float:
        return answer_within(context.time_remaining(), self.o.default_deadline_s)

    async def _run(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        work: Callable[[], Awaitable[T]],
        kept: Callable[[], T | None] | None = None,
    ) -> T:
        """``work()`` within the call's deadline, counted and timed; ``kept()`` first,
        when given: an answer from what is kept, without waiting on anything (so
        without a deadline to keep), or None."""
        started = time.perf_counter()
        try:
            with telemetry.rpc_span(SERVICE, method, context):
                result = kept() if kept is not None else None
                if result is None:
                    async with asyncio.timeout(self._budget(context)):
                        result = await work()
        except BaseException as exc:
            error = _query_error(exc)
            REQUESTS.labels(method, call_outcome(exc, error)).inc()
            if error is not None and error is not exc:
                raise error from exc
            raise
        ok, seconds = _OK.get(method) or _ok_metrics(method)
        ok.inc()
        seconds.observe(time.perf_counter() - started)
        return result

    async def _parked_subjects(self, spec: ModelSpec) -> frozenset[str]:
        """The dead-letter subjects of the stories the model version parked: read at
        most every ``dead_letter_ttl_s`` (one request, shared by the calls waiting
        for it)."""
        key = (spec.name, spec.version)
        kept = self._parked.get(key)
        if kept is not None and time.monotonic() < kept[0]:
            return kept[1]
        read = self._parked_reads.get(key)
        if read is None:
            read = asyncio.ensure_future(self._read_parked(spec, kept))
            self._parked_reads[key] = read
            read.add_done_callback(lambda _: self._parked_reads.pop(key, None))
        return await asyncio.shield(read)

    async def _read_parked(
        self, spec: ModelSpec, kept: tuple[float, frozenset[str]] | None
    ) -> frozenset[str]:
        timeout = self.o.dead_letter_timeout_s
        try:
            async with asyncio.timeout(timeout):
                found = frozenset(await self.p.dead_letters.subjects(spec, timeout))
        except Exception as exc:  # best effort: NATS away or slow reads as "as known"
            log.debug("dead letters of %s v%s not read: %r", spec.name, spec.version, exc)
            return kept[1] if kept is not None else frozenset()
        self._parked[(spec.name, spec.version)] = (
            time.monotonic() + self.o.dead_letter_ttl_s,
            found,
        )
        return found

    async def _check_parked(self, spec: ModelSpec, context_id: str) -> None:
        """DATA_LOSS naming the poison, as every reader of the stream names it, when
        the model parked the story behind a dead letter: what it holds of the story
        stops before that event, and answering it as the story would hide that events
        past it exist (until an operator voids or discards it)."""
        letters = self.p.dead_letters
        if letters.subject(spec, context_id) not in await self._parked_subjects(spec):
            return
        try:
            async with asyncio.timeout(self.o.dead_letter_timeout_s):
                found = await letters.list(spec, context_id)
        except Exception as exc:
            log.debug("dead letters of %s not read: %r", context_id, exc)
            return
        ours = f"{self.store.settings.subject_prefix}.{context_id}."
        mine = [d for d in found if d.original_subject.startswith(ours)]
        if not mine:
            return
        first = min(mine, key=lambda d: d.original_seq)
        raise RpcError(
            grpc.StatusCode.DATA_LOSS,
            f"context {context_id!r} holds a corrupt event at stream sequence "
            f"{first.original_seq}: {first.reason}; the {spec.name} read model shows "
            "nothing past it until an operator voids it "
            f"(jetsource repair void --seq {first.original_seq})",
            reason="CORRUPT_EVENT",
            metadata={"context_id": context_id, "stream_sequence": str(first.original_seq)},
        )

    def _sized(self, answer: bytes, context_id: str, what: str) -> bytes:
        """``answer`` if gRPC will send it, else FAILED_PRECONDITION naming its size."""
        if len(answer) > self.max_message_bytes:
            raise too_large(context_id, what, len(answer), self.max_message_bytes)
        return answer

    async def _must_exist(self, context_id: str) -> int:
        version = await self.store.last_version(context_id)
        if version == 0:
            raise not_found(context_id)
        return version

    # -- current state ------------------------------------------------------------

    async def GetContext(
        self, request: pb.GetContextRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetContextResponse:
        return pb.GetContextResponse.FromString(await self.context_now(request, context))

    async def context_now(
        self, request: pb.GetContextRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        """GetContext's answer, encoded (``add_to_server`` serves it so): its size is
        checked on the bytes sent, at no extra cost."""

        async def work() -> bytes:
            cid = _context_id(request.context_id)
            wanted = _number("min_version", request.min_version, 0)
            model: ContextModel = await self._model(CONTEXT)
            await self._check_parked(model.spec, cid)
            doc = await model.read(cid)
            if doc is None and wanted:
                # Waiting for a story that does not exist would take the deadline to
                # say NOT_FOUND: ask the stream once.
                await self._must_exist(cid)
            if doc is None or doc["state"]["version"] < wanted:
                doc = await self._wait_for(model, cid, wanted, doc, context)
            if doc is None:
                answer = await self._from_store(cid, wanted, request.strict)
            else:
                answer = self._from_model(cid, doc, wanted, request.strict)
            return self._sized(answer.SerializeToString(), cid, "its state")

        return await self._run("GetContext", context, work)

    def _from_model(
        self, cid: str, doc: dict[str, Any], wanted: int, strict: bool
    ) -> pb.GetContextResponse:
        have = doc["state"]["version"]
        if have < wanted and strict:
            raise QueryError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"read model has context {cid!r} at version {have}; "
                f"min_version {wanted} not reached within the deadline",
            )
        response = pb.GetContextResponse(
            context=context_view(doc["state"]),
            behind=have < wanted,
            source=pb.READ_SOURCE_READ_MODEL,
        )
        response.updated_at.CopyFrom(to_timestamp(int(doc.get("updated_at") or 0)))
        return response

    def _give_up_at(self, context: grpc.aio.ServicerContext) -> float:
        """When a read-your-writes wait stops, on the monotonic clock: early enough to
        answer within the caller's deadline (a margin of max(100 ms, 10 %) of it)."""
        budget = self._budget(context)
        return time.monotonic() + max(budget - max(0.1, 0.1 * budget), 0.0)

    async def _wait_for(
        self,
        model: ContextModel,
        cid: str,
        wanted: int,
        doc: dict[str, Any] | None,
        context: grpc.aio.ServicerContext,
    ) -> dict[str, Any] | None:
        """Poll the read model until it has ``wanted`` (leaving a little of the
        deadline to answer); a context it does not have at all is not waited for
        unless a version was asked for."""
        if doc is None and wanted == 0:
            return None
        end = self._give_up_at(context)
        pause = self.o.poll_min_s
        # The whole wait, reads included, ends at ``end``: a slow read under load does
        # not push the answer past the deadline.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(
                asyncio.get_running_loop().time() + end - time.monotonic()
            ):
                while time.monotonic() + pause < end:
                    await asyncio.sleep(pause)
                    fresh = await model.read(cid)
                    if fresh is not None:
                        doc = fresh
                        if doc["state"]["version"] >= wanted:
                            return doc
                    pause = min(pause * 2, self.o.poll_max_s)
        return doc

    async def _from_store(self, cid: str, wanted: int, strict: bool) -> pb.GetContextResponse:
        """Not projected (yet): fold it from the stream, if it exists at all."""
        point = await self.loader.load(cid)
        have = point.state.version
        if have == 0:
            raise not_found(cid)
        if have < wanted and strict:
            raise QueryError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"context {cid!r} is at version {have}; min_version {wanted} not reached",
            )
        response = pb.GetContextResponse(
            context=state_view(point.state),
            behind=have < wanted,
            source=pb.READ_SOURCE_EVENT_STORE,
        )
        response.updated_at.CopyFrom(to_timestamp(point.recorded_at_ns))
        return response

    # -- time travel --------------------------------------------------------------

    async def GetContextAtVersion(
        self, request: pb.GetContextAtVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetContextAtVersionResponse:
        answer = await self.context_at_version(request, context)
        return pb.GetContextAtVersionResponse.FromString(answer)

    async def context_at_version(
        self, request: pb.GetContextAtVersionRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        """GetContextAtVersion's answer, encoded (``add_to_server`` serves it so)."""

        def kept() -> bytes | None:
            cid = _context_id(request.context_id)
            version = _number("version", request.version, 1)
            point = self.loader.peek(cid, to_version=version)
            if point is None or point.version != version:
                return None
            answer = self._views.kept_answer(pb.GetContextAtVersionResponse, cid, point)
            return answer and self._sized(answer, cid, f"its state at version {version}")

        async def work() -> bytes:
            cid = _context_id(request.context_id)
            version = _number("version", request.version, 1)
            heard = erasures_heard()
            point = await self.loader.load(cid, to_version=version)
            if point.state.version == 0:
                raise not_found(cid)
            if point.state.version < version:
                raise QueryError(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"version: context {cid!r} is at version {point.state.version}; "
                    f"asked for {version}",
                    field="version",
                )
            answer = self._answer(pb.GetContextAtVersionResponse, point, heard)
            return self._sized(answer, cid, f"its state at version {version}")

        return await self._run("GetContextAtVersion", context, work, kept)

    async def GetContextAtTime(
        self, request: pb.GetContextAtTimeRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetContextAtTimeResponse:
        answer = await self.context_at_time(request, context)
        return pb.GetContextAtTimeResponse.FromString(answer)

    async def context_at_time(
        self, request: pb.GetContextAtTimeRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        """GetContextAtTime's answer, encoded (``add_to_server`` serves it so)."""

        def kept() -> bytes | None:
            cid = _context_id(request.context_id)
            if not request.HasField("time"):
                return None
            at = timestamp_ns("time", request.time)
            point = self.loader.peek(cid, until_ns=at) if at >= 0 else None
            if point is None:
                return None
            answer = self._views.kept_answer(pb.GetContextAtTimeResponse, cid, point)
            return answer and self._sized(answer, cid, f"its state at version {point.version}")

        async def work() -> bytes:
            cid = _context_id(request.context_id)
            if not request.HasField("time"):
                raise invalid("time", "required")
            at = timestamp_ns("time", request.time)
            if at < 0:  # valid, but before any event could have been recorded
                await self._must_exist(cid)
                first = await self.store.read_aggregate(cid, to_version=1)
                raise QueryError(
                    grpc.StatusCode.NOT_FOUND,
                    f"context {cid!r} did not exist yet at {format_rfc3339_ns(at)} "
                    f"(before the context existed); it was created at "
                    f"{format_rfc3339_ns(first[0].recorded_at_ns)}",
                    field="time",
                )
            heard = erasures_heard()
            point = await self.loader.load(cid, until=at)
            if point.state.version == 0:
                await self._must_exist(cid)
                first = await self.store.read_aggregate(cid, to_version=1)
                raise QueryError(
                    grpc.StatusCode.NOT_FOUND,
                    f"context {cid!r} did not exist yet at {format_rfc3339_ns(at)}; "
                    f"it was created at {format_rfc3339_ns(first[0].recorded_at_ns)}",
                    field="time",
                )
            answer = self._answer(pb.GetContextAtTimeResponse, point, heard)
            return self._sized(answer, cid, f"its state at version {point.state.version}")

        return await self._run("GetContextAtTime", context, work, kept)

    def _answer(self, kind: AnswerKind, point: PointInTime, heard: int) -> bytes:
        """The answer encoded around the view's bytes, which are never parsed here
        (``heard``: erasures heard of before the point's load began)."""
        kept = self._views.kept
        answer = self._views.answer(kind, point, heard)
        if self._views.kept != kept:
            self.heap.grew()
        return answer

    # -- history and listings -------------------------------------------------------

    async def ListEvents(
        self, request: pb.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListEventsResponse:
        return pb.ListEventsResponse.FromString(await self.list_events(request, context))

    async def list_events(
        self, request: pb.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        """ListEvents' answer, encoded (``add_to_server`` serves it so): each event is
        encoded once, and the page ends before its bytes pass ``page_bytes``."""

        async def work() -> bytes:
            cid = _context_id(request.context_id)
            limit = _page_size("limit", request.limit, 100, self.o.max_page_size)
            if request.page_token:
                cursor = self._tokens.read("ListEvents", cid, request.page_token)
                if len(cursor) != _EV.size:
                    raise invalid("page_token", _TOKEN_FAULT)
                (start,) = _EV.unpack(cursor)
                _number("page_token", start, 1, MAX_VERSION + 1)
            else:
                start = max(_number("from_version", request.from_version, 0), 1)
            records = await self.store.read_aggregate(
                cid, from_version=start, to_version=start + limit - 1
            )
            if not records:
                # Past the end of a story, or no story at all (from any version,
                # with a token or without): an unknown one is NOT_FOUND.
                await self._must_exist(cid)
            parts: list[bytes] = []
            budget = self.page_bytes
            after = records[-1].version + 1 if len(records) == limit else None
            for r in records:
                view = event_view(r).SerializeToString()
                head = entry_head(_EVENTS_FIELD, len(view))
                budget -= len(head) + len(view)
                if budget < 0 and parts:
                    after = r.version  # the page is full: it ends before this event
                    break
                parts += (head, view)
            if after is not None:
                token = self._tokens.make("ListEvents", cid, _EV.pack(after))
                parts.append(pb.ListEventsResponse(next_page_token=token).SerializeToString())
            return b"".join(parts)

        return await self._run("ListEvents", context, work)

    async def ListContexts(
        self, request: pb.ListContextsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListContextsResponse:
        async def work() -> pb.ListContextsResponse:
            size = _page_size("page_size", request.page_size, 50, self.o.max_page_size)
            if request.status not in (0, *STATUS.values()):
                raise invalid("status", f"unknown status {request.status}")
            bound = f"status={request.status}"
            after: tuple[float, bytes] | None = None
            if request.page_token:
                cursor = self._tokens.read("ListContexts", bound, request.page_token)
                if len(cursor) < _CTX.size:
                    raise invalid("page_token", _TOKEN_FAULT)
                after = (_CTX.unpack(cursor[: _CTX.size])[0], cursor[_CTX.size :])
            model: ContextModel = await self._model(CONTEXT)
            page = await recent_after(model, STATUS_NAME.get(request.status), after, size)
            ids = [member.decode() for member, _ in page]
            response = pb.ListContextsResponse()
            for cid, doc in zip(ids, await model.read_shells(ids), strict=True):
                if doc is None:
                    continue
                state = doc["state"]
                summary = pb.ContextSummary(
                    context_id=cid,
                    title=state["title"],
                    status=STATUS[doc.get("status", "open")],
                    version=state["version"],
                )
                summary.updated_at.CopyFrom(to_timestamp(int(doc.get("updated_at") or 0)))
                response.contexts.append(summary)
            if len(page) == size:
                member, score = page[-1]
                response.next_page_token = self._tokens.make(
                    "ListContexts", bound, _CTX.pack(score) + member
                )
            return response

        return await self._run("ListContexts", context, work)

    # -- graph ------------------------------------------------------------------

    async def GetDecisionGraph(
        self, request: pb.GetDecisionGraphRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetDecisionGraphResponse:
        async def work() -> pb.GetDecisionGraphResponse:
            cid = _context_id(request.context_id)
            depth = _number("depth", request.depth, 0, self.o.max_graph_depth)
            root = request.root_id or cid
            graph: GraphModel = await self._model(GRAPH)
            await self._check_parked(graph.spec, cid)  # DATA_LOSS first, whatever the root
            nodes = await graph.nodes(cid)
            # The story's node, its decisions' and its subtasks' are three reads: a
            # model catching up can answer the first without the story and the next
            # with what was applied meanwhile. Without the story's node, it lags.
            if not any(kind == "story" for kind, _ in nodes):
                if root == cid:
                    await self._must_exist(cid)
                elif not is_node_id(root):
                    # No command names a node so: INVALID_ARGUMENT while the model lags
                    # too, once the story is known (an unknown one is NOT_FOUND, as
                    # before), without folding it.
                    await self._must_exist(cid)
                    raise invalid("root_id", f"no decision or subtask {root!r} in context {cid!r}")
                else:
                    # A root the story has not is INVALID_ARGUMENT, lagging or not.
                    state = (await self.loader.load(cid)).state
                    if state.version == 0:
                        raise not_found(cid)
                    if root not in state.decisions and root not in state.subtasks:
                        raise invalid(
                            "root_id", f"no decision or subtask {root!r} in context {cid!r}"
                        )
                raise QueryError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"context {cid!r} is not in the graph model yet; try again shortly",
                )
            if root != cid and not any(_node_id(cid, k, p) == root for k, p in nodes):
                # Invalid only if the story has no such node: else the model lags.
                state = (await self.loader.load(cid)).state
                if root not in state.decisions and root not in state.subtasks:
                    raise invalid("root_id", f"no decision or subtask {root!r} in context {cid!r}")
                raise QueryError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{root!r} of context {cid!r} is not in the graph model yet; try again shortly",
                )
            edges = (await graph.neighbourhood(cid)).get("edges", [])
            answer = _subgraph(cid, nodes, edges, root, depth)
            # A graph answer repeats ids a view holds once (every HAS_* edge names the
            # story): a story well within the publisher's cap can have one past the
            # message limit, which gRPC answered RESOURCE_EXHAUSTED ("retry").
            size = answer.ByteSize()
            if size > self.max_message_bytes:
                raise QueryError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"context {cid!r}: its decision graph within {depth} hops of "
                    f"{root!r} is {size:,} bytes encoded, past the "
                    f"{self.max_message_bytes:,}-byte message limit "
                    "(grpc.max_message_bytes): ask for fewer hops (depth) or start "
                    "from one decision or subtask (root_id)",
                    reason="CONTEXT_TOO_LARGE",
                    metadata={
                        "graph_bytes": str(size),
                        "max_message_bytes": str(self.max_message_bytes),
                    },
                )
            return answer

        return await self._run("GetDecisionGraph", context, work)

    # -- live watch -------------------------------------------------------------

    async def WatchContext(
        self, request: pb.WatchContextRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchContextResponse]:
        async for message in self.watch(request, context):
            yield pb.WatchContextResponse.FromString(message)

    async def watch(
        self, request: pb.WatchContextRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """WatchContext's messages, encoded (``add_to_server`` serves them so): each is
        checked against the message limit before it is sent."""
        started = time.perf_counter()
        try:
            cid = _context_id(request.context_id)
            start = max(_number("from_version", request.from_version, 0), 1)
            await self._must_exist(cid)
        except BaseException as exc:
            error = _query_error(exc)
            REQUESTS.labels("WatchContext", call_outcome(exc, error)).inc()
            if error is not None and error is not exc:
                raise error from exc
            raise
        REQUESTS.labels("WatchContext", "ok").inc()
        wake = asyncio.Event()

        async def woken(_msg: Any) -> None:
            wake.set()

        # Subscribe before the first read, so no append slips between them.
        sub = await self.p.nc.subscribe(f"{self.store.settings.subject_prefix}.{cid}.>", cb=woken)
        try:
            # The state before ``start``, or the current one when ``start`` is further:
            # the events up to it are folded as they come and sent from ``start`` on.
            point = await self.loader.load(cid, to_version=start - 1)
            state, seq = point.state, point.last_seq
            while True:
                wake.clear()
                try:
                    records = await self.store.read_aggregate(
                        cid,
                        from_version=state.version + 1,
                        from_seq=seq + 1,
                        to_version=state.version + WATCH_PAGE,
                    )
                except _UNAVAILABLE as exc:
                    log.warning("watch %s: %r; retrying", cid, exc)
                    records = []
                for r in records:
                    if r.version != state.version + 1:
                        break  # never skip: read again from where the state is
                    # Checked as every read folds: an event the domain refuses ends
                    # the watch with DATA_LOSS naming its sequence (it was INTERNAL),
                    # one an operator voided changes nothing.
                    state = await fold_records(self.store, [r], state)
                    seq = r.stream_seq
                    if r.version < start:
                        continue
                    message = pb.WatchContextResponse(event=event_view(r), state=state_view(state))
                    yield self._sized(
                        message.SerializeToString(),
                        cid,
                        f"the watch message of version {r.version} (the event and the state "
                        "it made)",
                    )
                if records:
                    continue
                await wait_event(wake, self.o.watch_poll_s)
        finally:
            await sub.unsubscribe()
            LATENCY.labels("WatchContext").observe(time.perf_counter() - started)


# ListEvents' byte budget stays this far under the message limit (the page token).
PAGE_MARGIN = 64 * 1024
_EVENTS_FIELD = pb.ListEventsResponse.EVENTS_FIELD_NUMBER


# A watch catching up reads the history a page at a time: its first event is sent
# after the first page is read, not after the whole history (a watch from version 1 of
# a 400-event story sent nothing for 37 ms, growing with the story).
WATCH_PAGE = 64


def _query_error(exc: BaseException) -> RpcError | None:
    """The RpcError an exception of a query is answered with, when this service knows
    it (others are mapped by the interceptor)."""
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, TimeoutError):
        return RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
    if isinstance(exc, CorruptEventError):
        return None  # DATA_LOSS, mapped by the interceptor with its details
    if isinstance(exc, SegmentError):
        return RpcError(grpc.StatusCode.DATA_LOSS, f"archive: {exc}", reason="ARCHIVE_DAMAGED")
    if isinstance(exc, ObjectStoreError):
        return RpcError(grpc.StatusCode.UNAVAILABLE, f"archive unavailable: {exc}")
    if isinstance(exc, BeyondHorizonError):
        return RpcError(
            grpc.StatusCode.FAILED_PRECONDITION,
            str(exc),
            reason="BEFORE_HORIZON",
            metadata=exc.details,
        )
    if isinstance(exc, _UNAVAILABLE):
        return RpcError(grpc.StatusCode.UNAVAILABLE, f"store unavailable: {exc}")
    return None


async def recent_after(
    model: ContextModel, status: str | None, after: tuple[float, bytes] | None, count: int
) -> list[tuple[bytes, float]]:
    """Up to ``count`` (id, score) of the most recently updated stories, after the cursor
    ``after`` = (score, id) of the last one shown, in the index's own order (score
    descending, then id descending, as ZREVRANGEBYSCORE gives). A story updated after
    its page was read is not shown again (its score moved ahead of the cursor); the
    stories not updated are never skipped nor repeated, whatever changed between pages."""
    index = f"{model.ns}:idx:status:{status}" if status else f"{model.ns}:idx:updated"
    redis = model.redis
    try:
        if after is None:
            got: list[Any] = await redis.zrevrangebyscore(
                index, "+inf", "-inf", start=0, num=count, withscores=True
            )
            return [(_member(m), float(s)) for m, s in got]
        score, last = after
        ties: list[Any] = await redis.zrevrangebyscore(
            index, repr(score), repr(score), withscores=True
        )
        out = [(_member(m), float(s)) for m, s in ties if _member(m) < last][:count]
        if len(out) < count:
            rest: list[Any] = await redis.zrevrangebyscore(
                index, f"({score!r}", "-inf", start=0, num=count - len(out), withscores=True
            )
            out.extend((_member(m), float(s)) for m, s in rest)
        return out
    except (valkey_errors.ConnectionError, valkey_errors.TimeoutError, OSError) as exc:
        raise TransientError(f"valkey: {exc}") from exc


def _member(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


# Methods whose answers the servicer encodes itself, and its method giving them.
_ENCODED = {
    "GetContext": "context_now",
    "GetContextAtVersion": "context_at_version",
    "GetContextAtTime": "context_at_time",
    "ListEvents": "list_events",
    "WatchContext": "watch",
}


def add_to_server(servicer: ContextQueryService, server: grpc.aio.Server) -> None:
    """``add_ContextQueryServiceServicer_to_server``, except that the time-travel
    methods answer with their encoded message, sent as it is."""
    service = pb.DESCRIPTOR.services_by_name["ContextQueryService"]
    handlers = {}
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)
        if method.name in _ENCODED:
            call = getattr(servicer, _ENCODED[method.name])
            serialize: Callable[[Any], bytes] = bytes
        else:
            call = getattr(servicer, method.name)
            serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            call, request_deserializer=request.FromString, response_serializer=serialize
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


_KIND = {
    "story": pb.GRAPH_NODE_KIND_STORY,
    "decision": pb.GRAPH_NODE_KIND_DECISION,
    "subtask": pb.GRAPH_NODE_KIND_SUBTASK,
}


def _node_id(cid: str, kind: str, props: dict[str, Any]) -> str:
    """A graph node's id in the API: graph keys are "<story>/<node>", the story's is
    the story's id."""
    return cid if kind == "story" else str(props["key"]).removeprefix(f"{cid}/")


def _subgraph(
    cid: str,
    nodes: list[tuple[str, dict[str, Any]]],
    edges: list[tuple[str, str, str]],
    root_id: str,
    depth: int,
) -> pb.GetDecisionGraphResponse:
    """Nodes within ``depth`` hops of the root (edges taken both ways), and the
    edges between them. Graph keys are "<story>/<node>" and the story's is its id;
    nodes are told apart by their keys, and the API speaks node ids. (A decision or
    subtask named like its story, stored before such ids were refused, had the
    story's id as its key here and hid the story.) An empty ``root_id``, or the
    story's id, is the story."""

    def local(key: str) -> str:
        return key.removeprefix(f"{cid}/")

    by_key: dict[str, tuple[str, dict[str, Any]]] = {}
    version = 0
    for kind, props in nodes:
        by_key[cid if kind == "story" else str(props["key"])] = (kind, props)
        if kind == "story":
            version = int(props.get("version") or 0)
    root = cid if root_id in ("", cid) else f"{cid}/{root_id}"
    if root not in by_key:
        raise invalid("root_id", f"no decision or subtask {root_id!r} in context {cid!r}")
    # Edges are read after the nodes: one to a node applied meanwhile is left out.
    links = [(t, a, b) for t, a, b in edges if a in by_key and b in by_key]
    around: dict[str, set[str]] = {}
    for _, a, b in links:
        around.setdefault(a, set()).add(b)
        around.setdefault(b, set()).add(a)
    distance = {root: 0}
    queue = deque([root])
    while queue:
        here = queue.popleft()
        if distance[here] == depth:
            continue
        for there in sorted(around.get(here, ())):
            if there not in distance:
                distance[there] = distance[here] + 1
                queue.append(there)
    response = pb.GetDecisionGraphResponse(version=version)
    for key in sorted(distance, key=lambda n: (distance[n], local(n), n)):
        kind, props = by_key[key]
        status = props.get("status", "")
        if kind == "decision":
            status = "active" if props.get("active") else "superseded"
        response.nodes.append(
            pb.GraphNode(
                id=local(key) if kind != "story" else cid,
                kind=_KIND[kind],
                title=str(props.get("title", "")),
                status=str(status),
                distance=distance[key],
            )
        )
    for t, a, b in sorted(links, key=lambda e: (e[0], local(e[1]), local(e[2]), e)):
        if a in distance and b in distance:
            response.edges.append(pb.GraphEdge(type=t, from_id=local(a), to_id=local(b)))
    return response
