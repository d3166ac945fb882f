"""The ingress's HTTP application (FastAPI): webhooks in, reads out.

- ``GET /webhooks/whatsapp/{instance}``: Meta's verification handshake;
- ``POST /webhooks/whatsapp/{instance}`` (WhatsApp Cloud API and Evolution API),
  ``POST /webhooks/whatsapp/{instance}/{event}`` (Evolution API's "Webhook by Events":
  the event's name appended, ``/messages-upsert``; no route for a segment that is no
  event name, nor on an instance of another format) and
  ``POST /webhooks/discord/{instance}`` (the forwarding bot, or Discord's interactions
  on an ``interactions`` instance): see intake.py;
- ``/api/v1/...``: the OmniQueryService reads as JSON, and processing status updates;
- ``/healthz`` and ``/readyz`` (see :class:`Health`), ``/metrics``, ``/openapi.json``,
  ``/docs``.

Webhooks are counted and timed by provider (``jetsource_omni_webhooks_total``,
``jetsource_omni_webhook_seconds``); every other request to the API (``/api/v1/`` and
the WhatsApp handshake) by route template, HTTP method and status
(``jetsource_omni_api_requests_total``, ``jetsource_omni_api_seconds``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from jetsource.core.aio import wait_for
from jetsource.core.clock import parse_time_ns
from jetsource.core.errors import (
    ConcurrencyError,
    CorruptEventError,
    EventStoreUnavailableError,
    JetsourceError,
    StreamMissingError,
    ValidationError,
)
from jetsource.domains.omni import signatures
from jetsource.domains.omni.intake import Intake, WebhookRequest
from jetsource.domains.omni.processing import (
    EventNotFoundError,
    StatusTransitionError,
    record_status,
)
from jetsource.domains.omni.raw import RawRecordCorruptError
from jetsource.domains.omni.reads import (
    Filters,
    NotFoundError,
    NotYetVisibleError,
    OmniReads,
    shown,
)
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.ingest.transport import BodyDeadline, BodyTimeout
from jetsource.projection.contract import TransientError

log = logging.getLogger("jetsource.ingest")

WEBHOOKS = Counter(
    "jetsource_omni_webhooks_total",
    "Webhook requests by provider, instance and HTTP status",
    ["provider", "instance", "status"],
)
WEBHOOK_SECONDS = Histogram(
    "jetsource_omni_webhook_seconds",
    "Time from a webhook's body read to its answer (archived and stored)",
    ["provider"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
API_REQUESTS = Counter(
    "jetsource_omni_api_requests_total",
    "REST requests (/api/v1/ and the WhatsApp handshake; webhooks have their own) by "
    "route template, HTTP method and status",
    ["route", "method", "status"],
)
API_SECONDS = Histogram(
    "jetsource_omni_api_seconds",
    "REST request latency (/api/v1/, the WhatsApp handshake) by route template, method",
    ["route", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
# Requests to a path no route has (scanners, typos) are counted under this route.
UNMATCHED = "(unmatched)"
# The ``method`` label of the REST metrics: these, any other method counted as "other".
HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
OTHER_METHOD = "other"
EVENT_TYPES = ("message", "reaction", "edit", "delete", "status", "presence", "protocol", "system")
DIRECTIONS = ("inbound", "outbound", "system")
HANDSHAKE_PARAMS = ("hub.mode", "hub.verify_token", "hub.challenge")
# An Evolution API event's name as its "Webhook by Events" appends it to the URL
# (MESSAGES_UPSERT -> messages-upsert).
_EVENT_SEGMENT = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+){0,7}")


def as_json(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def raw_json(message: Message) -> dict[str, Any]:
    """A raw payload as JSON: the body base64 as protobuf's JSON has it, and as text
    when it is UTF-8."""
    out = as_json(message)
    body = getattr(message, "body", b"")
    with contextlib.suppress(UnicodeDecodeError):
        out["body_text"] = body.decode()
    out.setdefault("body", base64.b64encode(body).decode())
    return out


def _error(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if field:
        error["field"] = field
    return JSONResponse({"error": error}, status_code=status)


_WHERE = ("body", "query", "path", "header", "cookie")


def _json_media(content_type: str) -> bool:
    """Whether FastAPI reads a body of this ``Content-Type`` as JSON."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def malformed_answer(exc: RequestValidationError, content_type: str | None = None) -> JSONResponse:
    """422 for a request FastAPI could not read into the route's parameters (a query
    parameter that is no number, a body that is no JSON object), naming the field by
    its path ("attempt", "page_size"; "body" for the body as a whole, and for a body
    that is not JSON), in the answer's ``error`` like every other refusal, and
    FastAPI's ``detail`` list beside it without the offending input: FastAPI's own
    answer echoed it, and a body that is not UTF-8 could not be put in JSON, a 500.
    A body sent with a ``Content-Type`` that is not JSON (curl's ``-d`` sends a form
    type), or with none, is not read as JSON at all: 415 naming ``content-type`` (it
    was 422 "body: Input should be a valid dictionary", for a JSON object)."""
    detail = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ())]
        detail.append({"type": str(e.get("type", "")), "loc": loc, "msg": str(e.get("msg", ""))})
    first = detail[0] if detail else {"type": "", "loc": ["body"], "msg": "invalid request"}
    if first["loc"] == ["body"] and not _json_media(content_type or ""):
        came = f"it came as {content_type[:100]!r}" if content_type else "it came with none"
        message = f"the body is read as JSON: send it with Content-Type: application/json ({came})"
        error = {"code": "unsupported_media_type", "message": message, "field": "content-type"}
        return JSONResponse({"error": error, "detail": detail}, status_code=415)
    if first["type"] == "json_invalid":
        # loc is ("body", <offset of the error>): the body is not JSON; name it.
        errors = exc.errors()
        ctx = (errors[0].get("ctx") or {}) if errors else {}
        why = str(ctx.get("error", "")) or first["msg"]
        at = f" (at offset {first['loc'][1]})" if len(first["loc"]) > 1 else ""
        error = {"code": "invalid_argument", "message": f"body is not JSON: {why}{at}"}
        return JSONResponse({"error": {**error, "field": "body"}, "detail": detail}, 422)
    path = [p for p in first["loc"] if p not in _WHERE] if first["loc"] else []
    field = ".".join(path) or "body"
    error = {"code": "invalid_argument", "message": f"{field}: {first['msg']}", "field": field}
    return JSONResponse({"error": error, "detail": detail}, status_code=422)


_HTTP_CODES = {
    400: "invalid_argument",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def _unreadable(cause: BaseException | None) -> str:
    """Why a JSON body FastAPI could not read was not read, from what its parse raised."""
    if isinstance(cause, RecursionError):
        return "body is not JSON this service reads: nested too deep"
    if isinstance(cause, ValueError) and not isinstance(cause, UnicodeError):
        # int() past sys.get_int_max_str_digits(): "Exceeds the limit (4300 digits) ...".
        return "body is not JSON this service reads: an integer of more digits than it takes"
    return "body could not be read: send JSON encoded as UTF-8"


def http_error_answer(request: Request, exc: HTTPException) -> JSONResponse:
    """The framework's own refusals (no route, a method the route has not, a body it
    could not read) in the documented shape ``{"error": {"code", "message", "field"}}``
    instead of FastAPI's ``{"detail": ...}``; its headers (``Allow``) kept."""
    status = exc.status_code
    field: str | None = None
    headers = dict(exc.headers or {})
    if status == 404:
        # The path shown escaped (a %1b or %E2%80%AE in it is the character itself).
        message = f"no route {request.method} {shown(request.url.path[:200])}"
        field = "path"
    elif status == 405:
        # Every route of this path, not only the first one Starlette matched (which
        # said "Allow: POST" for the WhatsApp webhook, that takes GET too), and named
        # in the message (it looked the header up as "allow": "allowed: )").
        allowed = ", ".join(_methods_of(request))
        headers = {"Allow": allowed}
        message = (
            f"{request.method} is not allowed on {shown(request.url.path[:200])} "
            f"(allowed: {allowed})"
        )
        field = "method"
    elif status == 408:
        message = str(exc.detail)[:500]
        field = "body"
    elif status == 400:
        # FastAPI's "There was an error parsing the body", raised from what reading the
        # JSON raised: a body that is not UTF-8, nested past the parser's recursion, or
        # an integer int() does not take (all three said "send JSON encoded as UTF-8").
        message = _unreadable(exc.__cause__)
        field = "body"
    else:
        message = str(exc.detail)[:500]
    response = _error(status, _HTTP_CODES.get(status, "error"), message, field)
    for name, value in headers.items():
        response.headers[name] = value
    return response


def _methods_of(request: Request) -> list[str]:
    """The methods the routes of the request's path take (each one asked whether it
    takes the path with that method, as the router does: included routers too),
    sorted."""
    methods = []
    for method in sorted(HTTP_METHODS):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            methods.append(method)
    return methods


def parse_since(text: str) -> int:
    """An RFC 3339 time in ns since the epoch, nanoseconds kept: ``Z`` or an offset
    (``2026-12-06T11:00:00.5+01:00``; only ``Z`` was taken before, an offset was 400),
    ``T``, ``t`` or a space between date and time (``core.clock.parse_time_ns``, the
    CLI's grammar, the offset required). Anything else is 400 naming
    ``since``."""
    try:
        return parse_time_ns(text, offset_required=True)
    except ValueError as exc:
        raise ValidationError(
            f"since {text[:64]!r}: {exc}; e.g. 2026-12-06T10:00:00Z or 2026-12-06T11:00:00+01:00",
            field="since",
        ) from None


class Unauthenticated(Exception):
    pass


def accepted_parameters(route: Any) -> tuple[str, ...]:
    """The query parameters a route takes (its function's and its dependencies'), in
    the order they are declared; worked out once per route."""
    got: tuple[str, ...] | None = getattr(route, "_jetsource_query_parameters", None)
    if got is None:
        names: list[str] = []
        todo = [route.dependant]
        while todo:
            dependant = todo.pop(0)
            names += (p.alias for p in dependant.query_params)
            todo += dependant.dependencies
        got = tuple(dict.fromkeys(names))
        route._jetsource_query_parameters = got
    return got


async def known_parameters(request: Request) -> None:
    """A read of /api/v1/ given a query parameter it does not take is 400 naming it and
    listing those it takes: ``/api/v1/events?event_type=message`` (the filter is
    ``type``) answered every event, unfiltered, as if none were asked; one it takes,
    sent more than once, is 400 naming it too. Not on the webhooks: a provider may add
    parameters of its own."""
    route = request.scope.get("route")
    if route is None or not hasattr(route, "dependant"):
        return
    accepted = accepted_parameters(route)
    for name in request.query_params:
        # An empty name ("?=1", "?&=") names no parameter: skipped, as before 2f3e95f.
        if name and name not in accepted:
            named = shown(name[:80])
            takes = ", ".join(accepted) if accepted else "none"
            raise ValidationError(
                f"'{named}' is not a parameter of GET {_CONVERTER.sub('}', route.path)} "
                f"(it takes: {takes})",
                field=named,
            )
        # Each takes one value: one sent twice (``type=message&type=edit``) was read as
        # its last value, the other dropped unsaid (an OR the client meant answered as
        # one filter).
        if name and (n := len(request.query_params.getlist(name))) > 1:
            named = shown(name[:80])
            raise ValidationError(f"{named} was sent {n} times; it takes one value", field=named)


# A path parameter's converter in a route's template ("{conversation_id:path}"): the
# path a client asks for has none, so a refusal shows "{conversation_id}".
_CONVERTER = re.compile(r":[A-Za-z_]+\}")


def error_answer(path: str, exc: Exception) -> JSONResponse:
    """The JSON error answer of an exception, the same wherever it is raised (the
    app's exception handlers, a webhook that counts what it answered). Anything not
    mapped here is a 500: logged with its traceback, answered without one."""
    if isinstance(exc, EventNotFoundError):
        return _error(404, "not_found", str(exc), exc.field)
    if isinstance(exc, StatusTransitionError):
        # Well-formed, but the event's processing lifecycle does not allow it now.
        return _error(409, "failed_precondition", str(exc), exc.field)
    if isinstance(exc, ValidationError):
        return _error(400, "invalid_argument", str(exc), exc.field)
    if isinstance(exc, NotYetVisibleError):
        # The stream has it, the read model not yet: try again shortly.
        return _error(409, "failed_precondition", str(exc), exc.field or None)
    if isinstance(exc, NotFoundError):
        return _error(404, "not_found", str(exc), exc.field or None)
    if isinstance(exc, ConcurrencyError):
        return _error(409, "conflict", str(exc))
    if isinstance(exc, EventStoreUnavailableError | StreamMissingError | TransientError):
        # TransientError: Valkey (the read models) did not answer.
        return _error(503, "unavailable", str(exc))
    if isinstance(exc, CorruptEventError | RawRecordCorruptError):
        # A message published raw that no reader takes (the read models dead-letter it):
        # named with its stream sequence, as gRPC answers DATA_LOSS. It was 500
        # "internal error", a bug to look for in the logs.
        log.warning("%s: %s", path, exc)
        return _error(500, "data_loss", str(exc))
    if isinstance(exc, JetsourceError):
        log.error("%s failed", path, exc_info=exc)
    else:
        log.error("%s failed unexpectedly", path, exc_info=exc)
    return _error(500, "internal", "internal error; it was logged")


MAX_ATTEMPT = 2**32 - 1  # ProcessingStarted/Completed/Failed.attempt is a uint32


class StatusUpdate(BaseModel):
    state: str = Field(description="processing, completed or failed")
    worker: str
    attempt: int = 1
    reason: str = ""
    will_retry: bool = False


@dataclass
class Body:
    data: bytes  # whole, or its first bytes (truncated, incomplete)
    size: int  # bytes announced (a body over the limit) or read
    truncated: bool = False  # over the limit: not read whole
    incomplete: bool = False  # the client went away before sending it whole
    timed_out_s: float = 0.0  # > 0: it did not come whole within this deadline


# A body announced over the limit is refused whatever follows: its first bytes are
# kept for the archive, but only what comes without a pause of this long (a client
# announcing 10^12 bytes and sending two would hold the answer until it gave up) and
# within the whole budget.
HEAD_PAUSE_S, HEAD_BUDGET_S = 0.1, 1.0


async def read_body(request: Request, limit: int, keep: int = 64 * 1024) -> Body:
    """The body, read up to ``limit`` + 1 bytes. One announced larger (Content-Length)
    is refused at once: only its first ``keep`` bytes are read, as far as they come
    without a pause. A client that disconnects leaves what it sent, ``incomplete``."""
    announced = request.headers.get("content-length", "")
    chunks: list[bytes] = []
    got = 0
    stream = request.stream()
    try:
        if announced.isascii() and announced.isdigit() and int(announced) > limit:
            if "100-continue" in request.headers.get("expect", "").lower():
                # The client waits to be asked for the body: reading it would ask
                # (uvicorn answers "100 Continue" at the first read) for bytes that
                # are refused anyway. Refused unread.
                return Body(b"", int(announced), truncated=True)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + HEAD_BUDGET_S
            while got < keep and (left := deadline - loop.time()) > 0:
                try:
                    chunk = await wait_for(anext(stream), min(left, HEAD_PAUSE_S))
                except (StopAsyncIteration, TimeoutError):
                    break
                chunks.append(chunk)
                got += len(chunk)
            return Body(b"".join(chunks)[:keep], int(announced), truncated=True)
        async for chunk in stream:
            chunks.append(chunk)
            got += len(chunk)
            if got > limit:
                return Body(b"".join(chunks), got, truncated=True)
    except (ClientDisconnect, BodyTimeout) as exc:
        body = b"".join(chunks)
        size = int(announced) if announced.isascii() and announced.isdigit() else len(body)
        if isinstance(exc, BodyTimeout):
            return Body(body, size, truncated=size > limit, timed_out_s=exc.timeout_s)
        return Body(body, size, truncated=size > limit, incomplete=True)
    body = b"".join(chunks)
    return Body(body, len(body))


def folded_headers(request: Request) -> dict[str, str]:
    """The request's headers by lower-case name, a header sent more than once folded
    into one value joined by ", " (RFC 9110 5.3): the archive keeps every value, and
    a signature sent twice is refused as such. (A dict of the pairs kept the last: a
    wrong signature followed by the right one passed, the right one followed by a
    wrong one did not, and the archive showed one of the two.)"""
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


async def valkey_answers(redis: Any, timeout_s: float = 1.0) -> bool:
    """Whether Valkey answers a PING within ``timeout_s`` (short: a probe waits on it,
    and a Valkey that does not answer must not make the probe time out)."""
    try:
        return bool(await wait_for(redis.ping(), timeout_s))
    except Exception:
        return False


def _always() -> bool:
    return True


async def _always_async() -> bool:
    return True


@dataclass
class Health:
    """What ``/healthz`` and ``/readyz`` report: each dependency, and what works.

    Webhooks need NATS only (the events stream, the raw archive, the identity bucket);
    the reads (REST and gRPC) need NATS and Valkey (the read models). Both endpoints
    answer the same JSON body, ``ok`` saying whether the endpoint answered 200::

        {"ok": true, "nats": true, "valkey": false, "webhooks": true, "reads": false}

    - ``/healthz`` is 503 when webhooks cannot be stored (NATS down or hung, the events
      stream refusing: ``writes``), 200 otherwise: with only
      Valkey down the webhooks are still stored, so the Helm chart's probes (startup,
      readiness, liveness) ask this one. The pod stays in its Service and is not
      restarted, and the reads answer 503 ``unavailable`` naming Valkey meanwhile.
    - ``/readyz`` is 503 when any dependency is down: for a monitor, or as the
      readiness path of a deployment that serves only the reads.
    """

    nats: Callable[[], bool] = _always
    valkey: Callable[[], Awaitable[bool]] = _always_async
    # Whether the omni events stream takes writes (``core.writehealth.WriteHealth``: a
    # probe of its own, and webhooks answered 503): None, NATS connected is enough.
    # Without it ``webhooks`` stayed true (and /healthz 200) while NATS hung or the
    # stream was sealed or full, every webhook answered 503.
    writes: Any = None

    async def report(self) -> dict[str, bool]:
        nats = _safe_bool(self.nats)
        try:
            valkey = bool(await self.valkey())
        except Exception:
            valkey = False
        webhooks = nats and (self.writes is None or bool(self.writes.writable))
        return {"nats": nats, "valkey": valkey, "webhooks": webhooks, "reads": nats and valkey}

    async def unavailable(self, reason: str) -> None:
        """A webhook was answered 503 because the events stream did not take its events
        (not a 503 of the raw archive or the handles bucket, which the probe does not
        check): not writable until the write probe (woken at once, then every second)
        finds the events stream writable again."""
        if self.writes is not None:
            await self.writes.mark(False, reason)


def _safe_bool(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:
        return False


def _route_of(scope: MutableMapping[str, Any]) -> str | None:
    """The route template a request matched (``/api/v1/events/{event_id}``), or None
    when it is not counted here: webhooks (their own metrics), health, metrics, docs."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        raw = str(scope.get("path", ""))
        return UNMATCHED if raw.startswith("/api/") else None
    if path.startswith("/api/"):
        return str(path)
    if path.startswith("/webhooks/") and scope.get("method") in ("GET", "HEAD"):
        return str(path)  # the WhatsApp verification handshake
    return None


class RequestMetrics:
    """ASGI middleware counting and timing API requests by route template (never the
    raw path: ids would make a series each), HTTP method and status. Plain ASGI, not
    an HTTP middleware: the request's body stream passes through untouched. A request
    that raises is counted 500, the answer the app's error handler gives it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = _route_of(scope)
            if route is not None:
                method = str(scope.get("method", ""))
                # A client names the method: any token passes h11 (uvicorn without
                # httptools) and ~35 pass httptools; each one was a series of its own.
                method = method if method in HTTP_METHODS else OTHER_METHOD
                API_REQUESTS.labels(route, method, str(status)).inc()
                API_SECONDS.labels(route, method).observe(time.perf_counter() - started)


def create_app(
    intake: Intake,
    reads: OmniReads,
    store: JetStreamEventStore,
    api_tokens: list[str] | None = None,
    health: Health | None = None,
    body_timeout_s: float = 30.0,
) -> FastAPI:
    app = FastAPI(
        title="jetsource-ingest",
        description="Messaging webhooks (WhatsApp Cloud API, Evolution API, Discord) "
        "normalized into provider-neutral events; reads of the omni domain.",
        version="1",
        # A path with a trailing slash is 404 like any other unknown path: Starlette
        # answered it 307 to a URL made of the request's Host header and plain http
        # (behind a TLS proxy), where a provider would resend the signed body.
        redirect_slashes=False,
    )
    tokens = [t.encode() for t in api_tokens or []]
    checks = health or Health()
    app.add_middleware(RequestMetrics)
    app.add_middleware(BodyDeadline, timeout_s=body_timeout_s)

    @app.exception_handler(RequestValidationError)
    async def _malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        return malformed_answer(exc, request.headers.get("content-type"))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return http_error_answer(request, exc)

    @app.exception_handler(ValidationError)
    async def _invalid(request: Request, exc: ValidationError) -> JSONResponse:
        return error_answer(request.url.path, exc)

    @app.exception_handler(NotFoundError)
    async def _missing(request: Request, exc: NotFoundError) -> JSONResponse:
        return error_answer(request.url.path, exc)

    @app.exception_handler(ConcurrencyError)
    async def _conflict(request: Request, exc: ConcurrencyError) -> JSONResponse:
        return error_answer(request.url.path, exc)

    @app.exception_handler(JetsourceError)
    async def _unavailable(request: Request, exc: JetsourceError) -> JSONResponse:
        return error_answer(request.url.path, exc)

    @app.exception_handler(TransientError)
    async def _store_away(request: Request, exc: TransientError) -> JSONResponse:
        return error_answer(request.url.path, exc)  # Valkey away: 503

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_answer(request.url.path, exc)

    async def authenticated(request: Request) -> None:
        """/api/v1/ asks for a bearer token when tokens are configured. (A dependency,
        not an HTTP middleware: those wrap every request's body stream, webhooks too.)"""
        if not tokens:
            return
        # The scheme in any case, spaces around the token: as the gRPC services take it
        # (RFC 9110 11.1; "bearer <token>" was 401 here and taken by gRPC).
        scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
        token = given.strip().encode("utf-8", "surrogatepass")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(token, t) for t in tokens):
            raise Unauthenticated()

    @app.exception_handler(Unauthenticated)
    async def _unauthenticated(request: Request, exc: Unauthenticated) -> JSONResponse:
        answer = _error(
            401, "unauthenticated", "Authorization: Bearer <token> required", "authorization"
        )
        # RFC 6750 3: a 401 to a bearer-token resource says which scheme it asks.
        answer.headers["www-authenticate"] = 'Bearer realm="jetsource"'
        return answer

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(authenticated)])

    # -- webhooks ----------------------------------------------------------------------

    async def webhook(provider: str, instance: str, request: Request) -> JSONResponse:
        body = await read_body(request, intake.max_body_bytes, intake.keep_rejected_bytes)
        if body.incomplete:
            # Not a fault of this service (it logged an ERROR with a traceback): a
            # warning, and the request archived as refused with what came.
            log.warning(
                "webhook to %s: the client disconnected after sending %d bytes "
                "(Content-Length: %s)",
                request.url.path,
                len(body.data),
                request.headers.get("content-length", "none")[:40],
            )
        started = time.perf_counter()
        try:
            answer = await intake.handle(
                WebhookRequest(
                    provider=provider,
                    instance=instance,
                    headers=folded_headers(request),
                    body=body.data,
                    method=request.method,
                    path=request.url.path,
                    query=request.url.query,
                    body_size=body.size,
                    truncated=body.truncated,
                    incomplete=body.incomplete,
                    timed_out_s=body.timed_out_s,
                    remote_addr=request.client.host if request.client else "",
                )
            )
            response = JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)
            events_down = answer.events_down
        except Exception as exc:
            # Answered here, not by the app's handlers, so that it is counted and timed
            # like every other answer (a 500 among them).
            response = error_answer(request.url.path, exc)
            events_down = response.status_code == 503 and intake.events_down(exc)
        if body.truncated or body.timed_out_s:
            # Answered before the body came whole: what is left of it may still be on
            # its way (a byte a second, 10^12 bytes announced); not read, not waited for.
            response.headers["connection"] = "close"
        if events_down:
            # Only a 503 of the events stream itself, what the write probe checks: the
            # raw archive full or the handles bucket gone marked it too, so /healthz
            # flapped 503 (the probe found the events stream fine) at every such 503.
            await checks.unavailable(bytes(response.body).decode(errors="replace")[:500])
        WEBHOOK_SECONDS.labels(provider).observe(time.perf_counter() - started)
        # Instances are configured names; an unknown one is counted as such (bounded labels).
        known = intake.instance(provider, instance) is not None
        WEBHOOKS.labels(
            provider, instance if known else "(unknown)", str(response.status_code)
        ).inc()
        return response

    @app.post("/webhooks/whatsapp/{instance}", tags=["webhooks"])
    async def whatsapp(instance: str, request: Request) -> JSONResponse:
        """WhatsApp Cloud API (X-Hub-Signature-256) or Evolution API (apikey header)."""
        return await webhook("whatsapp", instance, request)

    @app.post("/webhooks/whatsapp/{instance}/{event}", tags=["webhooks"])
    async def whatsapp_by_event(instance: str, event: str, request: Request) -> JSONResponse:
        """Evolution API with "Webhook by Events" (``webhook_by_events``, or
        ``WEBHOOK_GLOBAL_WEBHOOK_BY_EVENTS``): each event posted to the instance's URL with
        the event's name appended (``/messages-upsert``, ``/send-message``). Taken as the
        instance's own route (the body's ``event`` decides, the path is archived); an
        unknown instance is 404 ``unknown_instance`` as there; a segment that is no event
        name (whatever the instance: checked first, so a scanner's two-segment paths are
        not archived), or an instance of another format, no route. Every such webhook was
        404 "no route", which Evolution does not retry: all lost."""
        if not _EVENT_SEGMENT.fullmatch(event):
            raise HTTPException(status_code=404)
        config = intake.instance("whatsapp", instance)
        if config is not None and config.format != "evolution":
            raise HTTPException(status_code=404)
        return await webhook("whatsapp", instance, request)

    @app.get("/webhooks/whatsapp/{instance}", tags=["webhooks"], response_model=None)
    async def whatsapp_verify(
        instance: str,
        request: Request,
        mode: str | None = Query(None, alias="hub.mode"),
        token: str | None = Query(None, alias="hub.verify_token"),
        challenge: str | None = Query(None, alias="hub.challenge"),
    ) -> Response:
        """Meta's verification handshake: echo hub.challenge when the token matches.

        A parameter sent twice is 400 naming it (which one counts was the last one's
        say: a wrong token before the right one passed, the right one before a wrong
        one did not); a missing or wrong ``hub.mode`` or ``hub.verify_token`` is 403
        naming it; an instance that has no handshake (Evolution API, or no
        ``verify_token`` configured) is 403 naming ``instance`` and saying so; the
        right token without a ``hub.challenge`` is 400 naming it (the answer was an
        empty 200, which Meta takes as a failed verification)."""
        config = intake.instance("whatsapp", instance)
        if config is None:
            return _error(
                404, "unknown_instance", f"no whatsapp instance {instance[:80]!r}", "instance"
            )
        for name in HANDSHAKE_PARAMS:
            if (n := len(request.query_params.getlist(name))) > 1:
                return _error(400, "invalid_argument", f"{name} was sent {n} times; once", name)
        problem = signatures.handshake_problem(config, mode, token)
        if problem is not None:
            field, message = problem
            return _error(403, "verification_failed", message, field)
        if not challenge:
            return _error(400, "invalid_argument", "hub.challenge is missing", "hub.challenge")
        return PlainTextResponse(challenge)

    @app.post("/webhooks/discord/{instance}", tags=["webhooks"])
    async def discord(instance: str, request: Request) -> JSONResponse:
        """Gateway dispatches forwarded by a bot (X-Jetsource-Signature), or, on an
        instance of format ``interactions``, Discord's own HTTP interactions (the
        application's Interactions Endpoint URL; X-Signature-Ed25519 and
        X-Signature-Timestamp), answered with an interaction response."""
        return await webhook("discord", instance, request)

    # -- reads -----------------------------------------------------------------------------

    @api.get("/events", tags=["reads"], dependencies=[Depends(known_parameters)])
    async def recent_events(
        instance: str = "",
        provider: str = "",
        type: str = "",
        direction: str = "",
        since: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> dict[str, Any]:
        """Newest first; the last 24 hours unless `since` (RFC 3339) says otherwise."""
        if type and type not in EVENT_TYPES:
            raise ValidationError(f"type must be one of {', '.join(EVENT_TYPES)}", field="type")
        if direction and direction not in DIRECTIONS:
            raise ValidationError(
                f"direction must be one of {', '.join(DIRECTIONS)}", field="direction"
            )
        since_ns = parse_since(since) if since else None
        events, token = await reads.recent(
            Filters(instance, provider, type, direction), since_ns, page_size, page_token
        )
        return {"events": [as_json(e) for e in events], "next_page_token": token}

    @api.get("/events/{event_id}", tags=["reads"], dependencies=[Depends(known_parameters)])
    async def get_event(event_id: str, include_raw: bool = False) -> dict[str, Any]:
        view = await reads.event(event_id)
        out: dict[str, Any] = {"event": as_json(view)}
        if include_raw:
            raw = await reads.raw_payload(view.event.raw_ref)
            out["raw"] = raw_json(raw) if raw is not None else None
        return out

    @api.post("/events/{event_id}/status", tags=["processing"])
    async def set_status(event_id: str, update: StatusUpdate) -> dict[str, Any]:
        """Record a processing step (received -> processing -> completed/failed)."""
        # The step's attempt is a uint32 in the recorded event: a larger number was
        # refused by protobuf only while the event was built, a 500.
        if not 1 <= update.attempt <= MAX_ATTEMPT:
            raise ValidationError(f"attempt must be 1..{MAX_ATTEMPT}", field="attempt")
        version = await record_status(
            store,
            event_id,
            update.state,
            update.worker,
            update.attempt,
            update.reason,
            update.will_retry,
        )
        return {"event_id": event_id, "version": version}

    @api.get("/raw/{raw_id}", tags=["reads"], dependencies=[Depends(known_parameters)])
    async def get_raw(raw_id: str) -> dict[str, Any]:
        raw = await reads.raw_payload(raw_id)
        if raw is None:
            raise NotFoundError(f"no raw payload {raw_id!r}", "raw_id")
        return raw_json(raw)

    # Conversation ids and handles are the provider's: a Cloud API group id is base64 and
    # may hold "/" (sent as %2F, which the router decodes before it matches), so the last
    # segment takes the rest of the path (a conversation with "/" was 404 "no route").
    @api.get(
        "/conversations/{provider}/{instance}/{conversation_id:path}",
        tags=["reads"],
        dependencies=[Depends(known_parameters)],
    )
    async def conversation(
        provider: str, instance: str, conversation_id: str, page_size: int = 0, page_token: str = ""
    ) -> dict[str, Any]:
        events, token = await reads.conversation(
            provider, instance, conversation_id, page_size, page_token
        )
        return {"events": [as_json(e) for e in events], "next_page_token": token}

    @api.get("/identities", tags=["reads"], dependencies=[Depends(known_parameters)])
    async def identities(
        provider: str = "", include_merged: bool = False, page_size: int = 0, page_token: str = ""
    ) -> dict[str, Any]:
        found, token = await reads.identities(provider, include_merged, page_size, page_token)
        return {"identities": [as_json(i) for i in found], "next_page_token": token}

    @api.get("/identities/{identity_id}", tags=["reads"], dependencies=[Depends(known_parameters)])
    async def identity(
        identity_id: str, page_size: int = 0, page_token: str = ""
    ) -> dict[str, Any]:
        view, token = await reads.identity_page(identity_id, page_size, page_token)
        return {"identity": as_json(view), "next_page_token": token}

    @api.get(
        "/identities/{identity_id}/timeline",
        tags=["reads"],
        dependencies=[Depends(known_parameters)],
    )
    async def timeline(
        identity_id: str, page_size: int = 0, page_token: str = ""
    ) -> dict[str, Any]:
        view, events, token = await reads.timeline(identity_id, page_size, page_token)
        return {
            "identity": as_json(view),
            "events": [as_json(e) for e in events],
            "next_page_token": token,
        }

    @api.get(
        "/handles/{provider}/{external_id:path}",
        tags=["reads"],
        dependencies=[Depends(known_parameters)],
    )
    async def find_identity(provider: str, external_id: str) -> dict[str, Any]:
        return {"identity": as_json(await reads.find(provider, external_id))}

    app.include_router(api)

    @app.get("/metrics", tags=["health"], response_model=None)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["health"], response_model=None)
    async def healthz() -> Response:
        """503 while webhooks cannot be stored; 200 while they can, even with Valkey
        (the reads) down: the body says which dependency is down and what works."""
        report = await checks.report()
        return _health_answer(report, report["webhooks"])

    @app.get("/livez", tags=["health"], response_model=None)
    async def livez() -> Response:
        """200 while the process answers: a dependency away fails /healthz and /readyz
        (out of service), and a restart would not bring it back."""
        return JSONResponse({"ok": True})

    @app.get("/readyz", tags=["health"], response_model=None)
    async def readyz() -> Response:
        """503 when any dependency (NATS, Valkey) is down; the same body as /healthz."""
        report = await checks.report()
        return _health_answer(report, report["webhooks"] and report["reads"])

    return app


def _health_answer(report: dict[str, bool], ok: bool) -> JSONResponse:
    return JSONResponse({"ok": ok, **report}, status_code=200 if ok else 503)
