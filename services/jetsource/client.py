"""Typed Python clients: ContextClient for the publisher's ContextCommandService,
QueryClient (below) for the query service.

    async with ContextClient("127.0.0.1:50051") as client:
        r = await client.create_context("story-1", title="Checkout")
        await client.add_decision("story-1", "d1", "Use NATS", expected_version=r.version)

Each call sends a fresh idempotency key unless one is given: pass the same key to
retry safely. Both clients hold their own connection and send a call answered
UNAVAILABLE again (up to 5 attempts within its deadline; the same request, so the
same key): a publisher worker or replica that goes away costs a retry, not an error.
The connection opens on the first call, in that call's event loop (see ``_Client``).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc

from jetsource._gen.context.v1 import commands_pb2 as pb
from jetsource._gen.context.v1 import commands_pb2_grpc as pb_grpc
from jetsource._gen.context.v1 import events_pb2, query_pb2, query_pb2_grpc
from jetsource.core.clock import to_ns, to_timestamp
from jetsource.core.errors import ValidationError
from jetsource.core.ids import uuid7
from jetsource.core.settings import GrpcClientSettings, client_tls_problems

R = TypeVar("R")


# A call answered UNAVAILABLE (a worker or replica gone, a connection reset while a
# service restarts) is sent again, within its deadline. Only for clients whose every
# call may run twice: reads, and commands, which always carry an idempotency key.
RETRY_UNAVAILABLE = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def open_channel(
    target: str, security: GrpcClientSettings | None = None, retry: bool = False
) -> tuple[grpc.aio.Channel, tuple[tuple[str, str], ...]]:
    """A channel to a jetsource gRPC service and the metadata every call carries
    (the bearer token, if any). TLS when ``security.tls`` is on: the CA file (else the
    system CAs), a client certificate for mutual TLS, a server-name override."""
    s = security or GrpcClientSettings()
    metadata: tuple[tuple[str, str], ...] = ()
    if s.token is not None and s.token.get_secret_value():
        metadata = (("authorization", f"Bearer {s.token.get_secret_value()}"),)
    # A client's own connection (grpc would otherwise share one TCP connection among
    # every channel of the process to the same address): so a service's workers, or
    # replicas behind an L4 balancer, each take their share of a process's clients.
    # Any answer size: the server bounds what it sends (grpc.max_message_bytes, refused
    # there as ANSWER_TOO_LARGE naming the call); grpc's default 4 MiB here made every
    # answer of a server set above it RESOURCE_EXHAUSTED "Received message larger than max".
    own: list[tuple[str, Any]] = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_receive_message_length", -1),
    ]
    if retry:
        own += [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", RETRY_UNAVAILABLE),
            # Reconnect soon after a reset (grpc waits 1 s first by default), so the
            # retries find the connection up again. Not grpc.min_reconnect_backoff_ms:
            # grpc takes it as each connection attempt's timeout (default 20 s), so 100
            # made a server whose handshake took over 0.1 s (TLS far away, a busy
            # server) "not reachable" at once; the callers' deadlines bound the wait.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
    credentials, options = channel_tls(s)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=own), metadata
    return grpc.aio.secure_channel(target, credentials, options=own + options), metadata


def channel_tls(
    security: GrpcClientSettings,
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    """The channel credentials and options of ``security``'s TLS (None, []: plain
    text): the CA file (else the system CAs), a client certificate for mutual TLS, a
    server-name override. For a channel made elsewhere (the SDK's observer client)."""
    s = security
    if not s.tls.active:
        return None, []
    if problems := client_tls_problems(s):
        # Every client of the CLI, the TUI and the SDK: a CA file not there was reported
        # as the file a command reads (observe import: FAILED_PRECONDITION naming only
        # the path), one that is no PEM as a server not reachable.
        named = re.match(r"JETSOURCE_[A-Z0-9_]+", problems[0])
        raise ValidationError(
            f"bad setting: {'; '.join(problems)}", field=named[0] if named else "client.tls"
        )

    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path is not None else None

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(s.tls.ca_file),
        private_key=read(s.tls.key_file or s.tls.cert_file) if s.tls.cert_file else None,
        certificate_chain=read(s.tls.cert_file),
    )
    options: list[tuple[str, Any]] = (
        [("grpc.ssl_target_name_override", s.server_name)] if s.server_name else []
    )
    return credentials, options


STATUSES = {
    "todo": events_pb2.SUBTASK_STATUS_TODO,
    "in_progress": events_pb2.SUBTASK_STATUS_IN_PROGRESS,
    "blocked": events_pb2.SUBTASK_STATUS_BLOCKED,
    "done": events_pb2.SUBTASK_STATUS_DONE,
    "cancelled": events_pb2.SUBTASK_STATUS_CANCELLED,
}


class _Client:
    """The connection of a typed client, opened on its first call in the event loop
    that makes it (a client made at import time, outside any loop, works; grpc.aio
    binds a channel to the loop it is made in). A call after ``close()``, or from
    another loop while the first still runs, is a ``grpc.aio.UsageError`` saying so;
    once its loop has ended (a second ``asyncio.run``) a new connection is opened."""

    def __init__(self, target: str, timeout: float, security: GrpcClientSettings | None) -> None:
        if not isinstance(target, str) or not target.strip():
            raise ValueError(f"target must be host:port, got {target!r}")
        if not timeout > 0:  # also NaN
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self._target = target
        self._security = security
        self._timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._open: grpc.aio.Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def _channel(self) -> grpc.aio.Channel:
        return self._connect()

    def _connect(self) -> grpc.aio.Channel:
        if self._closed:
            raise grpc.aio.UsageError(f"{type(self).__name__} is closed")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise grpc.aio.UsageError(
                f"{type(self).__name__} is asyncio: call it from a running event loop"
            ) from None
        if self._open is not None and self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed():
                raise grpc.aio.UsageError(
                    f"{type(self).__name__} is bound to another running event loop: "
                    "make one client per loop (or per thread)"
                )
            self._open = None  # its loop has ended, and the channel with it
        if self._open is None:
            self._open, self._metadata = open_channel(self._target, self._security, retry=True)
            self._loop = loop
            self._opened(self._open)
        return self._open

    def _opened(self, channel: grpc.aio.Channel) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Close the connection; closing again does nothing."""
        self._closed = True
        channel, self._open = self._open, None
        if channel is not None and self._loop is asyncio.get_running_loop():
            await channel.close()


class ContextClient(_Client):
    def __init__(
        self,
        target: str,
        timeout: float = 10.0,
        actor: str = "",
        security: GrpcClientSettings | None = None,
    ) -> None:
        super().__init__(target, timeout, security)
        self._actor = actor

    def _opened(self, channel: grpc.aio.Channel) -> None:
        self._stub = pb_grpc.ContextCommandServiceStub(channel)

    async def __aenter__(self) -> ContextClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _send(
        self,
        rpc: str,
        context_id: str,
        idempotency_key: str | None,
        expected_version: int | None,
        correlation_id: str,
        causation_id: str,
        **fields: Any,
    ) -> pb.CommandResult:
        options = pb.CommandOptions(
            idempotency_key=uuid7() if idempotency_key is None else idempotency_key,
            correlation_id=correlation_id,
            causation_id=causation_id,
            actor=self._actor,
        )
        if expected_version is not None:
            options.expected_version = expected_version
        request = getattr(pb, f"{rpc}Request")(context_id=context_id, options=options, **fields)
        self._connect()  # opened here, in the caller's loop
        response = await getattr(self._stub, rpc)(
            request, timeout=self._timeout, metadata=self._metadata
        )
        result: pb.CommandResult = response.result
        return result

    async def create_context(
        self,
        context_id: str,
        title: str,
        description: str = "",
        tags: Sequence[str] = (),
        **opts: Any,
    ) -> pb.CommandResult:
        return await self._send(
            "CreateContext",
            context_id,
            **_o(opts),
            title=title,
            description=description,
            tags=list(tags),
        )

    async def add_decision(
        self,
        context_id: str,
        decision_id: str,
        title: str,
        body: str = "",
        rationale: str = "",
        affects: Sequence[str] = (),
        **opts: Any,
    ) -> pb.CommandResult:
        return await self._send(
            "AddDecision",
            context_id,
            **_o(opts),
            decision_id=decision_id,
            title=title,
            body=body,
            rationale=rationale,
            affects=list(affects),
        )

    async def revise_decision(
        self,
        context_id: str,
        decision_id: str,
        title: str = "",
        body: str = "",
        rationale: str = "",
        **opts: Any,
    ) -> pb.CommandResult:
        return await self._send(
            "ReviseDecision",
            context_id,
            **_o(opts),
            decision_id=decision_id,
            title=title,
            body=body,
            rationale=rationale,
        )

    async def supersede_decision(
        self, context_id: str, decision_id: str, superseded_by: str, reason: str = "", **opts: Any
    ) -> pb.CommandResult:
        return await self._send(
            "SupersedeDecision",
            context_id,
            **_o(opts),
            decision_id=decision_id,
            superseded_by=superseded_by,
            reason=reason,
        )

    async def add_subtask(
        self,
        context_id: str,
        subtask_id: str,
        title: str,
        description: str = "",
        assignee: str = "",
        **opts: Any,
    ) -> pb.CommandResult:
        return await self._send(
            "AddSubtask",
            context_id,
            **_o(opts),
            subtask_id=subtask_id,
            title=title,
            description=description,
            assignee=assignee,
        )

    async def update_subtask(
        self,
        context_id: str,
        subtask_id: str,
        status: str | None = None,
        assignee: str | None = None,
        progress: int | None = None,
        **opts: Any,
    ) -> pb.CommandResult:
        fields: dict[str, Any] = {"subtask_id": subtask_id}
        if status is not None:
            if status not in STATUSES:
                raise ValueError(f"status must be one of {', '.join(STATUSES)}")
            fields["status"] = STATUSES[status]
        if assignee is not None:
            fields["assignee"] = assignee
        if progress is not None:
            fields["progress"] = progress
        return await self._send("UpdateSubtask", context_id, **_o(opts), **fields)

    async def link_dependency(
        self, context_id: str, from_id: str, to_id: str, **opts: Any
    ) -> pb.CommandResult:
        return await self._send(
            "LinkDependency", context_id, **_o(opts), from_id=from_id, to_id=to_id
        )

    async def close_context(
        self, context_id: str, reason: str = "", **opts: Any
    ) -> pb.CommandResult:
        return await self._send("CloseContext", context_id, **_o(opts), reason=reason)


def _o(opts: dict[str, Any]) -> dict[str, Any]:
    unknown = set(opts) - {"idempotency_key", "expected_version", "correlation_id", "causation_id"}
    if unknown:
        raise TypeError(f"unknown options: {', '.join(sorted(unknown))}")
    return {
        "idempotency_key": opts.get("idempotency_key"),
        "expected_version": opts.get("expected_version"),
        "correlation_id": opts.get("correlation_id", ""),
        "causation_id": opts.get("causation_id", ""),
    }


class QueryClient(_Client):
    """Typed client for the query service's ContextQueryService.

    async with QueryClient("127.0.0.1:50052") as q:
        now = await q.get_context("story-1", min_version=r.version)  # read your write
        then = await q.at_time("story-1", datetime(2026, 11, 1, tzinfo=UTC))
        async for change in q.watch("story-1", from_version=1): ...
    """

    def __init__(
        self, target: str, timeout: float = 10.0, security: GrpcClientSettings | None = None
    ) -> None:
        super().__init__(target, timeout, security)

    def _opened(self, channel: grpc.aio.Channel) -> None:
        self._stub = query_pb2_grpc.ContextQueryServiceStub(channel)

    async def __aenter__(self) -> QueryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _query(self, rpc: str, request: Any, answer: type[R]) -> R:
        self._connect()  # opened here, in the caller's loop
        response = await getattr(self._stub, rpc)(
            request, timeout=self._timeout, metadata=self._metadata
        )
        assert isinstance(response, answer)
        return response

    async def get_context(
        self, context_id: str, min_version: int = 0, strict: bool = False
    ) -> query_pb2.GetContextResponse:
        request = query_pb2.GetContextRequest(
            context_id=context_id, min_version=min_version, strict=strict
        )
        return await self._query("GetContext", request, query_pb2.GetContextResponse)

    async def at_version(
        self, context_id: str, version: int
    ) -> query_pb2.GetContextAtVersionResponse:
        request = query_pb2.GetContextAtVersionRequest(context_id=context_id, version=version)
        return await self._query(
            "GetContextAtVersion", request, query_pb2.GetContextAtVersionResponse
        )

    async def at_time(
        self, context_id: str, at: datetime | int
    ) -> query_pb2.GetContextAtTimeResponse:
        request = query_pb2.GetContextAtTimeRequest(context_id=context_id)
        request.time.CopyFrom(to_timestamp(to_ns(at)))
        return await self._query("GetContextAtTime", request, query_pb2.GetContextAtTimeResponse)

    async def list_events(
        self, context_id: str, from_version: int = 1, limit: int = 0, page_token: str = ""
    ) -> query_pb2.ListEventsResponse:
        request = query_pb2.ListEventsRequest(
            context_id=context_id, from_version=from_version, limit=limit, page_token=page_token
        )
        return await self._query("ListEvents", request, query_pb2.ListEventsResponse)

    async def list_contexts(
        self,
        status: query_pb2.ContextStatus.ValueType = query_pb2.CONTEXT_STATUS_UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
    ) -> query_pb2.ListContextsResponse:
        request = query_pb2.ListContextsRequest(
            status=status, page_size=page_size, page_token=page_token
        )
        return await self._query("ListContexts", request, query_pb2.ListContextsResponse)

    async def graph(
        self, context_id: str, depth: int = 2, root_id: str = ""
    ) -> query_pb2.GetDecisionGraphResponse:
        request = query_pb2.GetDecisionGraphRequest(
            context_id=context_id, depth=depth, root_id=root_id
        )
        return await self._query("GetDecisionGraph", request, query_pb2.GetDecisionGraphResponse)

    def watch(self, context_id: str, from_version: int = 1, timeout: float | None = None) -> Any:
        """A server stream of WatchContextResponse (iterate it with ``async for``;
        ``cancel()`` it to stop)."""
        request = query_pb2.WatchContextRequest(context_id=context_id, from_version=from_version)
        self._connect()  # opened here, in the caller's loop
        return self._stub.WatchContext(request, timeout=timeout, metadata=self._metadata)


@dataclass(frozen=True)
class ErrorDetails:
    """The google.rpc.Status details a refusal carries in its trailers: the fields it
    names (BadRequest field violations: path -> description) and its ErrorInfo
    (``reason``, e.g. VERSION_MISMATCH or CORRUPT_EVENT, and ``metadata``, e.g.
    ``{"current_version": "7"}``)."""

    fields: dict[str, str]
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


def error_details(error: grpc.RpcError) -> ErrorDetails:
    """What a failed call's trailers say beyond its code and message (empty when the
    server sent no details)."""
    from google.rpc import error_details_pb2  # type: ignore[import-untyped]
    from grpc_status import rpc_status  # type: ignore[import-untyped]

    try:
        status = rpc_status.from_call(error)
    except ValueError:  # a trailer that does not match the call's code or message
        status = None
    fields: dict[str, str] = {}
    reason, metadata = "", {}
    for packed in status.details if status is not None else ():
        bad, info = error_details_pb2.BadRequest(), error_details_pb2.ErrorInfo()
        if packed.Unpack(bad):
            fields.update((v.field, v.description) for v in bad.field_violations)
        elif packed.Unpack(info):
            reason, metadata = info.reason, dict(info.metadata)
    return ErrorDetails(fields, reason, metadata)
