"""gRPC OmniQueryService over :class:`OmniReads` (the same reads REST serves).

Every call is counted and timed as the other query services' are
(``jetsource_omni_query_requests_total{method,outcome}``,
``jetsource_omni_query_seconds{method}``): ``outcome`` is ``ok``, the gRPC code a
failure is answered with (``not_found``, ``invalid_argument``, ``unavailable``: Valkey
or NATS away, ...), ``cancelled`` or ``internal``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter, Histogram

from jetsource._gen.omni.v1 import query_pb2 as pb
from jetsource._gen.omni.v1 import query_pb2_grpc
from jetsource._gen.omni.v1.events_pb2 import Direction, EventType
from jetsource.core import telemetry
from jetsource.core.clock import from_timestamp
from jetsource.core.errors import ValidationError
from jetsource.core.grpcserver import RpcError, call_outcome, register_error, to_rpc_error
from jetsource.domains.omni.identity import IdentityNotFoundError
from jetsource.domains.omni.processing import EventNotFoundError
from jetsource.domains.omni.raw import RawRecordCorruptError
from jetsource.domains.omni.reads import Filters, NotFoundError, NotYetVisibleError, OmniReads
from jetsource.projection.contract import TransientError

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OmniQueryService"].full_name
T = TypeVar("T")

REQUESTS = Counter(
    "jetsource_omni_query_requests_total",
    "Omni query RPCs (OmniQueryService) by method and outcome",
    ["method", "outcome"],
)
LATENCY = Histogram(
    "jetsource_omni_query_seconds",
    "Omni query RPC latency by method",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def _not_found(exc: BaseException) -> RpcError:
    return RpcError(grpc.StatusCode.NOT_FOUND, str(exc), field=getattr(exc, "field", None) or None)


def register_errors() -> None:
    # before NotFoundError, its base: tried in registration order
    register_error(NotYetVisibleError, grpc.StatusCode.FAILED_PRECONDITION)
    for kind in (NotFoundError, IdentityNotFoundError, EventNotFoundError):
        register_error(kind, mapper=_not_found)
    register_error(TransientError, grpc.StatusCode.UNAVAILABLE)
    register_error(RawRecordCorruptError, grpc.StatusCode.DATA_LOSS)


def _short(enum: Any, value: int, prefix: str, field: str) -> str:
    """The enum value's short lower-case name ("" for 0), or INVALID_ARGUMENT naming
    ``field`` (the request's field, as every other refusal names it)."""
    if value == 0:
        return ""
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        raise ValidationError(
            f"{field} {value} is not a known {enum.DESCRIPTOR.name} value", field=field
        ) from None


# google.protobuf.Timestamp's own range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def _since(ts: Timestamp) -> int:
    """A valid Timestamp in ns, or INVALID_ARGUMENT naming ``since`` (an invalid one
    was read as some other time and answered as if it were one)."""
    if not 0 <= ts.nanos <= 999_999_999 or not _MIN_SECONDS <= ts.seconds <= _MAX_SECONDS:
        raise ValidationError(
            f"since is not a valid timestamp (seconds {ts.seconds}, nanos {ts.nanos}; "
            "years 1 to 9999, nanos 0 to 999999999)",
            field="since",
        )
    return from_timestamp(ts)


def _outcome(exc: BaseException) -> str:
    """The ``outcome`` of a failed call: the code the guard answers it with (the same
    mapping), ``cancelled`` for a call its client gave up on."""
    if not isinstance(exc, Exception):
        return call_outcome(exc, None)
    return call_outcome(exc, to_rpc_error(exc))


class OmniQueryService(query_pb2_grpc.OmniQueryServiceServicer):
    def __init__(self, reads: OmniReads) -> None:
        self.reads = reads

    async def _run(
        self, method: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]
    ) -> T:
        """``work()`` counted and timed (the latency of answered calls only, as the
        other query services time theirs)."""
        started = time.perf_counter()
        try:
            with telemetry.rpc_span(SERVICE_NAME, method, context):
                result = await work()
        except BaseException as exc:
            REQUESTS.labels(method, _outcome(exc)).inc()
            raise
        REQUESTS.labels(method, "ok").inc()
        LATENCY.labels(method).observe(time.perf_counter() - started)
        return result

    async def _list_recent_events(
        self, request: pb.ListRecentEventsRequest
    ) -> pb.ListRecentEventsResponse:
        filters = Filters(
            request.instance,
            request.provider,
            _short(EventType, request.event_type, "EVENT_TYPE_", "event_type"),
            _short(Direction, request.direction, "DIRECTION_", "direction"),
        )
        since = _since(request.since) if request.HasField("since") else None
        events, token = await self.reads.recent(
            filters, since, request.page_size, request.page_token
        )
        return pb.ListRecentEventsResponse(events=events, next_page_token=token)

    async def _get_event(self, request: pb.GetEventRequest) -> pb.GetEventResponse:
        view = await self.reads.event(request.event_id)
        response = pb.GetEventResponse(event=view)
        if request.include_raw:
            raw = await self.reads.raw_payload(view.event.raw_ref)
            if raw is not None:
                response.raw.CopyFrom(raw)
        return response

    async def _get_identity_timeline(
        self, request: pb.GetIdentityTimelineRequest
    ) -> pb.GetIdentityTimelineResponse:
        identity, events, token = await self.reads.timeline(
            request.identity_id, request.page_size, request.page_token
        )
        return pb.GetIdentityTimelineResponse(
            identity=identity, events=events, next_page_token=token
        )

    async def _get_conversation(
        self, request: pb.GetConversationRequest
    ) -> pb.GetConversationResponse:
        events, token = await self.reads.conversation(
            request.provider,
            request.instance,
            request.conversation_id,
            request.page_size,
            request.page_token,
        )
        return pb.GetConversationResponse(events=events, next_page_token=token)

    async def _get_identity(self, request: pb.GetIdentityRequest) -> pb.GetIdentityResponse:
        view, token = await self.reads.identity_page(
            request.identity_id, request.page_size, request.page_token
        )
        return pb.GetIdentityResponse(identity=view, next_page_token=token)

    async def _find_identity(self, request: pb.FindIdentityRequest) -> pb.FindIdentityResponse:
        return pb.FindIdentityResponse(
            identity=await self.reads.find(request.provider, request.external_id)
        )

    async def _list_identities(
        self, request: pb.ListIdentitiesRequest
    ) -> pb.ListIdentitiesResponse:
        found, token = await self.reads.identities(
            request.provider, request.include_merged, request.page_size, request.page_token
        )
        return pb.ListIdentitiesResponse(identities=found, next_page_token=token)

    # -- the RPCs: each counted and timed --------------------------------------------

    async def ListRecentEvents(
        self, request: pb.ListRecentEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRecentEventsResponse:
        return await self._run(
            "ListRecentEvents", context, lambda: self._list_recent_events(request)
        )

    async def GetEvent(
        self, request: pb.GetEventRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetEventResponse:
        return await self._run("GetEvent", context, lambda: self._get_event(request))

    async def GetIdentityTimeline(
        self, request: pb.GetIdentityTimelineRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetIdentityTimelineResponse:
        return await self._run(
            "GetIdentityTimeline", context, lambda: self._get_identity_timeline(request)
        )

    async def GetConversation(
        self, request: pb.GetConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetConversationResponse:
        return await self._run("GetConversation", context, lambda: self._get_conversation(request))

    async def GetIdentity(
        self, request: pb.GetIdentityRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetIdentityResponse:
        return await self._run("GetIdentity", context, lambda: self._get_identity(request))

    async def FindIdentity(
        self, request: pb.FindIdentityRequest, context: grpc.aio.ServicerContext
    ) -> pb.FindIdentityResponse:
        return await self._run("FindIdentity", context, lambda: self._find_identity(request))

    async def ListIdentities(
        self, request: pb.ListIdentitiesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListIdentitiesResponse:
        return await self._run("ListIdentities", context, lambda: self._list_identities(request))


def add_to_server(servicer: OmniQueryService, server: grpc.aio.Server) -> None:
    register_errors()
    query_pb2_grpc.add_OmniQueryServiceServicer_to_server(servicer, server)
