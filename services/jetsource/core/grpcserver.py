"""What every gRPC service of jetsource starts the same way: a grpc.aio server with
health (SERVING once started) and reflection, TLS (optionally mutual), bearer tokens,
a per-client bound on calls in flight, and a stop signal from SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, cast, overload

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_status import rpc_status  # type: ignore[import-untyped]
from prometheus_client import Counter

from jetsource.core.aio import wait_for
from jetsource.core.errors import (
    ConcurrencyError,
    CorruptEventError,
    DeadlineCutError,
    EventStoreUnavailableError,
    ListenError,
    StreamMissingError,
    ValidationError,
)
from jetsource.core.settings import GrpcServerSettings, JetsourceSettings, env_var

# The health name a liveness probe asks: SERVING while the process answers at all. The
# overall name ("") and the service's own follow whether it can do its work (the write
# health of the publisher and the observer): readiness takes a replica that cannot
# write out of its Service, and a liveness probe on that name restarted every replica
# of a NATS outage longer than its failure budget, which restarting does not cure.
LIVENESS = "liveness"

HEALTH_PREFIX = f"/{health.SERVICE_NAME}/"
ERROR_DOMAIN = "jetsource"
log = logging.getLogger("jetsource.grpc")


# -- errors -> status codes, in one place -----------------------------------------------


class RpcError(Exception):
    """An answer that is not OK, raised anywhere below a handler: the interceptor sends
    it as ``code`` with ``message``, and a google.rpc.Status in the trailers with a
    BadRequest (``violations``: field path -> description) and an ErrorInfo (``reason``
    and ``metadata``) when given."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field: str | None = None,
        violations: Sequence[tuple[str, str]] = (),
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        message = cap(message, MAX_MESSAGE)
        super().__init__(message)
        self.code = code
        self.message = message
        found = [(f, cap(d, MAX_DESCRIPTION)) for f, d in violations]
        if field and not found:
            found = [(field, message)]
        self.violations = found
        self.reason = reason
        self.metadata = {k: cap(v, MAX_DESCRIPTION) for k, v in (metadata or {}).items()}


# A status travels in the trailers, which a client refuses past 16 KB (gRPC's default
# hard limit: RESOURCE_EXHAUSTED "received metadata size exceeds hard limit" instead of
# the answer). The message is sent twice (grpc-message and the Status in
# grpc-status-details-bin), so a message that repeats a long input is cut here, for
# every service.
MAX_MESSAGE = 1024
MAX_DESCRIPTION = 512


def cap(text: str, limit: int) -> str:
    """``text``, cut to at most ``limit`` characters with a note of what was cut."""
    if len(text) <= limit:
        return text
    kept = limit - 40  # the note takes at most 34
    return f"{text[:kept]}... ({len(text) - kept:,} characters cut)"


@overload
def answer_within(remaining: float | None, default: float) -> float: ...
@overload
def answer_within(remaining: float | None, default: None = None) -> float | None: ...
def answer_within(remaining: float | None, default: float | None = None) -> float | None:
    """How long a handler may work on a call with ``remaining`` seconds to its deadline
    (``context.time_remaining()``; None: no deadline, ``default``): a tenth of it, at
    most 0.1 s, is kept to answer DEADLINE_EXCEEDED itself. Bounded by the deadline
    itself, grpc's own cancel at the deadline won the race about one call in five, and
    the call was counted as one the client cancelled (not an error) or not at all."""
    if remaining is None:
        return default
    return max(remaining - min(0.1, remaining / 10), 0.0)


def call_outcome(exc: BaseException, error: RpcError | None) -> str:
    """The ``outcome`` label of a failed call in a service's request counter: the gRPC
    code it is answered with, or ``cancelled`` when the client cancelled it or its
    deadline passed (the call's task is cancelled: no fault of the service, so not an
    ``error`` in the error ratio)."""
    if error is not None:
        return str(error.code.name).lower()
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "error"


def status_details(error: RpcError) -> status_pb2.Status:
    """The google.rpc.Status sent in the ``grpc-status-details-bin`` trailer."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    if error.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        status.details.append(packed)
    if error.reason or error.metadata:
        info = error_details_pb2.ErrorInfo(
            reason=error.reason or error.code.name,
            domain=ERROR_DOMAIN,
            metadata=error.metadata,
        )
        packed = any_pb2.Any()
        packed.Pack(info)
        status.details.append(packed)
    return status


# Trailing metadata that tells a client's gRPC retry policy not to send the call again
# (gRPC A6 server pushback: a negative value).
NO_RETRY = ("grpc-retry-pushback-ms", "-1")


async def abort(
    context: grpc.aio.ServicerContext, error: RpcError, *, no_retry: bool = False
) -> NoReturn:
    """Answer ``error`` with its rich details in the trailers; ``no_retry``: and ask the
    client's retry policy not to send the call again."""
    status = rpc_status.to_status(status_details(error))
    trailers = tuple(status.trailing_metadata) + ((NO_RETRY,) if no_retry else ())
    await context.abort(status.code, status.details, trailers)
    raise AssertionError("abort returned")  # pragma: no cover


def retry_is_futile(
    error: RpcError, context: grpc.aio.ServicerContext, started: float | None
) -> bool:
    """An UNAVAILABLE answer whose call has less time left to its deadline than it took:
    the clients send UNAVAILABLE again within the deadline (``jetsource.client``), and
    another attempt as long (a NATS cluster that lost quorum, each attempt waiting out
    the stream's acknowledgement) ended in the deadline: the caller got a bare
    DEADLINE_EXCEEDED instead of this answer naming the cause."""
    if error.code is not grpc.StatusCode.UNAVAILABLE or started is None:
        return False
    remaining = context.time_remaining()
    return remaining is not None and remaining < time.monotonic() - started


# Exception types the services register (DomainError, ...), most specific first; each
# maps to a code and, optionally, a function giving the RpcError itself.
_Mapper = Callable[[BaseException], RpcError]
_REGISTERED: list[tuple[type[BaseException], _Mapper]] = []


def register_error(
    kind: type[BaseException],
    code: grpc.StatusCode | None = None,
    mapper: _Mapper | None = None,
) -> None:
    """Map exceptions of ``kind`` (raised by any handler) to ``code`` with their message,
    or to what ``mapper`` makes of them. Registered types are tried before the built-in
    ones, in registration order."""
    if mapper is None:
        if code is None:
            raise ValueError("give a code or a mapper")
        fixed = code

        def mapper(exc: BaseException) -> RpcError:
            return RpcError(fixed, str(exc) or fixed.name.lower().replace("_", " "))

    _REGISTERED[:] = [(k, m) for k, m in _REGISTERED if k is not kind]
    _REGISTERED.append((kind, mapper))


def validation_error(exc: BaseException) -> RpcError:
    field = getattr(exc, "field", None)
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(exc), field=field)


def version_conflict(exc: BaseException) -> RpcError:
    """ABORTED naming the current version, also as ErrorInfo metadata."""
    actual = getattr(exc, "actual", None)
    return RpcError(
        grpc.StatusCode.ABORTED,
        str(exc),
        reason="VERSION_MISMATCH",
        metadata={"current_version": str(actual)} if actual is not None else {},
    )


def corrupt_event(exc: BaseException) -> RpcError:
    seq = getattr(exc, "stream_seq", None)
    cid = getattr(exc, "aggregate_id", "")
    return RpcError(
        grpc.StatusCode.DATA_LOSS,
        str(exc),
        reason="CORRUPT_EVENT",
        metadata={"context_id": str(cid), "stream_sequence": str(seq)},
    )


_BUILT_IN: list[tuple[type[BaseException], _Mapper]] = [
    (RpcError, lambda exc: exc if isinstance(exc, RpcError) else _internal(exc)),
    (CorruptEventError, corrupt_event),
    (ValidationError, validation_error),
    (ConcurrencyError, version_conflict),
    (
        EventStoreUnavailableError,
        lambda exc: RpcError(grpc.StatusCode.UNAVAILABLE, f"event store unavailable: {exc}"),
    ),
    (
        StreamMissingError,
        lambda exc: RpcError(grpc.StatusCode.UNAVAILABLE, f"event store unavailable: {exc}"),
    ),
    (
        DeadlineCutError,
        lambda exc: RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded: {exc}"),
    ),
    (
        TimeoutError,
        lambda exc: RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"),
    ),
]


def _internal(exc: BaseException) -> RpcError:
    return RpcError(
        grpc.StatusCode.INTERNAL,
        "internal error: the server failed to answer this request; it was logged",
    )


def to_rpc_error(exc: BaseException) -> RpcError:
    """What a handler's exception is answered with (INTERNAL when nothing maps it)."""
    for kind, mapper in (*_REGISTERED, *_BUILT_IN):
        if isinstance(exc, kind):
            return mapper(exc)
    return _internal(exc)


async def answer_error(
    context: grpc.aio.ServicerContext,
    method: str,
    exc: BaseException,
    started: float | None = None,
) -> NoReturn:
    """Answer ``exc`` as its mapped status; ``started`` (``time.monotonic()`` when the
    call came): an UNAVAILABLE that left too little time for another attempt asks the
    client not to make one (:func:`retry_is_futile`)."""
    error = to_rpc_error(exc)
    if error.code is grpc.StatusCode.INTERNAL:
        log.error("%s failed unexpectedly", method, exc_info=exc)
    elif error.code is grpc.StatusCode.DATA_LOSS:
        log.warning("%s: %s", method, error.message)
    await abort(context, error, no_retry=retry_is_futile(error, context, started))


def _parse(parse: Callable[[bytes], Any] | None, body: bytes) -> Any:
    if parse is None:
        return body
    try:
        return parse(body)
    except (DecodeError, ValueError, TypeError, UnicodeDecodeError, RuntimeError) as exc:
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "request body is not a valid protobuf message of this method's request type "
            "(truncated, malformed, or a string field that is not UTF-8)",
            field="request body",
        ) from exc


_PASS_THROUGH = (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit)

MESSAGE_LIMIT_SETTING = "JETSOURCE_GRPC__MAX_MESSAGE_BYTES"


def answer_too_large(method: str, request: Any, size: int, limit: int) -> RpcError:
    """An answer (or one streamed message) of ``method`` past the message limit:
    FAILED_PRECONDITION, reason ANSWER_TOO_LARGE, naming the call, the size, the limit
    and its setting, and the request's paging field when it has one. Not the
    RESOURCE_EXHAUSTED grpc's core answers after the handler ("Sent message larger
    than max", naming nothing): clients retry that code, and asking again cannot help."""
    name = method.rsplit("/", 1)[-1]
    fields = getattr(getattr(request, "DESCRIPTOR", None), "fields_by_name", {})
    if "page_size" in fields:
        hint = "ask for a smaller page_size, or "
    elif depth := next((f for f in ("depth", "max_depth") if f in fields), ""):
        hint = f"ask for fewer levels ({depth}), or "
    else:
        hint = ""
    return RpcError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"{name}: the answer is {size:,} bytes encoded, past the {limit:,}-byte message "
        f"limit (grpc.max_message_bytes, {MESSAGE_LIMIT_SETTING}); {hint}raise that "
        "setting on the server (jetsource's clients take any size it sends)",
        reason="ANSWER_TOO_LARGE",
        metadata={"method": method, "answer_bytes": str(size), "max_message_bytes": str(limit)},
    )


def _discarded(context: grpc.aio.ServicerContext) -> bool:
    """Whether the handler set a status other than OK (``context.set_code``): grpc then
    sends that status and discards the answer, whatever it is (None included)."""
    code = context.code()
    return code is not None and code is not grpc.StatusCode.OK


def _sizer(
    guard: Guard, serialize: Callable[[Any], bytes] | None, method: str, limit: int
) -> Callable[[Any, Any, grpc.aio.ServicerContext], bytes]:
    """Encode a handler's answer here (grpc is then given bytes), refused by
    :func:`answer_too_large` past ``limit`` (0: no limit), counted and logged by the
    guard (``answer_too_large``). An answer grpc discards (a status set with
    ``context.set_code``) is neither encoded nor measured: the status is answered, as
    grpc answered it when it encoded. Checked only on the paths where it changes
    something (an answer that does not encode, or past the limit), not per call."""

    def encoded(answer: Any, request: Any, context: grpc.aio.ServicerContext) -> bytes:
        try:
            body: bytes = answer if serialize is None else serialize(answer)
        except TypeError:
            if _discarded(context):
                return b""
            raise
        if limit and len(body) > limit:
            if _discarded(context):
                return b""
            guard.refused(
                ANSWER_TOO_LARGE,
                context,
                method,
                f"the answer is {len(body):,} bytes encoded, past the {limit:,}-byte "
                f"message limit ({MESSAGE_LIMIT_SETTING})",
            )
            raise answer_too_large(method, request, len(body), limit)
        return body

    return encoded


@dataclass
class GrpcEndpoint:
    """A started server, its bound port (the target may ask for port 0), its health,
    and the plain-text health-only server when one was asked for."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    health_server: grpc.aio.Server | None = None
    health_port: int = 0

    async def stop(self, grace: float) -> None:
        """Stop within ``grace`` plus a bound: grpc's aio server can wait for good on a
        call its core already dropped (seen once in CI after a call whose 0.1 ms
        deadline passed while it arrived), and a service that never stops is worse
        than one that stops with a warning."""
        await self.health.enter_graceful_shutdown()
        await _bounded(self.server, grace)
        if self.health_server is not None:
            await _bounded(self.health_server, 0)


STOP_MARGIN_S = 5.0


async def _bounded(server: grpc.aio.Server, grace: float) -> None:
    try:
        await wait_for(server.stop(grace), (grace or 0) + STOP_MARGIN_S)
    except TimeoutError:
        log.warning(
            "grpc server did not stop within %.1f s of its %.1f s grace; left behind",
            STOP_MARGIN_S,
            grace or 0,
        )


# Calls refused before their handler ran. They were counted nowhere (a service's own
# request counters start in the handler) and logged nowhere: a client sending a wrong
# or no token, or a flood of them, showed in no metric and no line.
# Registered by the first guard (a gRPC server's): the projector and the snapshotter
# import this module (its signal handling) and serve no gRPC, so they must not export it.
_refused: Counter | None = None


def refused_counter() -> Counter:
    global _refused
    if _refused is None:
        _refused = Counter(
            "jetsource_grpc_refused_total",
            "gRPC calls refused by the guard, by service and reason (before their handler "
            "ran; answer_too_large after it)",
            ["service", "reason"],
        )
    return _refused


UNAUTHENTICATED = "unauthenticated"  # no, or no valid, bearer token
CLIENT_BUSY = "client_busy"  # max_inflight_per_client calls in flight already
OPEN_STREAMS = "open_streams"  # a quarter of max_concurrent_rpcs in watches/reflection
# An answer past grpc.max_message_bytes, refused after its handler ran (the service's
# own request counter has the call as answered).
ANSWER_TOO_LARGE = "answer_too_large"
# One warning line per reason at most this often; the lines between are counted in the
# next one (a client retrying a wrong token in a loop must not flood the log).
REFUSAL_LOG_EVERY_S = 10.0


class Guard:
    """Bearer-token check, a bound on each client's calls in flight, request parsing
    and the one place where a handler's failure becomes a status: known errors map to
    their codes (``to_rpc_error``), anything else is logged with its traceback and
    answered INTERNAL with a generic message (never UNKNOWN, never a class name).

    The health service is neither authenticated nor counted (probes call it). A client
    is identified by its token when tokens are required, else by its connection.

    It wraps each method's handler once, when the services are added to the server
    (:class:`GuardedRegistry`), not per call as a grpc.aio interceptor would: an
    interceptor costs every call a coroutine chain, closures and a new method handler,
    and grpc.aio's main loop waits on one pending call future per registered method."""

    def __init__(
        self,
        tokens: list[str],
        max_inflight: int,
        max_open: int = 0,
        service: str = "",
        max_message_bytes: int = 0,
    ) -> None:
        self._tokens = [t.encode() for t in tokens]
        # The server's grpc.max_send_message_length: an answer past it is refused here,
        # naming the call (answer_too_large), before grpc's core would (0: not checked).
        self._max_message = max_message_bytes
        self._service = service
        self._refused = {
            r: refused_counter().labels(service, r)
            for r in (UNAUTHENTICATED, CLIENT_BUSY, OPEN_STREAMS, ANSWER_TOO_LARGE)
        }
        # reason -> when its last line was logged, and refusals since not logged
        self._logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}
        self._max = max_inflight
        # client -> calls in flight; a client with none has no entry (a plain dict: a
        # Counter's missing key is a Python-level __missing__ call on every first call)
        self.inflight: dict[str, int] = {}
        # Health's Watch and reflection's streams need no token and stay open as long as
        # their client likes: counted per client (its connection without a valid token)
        # and, all together, at most ``max_open`` (0: no bound), so a client without a
        # token cannot fill the server's max_concurrent_rpcs with them.
        self._open_max = max_open
        self.open = 0

    def _client(self, context: grpc.aio.ServicerContext) -> str | None:
        """The caller's identity, or None when its token is missing or wrong."""
        if not self._tokens:
            return str(context.peer())
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                given = token.strip().encode()
                if scheme.lower() == "bearer" and any(
                    hmac.compare_digest(given, t) for t in self._tokens
                ):
                    return hashlib.sha256(given).hexdigest()[:16]
        return None

    def _admit(self, context: grpc.aio.ServicerContext) -> str | None:
        """The caller, counted in, when it may call now (no await on this path); None
        when it must be refused (``_refuse`` answers it)."""
        client = self._client(context)
        if client is None:
            return None
        inflight = self.inflight
        calls = inflight.get(client, 0)
        if calls >= self._max:
            return None
        inflight[client] = calls + 1
        return client

    def refused(
        self, reason: str, context: grpc.aio.ServicerContext, method: str, why: str = ""
    ) -> None:
        """Count a refusal and log it (at most one line per reason every
        REFUSAL_LOG_EVERY_S, naming the caller's address and never its token); ``why``
        says what was wrong where the reason alone does not."""
        self._refused[reason].inc()
        now = time.monotonic()
        last = self._logged.get(reason)
        if last is not None and now - last < REFUSAL_LOG_EVERY_S:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            return
        self._logged[reason] = now
        more = self._unlogged.pop(reason, 0)
        if not why:
            why = {
                UNAUTHENTICATED: _token_problem(context),
                CLIENT_BUSY: f"the client has {self._max} calls in flight "
                "(max_inflight_per_client)",
                OPEN_STREAMS: f"{self._open_max} health watch and reflection streams are open",
            }[reason]
        log.warning(
            "%s refused %s from %s: %s%s",
            self._service or "grpc",
            method,
            context.peer(),
            why,
            f" ({more} more refused for this reason since the last such line)" if more else "",
        )

    async def _refuse(self, context: grpc.aio.ServicerContext, method: str = "") -> NoReturn:
        if self._client(context) is None:
            self.refused(UNAUTHENTICATED, context, method)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid bearer token: send metadata 'authorization: Bearer "
                "<token>' (the jetsource CLI, TUI and clients: JETSOURCE_CLIENT__TOKEN or the "
                "secrets file jetsource_client__token; the SDK's Observer: token=)",
            )
        else:
            self.refused(CLIENT_BUSY, context, method)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this client already has {self._max} calls in flight "
                "(max_inflight_per_client); retry when some finish",
            )
        raise AssertionError("abort returned")  # pragma: no cover

    async def _enter(self, context: grpc.aio.ServicerContext, method: str = "") -> str:
        client = self._admit(context)
        if client is None:
            await self._refuse(context, method)
        return client

    def _admit_open(self, context: grpc.aio.ServicerContext) -> str | None:
        """The caller of a health Watch or reflection stream, counted in; None when it
        must be refused (no token asked)."""
        if self._open_max and self.open >= self._open_max:
            return None
        client = self._client(context) or str(context.peer())
        calls = self.inflight.get(client, 0)
        if calls >= self._max:
            return None
        self.inflight[client] = calls + 1
        self.open += 1
        return client

    async def enter_open(self, context: grpc.aio.ServicerContext, method: str = "") -> str:
        client = self._admit_open(context)
        if client is None:
            if self._open_max and self.open >= self._open_max:
                self.refused(OPEN_STREAMS, context, method)
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self._open_max} health watch and reflection streams are open on this "
                    "server (a quarter of its max_concurrent_rpcs); retry when some end",
                )
            self.refused(CLIENT_BUSY, context, method)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this client already has {self._max} calls in flight "
                "(max_inflight_per_client); retry when some finish",
            )
            raise AssertionError("abort returned")  # pragma: no cover
        return client

    def leave_open(self, client: str) -> None:
        self.open -= 1
        self._leave(client)

    def _leave(self, client: str) -> None:
        inflight = self.inflight
        calls = inflight[client] - 1
        if calls <= 0:
            del inflight[client]
        else:
            inflight[client] = calls

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` of ``method`` (``/package.Service/Method``) behind the guard; the
        health service's handlers as they are."""
        if handler is None:
            return handler
        if method.startswith(HEALTH_PREFIX):
            return _parsed_only(handler, self, method)
        # Requests arrive as bytes and are parsed here, so a body that is not valid
        # protobuf is INVALID_ARGUMENT (grpc.aio's own deserializer answers UNKNOWN).
        # Answers are encoded here as well and measured against the message limit
        # (_sizer): grpc is given bytes (no serializer of its own).
        parse = handler.request_deserializer
        sized = _sizer(self, handler.response_serializer, method, self._max_message)
        admit, refuse, enter, leave = self._admit, self._refuse, self._enter, self._leave
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(body: bytes, context: grpc.aio.ServicerContext) -> Any:
                started = time.monotonic()
                client = admit(context)
                if client is None:
                    await refuse(context, method)
                try:
                    request = _parse(parse, body)
                    return sized(await inner(request, context), request, context)
                except _PASS_THROUGH:
                    raise
                except Exception as exc:
                    await answer_error(context, method, exc, started)
                finally:
                    leave(client)

            return grpc.unary_unary_rpc_method_handler(unary, None, None)
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def streaming(
                body: bytes, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                client = await enter(context, method)
                try:
                    request = _parse(parse, body)
                    async for item in stream(request, context):
                        body = sized(item, request, context)
                        if not body and _discarded(context):
                            # A status set (context.set_code), then an answer that does
                            # not encode or is past the limit: the stream ends there with
                            # that status (no empty message in its place).
                            return
                        yield body
                except _PASS_THROUGH:
                    raise
                except Exception as exc:
                    await answer_error(context, method, exc)
                finally:
                    leave(client)

            return grpc.unary_stream_rpc_method_handler(streaming, None, None)
        if handler.stream_unary is not None:
            gather = handler.stream_unary

            async def client_streaming(
                bodies: AsyncIterator[bytes], context: grpc.aio.ServicerContext
            ) -> Any:
                client = await enter(context, method)

                async def requests() -> AsyncIterator[Any]:
                    async for body in bodies:
                        yield _parse(parse, body)

                try:
                    return sized(await gather(requests(), context), None, context)
                except _PASS_THROUGH:
                    raise
                except Exception as exc:
                    await answer_error(context, method, exc)
                finally:
                    leave(client)

            return grpc.stream_unary_rpc_method_handler(client_streaming, None, None)
        # Bidi-streaming: only reflection (open, as health is: neither authenticated
        # nor counted), its bodies parsed here as well.
        return _parsed_only(handler, self, method)


def _token_problem(context: grpc.aio.ServicerContext) -> str:
    """Why a call's token was refused, for the log (never the token itself)."""
    values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
    if not values:
        return "no authorization metadata"
    # The scheme is not shown: a client sending its bare token would have it logged.
    if str(values[0]).partition(" ")[0].lower() != "bearer":
        return "authorization is not of the form 'Bearer <token>'"
    return "a bearer token that matches none of JETSOURCE_GRPC__AUTH_TOKENS"


async def _parsed_or_refused(
    context: grpc.aio.ServicerContext, parse: Callable[[bytes], Any], body: bytes
) -> Any:
    try:
        return _parse(parse, body)
    except RpcError as error:
        await abort(context, error)


def _parsed_only(
    handler: grpc.RpcMethodHandler, guard: Guard, method: str = ""
) -> grpc.RpcMethodHandler:
    """``handler`` (health, reflection) with its request bodies parsed here, and its
    streams counted by ``guard`` (no token asked): grpc.aio's own deserializer answers
    a body that is not protobuf (or a string that is not UTF-8) UNKNOWN naming the
    exception, with a traceback in the log; here it is INVALID_ARGUMENT naming the
    request body."""
    parse = handler.request_deserializer
    if parse is None:
        return handler
    enter, leave = guard.enter_open, guard.leave_open
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        unary_inner = handler.unary_unary

        async def unary(body: bytes, context: grpc.aio.ServicerContext) -> Any:
            return await unary_inner(await _parsed_or_refused(context, parse, body), context)

        return grpc.unary_unary_rpc_method_handler(unary, None, serialize)
    if handler.unary_stream is not None:
        stream_inner = handler.unary_stream
        if inspect.isasyncgenfunction(stream_inner):

            async def yielding(body: bytes, context: grpc.aio.ServicerContext) -> Any:
                request = await _parsed_or_refused(context, parse, body)
                client = await enter(context, method)
                try:
                    async for item in stream_inner(request, context):
                        yield item
                finally:
                    leave(client)

            return grpc.unary_stream_rpc_method_handler(yielding, None, serialize)

        async def writing(body: bytes, context: grpc.aio.ServicerContext) -> None:
            # A handler that sends with context.write (health's Watch), not by yielding.
            request = await _parsed_or_refused(context, parse, body)
            client = await enter(context, method)
            try:
                await stream_inner(request, context)
            finally:
                leave(client)

        return grpc.unary_stream_rpc_method_handler(writing, None, serialize)
    if handler.stream_stream is not None:
        bidi_inner = handler.stream_stream

        async def bidi(bodies: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            async def requests() -> AsyncIterator[Any]:
                async for body in bodies:
                    yield _parse(parse, body)

            client = await enter(context, method)
            try:
                async for item in bidi_inner(requests(), context):
                    yield item
            except RpcError as error:
                await abort(context, error)
            finally:
                leave(client)

        return grpc.stream_stream_rpc_method_handler(bidi, None, serialize)
    return handler


class _GuardedHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A service's generic handler with each method's handler guarded, wrapped the
    first time the method is called and reused after (the handler a generated
    servicer's generic handler returns for a method is always the same object)."""

    def __init__(self, inner: grpc.GenericRpcHandler, guard: Guard) -> None:
        self._inner = inner
        self._guard = guard
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = str(details.method)
        handler = self._inner.service(details)
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        if handler is None:
            return None
        wrapped = self._guard.wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class GuardedRegistry:
    """What a generated ``add_<Service>Servicer_to_server`` (and reflection) is given
    in place of the server: their handlers reach the server guarded, as generic
    handlers only. A generated function also registers its methods with the core
    ("registered methods"); grpc.aio then keeps one pending call future per
    registered method and waits on all of them for every call. Generic handlers
    are found by one dict look-up per call, with one pending future in all."""

    def __init__(self, server: grpc.aio.Server, guard: Guard) -> None:
        self._server = server
        self._guard = guard

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_GuardedHandler(h, self._guard) for h in handlers)
        )

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        """Not registered: the generic handler added with them serves these methods."""


def _read(path: Any) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def server_credentials(settings: GrpcServerSettings) -> grpc.ServerCredentials | None:
    tls = settings.tls
    if not tls.active:
        return None
    if tls.key_file is None:
        raise ValueError("grpc.tls.key_file is required with grpc.tls.cert_file")
    return grpc.ssl_server_credentials(
        [(_read(tls.key_file), _read(tls.cert_file))],
        root_certificates=_read(tls.client_ca_file) if tls.client_ca_file else None,
        require_client_auth=tls.client_ca_file is not None,
    )


async def start_grpc(
    add_servicer: Callable[[grpc.aio.Server], None],
    service_name: str,
    target: str,
    max_concurrent_rpcs: int,
    security: GrpcServerSettings | None = None,
    share_port: bool = False,
    port_setting: str | None = None,
) -> GrpcEndpoint:
    """Start a service's gRPC server (and its separate health port, if set).

    grpc turns SO_REUSEPORT on by default, so a second process on a port in use binds
    it silently and takes half its connections. Off here: a port in use is a clear
    :class:`ListenError` naming the setting that moves it (``port_setting``, e.g.
    ``JETSOURCE_QUERY__GRPC_PORT``; ``JETSOURCE_GRPC__HEALTH_PORT`` for the health
    port); ``share_port`` turns it on for the workers of one service
    (``publisher.workers``), which share their port on purpose."""
    s = security or GrpcServerSettings()
    tokens = [t.get_secret_value() for t in s.auth_tokens if t.get_secret_value()]
    options = [
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.so_reuseport", 1 if share_port else 0),
    ]
    server = grpc.aio.server(maximum_concurrent_rpcs=max_concurrent_rpcs, options=options)
    # Open health watches and reflection streams (no token asked): at most a quarter
    # of the calls the server takes, so they never crowd out the service's own.
    max_open = max(1, max_concurrent_rpcs // 4)
    registry = GuardedRegistry(
        server,
        Guard(tokens, s.max_inflight_per_client, max_open, service_name, s.max_message_bytes),
    )
    add_servicer(cast(grpc.aio.Server, registry))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registry)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(
            [service_name, health.SERVICE_NAME, reflection.SERVICE_NAME]
        ),
        registry,
    )
    credentials = server_credentials(s)
    port = _listen(
        service_name,
        target,
        lambda: (
            server.add_insecure_port(target)
            if credentials is None
            else server.add_secure_port(target, credentials)
        ),
        port_setting,
    )
    health_server = None
    health_port = 0
    if s.health_port:
        health_server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if share_port else 0)])
        health_pb2_grpc.add_HealthServicer_to_server(
            health_servicer,
            cast(
                grpc.aio.Server,
                GuardedRegistry(
                    health_server,
                    Guard([], s.max_inflight_per_client, max_open, f"{service_name} health"),
                ),
            ),
        )
        host = target.rsplit(":", 1)[0]
        health_target = f"{host}:{s.health_port}"
        health_port = _listen(
            f"{service_name} health",
            health_target,
            lambda: health_server.add_insecure_port(health_target),
            HEALTH_PORT_SETTING,
        )
        await health_server.start()
    await server.start()
    for name in ("", service_name, LIVENESS):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return GrpcEndpoint(server, port, health_servicer, health_server, health_port)


HEALTH_PORT_SETTING = env_var(JetsourceSettings, "grpc", "health_port")


def _listen(what: str, target: str, bind: Callable[[], int], setting: str | None) -> int:
    try:
        return bind()
    except RuntimeError as exc:  # grpc's "Failed to bind to address ..."
        raise ListenError(
            what,
            target,
            "the address is in use by another process or is not this host's",
            setting,
        ) from exc


# Set when SIGTERM or SIGINT came while the service was still starting (the handler
# jetsource.core.runner installs until stop_on_signals replaces it).
stop_requested = False


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (set already when one came while starting)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if stop_requested:
        stop.set()
    return stop
