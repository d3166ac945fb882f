"""gRPC OmniQueryService over :class:`OmniReads` (the same reads REST serves)."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from jetsource._gen.omni.v1 import query_pb2 as pb
from jetsource._gen.omni.v1 import query_pb2_grpc
from jetsource._gen.omni.v1.events_pb2 import Direction, EventType
from jetsource.core.clock import from_timestamp
from jetsource.core.errors import ValidationError
from jetsource.core.grpcserver import RpcError, register_error
from jetsource.domains.omni.identity import IdentityNotFoundError
from jetsource.domains.omni.processing import EventNotFoundError
from jetsource.domains.omni.reads import Filters, NotFoundError, OmniReads
from jetsource.projection.contract import TransientError

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OmniQueryService"].full_name


def _not_found(exc: BaseException) -> RpcError:
    return RpcError(grpc.StatusCode.NOT_FOUND, str(exc), field=getattr(exc, "field", None) or None)


def register_errors() -> None:
    for kind in (NotFoundError, IdentityNotFoundError, EventNotFoundError):
        register_error(kind, mapper=_not_found)
    register_error(TransientError, grpc.StatusCode.UNAVAILABLE)


def _short(enum: Any, value: int, prefix: str) -> str:
    if value == 0:
        return ""
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT, f"unknown enum value {value}", field=prefix.lower()
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


class OmniQueryService(query_pb2_grpc.OmniQueryServiceServicer):
    def __init__(self, reads: OmniReads) -> None:
        self.reads = reads

    async def ListRecentEvents(
        self, request: pb.ListRecentEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRecentEventsResponse:
        filters = Filters(
            request.instance,
            request.provider,
            _short(EventType, request.event_type, "EVENT_TYPE_"),
            _short(Direction, request.direction, "DIRECTION_"),
        )
        since = _since(request.since) if request.HasField("since") else None
        events, token = await self.reads.recent(
            filters, since, request.page_size, request.page_token
        )
        return pb.ListRecentEventsResponse(events=events, next_page_token=token)

    async def GetEvent(
        self, request: pb.GetEventRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetEventResponse:
        view = await self.reads.event(request.event_id)
        response = pb.GetEventResponse(event=view)
        if request.include_raw:
            raw = await self.reads.raw_payload(view.event.raw_ref)
            if raw is not None:
                response.raw.CopyFrom(raw)
        return response

    async def GetIdentityTimeline(
        self, request: pb.GetIdentityTimelineRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetIdentityTimelineResponse:
        identity, events, token = await self.reads.timeline(
            request.identity_id, request.page_size, request.page_token
        )
        return pb.GetIdentityTimelineResponse(
            identity=identity, events=events, next_page_token=token
        )

    async def GetConversation(
        self, request: pb.GetConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetConversationResponse:
        events, token = await self.reads.conversation(
            request.provider,
            request.instance,
            request.conversation_id,
            request.page_size,
            request.page_token,
        )
        return pb.GetConversationResponse(events=events, next_page_token=token)

    async def GetIdentity(
        self, request: pb.GetIdentityRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetIdentityResponse:
        return pb.GetIdentityResponse(identity=await self.reads.identity(request.identity_id))

    async def FindIdentity(
        self, request: pb.FindIdentityRequest, context: grpc.aio.ServicerContext
    ) -> pb.FindIdentityResponse:
        return pb.FindIdentityResponse(
            identity=await self.reads.find(request.provider, request.external_id)
        )

    async def ListIdentities(
        self, request: pb.ListIdentitiesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListIdentitiesResponse:
        found, token = await self.reads.identities(
            request.provider, request.include_merged, request.page_size, request.page_token
        )
        return pb.ListIdentitiesResponse(identities=found, next_page_token=token)


def add_to_server(servicer: OmniQueryService, server: grpc.aio.Server) -> None:
    register_errors()
    query_pb2_grpc.add_OmniQueryServiceServicer_to_server(servicer, server)
