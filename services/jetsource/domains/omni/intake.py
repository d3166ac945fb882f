"""One webhook request, from bytes to stored events: the ingress's service layer,
independent of the HTTP framework.

Order of work, so that a fault loses nothing and applies nothing twice:

1. Checks that need no I/O: the instance exists for this provider, the body is not
   too large, the signature holds, the body is a JSON object, the normalizer
   understands it and every field it needs is there, each event fits the stream.
   A request failing one is archived with the reason and answered 4xx (200 for an
   "unrecognised" kind, so the provider does not retry it for ever); nothing else is
   written.
2. At once: identities of the handles resolved (idempotent, see identity.py), and
   the raw payload archived (``OMNI_RAW``) with the verdict and the event ids.
3. Each normalized event appended on its own subject, expecting it empty: a second
   delivery (a minute or a month later, or at the same moment) finds it stored and
   is answered 200 as well, with ``stored: false``.

Only after 2 and 3 are acknowledged by JetStream is 200 answered; a failure there is
503 (the provider retries; what was stored is recognised then).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
)
from jetsource.core.ids import uuid7
from jetsource.domains.omni import signatures
from jetsource.domains.omni.events import stable_uuid
from jetsource.domains.omni.identity import IdentityService
from jetsource.domains.omni.normalize import Malformed, Unrecognised, normalize
from jetsource.domains.omni.raw import RawArchive
from jetsource.domains.omni.settings import InstanceConfig
from jetsource.eventstore.jetstream import JetStreamEventStore

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
    remote_addr: str = ""


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class Rejected(Exception):
    def __init__(self, status: int, code: str, reason: str, field: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.field = field


class Intake:
    def __init__(
        self,
        instances: Mapping[str, InstanceConfig],
        store: JetStreamEventStore,
        raw: RawArchive,
        identities: IdentityService,
        max_body_bytes: int,
        keep_rejected_bytes: int = 64 * 1024,
    ) -> None:
        self.instances = instances
        self.store = store
        self.raw = raw
        self.identities = identities
        self.max_body_bytes = max_body_bytes
        self.keep_rejected_bytes = keep_rejected_bytes

    def instance(self, provider: str, name: str) -> InstanceConfig | None:
        config = self.instances.get(name)
        return config if config is not None and config.provider == provider else None

    # -- the pipeline -----------------------------------------------------------------

    async def handle(self, request: WebhookRequest) -> Answer:
        received_ns = now_ns()
        raw_id = uuid7()
        record = self._record(request, raw_id, received_ns)
        try:
            events = self._checked(request, raw_id, received_ns)
        except Rejected as rejected:
            return await self._reject(record, rejected)
        except Unrecognised as exc:
            record.verdict = VERDICT_UNRECOGNISED
            record.http_status = 200
            record.reason = f"unrecognised: {exc.reason}"[:2000]
            if (failed := await self._archive(record)) is not None:
                return failed
            return Answer(200, {"status": "unrecognised", "raw_id": raw_id, "reason": exc.reason})
        record.verdict = VERDICT_ACCEPTED
        record.http_status = 200
        record.event_ids.extend(e.id for e in events)
        # The archive needs only the event ids: it is written while identities resolve.
        try:
            failed, _ = await asyncio.gather(self._archive(record), self._resolve(events))
        except _UNAVAILABLE as exc:
            return _unavailable(raw_id, exc)
        if failed is not None:
            return failed
        try:
            stored = await asyncio.gather(*(self._append(e) for e in events))
        except _UNAVAILABLE as exc:
            return _unavailable(raw_id, exc)
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

    def _record(self, request: WebhookRequest, raw_id: str, received_ns: int) -> RawPayload:
        body = request.body
        return RawPayload(
            id=raw_id,
            provider=request.provider,
            instance=request.instance,
            received_at=to_timestamp(received_ns),
            method=request.method,
            path=request.path,
            query=request.query,
            headers=signatures.redacted(request.headers),
            body=body,
            body_size=request.body_size if request.body_size >= 0 else len(body),
            body_truncated=request.truncated,
            remote_addr=request.remote_addr,
        )

    def _checked(
        self, request: WebhookRequest, raw_id: str, received_ns: int
    ) -> list[NormalizedEvent]:
        config = self.instance(request.provider, request.instance)
        if config is None:
            raise Rejected(
                404,
                "unknown_instance",
                f"no {request.provider} instance named {request.instance!r} is configured",
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
        if (problem := signatures.check(config, request.headers, request.body)) is not None:
            raise Rejected(
                401, "bad_signature", problem, signatures.SIGNATURE_HEADERS[config.format]
            )
        try:
            body = json.loads(request.body, parse_constant=_not_json)
        except (UnicodeDecodeError, ValueError) as exc:
            raise Rejected(400, "unparseable", f"body is not JSON: {exc}"[:500], "body") from None
        except RecursionError:
            # Nested past the parser's recursion limit: a RuntimeError, not a ValueError.
            raise Rejected(
                400, "unparseable", "body is not JSON this service reads: nested too deep", "body"
            ) from None
        if not isinstance(body, dict):
            raise Rejected(
                400, "not_an_object", f"body is a JSON {type(body).__name__}, not an object", "body"
            )
        try:
            events = normalize(
                request.provider, request.instance, body, to_datetime(received_ns), raw_id
            )
        except Malformed as exc:
            raise Rejected(422, "malformed", str(exc)[:2000], exc.field) from None
        if not events:
            raise Unrecognised("the body holds no event")
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
        return events

    async def _reject(self, record: RawPayload, rejected: Rejected) -> Answer:
        record.verdict = VERDICT_REJECTED
        record.http_status = rejected.status
        record.reason = f"{rejected.code}: {rejected.reason}"[:2000]
        record.field = rejected.field
        if len(record.body) > self.keep_rejected_bytes and rejected.code == "body_too_large":
            record.body = record.body[: self.keep_rejected_bytes]
            record.body_truncated = True
        if (failed := await self._archive(record)) is not None:
            return failed
        error = {"code": rejected.code, "message": rejected.reason, "raw_id": record.id}
        if rejected.field:
            error["field"] = rejected.field
        return Answer(rejected.status, {"error": error})

    async def _archive(self, record: RawPayload) -> Answer | None:
        try:
            await self.raw.put(record)
        except _UNAVAILABLE as exc:
            return _unavailable(record.id, exc)
        return None

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


def _short(event: NormalizedEvent) -> str:
    return EventType.Name(event.event_type).removeprefix("EVENT_TYPE_").lower()


def _unavailable(raw_id: str, exc: BaseException) -> Answer:
    log.warning("webhook %s not stored (try again): %s", raw_id, exc)
    return Answer(
        503,
        {"error": {"code": "unavailable", "message": f"not stored, try again: {exc}"[:500]}},
        {"Retry-After": "1"},
    )
