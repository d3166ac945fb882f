"""One webhook request, from bytes to stored events: the ingress's service layer,
independent of the HTTP framework.

Order of work, so that a fault loses nothing and applies nothing twice:

1. Checks that need no I/O: the instance exists for this provider, the body is not
   too large, the signature holds, the body is not compressed, it is UTF-8 text of a
   JSON object with no lone surrogate, the normalizer understands it and every field
   it needs is there (handles within the identity service's bound), each event fits
   the stream. A request failing one is archived with the reason and answered 4xx
   (200 for an "unrecognised" kind, so the provider does not retry it for ever);
   nothing else is written. Whatever else these checks raise (a fault of this code,
   not of the body) is archived as well, rejected with 500, and logged. The archive
   record (its credentials redacted) is built after these checks: a request refused
   before its signature held is archived cut to keep_rejected_bytes, and only that
   much of it is redacted (an unauthenticated 4 MiB body was redacted whole, ~1 s of
   the event loop, before its signature was looked at).
2. At once: identities of the handles resolved (idempotent, see identity.py), and
   the raw payload archived (``OMNI_RAW``) with the verdict and the event ids.
3. Each normalized event appended on its own subject, expecting it empty: a second
   delivery (a minute or a month later, or at the same moment) finds it stored and
   is answered 200 as well, with ``stored: false``.

Only after 2 and 3 are acknowledged by JetStream is 200 answered; a failure there is
503 (the provider retries; what was stored is recognised then). Any other fault there
is 500, and the archive record is written again with that verdict (the raw archive
answers a raw id with its latest record).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from nats import errors as nats_errors

from jetsource._gen.omni.v1.events_pb2 import EventType, NormalizedEvent
from jetsource._gen.omni.v1.raw_pb2 import (
    VERDICT_ACCEPTED,
    VERDICT_REJECTED,
    VERDICT_UNRECOGNISED,
    RawPayload,
)
from jetsource.core.clock import now_ns, to_datetime, to_timestamp
from jetsource.core.envelope import NO_STREAM, NewEvent
from jetsource.core.errors import (
    ConcurrencyError,
    EventStoreUnavailableError,
    StreamMissingError,
    ValidationError,
)
from jetsource.core.ids import uuid7
from jetsource.core.printable import not_one_line_at, refused_at
from jetsource.domains.omni import redact, signatures
from jetsource.domains.omni.events import stable_uuid
from jetsource.domains.omni.identity import IdentityService, check_handle
from jetsource.domains.omni.normalize import (
    Malformed,
    Unrecognised,
    discord_interactions,
    normalize,
)
from jetsource.domains.omni.normalize.common import MAX_CONVERSATION_ID, surrogate_path
from jetsource.domains.omni.raw import RawArchive
from jetsource.domains.omni.settings import InstanceConfig
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.refusals import JetStreamRefusedError

log = logging.getLogger("jetsource.omni.intake")
# NATS away or slow (the event store's own retries spent, a KV call timing out): 503.
_UNAVAILABLE = (
    EventStoreUnavailableError,
    StreamMissingError,
    TimeoutError,
    ConnectionError,
    nats_errors.Error,
)


def _not_json(name: str) -> Any:
    """NaN, Infinity and -Infinity, which Python's json reads and JSON has not."""
    raise ValueError(f"{name} is not a JSON value")


def _json_int(text: str) -> int:
    """An integer literal as Python's int, or ValueError in the client's terms: past
    ``sys.get_int_max_str_digits()`` digits int() said "Exceeds the limit (4300 digits)
    for integer string conversion ...; use sys.set_int_max_str_digits() to increase
    the limit", advice to a Python programmer, not to the sender of a webhook."""
    try:
        return int(text)
    except ValueError:
        digits = len(text.lstrip("-"))
        raise ValueError(f"an integer of {digits:,} digits, more than this service reads") from None


# What a JSON value that is not an object is, in JSON's words (was Python's type name:
# "body is a JSON NoneType").
_JSON_KIND = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, as JSON names it ("an array", "null", ...)."""
    return _JSON_KIND.get(type(value), "an object")


# Byte order marks of the encodings JSON text is not sent in (RFC 8259: UTF-8 only).
_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32 (big-endian)"),
    (b"\xff\xfe\x00\x00", "UTF-32 (little-endian)"),
    (b"\xfe\xff", "UTF-16 (big-endian)"),
    (b"\xff\xfe", "UTF-16 (little-endian)"),
)


def _not_utf8(body: bytes, exc: UnicodeDecodeError) -> str:
    """Why ``body`` is not UTF-8, for the answer: the encoding its byte order mark
    names, or the first byte that is not UTF-8 and where."""
    for bom, name in _BOMS:
        if body.startswith(bom):
            return (
                f"body is not UTF-8: it starts with the byte order mark of {name} "
                f"({bom.hex(' ').upper()}); send JSON encoded as UTF-8"
            )
    return (
        f"body is not UTF-8: byte 0x{body[exc.start]:02X} at offset {exc.start} "
        f"({exc.reason}); send JSON encoded as UTF-8"
    )


def _utf16_hint(text: str) -> str:
    """What a body with NUL bytes outside its strings most likely is."""
    return " (NUL bytes: is it UTF-16 or UTF-32? send UTF-8)" if "\x00" in text[:4] else ""


@dataclass
class WebhookRequest:
    provider: str
    instance: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes  # whole, or its first bytes when truncated
    method: str = "POST"
    path: str = ""
    query: str = ""
    body_size: int = -1  # bytes announced or read; -1: len(body)
    truncated: bool = False  # the body was over the limit and not read whole
    incomplete: bool = False  # the client disconnected before sending the body whole
    # > 0: the body did not come whole within this many seconds of the request's head
    # (a client sending it a byte a second, or fewer bytes than its Content-Length)
    timed_out_s: float = 0.0
    remote_addr: str = ""


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    # A 503 because the omni events stream did not take the events (refused, missing,
    # not answering): what the write probe checks, so the ingress is marked not
    # writable. A 503 of the raw archive or the handles bucket is not this.
    events_down: bool = False


# A refused request's header values are cut to this when its record is still over
# what the raw archive takes once its body was cut.
HEADER_KEPT = 1024


# Refusals met before the request's signature was checked: anybody's bytes. Their
# bodies are archived cut to keep_rejected_bytes; a body with a wrong signature was
# archived whole (up to INGEST__MAX_BODY_BYTES, 4 MiB), so anyone without the secret
# could fill the raw archive. A signed request refused later is archived whole.
UNSIGNED = frozenset(
    {"unknown_instance", "body_too_large", "incomplete_body", "request_timeout", "bad_signature"}
)


# The most of a reason (and of a field's path) an answer holds. A reason or a path may
# repeat the body (a value, the keys on the way to a field, every kind of a list):
# cut, or a body of 4 MiB made an answer as large (the archived reason is cut to 2,000
# characters as well).
ANSWERED_CHARS = 2000
ANSWERED_FIELD_CHARS = 500


def answered(text: str, limit: int = ANSWERED_CHARS) -> str:
    """``text`` as an answer holds it: its first ``limit`` characters when longer, saying
    how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class Rejected(Exception):
    def __init__(
        self, status: int, code: str, reason: str, field: str = "", detail: str = ""
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.field = field
        self.detail = detail  # archived beside the reason, never answered (a fault's)


class Intake:
    def __init__(
        self,
        instances: Mapping[str, InstanceConfig],
        store: JetStreamEventStore,
        raw: RawArchive,
        identities: IdentityService,
        max_body_bytes: int,
        keep_rejected_bytes: int = 64 * 1024,
        raw_record_bytes: int | None = None,
    ) -> None:
        self.instances = instances
        self.store = store
        self.raw = raw
        self.identities = identities
        self.max_body_bytes = max_body_bytes
        self.keep_rejected_bytes = keep_rejected_bytes
        # The largest archive record the raw stream and NATS take (the stream's
        # max_msg_size and the server's max_payload, less room for the message's
        # headers); None: no bound known.
        self.raw_record_bytes = raw_record_bytes

    def instance(self, provider: str, name: str) -> InstanceConfig | None:
        config = self.instances.get(name)
        return config if config is not None and config.provider == provider else None

    # -- the pipeline -----------------------------------------------------------------

    async def handle(self, request: WebhookRequest) -> Answer:
        received_ns = now_ns()
        raw_id = uuid7()
        try:
            events, reply = self._checked(request, raw_id, received_ns)
        except Rejected as rejected:
            unsigned = rejected.code in UNSIGNED
            return await self._reject(
                self._record(request, raw_id, received_ns, cut=unsigned), rejected
            )
        except Unrecognised as exc:
            record = self._record(request, raw_id, received_ns)
            if (too_large := self._over_archive(record)) is not None:
                return await self._reject(record, too_large)
            record.verdict = VERDICT_UNRECOGNISED
            record.http_status = 200
            record.reason = f"unrecognised: {exc.reason}"[:2000]
            if (failed := await self._archive(record)) is not None:
                return failed
            return Answer(
                200, {"status": "unrecognised", "raw_id": raw_id, "reason": answered(exc.reason)}
            )
        except Exception as exc:
            # Whatever else a body makes the checks raise: a fault of this code (a body
            # can only be refused for a reason named above). Archived with the verdict
            # and the fault, logged with its traceback, answered without it.
            log.error("webhook %s: checking the body failed unexpectedly", raw_id, exc_info=exc)
            return await self._reject(
                self._record(request, raw_id, received_ns), _fault("checking the body", exc)
            )
        record = self._record(request, raw_id, received_ns)
        record.event_ids.extend(e.id for e in events)
        if (too_large := self._over_archive(record)) is not None:
            del record.event_ids[:]
            return await self._reject(record, too_large)
        record.verdict = VERDICT_ACCEPTED
        record.http_status = 200
        if not events and reply is not None:
            # A Discord PING or autocomplete: answered (PONG, no choices), archived
            # as accepted, no event.
            record.reason = f"answered with interaction response type {reply['type']}"
            if (failed := await self._archive(record)) is not None:
                return failed
            return Answer(200, reply, {"X-Jetsource-Raw-Id": raw_id})
        # The archive needs only the event ids: it is written while identities resolve.
        archived, resolved = await asyncio.gather(
            self._archive(record), self._resolve(events), return_exceptions=True
        )
        if isinstance(archived, BaseException):
            raise archived
        if archived is not None:
            return archived
        if isinstance(resolved, _UNAVAILABLE):
            return _unavailable(raw_id, resolved)
        if isinstance(resolved, Exception):
            return await self._failed_after_archive(record, "resolving identities", resolved)
        if isinstance(resolved, BaseException):
            raise resolved  # cancelled
        try:
            stored = await asyncio.gather(*(self._append(e) for e in events))
        except _UNAVAILABLE as exc:
            return _unavailable(raw_id, exc, events_down=self.events_down(exc))
        except Exception as exc:
            return await self._failed_after_archive(record, "storing the events", exc)
        if reply is not None:
            # Discord reads the body as the interaction's response; what was stored is
            # told in headers (one event per interaction).
            return Answer(
                200,
                reply,
                {
                    "X-Jetsource-Raw-Id": raw_id,
                    "X-Jetsource-Event-Id": events[0].id,
                    "X-Jetsource-Stored": "true" if stored[0] else "false",
                },
            )
        return Answer(
            200,
            {
                "status": "accepted",
                "raw_id": raw_id,
                "events": [
                    {"id": e.id, "event_type": _short(e), "stored": s}
                    for e, s in zip(events, stored, strict=True)
                ],
            },
        )

    def _record(
        self, request: WebhookRequest, raw_id: str, received_ns: int, cut: bool = False
    ) -> RawPayload:
        """The request's archive record. Never raises: a body it could not describe was
        a 500 with nothing archived (a key holding a lone surrogate, 1e8e4a8). Should
        redaction itself fail, the body is withheld (it may hold a credential) and the
        record says so; the request is answered and archived as any other. ``cut``: a
        request refused before its signature held (UNSIGNED), archived cut to
        keep_rejected_bytes; only that much of its body is redacted."""
        try:
            return self._described(request, raw_id, received_ns, cut)
        except Exception as exc:
            log.error(
                "webhook %s: describing the request for the archive failed", raw_id, exc_info=exc
            )
            record = RawPayload(
                id=raw_id,
                provider=request.provider.encode("utf-8", "backslashreplace").decode(),
                instance=request.instance.encode("utf-8", "backslashreplace").decode(),
                received_at=to_timestamp(received_ns),
                body_size=request.body_size if request.body_size >= 0 else len(request.body),
                body_truncated=request.truncated,
                body_redacted=[f"(the whole body and query: not archived, {type(exc).__name__})"],
                body_sha256=self._digest(request),
            )
            return record

    def _digest(self, request: WebhookRequest) -> bytes:
        """The record's body_sha256: the SHA-256 of the body as received, for a Discord
        interaction only (what its Ed25519 signature covers; the redacted token is random
        and good for 15 minutes). An unsalted digest of any other body would let whoever
        reads the archive confirm a guess of a redacted credential offline (Evolution's
        apikey: its body with each guess put back, hashed, compared); b"" there."""
        config = self.instance(request.provider, request.instance)
        if config is None or config.format != "interactions":
            return b""
        return hashlib.sha256(request.body).digest()

    def _described(
        self, request: WebhookRequest, raw_id: str, received_ns: int, cut: bool = False
    ) -> RawPayload:
        # Credentials in the body (Evolution's apikey, an interaction's token) and the
        # query are not archived (redact.py); the checks read the request as it came.
        # Anybody's bytes (``cut``) are redacted as far as they are kept: what was cut
        # off is never archived, and a value the cut ends in is redacted as any (the
        # reading of a body cut short), so nothing of a credential is kept.
        kept = request.body
        if cut and len(kept) > self.keep_rejected_bytes:
            kept = kept[: self.keep_rejected_bytes]
        body, in_body = redact.body(kept)
        query, in_query = redact.query(request.query)
        return RawPayload(
            id=raw_id,
            provider=request.provider,
            instance=request.instance,
            received_at=to_timestamp(received_ns),
            method=request.method,
            path=request.path,
            query=query,
            headers=signatures.redacted(request.headers),
            body=body,
            body_size=request.body_size if request.body_size >= 0 else len(request.body),
            body_truncated=request.truncated or len(kept) < len(request.body),
            remote_addr=request.remote_addr,
            body_redacted=redact.listed([*in_body, *in_query]),
            body_sha256=self._digest(request),
        )

    def _checked(
        self, request: WebhookRequest, raw_id: str, received_ns: int
    ) -> tuple[list[NormalizedEvent], dict[str, Any] | None]:
        """The request's events, and the answer its provider expects in place of the
        usual one (a Discord interaction's response), or why it is refused."""
        config = self.instance(request.provider, request.instance)
        if config is None:
            raise Rejected(
                404,
                "unknown_instance",
                f"no {request.provider} instance named {request.instance[:80]!r} is configured",
                "instance",
            )
        if request.truncated or len(request.body) > self.max_body_bytes:
            raise Rejected(
                413,
                "body_too_large",
                f"body of {request.body_size if request.body_size >= 0 else len(request.body)} "
                f"bytes is over the limit of {self.max_body_bytes} bytes",
                "body",
            )
        if request.incomplete:
            raise Rejected(
                400,
                "incomplete_body",
                f"the client disconnected after sending {len(request.body)} bytes of the body",
                "body",
            )
        if request.timed_out_s > 0:
            announced = f" of {request.body_size}" if request.body_size > len(request.body) else ""
            raise Rejected(
                408,
                "request_timeout",
                f"the body did not come whole within {request.timed_out_s:g} s of the "
                f"request's head ({len(request.body)}{announced} bytes came)",
                "body",
            )
        found = signatures.problem(config, request.headers, request.body, received_ns / 1e9)
        if found is not None:
            header, problem = found
            raise Rejected(401, "bad_signature", problem, header)
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            # Providers send JSON as it is; a compressed body is not read (and its
            # signature would be over the compressed bytes).
            raise Rejected(
                415,
                "unsupported_encoding",
                f"Content-Encoding {encoding[:40]!r} is not accepted: send the body uncompressed",
                "content-encoding",
            )
        body = _parsed(request.body)
        interactions = config.format == "interactions"
        try:
            events = normalize(
                request.provider,
                request.instance,
                body,
                to_datetime(received_ns),
                raw_id,
                config.format,
            )
        except Malformed as exc:
            raise Rejected(422, "malformed", str(exc), exc.field) from None
        except Unrecognised as exc:
            if interactions:
                # Discord does not retry an interaction: nothing is gained by a 200,
                # and the type is what is wrong.
                raise Rejected(400, "unknown_type", exc.reason, "type") from None
            raise
        reply: dict[str, Any] | None = None
        if interactions:
            reply = discord_interactions.response(
                discord_interactions.interaction_type(body),
                config.interaction_response,
                config.interaction_reply,
            )
        if not events and reply is None:
            raise Unrecognised("the body holds no event")
        _check_handles(events, body)
        limit = self.store.settings.max_msg_size - 2048
        for i, e in enumerate(events):
            if e.ByteSize() > limit:
                raise Rejected(
                    413,
                    "event_too_large",
                    f"event {i} ({e.provider_event_id}) is {e.ByteSize()} bytes normalized; "
                    f"the event stream takes at most {limit}",
                    "body",
                )
        return events, reply

    async def _reject(self, record: RawPayload, rejected: Rejected) -> Answer:
        record.verdict = VERDICT_REJECTED
        record.http_status = rejected.status
        detail = f" ({rejected.detail})" if rejected.detail else ""
        record.reason = f"{rejected.code}: {rejected.reason}{detail}"[:2000]
        record.field = answered(rejected.field, ANSWERED_FIELD_CHARS)
        if len(record.body) > self.keep_rejected_bytes and (
            rejected.code in UNSIGNED or self._over_archive(record) is not None
        ):
            record.body = record.body[: self.keep_rejected_bytes]
            record.body_truncated = True
        if self._over_archive(record) is not None:
            # Headers too large for the archive (the ingress refuses heads over
            # INGEST__MAX_HEAD_BYTES, at most 1 MiB): the refusal was archived whole
            # and NATS refused it, a 500 or a 503 retried for ever. Each value cut.
            for name, value in list(record.headers.items()):
                if len(value) > HEADER_KEPT:
                    record.headers[name] = f"{value[:HEADER_KEPT]}... ({len(value)} chars)"
        if (failed := await self._archive(record)) is not None:
            return failed
        error = {"code": rejected.code, "message": answered(rejected.reason), "raw_id": record.id}
        if rejected.field:
            error["field"] = answered(rejected.field, ANSWERED_FIELD_CHARS)
        return Answer(rejected.status, {"error": error})

    def _over_archive(self, record: RawPayload) -> Rejected | None:
        """413 when the record (the body whole, its headers and event ids) is larger
        than the raw archive takes: a body under max_body_bytes but over the stream's
        max_msg_size was a 500 (JetStream refused the record), one over NATS's
        max_payload a 503 the provider retried for ever; neither was archived."""
        limit = self.raw_record_bytes
        if limit is None or (size := record.ByteSize()) <= limit:
            return None
        return Rejected(
            413,
            "body_too_large",
            f"body of {len(record.body)} bytes makes an archive record of {size} bytes "
            f"(with its headers and {len(record.event_ids)} event ids); the raw archive "
            f"takes at most {limit} (raise JETSOURCE_OMNI__RAW_MAX_MSG_SIZE and NATS's "
            "max_payload, or lower JETSOURCE_INGEST__MAX_BODY_BYTES)",
            "body",
        )

    async def _archive(self, record: RawPayload, revision: int = 0) -> Answer | None:
        try:
            await self.raw.put(record, revision)
        except _UNAVAILABLE as exc:
            return _unavailable(record.id, exc)
        return None

    async def _failed_after_archive(self, record: RawPayload, step: str, exc: Exception) -> Answer:
        """A fault after the record was archived as accepted: logged, and the record
        written again as what was answered (500), so that the archive tells the truth.
        Events stored before the fault stay (a retry finds them stored)."""
        log.error("webhook %s: %s failed unexpectedly", record.id, step, exc_info=exc)
        fault = _fault(step, exc)
        record.verdict = VERDICT_REJECTED
        record.http_status = fault.status
        record.reason = f"{fault.code}: {fault.reason} ({fault.detail})"[:2000]
        record.field = fault.field
        if (failed := await self._archive(record, revision=1)) is not None:
            return failed
        error = {"code": fault.code, "message": fault.reason, "raw_id": record.id}
        return Answer(fault.status, {"error": error})

    async def _resolve(self, events: list[NormalizedEvent]) -> None:
        handles: dict[tuple[str, str], str] = {}
        for e in events:
            for handle, name in ((e.sender_handle, e.sender_name), (e.recipient_handle, "")):
                if handle and ((e.provider, handle) not in handles or name):
                    handles[(e.provider, handle)] = name or handles.get((e.provider, handle), "")
        instance = events[0].instance_name
        found = await asyncio.gather(
            *(
                self.identities.resolve(p, h, instance, {"display_name": name} if name else None)
                for (p, h), name in handles.items()
            )
        )
        ids = dict(zip(handles, found, strict=True))
        for e in events:
            if e.sender_handle:
                e.sender_identity_id = ids[(e.provider, e.sender_handle)]
            if e.recipient_handle:
                e.recipient_identity_id = ids[(e.provider, e.recipient_handle)]

    def events_down(self, exc: BaseException) -> bool:
        """Whether ``exc`` (of storing events) says the omni events stream takes no
        writes: a refusal or "missing" naming that stream, or the event store not
        answering. Another stream's (the raw archive's, a bucket's) is not."""
        stream = self.store.settings.stream
        if isinstance(exc, JetStreamRefusedError):
            return exc.stream == stream
        if isinstance(exc, StreamMissingError):
            return f"stream {stream} " in f"{exc} "
        return isinstance(exc, EventStoreUnavailableError)

    async def _append(self, event: NormalizedEvent) -> bool:
        """Store the event unless it is stored already; True when this call stored it."""
        occurred = (
            event.provider_timestamp.ToNanoseconds() if event.HasField("provider_timestamp") else 0
        )
        try:
            result = await self.store.append(
                event.id,
                [
                    NewEvent(
                        event,
                        event_id=stable_uuid(event.id, "received"),
                        occurred_at_ns=occurred or None,
                        source="jetsource-ingest",
                    )
                ],
                NO_STREAM,
            )
        except ConcurrencyError:
            return False  # its subject holds an event already: stored before
        return not result.duplicate


def _parsed(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or Rejected saying why not: strict UTF-8 first (json
    would guess UTF-16 and UTF-32 from bytes), then JSON, then an object with no lone
    surrogate in any string (a ``\\ud800`` escape: no character, so nothing can store it).
    A UTF-8 byte order mark is skipped, as RFC 8259 lets a parser do."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(400, "unparseable", _not_utf8(raw, exc), "body") from None
    text = text.removeprefix("\ufeff")
    try:
        body = json.loads(text, parse_constant=_not_json, parse_int=_json_int)
    except ValueError as exc:
        raise Rejected(
            400, "unparseable", f"body is not JSON: {exc}"[:500] + _utf16_hint(text), "body"
        ) from None
    except RecursionError:
        # Nested past the parser's recursion limit: a RuntimeError, not a ValueError.
        raise Rejected(
            400, "unparseable", "body is not JSON this service reads: nested too deep", "body"
        ) from None
    if not isinstance(body, dict):
        raise Rejected(
            400, "not_an_object", f"body is {json_kind(body)}, not a JSON object", "body"
        )
    if (where := surrogate_path(body, text)) is not None:
        raise Rejected(
            400,
            "unparseable",
            f"{where}: holds a lone UTF-16 surrogate (an escape \\ud800 to \\udfff not "
            "part of a pair), which is no Unicode character",
            where,
        )
    return body


def _check_handles(events: list[NormalizedEvent], body: Any) -> None:
    """Every conversation, channel, thread and guild id within MAX_CONVERSATION_ID (the
    reads refuse a longer one), and every handle the identities will be asked for one
    they take, checked by their own rule before anything is written (the normalizers
    name the field of each handle they read; this is the guard behind them, naming the
    field where the handle is)."""
    for e in events:
        for role, handle in (("sender", e.sender_handle), ("recipient", e.recipient_handle)):
            if not handle:
                continue
            try:
                check_handle(e.provider, handle)
            except ValidationError as exc:
                where = _path_of(body, handle) or "body"
                raise Rejected(
                    422, "malformed", f"{where}: the {role}'s handle: {exc}", where
                ) from None
            _one_line(body, handle, f"the {role}'s handle")
        for name in ("conversation_id", "channel_id", "thread_id", "guild_id"):
            value = getattr(e, name)
            if len(value) > MAX_CONVERSATION_ID:
                where = _path_of(body, value) or "body"
                raise Rejected(
                    422,
                    "malformed",
                    f"{where}: the event's {name} is {len(value)} characters; at most "
                    f"{MAX_CONVERSATION_ID}",
                    where,
                )
            _one_line(body, value, f"the event's {name}")
        # The other messages it names (a reaction's, edit's, deletion's or receipt's
        # target, a reply's quoted message, a poll vote's poll) and the other ids kept
        # in its metadata: stored as they came until 2026-12-07. Before the message's
        # own id, which may be made of one of them (a reaction's: message id, emoji,
        # user), so that the refusal names where in the body it is.
        for name, value in _metadata_ids(e.metadata, ""):
            _one_line(body, value, f"the event's {name}")
        # The message's own id: the key its event id is derived from, shown and logged.
        _one_line(body, e.provider_event_id, "the event's provider_event_id")


def _metadata_ids(message: Message, path: str) -> Iterator[tuple[str, str]]:
    """Every id and handle a metadata message holds (a field named ``*_id``, ``*_ids``,
    ``*_handle``; an ``extra`` entry named ``*_id``), with its path
    (``quoted.message_id``, ``extra.target_message_id``)."""
    for fd, value in message.ListFields():
        name = f"{path}{fd.name}"
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                if fd.name == "extra":
                    for key, text in value.items():
                        if key.endswith("_id") and not _business_defined(key):
                            yield f"{name}.{key}", text
                continue
            for item in value if fd.is_repeated else [value]:
                yield from _metadata_ids(item, f"{name}.")
        elif fd.type == FieldDescriptor.TYPE_STRING and fd.name.endswith(
            ("_id", "_ids", "_handle")
        ):
            yield from ((name, text) for text in (value if fd.is_repeated else [value]))


# Ids the business (or a bot) chose, not the provider: a button's or a list row's reply
# id (WhatsApp's interactive reply, Evolution's selectedButtonId/selectedRowId), a
# Discord component's custom_id, a catalog product's SKU (product_retailer_id, of a
# referred product or an order's item). Any text the business put there comes back on
# every tap: refusing one holding a newline made every tap a 422 the provider retries
# and drops, events lost that were stored before. Kept as provider text (a message
# body's rule: stored as sent, shown escaped).
_BUSINESS_IDS = ("reply_id", "custom_id")


def _business_defined(key: str) -> bool:
    return key in _BUSINESS_IDS or key.endswith("product_retailer_id")


def _one_line(body: Any, value: str, what: str) -> None:
    """A handle, a conversation, channel, thread or guild id or a message's id is one
    line (the key of an identity, of a conversation's reads, of an event; shown and
    logged): one holding a control character or U+2028/U+2029 was stored as it came."""
    at = not_one_line_at(value)
    if at is not None:
        # An id made of parts (message id:emoji:user) is not in the body whole: the
        # part holding the character is.
        start = value.rfind(":", 0, at) + 1
        end = value.find(":", at)
        part = value[start : end if end >= 0 else len(value)]
        where = _path_of(body, value) or _path_of(body, part) or "body"
        raise Rejected(
            422,
            "malformed",
            f"{where}: {what} holds {refused_at(value, at)}: it is one line of printable text",
            where,
        )


def _path_of(body: Any, text: str) -> str | None:
    """The path of the first string of ``body`` that holds ``text``."""
    todo: list[tuple[Any, str]] = [(body, "")]
    while todo:
        value, path = todo.pop()
        if isinstance(value, str) and text in value:
            return path or None
        if isinstance(value, dict):
            items = [(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()]
            todo.extend(reversed(items))
        elif isinstance(value, list):
            todo.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(value))))
    return None


def _fault(step: str, exc: BaseException) -> Rejected:
    """The 500 of a fault of this code while ``step``: the answer says only that; the
    archive keeps the exception's type and message (the log has its traceback)."""
    return Rejected(
        500,
        "internal",
        f"internal error while {step}; it was logged and the request archived",
        "body",
        detail=f"{type(exc).__name__}: {exc}"[:1000],
    )


def _short(event: NormalizedEvent) -> str:
    return EventType.Name(event.event_type).removeprefix("EVENT_TYPE_").lower()


def _unavailable(raw_id: str, exc: BaseException, *, events_down: bool = False) -> Answer:
    log.warning("webhook %s not stored (try again): %s", raw_id, exc)
    return Answer(
        503,
        {"error": {"code": "unavailable", "message": f"not stored, try again: {exc}"[:500]}},
        {"Retry-After": "1"},
        events_down=events_down,
    )
