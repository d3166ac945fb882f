"""ContextQueryService: reads only, from the read models and the event stream.

- current state from the Valkey context model (its active version), with
  read-your-writes: ``min_version`` waits within the deadline, then answers with what
  the model has and says it is behind (or FAILED_PRECONDITION when ``strict``);
- state at a version or time: latest usable snapshot + the events after it;
- history, story listing, the decision graph (graph model) and a live watch.

Errors: a malformed id, negative or absurd numbers, a bad page token ->
INVALID_ARGUMENT naming the field; an unknown context, or a time before it existed ->
NOT_FOUND; a version past the current one -> OUT_OF_RANGE; stores away -> UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from prometheus_client import Counter, Histogram

from jetsource._gen.context.v1 import query_pb2 as pb
from jetsource._gen.context.v1 import query_pb2_grpc as pb_grpc
from jetsource.core.clock import format_rfc3339_ns, from_timestamp, to_timestamp
from jetsource.core.errors import (
    EventStoreUnavailableError,
    StreamMissingError,
    ValidationError,
)
from jetsource.core.ids import validate_aggregate_id
from jetsource.domain.context.history import PointInTime, StateLoader
from jetsource.domain.context.model import fold
from jetsource.eventstore.jsapi import JsApiError, NoRespondersError
from jetsource.projector.bootstrap import Projection
from jetsource.projector.graph_model import GRAPH, GraphModel
from jetsource.projector.readmodel import TransientError
from jetsource.projector.valkey_models import CONTEXT, ContextModel
from jetsource.query.settings import QueryOptions
from jetsource.query.views import (
    STATUS,
    STATUS_NAME,
    ViewEncoder,
    context_view,
    event_view,
    state_view,
    with_context,
)

log = logging.getLogger("jetsource.query")
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


class QueryError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def invalid(field: str, message: str) -> QueryError:
    return QueryError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}")


def not_found(context_id: str) -> QueryError:
    return QueryError(grpc.StatusCode.NOT_FOUND, f"context {context_id!r} not found")


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


def _token(kind: str, value: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode()


def _untoken(kind: str, token: str) -> int:
    try:
        tag, value = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        if tag != kind or int(value) < 0:
            raise ValueError(tag)
        return int(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid("page_token", "not a token this method returned") from exc


@dataclass
class _Active:
    version: int
    at: float


class ContextQueryService(pb_grpc.ContextQueryServiceServicer):
    def __init__(self, projection: Projection, loader: StateLoader, options: QueryOptions) -> None:
        self.p = projection
        self.store = projection.store
        self.loader = loader
        self.o = options
        self._active: dict[str, _Active] = {}
        self._models: dict[tuple[str, int], Any] = {}
        # Views of time-travel answers, encoded from the snapshot states they start from.
        self._views = ViewEncoder()

    # -- plumbing ---------------------------------------------------------------

    async def _model(self, name: str) -> Any:
        """The active version of a read model (cached for ``control_ttl_s``)."""
        cached = self._active.get(name)
        now = time.monotonic()
        if cached is None or now - cached.at > self.o.control_ttl_s:
            control = await self.p.control.get(name)
            cached = _Active(control.active if control else 1, now)
            self._active[name] = cached
        key = (name, cached.version)
        if key not in self._models:
            self._models[key] = self.p.model(name, cached.version)
        return self._models[key]

    def _budget(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.o.default_deadline_s if remaining is None else max(remaining, 0.0)

    async def _run(
        self, method: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]
    ) -> T:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._budget(context)):
                result = await work()
        except QueryError as exc:
            REQUESTS.labels(method, exc.code.name.lower()).inc()
            await context.abort(exc.code, str(exc))
            raise
        except TimeoutError:
            REQUESTS.labels(method, "deadline").inc()
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            raise
        except _UNAVAILABLE as exc:
            REQUESTS.labels(method, "unavailable").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store unavailable: {exc}")
            raise
        REQUESTS.labels(method, "ok").inc()
        LATENCY.labels(method).observe(time.perf_counter() - started)
        return result

    async def _must_exist(self, context_id: str) -> int:
        version = await self.store.last_version(context_id)
        if version == 0:
            raise not_found(context_id)
        return version

    # -- current state ------------------------------------------------------------

    async def GetContext(
        self, request: pb.GetContextRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetContextResponse:
        async def work() -> pb.GetContextResponse:
            cid = _context_id(request.context_id)
            wanted = _number("min_version", request.min_version, 0)
            model: ContextModel = await self._model(CONTEXT)
            doc = await model.read(cid)
            if doc is None or doc["state"]["version"] < wanted:
                doc = await self._wait_for(model, cid, wanted, doc, context)
            if doc is None:
                return await self._from_store(cid, wanted, request.strict)
            have = doc["state"]["version"]
            if have < wanted and request.strict:
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

        return await self._run("GetContext", context, work)

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
        end = time.monotonic() + max(self._budget(context) - 0.05, 0.0)
        pause = self.o.poll_min_s
        while time.monotonic() + pause < end:
            await asyncio.sleep(pause)
            doc = await model.read(cid)
            if doc is not None and doc["state"]["version"] >= wanted:
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

        async def work() -> bytes:
            cid = _context_id(request.context_id)
            version = _number("version", request.version, 1)
            point = await self.loader.load(cid, to_version=version)
            if point.state.version == 0:
                raise not_found(cid)
            if point.state.version < version:
                raise QueryError(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"version: context {cid!r} is at version {point.state.version}; "
                    f"asked for {version}",
                )
            return self._answer(pb.GetContextAtVersionResponse, point)

        return await self._run("GetContextAtVersion", context, work)

    async def GetContextAtTime(
        self, request: pb.GetContextAtTimeRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetContextAtTimeResponse:
        answer = await self.context_at_time(request, context)
        return pb.GetContextAtTimeResponse.FromString(answer)

    async def context_at_time(
        self, request: pb.GetContextAtTimeRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        """GetContextAtTime's answer, encoded (``add_to_server`` serves it so)."""

        async def work() -> bytes:
            cid = _context_id(request.context_id)
            if not request.HasField("time"):
                raise invalid("time", "required")
            at = from_timestamp(request.time)
            if at < 0:
                raise invalid("time", "before 1970")
            point = await self.loader.load(cid, until=at)
            if point.state.version == 0:
                await self._must_exist(cid)
                first = await self.store.read_aggregate(cid, to_version=1)
                raise QueryError(
                    grpc.StatusCode.NOT_FOUND,
                    f"context {cid!r} did not exist yet at {format_rfc3339_ns(at)}; "
                    f"it was created at {format_rfc3339_ns(first[0].recorded_at_ns)}",
                )
            return self._answer(pb.GetContextAtTimeResponse, point)

        return await self._run("GetContextAtTime", context, work)

    def _answer(
        self,
        kind: type[pb.GetContextAtVersionResponse] | type[pb.GetContextAtTimeResponse],
        point: PointInTime,
    ) -> bytes:
        """The answer encoded around the view's bytes, which are never parsed here."""
        rest = kind(
            last_stream_sequence=point.last_seq,
            snapshot_version=point.snapshot_version,
            events_folded=point.events_folded,
        )
        rest.recorded_at.CopyFrom(to_timestamp(point.recorded_at_ns))
        return with_context(rest, self._views.encode(point.state, point.base))

    # -- history and listings -------------------------------------------------------

    async def ListEvents(
        self, request: pb.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListEventsResponse:
        async def work() -> pb.ListEventsResponse:
            cid = _context_id(request.context_id)
            limit = _page_size("limit", request.limit, 100, self.o.max_page_size)
            if request.page_token:
                start = _untoken("ev", request.page_token)
            else:
                start = max(_number("from_version", request.from_version, 0), 1)
            records = await self.store.read_aggregate(
                cid, from_version=start, to_version=start + limit - 1
            )
            if not records and start == 1:
                await self._must_exist(cid)
            response = pb.ListEventsResponse(events=[event_view(r) for r in records])
            if len(records) == limit:
                response.next_page_token = _token("ev", records[-1].version + 1)
            return response

        return await self._run("ListEvents", context, work)

    async def ListContexts(
        self, request: pb.ListContextsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListContextsResponse:
        async def work() -> pb.ListContextsResponse:
            size = _page_size("page_size", request.page_size, 50, self.o.max_page_size)
            if request.status not in (0, *STATUS.values()):
                raise invalid("status", f"unknown status {request.status}")
            offset = _untoken("ctx", request.page_token) if request.page_token else 0
            model: ContextModel = await self._model(CONTEXT)
            ids = await model.recent(STATUS_NAME.get(request.status), offset, size)
            response = pb.ListContextsResponse()
            for cid, doc in zip(ids, await model.read_many(ids), strict=True):
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
            if len(ids) == size:
                response.next_page_token = _token("ctx", offset + size)
            return response

        return await self._run("ListContexts", context, work)

    # -- graph ------------------------------------------------------------------

    async def GetDecisionGraph(
        self, request: pb.GetDecisionGraphRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetDecisionGraphResponse:
        async def work() -> pb.GetDecisionGraphResponse:
            cid = _context_id(request.context_id)
            depth = _number("depth", request.depth, 0, self.o.max_graph_depth)
            graph: GraphModel = await self._model(GRAPH)
            nodes = await graph.nodes(cid)
            if not nodes:
                await self._must_exist(cid)
                raise QueryError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"context {cid!r} is not in the graph model yet; try again shortly",
                )
            edges = (await graph.neighbourhood(cid))["edges"]
            return _subgraph(cid, nodes, edges, request.root_id, depth)

        return await self._run("GetDecisionGraph", context, work)

    # -- live watch -------------------------------------------------------------

    async def WatchContext(
        self, request: pb.WatchContextRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchContextResponse]:
        started = time.perf_counter()
        try:
            cid = _context_id(request.context_id)
            start = max(_number("from_version", request.from_version, 0), 1)
            await self._must_exist(cid)
        except QueryError as exc:
            REQUESTS.labels("WatchContext", exc.code.name.lower()).inc()
            await context.abort(exc.code, str(exc))
            return
        except _UNAVAILABLE as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store unavailable: {exc}")
            return
        REQUESTS.labels("WatchContext", "ok").inc()
        wake = asyncio.Event()

        async def woken(_msg: Any) -> None:
            wake.set()

        # Subscribe before the first read, so no append slips between them.
        sub = await self.p.nc.subscribe(f"{self.store.settings.subject_prefix}.{cid}.>", cb=woken)
        try:
            point = await self.loader.load(cid, to_version=start - 1)
            state, seq = point.state, point.last_seq
            while True:
                wake.clear()
                try:
                    records = await self.store.read_aggregate(
                        cid, from_version=state.version + 1, from_seq=seq + 1
                    )
                except _UNAVAILABLE as exc:
                    log.warning("watch %s: %r; retrying", cid, exc)
                    records = []
                for r in records:
                    if r.version != state.version + 1:
                        break  # never skip: read again from where the state is
                    state = fold([r.event], state)
                    seq = r.stream_seq
                    yield pb.WatchContextResponse(event=event_view(r), state=state_view(state))
                if records:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.o.watch_poll_s)
        finally:
            await sub.unsubscribe()
            LATENCY.labels("WatchContext").observe(time.perf_counter() - started)


# Methods whose answers the servicer encodes itself, and its method giving them.
_ENCODED = {
    "GetContextAtVersion": "context_at_version",
    "GetContextAtTime": "context_at_time",
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


def _subgraph(
    cid: str,
    nodes: list[tuple[str, dict[str, Any]]],
    edges: list[tuple[str, str, str]],
    root_id: str,
    depth: int,
) -> pb.GetDecisionGraphResponse:
    """Nodes within ``depth`` hops of the root (edges taken both ways), and the
    edges between them. Graph keys are "<story>/<node>"; the API speaks node ids."""

    def local(key: str) -> str:
        return key.removeprefix(f"{cid}/")

    by_id: dict[str, tuple[str, dict[str, Any]]] = {}
    version = 0
    for kind, props in nodes:
        node_id = local(props["key"]) if kind != "story" else cid
        by_id[node_id] = (kind, props)
        if kind == "story":
            version = int(props.get("version") or 0)
    root = root_id or cid
    if root not in by_id:
        raise invalid("root_id", f"no decision or subtask {root!r} in context {cid!r}")
    links = [(t, local(a), local(b)) for t, a, b in edges]
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
    for node_id in sorted(distance, key=lambda n: (distance[n], n)):
        if node_id not in by_id:
            continue
        kind, props = by_id[node_id]
        status = props.get("status", "")
        if kind == "decision":
            status = "active" if props.get("active") else "superseded"
        response.nodes.append(
            pb.GraphNode(
                id=node_id,
                kind=_KIND[kind],
                title=str(props.get("title", "")),
                status=str(status),
                distance=distance[node_id],
            )
        )
    for t, a, b in sorted(links):
        if a in distance and b in distance:
            response.edges.append(pb.GraphEdge(type=t, from_id=a, to_id=b))
    return response
