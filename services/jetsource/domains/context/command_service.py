"""gRPC ContextCommandService: requests -> commands. Errors are raised as they are and
answered by the server's interceptor (``jetsource.core.grpcserver``): the types this
service adds are registered with it below."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

from jetsource._gen.context.v1 import commands_pb2 as pb
from jetsource._gen.context.v1 import commands_pb2_grpc as pb_grpc
from jetsource.archive.objectstore import ObjectStoreError
from jetsource.archive.segment import SegmentError
from jetsource.core import deadline, telemetry
from jetsource.core.clock import now_ns
from jetsource.core.envelope import AppendResult
from jetsource.core.errors import (
    ConcurrencyError,
    CorruptEventError,
    EventStoreUnavailableError,
    StreamMissingError,
    ValidationError,
)
from jetsource.core.grpcserver import RpcError, answer_within, register_error, version_conflict
from jetsource.domains.context import model as m
from jetsource.domains.context.commands import (
    MAX_KEY,
    CommandHandler,
    CommandOptions,
    ContextTooLargeError,
    ExpectedVersionMismatchError,
    RetriesExhaustedError,
)
from jetsource.domains.context.model import DomainError
from jetsource.eventstore.horizon import BeyondHorizonError

COMMANDS = Counter(
    "jetsource_publisher_commands_total", "Commands by type and outcome", ["command", "outcome"]
)
LATENCY = Histogram(
    "jetsource_publisher_command_seconds",
    "Command latency",
    ["command"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


SERVICE = pb.DESCRIPTOR.services_by_name["ContextCommandService"].full_name

# Every string of CommandOptions and its limit (characters); refused naming its path,
# as is a control character in any of them (each is one line: ids, a name).
OPTION_LIMITS = {
    "idempotency_key": MAX_KEY,
    "correlation_id": MAX_KEY,
    "causation_id": MAX_KEY,
    "actor": m.MAX_NAME,
}


def _options(request: Any) -> CommandOptions:
    o = request.options
    if not o.idempotency_key.strip():
        raise ValidationError(
            "options.idempotency_key is required", field="options.idempotency_key"
        )
    for name, limit in OPTION_LIMITS.items():
        value = getattr(o, name)
        if len(value) > limit:
            raise ValidationError(
                f"options.{name} is {len(value)} characters; at most {limit}",
                field=f"options.{name}",
            )
        m.one_line(value, f"options.{name}")
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


# Exception -> metric outcome (the status code comes from the interceptor's mapping).
OUTCOMES: list[tuple[type[BaseException], str]] = [
    (ValidationError, "invalid"),
    (DomainError, "refused"),
    (ExpectedVersionMismatchError, "conflict"),
    (ConcurrencyError, "conflict"),
    (RetriesExhaustedError, "conflict"),
    (CorruptEventError, "data_loss"),
    (SegmentError, "data_loss"),
    (BeyondHorizonError, "refused"),
    (ObjectStoreError, "unavailable"),
    (EventStoreUnavailableError, "unavailable"),
    (StreamMissingError, "unavailable"),
    (TimeoutError, "deadline"),
]

# The labelled children, made once per (command, outcome): ``labels()`` takes a lock
# and builds its key on every call.
_COUNTED: dict[tuple[str, str], Any] = {}
_TIMED: dict[str, Any] = {}


def _count(name: str, outcome: str) -> None:
    child = _COUNTED.get((name, outcome))
    if child is None:
        child = _COUNTED[(name, outcome)] = COMMANDS.labels(name, outcome)
    child.inc()


def _time(name: str, seconds: float) -> None:
    child = _TIMED.get(name)
    if child is None:
        child = _TIMED[name] = LATENCY.labels(name)
    child.observe(seconds)


def _too_large(exc: BaseException) -> RpcError:
    """FAILED_PRECONDITION, not RESOURCE_EXHAUSTED: clients retry that one, and the
    same command sent again can never fit."""
    assert isinstance(exc, ContextTooLargeError)
    return RpcError(
        grpc.StatusCode.FAILED_PRECONDITION,
        str(exc),
        reason="CONTEXT_TOO_LARGE",
        metadata={
            "context_bytes": str(exc.size),
            "context_bytes_after": str(exc.after),
            "max_context_bytes": str(exc.cap),
        },
    )


# (Before DomainError, which it is: registered types are tried in order.)
register_error(ContextTooLargeError, mapper=_too_large)
register_error(DomainError, grpc.StatusCode.FAILED_PRECONDITION)
register_error(ExpectedVersionMismatchError, mapper=version_conflict)
register_error(RetriesExhaustedError, grpc.StatusCode.ABORTED)


def _before_horizon(exc: BaseException) -> RpcError:
    """A compacted history the publisher cannot read (``JETSOURCE_ARCHIVE__READ=false``):
    as the query service answers it. It was INTERNAL."""
    assert isinstance(exc, BeyondHorizonError)
    return RpcError(
        grpc.StatusCode.FAILED_PRECONDITION,
        str(exc),
        reason="BEFORE_HORIZON",
        metadata=exc.details,
    )


def _archive_damaged(exc: BaseException) -> RpcError:
    return RpcError(grpc.StatusCode.DATA_LOSS, f"archive: {exc}", reason="ARCHIVE_DAMAGED")


def _archive_away(exc: BaseException) -> RpcError:
    return RpcError(grpc.StatusCode.UNAVAILABLE, f"archive unavailable: {exc}")


# The archive, read for a compacted history: answered as the query service answers.
register_error(BeyondHorizonError, mapper=_before_horizon)
register_error(SegmentError, mapper=_archive_damaged)
register_error(ObjectStoreError, mapper=_archive_away)


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
        budget = answer_within(context.time_remaining(), self._default_deadline)
        try:
            with telemetry.rpc_span(SERVICE, name, context) as span:
                if span is not None:
                    span.set_attribute("jetsource.aggregate_id", request.context_id)
                options = _options(request)
                command = build()
                # The deadline is said to the store too: a publish's wait for its
                # acknowledgement ends before it and names why none came (it ended in
                # the wait, answered a bare DEADLINE_EXCEEDED).
                with deadline.within(budget):
                    async with asyncio.timeout(budget):
                        result = await self._handler.execute(request.context_id, command, options)
        except Exception as exc:
            outcome = next((o for kind, o in OUTCOMES if isinstance(exc, kind)), "error")
            _count(name, outcome)
            raise
        _count(name, "duplicate" if result.duplicate else "ok")
        _time(name, time.perf_counter() - started)
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
            lambda: m.CloseContext(request.reason, request.options.actor, closed_at_ns=now_ns()),
            lambda r: pb.CloseContextResponse(result=r),
        )
