"""gRPC ContextCommandService: requests -> commands, errors -> status codes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from jetsource._gen.context.v1 import commands_pb2 as pb
from jetsource._gen.context.v1 import commands_pb2_grpc as pb_grpc
from jetsource.core.envelope import AppendResult
from jetsource.core.errors import (
    ConcurrencyError,
    EventStoreUnavailableError,
    StreamMissingError,
    ValidationError,
)
from jetsource.domain.context import model as m
from jetsource.domain.context.model import DomainError
from jetsource.publisher.handler import (
    CommandHandler,
    CommandOptions,
    ExpectedVersionMismatchError,
    RetriesExhaustedError,
)

COMMANDS = Counter(
    "jetsource_publisher_commands_total", "Commands by type and outcome", ["command", "outcome"]
)
LATENCY = Histogram(
    "jetsource_publisher_command_seconds",
    "Command latency",
    ["command"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


def _options(request: Any) -> CommandOptions:
    o = request.options
    return CommandOptions(
        idempotency_key=o.idempotency_key,
        expected_version=o.expected_version if o.HasField("expected_version") else None,
        correlation_id=o.correlation_id,
        causation_id=o.causation_id,
        actor=o.actor,
    )


def _result(r: AppendResult) -> pb.CommandResult:
    return pb.CommandResult(
        context_id=r.aggregate_id,
        version=r.last_version,
        stream_sequences=r.stream_seqs,
        event_ids=r.event_ids,
        duplicate=r.duplicate,
    )


STATUS: list[tuple[type[BaseException], grpc.StatusCode, str]] = [
    (ValidationError, grpc.StatusCode.INVALID_ARGUMENT, "invalid"),
    (DomainError, grpc.StatusCode.FAILED_PRECONDITION, "refused"),
    (ExpectedVersionMismatchError, grpc.StatusCode.ABORTED, "conflict"),
    (ConcurrencyError, grpc.StatusCode.ABORTED, "conflict"),
    (RetriesExhaustedError, grpc.StatusCode.ABORTED, "conflict"),
    (EventStoreUnavailableError, grpc.StatusCode.UNAVAILABLE, "unavailable"),
    (StreamMissingError, grpc.StatusCode.UNAVAILABLE, "unavailable"),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline"),
]


class ContextCommandService(pb_grpc.ContextCommandServiceServicer):
    def __init__(self, handler: CommandHandler, default_deadline_s: float = 10.0) -> None:
        self._handler = handler
        self._default_deadline = default_deadline_s

    async def _run(
        self,
        name: str,
        request: Any,
        context: grpc.aio.ServicerContext,
        build: Callable[[], m.Command],
        wrap: Callable[[pb.CommandResult], Any],
    ) -> Any:
        started = time.perf_counter()
        remaining = context.time_remaining()
        budget = self._default_deadline if remaining is None else max(remaining, 0.0)
        try:
            command = build()
            async with asyncio.timeout(budget):
                result = await self._handler.execute(request.context_id, command, _options(request))
        except tuple(e for e, _, _ in STATUS) as exc:
            for kind, code, outcome in STATUS:
                if isinstance(exc, kind):
                    COMMANDS.labels(name, outcome).inc()
                    await context.abort(code, str(exc) or "deadline exceeded")
            raise
        COMMANDS.labels(name, "duplicate" if result.duplicate else "ok").inc()
        LATENCY.labels(name).observe(time.perf_counter() - started)
        return wrap(_result(result))

    async def CreateContext(self, request: pb.CreateContextRequest, context: Any) -> Any:
        return await self._run(
            "CreateContext",
            request,
            context,
            lambda: m.CreateContext(
                request.title, request.description, request.options.actor, list(request.tags)
            ),
            lambda r: pb.CreateContextResponse(result=r),
        )

    async def AddDecision(self, request: pb.AddDecisionRequest, context: Any) -> Any:
        return await self._run(
            "AddDecision",
            request,
            context,
            lambda: m.AddDecision(
                request.decision_id,
                request.title,
                request.body,
                request.rationale,
                request.options.actor,
                list(request.affects),
            ),
            lambda r: pb.AddDecisionResponse(result=r),
        )

    async def ReviseDecision(self, request: pb.ReviseDecisionRequest, context: Any) -> Any:
        return await self._run(
            "ReviseDecision",
            request,
            context,
            lambda: m.ReviseDecision(
                request.decision_id,
                request.title,
                request.body,
                request.rationale,
                request.options.actor,
            ),
            lambda r: pb.ReviseDecisionResponse(result=r),
        )

    async def SupersedeDecision(self, request: pb.SupersedeDecisionRequest, context: Any) -> Any:
        return await self._run(
            "SupersedeDecision",
            request,
            context,
            lambda: m.SupersedeDecision(request.decision_id, request.superseded_by, request.reason),
            lambda r: pb.SupersedeDecisionResponse(result=r),
        )

    async def AddSubtask(self, request: pb.AddSubtaskRequest, context: Any) -> Any:
        return await self._run(
            "AddSubtask",
            request,
            context,
            lambda: m.AddSubtask(
                request.subtask_id, request.title, request.description, request.assignee
            ),
            lambda r: pb.AddSubtaskResponse(result=r),
        )

    async def UpdateSubtask(self, request: pb.UpdateSubtaskRequest, context: Any) -> Any:
        return await self._run(
            "UpdateSubtask",
            request,
            context,
            lambda: m.UpdateSubtask(
                request.subtask_id,
                request.status or None,
                request.assignee if request.HasField("assignee") else None,
                request.progress if request.HasField("progress") else None,
            ),
            lambda r: pb.UpdateSubtaskResponse(result=r),
        )

    async def LinkDependency(self, request: pb.LinkDependencyRequest, context: Any) -> Any:
        return await self._run(
            "LinkDependency",
            request,
            context,
            lambda: m.LinkDependency(request.from_id, request.to_id),
            lambda r: pb.LinkDependencyResponse(result=r),
        )

    async def CloseContext(self, request: pb.CloseContextRequest, context: Any) -> Any:
        return await self._run(
            "CloseContext",
            request,
            context,
            lambda: m.CloseContext(request.reason, request.options.actor),
            lambda r: pb.CloseContextResponse(result=r),
        )
