"""The event store on JetStream.

One stream (``CONTEXT_EVENTS``), one subject per aggregate and event type
(``context.events.<aggregate_id>.<event_type>``). An append is one publish (one
event) or one atomic batch (several), guarded by the aggregate's last subject
sequence and deduplicated by ``Nats-Msg-Id`` = event id (``<id>@<aggregate>`` where ids
are unique per aggregate only: ``EventStoreSettings.event_ids``). The stream sequence is the
global order; the envelope's ``aggregate_version`` is the per-aggregate order.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError, ConnectionReconnectingError, OutboundBufferLimitError

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core import crypto, deadline, telemetry
from jetsource.core.clock import now_ns, store_time_ns, to_ns, to_timestamp
from jetsource.core.codec import EventRegistry, PayloadDecodeError, UnknownEvent
from jetsource.core.envelope import (
    AppendResult,
    Expected,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
)
from jetsource.core.errors import (
    ConcurrencyError,
    CorruptEventError,
    DeadlineCutError,
    EventStoreUnavailableError,
    EventTooLargeError,
    JetsourceError,
    PartlyStoredError,
    StreamMissingError,
    ValidationError,
)
from jetsource.core.ids import uuid7, validate_aggregate_id
from jetsource.core.settings import EventStoreSettings
from jetsource.eventstore import horizon as horizons
from jetsource.eventstore import jsapi, refusals
from jetsource.eventstore.common import (
    MAX_SECONDS,
    a_time,
    check_append,
    check_read,
    stored_already,
    stored_envelope,
)
from jetsource.eventstore.horizon import BeyondHorizonError, Horizon
from jetsource.eventstore.jsapi import JsApiError, NoRespondersError, OutMessage, RawMessage
from jetsource.eventstore.keys import JetStreamKeyStore

T = TypeVar("T")

_TRANSIENT = (
    TimeoutError,
    ConnectionClosedError,
    ConnectionReconnectingError,
    OutboundBufferLimitError,
)


class _Unacknowledged(TimeoutError):
    """A publish whose acknowledgement did not come within its wait (its text says
    why that may be); transient, so asked again while there is time."""

    def __init__(self, text: str, waited: float) -> None:
        super().__init__(text)
        self.waited = waited


class _InProcess(Exception):
    """JetStream has an earlier attempt of this write (same message id) in process:
    not stored yet, not refused either. Transient, asked again while there is time."""

    def __init__(self, text: str, said: str) -> None:
        super().__init__(text)
        self.said = said


class UnacknowledgedWriteError(DeadlineCutError):
    """A write whose acknowledgement did not come within the store's own waits on a
    stream whose leader has its quorum (its STREAM.INFO says so): a slow one (a slow
    disk, a busy server), not a store that is down. DEADLINE_EXCEEDED naming the write
    (it may have been stored: a resend with the same idempotency key finds it), and
    write health is left alone; the write health probe judges the stream itself."""


def _time_for(delay: float) -> bool:
    """Whether a pause of up to 1.5 x ``delay`` (its jitter) and another attempt fit
    before the deadline of the call being served (none: they do)."""
    left = deadline.left()
    return left is None or left >= 1.5 * delay + deadline.ANSWER_RESERVE_S + deadline.MIN_WAIT_S


# Envelope tags, varints and timestamps, our three headers and NATS framing: generous.
_ENVELOPE_AND_HEADER_OVERHEAD = 512


# A message restored from an archive or backup keeps the time it was first recorded
# (the stream stamps a restored message with the time of the restore).
H_RECORDED_AT = "Jetsource-Recorded-At"


# The last nanosecond a Timestamp holds (9999-12-31T23:59:59.999999999Z).
_MAX_NS = (MAX_SECONDS + 1) * 1_000_000_000 - 1
_MAX_NS_DIGITS = len(str(_MAX_NS))  # 21: no int() of a header of thousands of digits


def _original_ns(raw: RawMessage) -> int | None:
    """A restored message's original time (its Jetsource-Recorded-At header, ns since
    1970 in ASCII digits): None when it has none, -1 when the header is no such time.
    A raw publish's header "²" (a digit to str.isdigit, not to int()) raised ValueError
    in every reader, the projector's included (its model stalled on it); one of 30
    digits made a time no Timestamp holds."""
    text = raw.headers.get(H_RECORDED_AT)
    if not text:
        return None
    if text.isascii() and text.isdigit() and len(text) <= _MAX_NS_DIGITS and int(text) <= _MAX_NS:
        return int(text)
    return -1


def recorded_ns(raw: RawMessage) -> int:
    """When the message was first recorded: the stream's time, or a restored
    message's original one (a header that is no time is the stream's: the readers
    that decode the message name it as corrupt, see ``_envelope``)."""
    original = _original_ns(raw)
    return raw.time_ns if original is None or original < 0 else original


def stored_event_id(msg_id: str, aggregate_id: str) -> str:
    """A stored message's event id from its Nats-Msg-Id: the id itself, or, in a stream
    whose ids are unique per aggregate, ``<id>@<aggregate id>`` with the suffix taken
    off."""
    suffix = "@" + aggregate_id
    return msg_id[: -len(suffix)] if msg_id.endswith(suffix) else msg_id


def _uuid_bytes(text: str) -> bytes | None:
    """The 16 bytes of a UUID in canonical text form (which they give back exactly)."""
    if len(text) != 36 or (text[8], text[13], text[18], text[23]) != ("-", "-", "-", "-"):
        return None
    digits = text.replace("-", "")
    try:
        value = bytes.fromhex(digits)
    except ValueError:
        return None
    # fromhex also takes upper case and spaces: only the canonical text is compacted.
    return value if len(value) == 16 and value.hex() == digits else None


class _VoidedTail(Exception):
    """An aggregate's last message is voided: its version comes from the history."""


def void_prefix(subject_prefix: str) -> str:
    """``context.events`` -> ``context.voids``: the subjects of operators' voids."""
    root, _, _ = subject_prefix.rpartition(".")
    return f"{root}.voids" if root else f"{subject_prefix}_voids"


def voided_event(record: RecordedEvent) -> RecordedEvent:
    """A voided event at its place in the history: it keeps its version and changes
    nothing (every handler skips an unknown event)."""
    return RecordedEvent(
        record.envelope,
        UnknownEvent(record.event_type, record.envelope.schema_version, b"", "voided"),
        record.stream_seq,
        record.recorded_at_ns,
    )


# How long the answer to "why no responders" (_not_taken) is reused.
_DIAGNOSIS_TTL_S = 1.0


class _ElectingError(EventStoreUnavailableError):
    """No responders from a stream STREAM.INFO says is there: between two leaders."""


def _covers(pattern: str, prefix: str) -> bool:
    """Whether a stream subject ``pattern`` takes every subject under ``prefix.>``."""
    wanted = [*prefix.split("."), ">"]
    for i, token in enumerate(pattern.split(".")):
        if token == ">":
            return True
        if i >= len(wanted) or wanted[i] == ">" or token not in ("*", wanted[i]):
            return False
    return False


def stream_config(cfg: EventStoreSettings) -> dict[str, Any]:
    """Event-store defaults: nothing is ever deleted, rewritten or silently dropped."""
    return {
        "name": cfg.stream,
        "subjects": [f"{cfg.subject_prefix}.>", f"{void_prefix(cfg.subject_prefix)}.>"],
        "retention": "limits",
        "storage": "file",
        "discard": "new",  # a full stream refuses appends rather than dropping history
        "deny_delete": True,
        # Only a stream whose policy archives and compacts, or names purge roles (the
        # sessions pruner), can be purged, and then only by those roles' credentials
        # (NATS permissions on $JS.API.STREAM.PURGE).
        "deny_purge": cfg.retention != "age+compaction" and not cfg.purge_roles,
        "compression": cfg.compression,
        "allow_direct": True,
        "allow_atomic": True,
        "duplicate_window": int(cfg.duplicate_window_s * 1_000_000_000),
        "num_replicas": cfg.replicas,
        "max_msg_size": cfg.max_msg_size,
        "max_bytes": cfg.max_bytes,
        "max_msgs": -1,
        "max_age": int(cfg.max_age_s * 1_000_000_000) if cfg.retention == "age" else 0,
    }


class JetStreamEventStore:
    def __init__(
        self,
        nc: NATS,
        registry: EventRegistry,
        settings: EventStoreSettings,
        keys: JetStreamKeyStore | None = None,
    ) -> None:
        self._nc = nc
        self._registry = registry
        self._cfg = settings
        # Data keys of personal fields (crypto-shredding): shared by every stream.
        self.keys = keys or JetStreamKeyStore(
            nc,
            settings.keys_bucket,
            replicas=settings.replicas,
            timeout_s=settings.request_timeout_s,
        )
        self._replies = jsapi.Replies(nc)
        # aggregate id -> (version, stream sequence) of its last known event
        self._positions: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._voids: set[int] = set()  # stream sequences known to be voided
        self._void_sub: Any = None
        self._voids_scanned = False  # the voids recorded before the subscription
        # why calls had no responders (_not_taken): one question at a time, kept briefly
        # (kind, why): kind "missing", "leaderless" (no answer) or "electing" (there)
        self._diagnosing: asyncio.Future[tuple[str, str]] | None = None
        self._diagnosis: tuple[float, str, str] | None = None

    @property
    def settings(self) -> EventStoreSettings:
        return self._cfg

    async def start(self) -> None:
        await self._replies.start()
        if not self.keys.listening:  # every append starts: no coroutine when it is
            await self.keys.start()  # hears erasures: no JetStream call
        if self._void_sub is None:
            await self._watch_voids()
        if not self._voids_scanned:
            await self._scan_voids()

    async def _watch_voids(self) -> None:
        """Know every voided sequence without asking: the few recorded so far, then
        each new one as it is recorded (the stream's subjects are core subjects too).
        ``voided()`` still asks the stream when a message is not valid, so a void
        missed here is found where it matters."""
        prefix = void_prefix(self._cfg.subject_prefix)

        async def seen(msg: Any) -> None:
            tail = msg.subject.rsplit(".", 1)[-1]
            if tail.isdigit():
                self._heard_void(int(tail))

        with deadline.detached():  # its task outlives the call that started it
            self._void_sub = await self._nc.subscribe(f"{prefix}.>", cb=seen)

    async def _scan_voids(self) -> None:
        """The voids recorded so far, once per store. It ran under the deadline of the
        call that started the store, and a scan that deadline cut was taken for NATS
        away with the subscription already set: voided events read as ordinary ones
        until a restart. It serves every later call, so it has no call's deadline; one
        cancelled is asked again by the next start."""
        prefix = void_prefix(self._cfg.subject_prefix)
        try:
            with deadline.detached():
                async for raw in jsapi.direct_get_batch(
                    self._replies, self._cfg.stream, f"{prefix}.>", 1, self._cfg.request_timeout_s
                ):
                    tail = raw.subject.rsplit(".", 1)[-1]
                    if tail.isdigit():
                        self._voids.add(int(tail))
        except (JsApiError, NoRespondersError, *_TRANSIENT):
            pass  # no stream yet, or NATS away: voided() asks when it matters
        self._voids_scanned = True

    async def close(self) -> None:
        if self._void_sub is not None:
            sub, self._void_sub = self._void_sub, None
            self._voids_scanned = False  # voids recorded meanwhile: scanned on the next start
            with contextlib.suppress(ConnectionClosedError, ConnectionReconnectingError):
                await sub.unsubscribe()
        await self._replies.stop()
        await self.keys.close()

    # -- provisioning ---------------------------------------------------------

    async def ensure_streams(self) -> dict[str, Any]:
        """Create the stream, or bring an existing one to this configuration.

        A stream created with deny_purge keeps it: the server never lets it go. Its
        other settings are still brought up to date and it stays purge-denied (the
        answer's config says so); ``jetsource streams ensure`` moves a domain's stream
        whose policy now allows purges (``jetsource.eventstore.reshape``)."""
        await self.start()
        self._diagnosis = None  # whatever was wrong with the stream is being put right
        config = stream_config(self._cfg)
        try:
            return await jsapi.ensure_stream(self._replies, config, self._cfg.request_timeout_s)
        except JsApiError as exc:
            if config["deny_purge"] or "deny purge" not in exc.description:
                raise
        return await jsapi.ensure_stream(
            self._replies, {**config, "deny_purge": True}, self._cfg.request_timeout_s
        )

    async def stream_info(self) -> dict[str, Any]:
        # A store never started has no reply inbox: without this, every attempt waits
        # out its timeout (a second domain's store under `projector status`).
        await self.start()
        return await self._call(
            lambda: jsapi.api(
                self._replies, f"STREAM.INFO.{self._cfg.stream}", {}, self._cfg.request_timeout_s
            )
        )

    # -- helpers ----------------------------------------------------------------

    def _subject_filter(self, aggregate_id: str) -> str:
        return f"{self._cfg.subject_prefix}.{aggregate_id}.>"

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Retry transient failures with backoff; map a missing stream to a clear error."""
        attempts = self._cfg.retry_attempts
        for attempt in range(attempts):
            try:
                result = await fn()
            except DeadlineCutError:  # no time for another attempt; nothing known down
                raise
            except NoRespondersError:
                why = await self._not_taken()
                # A stream that is there but between leaders takes no request for a
                # moment: asked again. Not answering STREAM.INFO either (quorum lost)
                # already cost a request's timeout: said at once.
                delay = self._cfg.retry_backoff_s * (2**attempt)
                if (
                    not isinstance(why, _ElectingError)
                    or attempt == attempts - 1
                    or not _time_for(delay)
                ):
                    raise why from None
                await asyncio.sleep(delay * (0.5 + random.random()))
                continue
            except JsApiError as exc:
                if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND:
                    raise StreamMissingError(f"stream {self._cfg.stream} not found") from exc
                if (named := refusals.refused_from(exc, self._cfg.stream)) is not None:
                    raise named from exc
                if exc.err_code != jsapi.ERR_DUPLICATE_IN_PROCESS:
                    raise
                # Our earlier attempt (its ack waited out) is still in process at the
                # stream's leader: asked again, it is acknowledged once stored. It was
                # raised as it was (INTERNAL over gRPC, "a bug").
                failed: BaseException = _InProcess(
                    self._in_process(exc.description), exc.description
                )
                failed.__cause__ = exc
            except _TRANSIENT as exc:
                failed = exc
            else:
                self._diagnosis = None  # it answers: a kept "why not" is stale
                return result
            # Transient: asked again unless the attempts, or the caller's deadline (a
            # gRPC call's), would end inside the next one.
            delay = self._cfg.retry_backoff_s * (2**attempt)
            if attempt == attempts - 1 or not _time_for(delay):
                # A publish unanswered on a connection that is up: its stream's
                # leader holds it (NATS itself answers), said so; else NATS is away.
                held = isinstance(failed, _InProcess) or (
                    isinstance(failed, _Unacknowledged) and self._nc.is_connected
                )
                if held:
                    raise await self._held(failed, attempt + 1) from failed
                said = (
                    repr(failed.__cause__ or failed)
                    if isinstance(failed, _Unacknowledged)
                    else repr(failed)
                )
                raise EventStoreUnavailableError(
                    f"NATS did not answer after {attempt + 1} attempts: {said} (a full "
                    "disk makes JetStream stop answering writes; see `jetsource infra status`)"
                ) from failed
            await asyncio.sleep(delay * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _remember(self, aggregate_id: str, version: int, seq: int) -> None:
        if self._cfg.position_cache_size == 0:
            return
        known = self._positions.get(aggregate_id)
        if known is None or known[0] < version:
            self._positions[aggregate_id] = (version, seq)
        self._positions.move_to_end(aggregate_id)
        while len(self._positions) > self._cfg.position_cache_size:
            self._positions.popitem(last=False)

    def _envelope(self, raw: RawMessage) -> EventEnvelope:
        """The full envelope of a stored message.

        The stored envelope leaves out what the message already carries, so it is not
        stored twice: event_id (the Nats-Msg-Id header), aggregate id and event type
        (the subject's last two tokens), aggregate type (the stream's), recorded_at
        (the stream's timestamp). Fields a writer did store are kept as they are.
        """
        envelope = EventEnvelope()
        try:
            envelope.ParseFromString(raw.data)
        except DecodeError as exc:
            raise PayloadDecodeError(f"stream sequence {raw.seq}: envelope does not parse") from exc
        aggregate_id, event_type = self._subject_tokens(raw)
        if not envelope.event_id:
            envelope.event_id = stored_event_id(raw.headers.get("Nats-Msg-Id", ""), aggregate_id)
        # What the subject says is what the stream guards (optimistic concurrency is on
        # the subject): an envelope that disagrees with it, or that has no place in a
        # history (no version, no schema), was not written by an event store.
        problem = None
        if envelope.aggregate_id and envelope.aggregate_id != aggregate_id:
            problem = f"its envelope names aggregate {envelope.aggregate_id[:80]!r}"
        elif envelope.event_type and envelope.event_type != event_type:
            problem = f"its envelope names event type {envelope.event_type[:80]!r}"
        elif envelope.aggregate_version < 1:
            problem = "its envelope has no aggregate version" + (
                " (empty message)" if not raw.data else ""
            )
        elif envelope.schema_version < 1:
            problem = "its envelope has no schema version"
        elif envelope.HasField("occurred_at") and not a_time(envelope.occurred_at):
            # Every writer stores a time of the years 1..9999 (the range of a protobuf
            # Timestamp); one outside it broke every reader that shows it (`ctx events`
            # failed INTERNAL "year 0 is out of range", JSON carried "20.1500000000Z").
            at = envelope.occurred_at
            problem = (
                f"its envelope's occurred_at is no time (seconds {at.seconds}, nanos "
                f"{at.nanos}; years 1 to 9999, nanos 0 to 999999999)"
            )
        elif _original_ns(raw) == -1:
            problem = (
                f"its {H_RECORDED_AT} header {raw.headers[H_RECORDED_AT][:40]!r} is no time "
                f"(nanoseconds since 1970 in digits, at most {_MAX_NS})"
            )
        elif envelope.idempotency_uuid and len(envelope.idempotency_uuid) != 16:
            problem = (
                f"its envelope's idempotency_uuid has {len(envelope.idempotency_uuid)} bytes,"
                " not 16"
            )
        if problem:
            raise PayloadDecodeError(f"stream sequence {raw.seq}: {problem}")
        envelope.event_type = event_type
        envelope.aggregate_id = aggregate_id
        if not envelope.aggregate_type:
            envelope.aggregate_type = self._cfg.aggregate_type
        envelope.recorded_at.CopyFrom(to_timestamp(recorded_ns(raw)))
        if not envelope.HasField("occurred_at"):
            envelope.occurred_at.CopyFrom(envelope.recorded_at)
        if envelope.idempotency_uuid:
            envelope.idempotency_key = str(uuid.UUID(bytes=envelope.idempotency_uuid))
            envelope.ClearField("idempotency_uuid")
        return envelope

    def _subject_tokens(self, raw: RawMessage) -> tuple[str, str]:
        """The aggregate id and event type a message's subject names, or
        PayloadDecodeError: the stream takes any subject under its prefix, and a raw
        publish on ``<prefix>.x.y.Type`` or ``<prefix>.Type`` was read as aggregate
        ``y`` (or the prefix's last token), one with an id no writer takes (``a%b``, 2,000
        characters) as that id: the read models listed stories no read or command
        reaches, and the stories' own readers never saw them."""
        prefix = self._cfg.subject_prefix + "."
        if raw.subject.startswith(prefix):
            tokens = raw.subject[len(prefix) :].split(".")
        else:  # (a subject of another prefix: as it was read before)
            tokens = raw.subject.rsplit(".", 2)[1:]
        problem = None
        if len(tokens) != 2 or not tokens[1]:
            problem = "is not <subject prefix>.<aggregate id>.<event type>"
        else:
            try:
                validate_aggregate_id(tokens[0])
            except ValidationError as exc:
                problem = f"names no aggregate a writer takes ({exc})"
        if problem:
            raise PayloadDecodeError(
                f"stream sequence {raw.seq}: its subject {raw.subject[:200]!r} {problem}"
            )
        return tokens[0], tokens[1]

    def decode(self, raw: RawMessage, envelope: EventEnvelope | None = None) -> RecordedEvent:
        """A stored message as a recorded event (envelope completed, personal fields
        opened or read as erased, payload upcast). A message with sealed fields needs
        its keys loaded first: use :meth:`open` (KeysNotLoadedError otherwise)."""
        if envelope is None:
            envelope = self._envelope(raw)
        if envelope.sealed:
            # Opened before upcasting: the sealed fields are those of the stored version.
            envelope.payload, _ = crypto.unseal(envelope, self.keys.lookup)
            del envelope.sealed[:]
        event = self._registry.decode(
            envelope.event_type, envelope.schema_version, envelope.payload
        )
        return RecordedEvent(envelope, event, raw.seq, recorded_ns(raw))

    async def open(self, raw: RawMessage) -> RecordedEvent:
        """:meth:`decode` after loading the keys of the message's sealed fields."""
        envelope = self._envelope(raw)
        if envelope.sealed:
            await self.keys.load(box.key_ref for box in envelope.sealed)
        return self.decode(raw, envelope)

    async def _seal(
        self, events: Sequence[NewEvent], encoded: list[tuple[str, int, bytes]]
    ) -> Sequence[crypto.Sealed | None]:
        """Cut the personal values out of each event, boxed under their subjects' keys
        (created on first use); payloads in ``encoded`` are replaced by the rest.
        Empty when nothing is personal."""
        if len(events) == 1:  # a command of one event: no lists, no dicts
            new = events[0]
            cut = crypto.cut_of(new.event, new.metadata)
            if cut is None:
                return ()
            refkeys = self.keys.cached(cut.subjects) or await self.keys.keys_for(cut.subjects)
            sealed = cut.seal(new.event, new.metadata, refkeys)
            event_type, schema_version, _ = encoded[0]
            encoded[0] = (event_type, schema_version, sealed.payload)
            return (sealed,)
        cuts = [crypto.cut_of(new.event, new.metadata) for new in events]
        if not any(cuts):
            return ()
        subjects = tuple(dict.fromkeys(s for cut in cuts if cut is not None for s in cut.subjects))
        keys = dict(
            zip(
                subjects,
                self.keys.cached(subjects) or await self.keys.keys_for(subjects),
                strict=True,
            )
        )
        out: list[crypto.Sealed | None] = []
        for i, (new, cut) in enumerate(zip(events, cuts, strict=True)):
            if cut is None:
                out.append(None)
                continue
            sealed = cut.seal(new.event, new.metadata, tuple(keys[s] for s in cut.subjects))
            event_type, schema_version, _ = encoded[i]
            encoded[i] = (event_type, schema_version, sealed.payload)
            out.append(sealed)
        return out

    async def _tail(self, aggregate_id: str) -> RawMessage | None:
        """The aggregate's last stored message, from the server."""
        return await self._call(
            lambda: jsapi.last_for_subject(
                self._replies,
                self._cfg.stream,
                self._subject_filter(aggregate_id),
                self._cfg.request_timeout_s,
            )
        )

    def _position(self, aggregate_id: str, tail: RawMessage | None) -> tuple[int, int]:
        """(version, sequence) of a tail message, remembered for the next append."""
        if tail is None:
            return 0, 0
        if tail.seq in self._voids:
            raise _VoidedTail(tail.seq)
        try:
            version = self._envelope(tail).aggregate_version
        except PayloadDecodeError as exc:
            raise CorruptEventError(aggregate_id, tail.seq, str(exc)) from exc
        self._remember(aggregate_id, version, tail.seq)
        return version, tail.seq

    async def _last(self, aggregate_id: str) -> tuple[int, int]:
        tail = await self._tail(aggregate_id)
        try:
            return self._position(aggregate_id, tail)
        except (CorruptEventError, _VoidedTail) as exc:
            # The last message says nothing of the version: read the history (which
            # steps over what an operator voided, or names what is corrupt).
            assert tail is not None
            if isinstance(exc, CorruptEventError) and not await self.voided(aggregate_id, tail.seq):
                raise
            events = await self.live_history(aggregate_id)
            version = events[-1].version if events else 0
            self._positions.pop(aggregate_id, None)
            self._remember(aggregate_id, version, tail.seq)
            return version, tail.seq

    # -- append -----------------------------------------------------------------

    def _encode(
        self, aggregate_id: str, events: Sequence[NewEvent]
    ) -> list[tuple[str, int, bytes]]:
        """Encode payloads once per append (types checked, sizes bounded) before any I/O."""
        out = []
        cfg = self._cfg
        encode = self._registry.encode
        # Upper bound of the stored message: payload, envelope strings, subject, headers.
        fixed = (
            len(aggregate_id) * 3
            + len(cfg.subject_prefix) * 2
            + len(cfg.aggregate_type)
            + _ENVELOPE_AND_HEADER_OVERHEAD
        )
        for i, new in enumerate(events):
            event_type, schema_version, payload = encode(
                new.event, new.event_type, new.schema_version
            )
            size = (
                fixed
                + len(payload)
                + len(new.event_id) * 2
                + len(event_type) * 2
                + len(new.parent_aggregate_id)
                + len(new.causation_id)
                + len(new.correlation_id)
                + len(new.source)
                + len(new.idempotency_key)
            )
            if new.metadata:
                size += sum(len(k) + len(v) + 6 for k, v in new.metadata.items())
            if size > cfg.max_msg_size:
                raise EventTooLargeError(
                    f"event {i} ({event_type}) is {size} bytes; the stream accepts at most "
                    f"{cfg.max_msg_size} bytes per event",
                    index=i,
                )
            out.append((event_type, schema_version, payload))
        return out

    def _messages(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        encoded: list[tuple[str, int, bytes]],
        base_version: int,
        base_seq: int,
        sealed: Sequence[crypto.Sealed | None] = (),
    ) -> list[OutMessage]:
        out = []
        prefix = f"{self._cfg.subject_prefix}.{aggregate_id}"
        # W3C traceparent of the append's span, for the projector's spans; only while
        # a span is being traced (headers cost bytes on every stored event).
        trace = telemetry.trace_headers() if telemetry.enabled() else None
        # The duplicate check is stream-wide: ids unique per aggregate only are scoped.
        scope = f"@{aggregate_id}" if self._cfg.event_ids == "aggregate" else ""
        for i, (new, (event_type, schema_version, payload)) in enumerate(
            zip(events, encoded, strict=True)
        ):
            box = sealed[i] if sealed else None
            metadata = box.metadata if box is not None else new.metadata
            # No business time given: it is the time the stream records (readers fill
            # it in), not a second timestamp stored with every event.
            envelope = stored_envelope(
                new, schema_version, base_version + i + 1, payload, None, metadata
            )
            if new.idempotency_key and (compact := _uuid_bytes(new.idempotency_key)) is not None:
                envelope.ClearField("idempotency_key")
                envelope.idempotency_uuid = compact
            # Deterministic serialization orders map entries, and the envelope's only map
            # is its metadata: without entries the bytes are the same, and the keyword
            # argument costs more than the serialization (upb).
            data = (
                envelope.SerializeToString(deterministic=True)
                if metadata
                else envelope.SerializeToString()
            )
            if box is not None:
                data += box.wire  # the envelope's `sealed` field, serialized once
            headers = {"Nats-Msg-Id": new.event_id + scope}
            if trace:
                headers.update(trace)
            if i == 0:
                # Optimistic concurrency: the aggregate's subjects must end where we read them.
                headers["Nats-Expected-Last-Subject-Sequence"] = str(base_seq)
                headers["Nats-Expected-Last-Subject-Sequence-Subject"] = f"{prefix}.>"
            out.append(OutMessage(f"{prefix}.{event_type}", data, headers))
        return out

    async def append(
        self, aggregate_id: str, events: Sequence[NewEvent], expected_version: Expected
    ) -> AppendResult:
        if not telemetry.enabled():
            return await self._append(aggregate_id, events, expected_version)
        with telemetry.span(
            f"append {self._cfg.stream}",
            kind="producer",
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": self._cfg.stream,
                "messaging.batch.message_count": len(events),
                "jetsource.aggregate_id": aggregate_id,
            },
        ) as span:
            result = await self._append(aggregate_id, events, expected_version)
            if span is not None and result.stream_seqs:
                span.set_attribute("jetsource.stream_seq", result.stream_seqs[-1])
                span.set_attribute("jetsource.duplicate", result.duplicate)
            return result

    async def _append(
        self, aggregate_id: str, events: Sequence[NewEvent], expected_version: Expected
    ) -> AppendResult:
        ids = check_append(aggregate_id, events, expected_version)
        encoded = self._encode(aggregate_id, events)
        if (
            self._void_sub is None
            or not self._voids_scanned
            or not self._replies.started
            or not self.keys.listening
        ):
            await self.start()
        sealed = await self._seal(events, encoded)

        # A new aggregate (expected: none yet) unknown here is not looked up: its
        # first message expects no message on its subjects (sequence 0), which the
        # server checks anyway. Refused, the append goes the usual way (look up,
        # compare, conflict or publish again), as if it had looked up first.
        guess = aggregate_id not in self._positions and (
            expected_version is ExpectedVersion.NO_STREAM
            or (type(expected_version) is int and expected_version == 0)
        )
        in_flight = 0  # refusals for a write of ours in flight, not stored yet
        # Where the last such refusal found the story: ``in_flight`` counts consecutive
        # stalls at one position only. It added up over the whole append, so on a
        # healthy cluster ~5 races lost to writers not yet visible (the story moving on
        # each time) ended in "unavailable, its leader waits for a quorum".
        stalled_at: tuple[int, int] | None = None
        # Tries left; a refusal for a write in flight does not spend one (its waits are
        # bounded by the attempts and the call's deadline in ``_wait_in_flight``).
        tries = self._cfg.any_conflict_retries + 1 + guess
        while tries > 0:
            tries -= 1
            if guess:
                version, seq = 0, 0
            else:
                version, seq = await self._base(aggregate_id, expected_version)
            if (isinstance(expected_version, int) and version != expected_version) or (
                expected_version is ExpectedVersion.NO_STREAM and version != 0
            ):
                return await self._conflict(aggregate_id, events, expected_version, version)
            messages = self._messages(aggregate_id, events, encoded, version, seq, sealed)
            try:
                ack = await self._call(partial(self._publish, messages))
            except JsApiError as exc:
                if exc.err_code not in (
                    jsapi.ERR_WRONG_LAST_SEQUENCE,
                    jsapi.ERR_BATCH_DUPLICATE_MSG_ID,
                ):
                    if exc.err_code == jsapi.ERR_MESSAGE_TOO_LARGE:
                        raise EventTooLargeError(exc.description) from exc
                    raise
                self._positions.pop(aggregate_id, None)
                if guess:
                    guess = False
                    continue  # the look-up skipped, then the usual way
                if expected_version is ExpectedVersion.ANY:
                    found = await self._find(aggregate_id, events)
                    if found is not None:
                        return found
                    # Refused for a write in flight with nothing stored since (a leader
                    # that lost its quorum holds it): reloaded and refused again at
                    # once until the tries ran out, ending in a ConcurrencyError, which
                    # ANY has none to report. Asked again as the versioned path does,
                    # then unavailable.
                    if exc.in_flight and (await self._last(aggregate_id))[0] == version:
                        if stalled_at != (version, seq):
                            # The story moved on since the last stall (a racer's write
                            # stored): a race lost, not a write held. Such a race spends
                            # a try, as one refused plainly does; the first does not.
                            if stalled_at is not None:
                                tries -= 1
                            stalled_at, in_flight = (version, seq), 0
                        await self._wait_in_flight(aggregate_id, in_flight, conflict=False)
                        in_flight += 1
                        tries += 1
                    continue  # somebody else appended: reload and try again
                actual, _ = await self._last(aggregate_id)
                # Refused for a write in flight, yet nothing was stored since: an
                # earlier attempt of ours, held by a leader that lost its quorum (or a
                # racing write not visible yet). Answered "conflict", a command reloaded
                # and tried again 20 times (ABORTED "kept changing") though nothing
                # changed.
                if (
                    exc.in_flight
                    and actual == version
                    and await self._wait_in_flight(aggregate_id, in_flight)
                ):
                    in_flight += 1
                    continue
                return await self._conflict(aggregate_id, events, expected_version, actual)
            if ack.duplicate:
                found = await self._find(aggregate_id, events)
                if found is None:
                    raise ConcurrencyError(aggregate_id, expected_version, version)
                return found
            n = len(events)
            self._remember(aggregate_id, version + n, ack.seq)
            if n == 1:
                return AppendResult(aggregate_id, [version + 1], [ack.seq], ids)
            seqs = list(range(ack.seq - n + 1, ack.seq + 1))
            return AppendResult(aggregate_id, list(range(version + 1, version + n + 1)), seqs, ids)
        actual, _ = await self._last(aggregate_id)
        raise ConcurrencyError(aggregate_id, expected_version, actual)

    async def append_many(
        self, groups: Sequence[tuple[str, Sequence[NewEvent]]]
    ) -> list[AppendResult]:
        """Append several aggregates' events (``ExpectedVersion.ANY`` each) as ONE
        atomic batch: every group stored, contiguous and in order, or none. Each
        aggregate's first message carries its own optimistic-concurrency check, so the
        batch is refused whole if any aggregate moved; then (and on a duplicate) each
        group is appended on its own, which reloads, retries and finds duplicates as
        ``append`` does. One batch costs one commit where one per aggregate costs one
        each (file storage syncs every atomic commit). An aggregate appears in at most
        one group; at most ``BATCH_LIMIT`` events in all. An event too large is
        ``EventTooLargeError`` with ``index`` its place among all the groups' events in
        the order given (as ``append``'s among its events; the message names its
        aggregate and its place in that group), None when the server refused the batch."""
        ids = [a for a, _ in groups]
        if len(set(ids)) != len(ids):
            raise ValidationError("append_many: an aggregate appears in two groups")
        if sum(len(e) for _, e in groups) > jsapi.BATCH_LIMIT:
            raise ValidationError(f"append_many: more than {jsapi.BATCH_LIMIT} events")
        if len(groups) == 1:
            return [await self.append(groups[0][0], groups[0][1], ExpectedVersion.ANY)]
        # One list of every event: sealed in one call, no coroutine per group.
        encoded: list[tuple[str, int, bytes]] = []
        for aggregate_id, events in groups:
            check_append(aggregate_id, events, ExpectedVersion.ANY)
            try:
                encoded += self._encode(aggregate_id, events)
            except EventTooLargeError as exc:
                # Its place in the batch, not in its group (which the index cannot say).
                index = None if exc.index is None else len(encoded) + exc.index
                raise EventTooLargeError(f"{aggregate_id}: {exc}", exc.field, index) from None
        await self.start()
        sealed = await self._seal([e for _, events in groups for e in events], encoded)
        # The positions known here (ExpectedVersion.ANY takes them as ``_base`` does; a
        # stale one makes the server refuse the batch), looked up only where unknown:
        # no task per group.
        known = [self._positions.get(aggregate_id) for aggregate_id, _ in groups]
        unknown = [i for i, position in enumerate(known) if position is None]
        if unknown:
            found = await asyncio.gather(*(self._last(groups[i][0]) for i in unknown))
            for i, position in zip(unknown, found, strict=True):
                known[i] = position
        bases = [position for position in known if position is not None]
        messages: list[OutMessage] = []
        at = 0
        for (aggregate_id, events), (version, seq) in zip(groups, bases, strict=True):
            n = len(events)
            messages += self._messages(
                aggregate_id,
                events,
                encoded[at : at + n],
                version,
                seq,
                sealed[at : at + n] if sealed else (),
            )
            at += n
        try:
            ack = await self._call(partial(self._publish, messages))
        except JsApiError as exc:
            if exc.err_code == jsapi.ERR_MESSAGE_TOO_LARGE:
                raise EventTooLargeError(exc.description) from exc
            if exc.err_code not in (
                jsapi.ERR_WRONG_LAST_SEQUENCE,
                jsapi.ERR_BATCH_DUPLICATE_MSG_ID,
            ):
                raise
            ack = None
        if ack is None or ack.duplicate:
            for aggregate_id, _ in groups:
                self._positions.pop(aggregate_id, None)
            return list(
                await asyncio.gather(*(self.append(a, e, ExpectedVersion.ANY) for a, e in groups))
            )
        out = []
        seq = ack.seq - len(messages)
        for (aggregate_id, events), (version, _) in zip(groups, bases, strict=True):
            n = len(events)
            seqs = list(range(seq + 1, seq + n + 1))
            seq += n
            self._remember(aggregate_id, version + n, seqs[-1])
            out.append(
                AppendResult(
                    aggregate_id,
                    list(range(version + 1, version + n + 1)),
                    seqs,
                    [e.event_id for e in events],
                )
            )
        return out

    async def _publish(self, messages: list[OutMessage]) -> jsapi.PubAck:
        # Within the caller's deadline (a gRPC call's): it ended inside the wait for the
        # acknowledgement, and the call was answered a bare DEADLINE_EXCEEDED. The
        # request itself keeps it (jsapi.Replies): cut by it, DeadlineCutError.
        timeout = self._cfg.request_timeout_s
        try:
            if len(messages) == 1:  # jsapi.publish, one coroutine less per append
                m = messages[0]
                return jsapi.parse_puback(
                    await self._replies.request(m.subject, m.data, m.headers, timeout)
                )
            return await jsapi.publish_atomic_batch(self._replies, messages, uuid7(), timeout)
        except DeadlineCutError as exc:
            raise await self._write_cut(messages, exc) from exc
        except TimeoutError as exc:
            raise _Unacknowledged(self._unacknowledged(timeout), timeout) from exc

    async def _write_cut(self, messages: list[OutMessage], cut: DeadlineCutError) -> Exception:
        """What a publish whose acknowledgement the call's deadline cut is answered:
        the stream's own word on its leader when it has one to say (:meth:`_trouble`,
        as a write held through every attempt is diagnosed: no leader, one that lost
        quorum, JetStream off: unavailable; the stream gone: StreamMissingError), else
        DeadlineCutError naming the write in flight. It was "lost quorum" (UNAVAILABLE,
        and the publisher NOT_SERVING) for every slow acknowledgement, a healthy
        cluster's too; and DEADLINE_EXCEEDED with JetStream off (no responders)."""
        why = None
        # In the little time left (the deadline's reserve): an answer says.
        with contextlib.suppress(DeadlineCutError, JsApiError, *_TRANSIENT):
            why = await self._trouble()
        if isinstance(why, StreamMissingError):
            return why
        aggregates = ", ".join(dict.fromkeys(m.subject.rsplit(".", 2)[-2] for m in messages))
        if why is not None:
            return EventStoreUnavailableError(
                f"stream {self._cfg.stream} did not acknowledge the write of {aggregates} "
                f"before the call's deadline: {why}; sent again with the same ids (the "
                "same idempotency key) it is stored once"
            )
        return DeadlineCutError(
            f"the call's deadline came while the write of {len(messages)} event(s) to "
            f"{aggregates} waited for stream {self._cfg.stream}'s acknowledgement ({cut}); "
            "it may have been stored: sent again with the same idempotency key, the "
            "command finds it if it was and stores it once if not"
        )

    async def _trouble(self) -> str | StreamMissingError | None:
        """Why the stream stores no write now, from its own word (STREAM.INFO): no
        leader or one that lost quorum (it stores nothing until a majority is back),
        or no JetStream answering (no responders: off, as nats-server turns it off when
        its disk fills): a clause saying so; the stream gone: StreamMissingError;
        None: a leader with its quorum. The one diagnosis of a write not acknowledged,
        cut by the call's deadline (``_write_cut``) or held through every attempt
        (``_held``): a cut write with JetStream off said DEADLINE_EXCEEDED while a held
        one said UNAVAILABLE. Raises DeadlineCutError (the deadline ended the
        question), other JsApiError answers and transient connection errors."""
        try:
            why = await jsapi.stream_leadership(
                self._replies, self._cfg.stream, self._cfg.request_timeout_s, absent=True
            )
        except NoRespondersError:
            return (
                "JetStream does not answer (no responders to STREAM.INFO): it is off at "
                "the server, as nats-server turns it off when its disk fills (see "
                "`jetsource infra status`)"
            )
        except JsApiError as exc:
            if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND:
                return self._stream_missing()
            raise
        if why is None:
            return None
        return (
            f"{why}; its leader stores nothing until a majority of the NATS cluster's "
            "servers is back"
        )

    async def _wait_in_flight(self, aggregate_id: str, tried: int, conflict: bool = True) -> bool:
        """After a refusal for a write in flight (nothing stored since): True after a
        pause before the append is tried again (reloaded: a racing write stored by then
        is a conflict). With the attempts, or the caller's deadline, spent: on a stream
        whose leader lost its quorum (or has none), EventStoreUnavailableError naming
        it; else False, and the refusal is the conflict it was (a healthy cluster's
        race, its write not yet visible where it was looked up). Without a ``conflict``
        to report (an ``ExpectedVersion.ANY`` append) it is unavailable either way, but
        for a healthy leader with attempts left and the deadline spent: DeadlineCutError."""
        delay = self._cfg.retry_backoff_s * (2**tried)
        attempts_left = tried < self._cfg.retry_attempts - 1
        if attempts_left and _time_for(delay):
            await asyncio.sleep(delay * (0.5 + random.random()))
            return True
        try:
            why = await jsapi.stream_leadership(
                self._replies, self._cfg.stream, self._cfg.request_timeout_s
            )
        except DeadlineCutError as exc:
            raise DeadlineCutError(
                f"stream {self._cfg.stream} refused the write of {aggregate_id} for another "
                f"write of it in flight there ({tried + 1} tries), and the call's deadline "
                f"came before its leader could be asked why ({exc}); sent again with the "
                "same idempotency key, the command finds the write if it was stored"
            ) from exc
        if why is None and conflict:
            return False
        if why is None and attempts_left:
            # A healthy leader, and no time left for another pause and try: the call's
            # deadline cut the wait (under 0.87 s left, one race lost to a write not yet
            # visible said the cluster had lost its quorum).
            raise DeadlineCutError(
                f"stream {self._cfg.stream} refused the write of {aggregate_id} for another "
                f"write of it in flight there, not stored yet ({tried + 1} tries; its "
                "leader is healthy), and the call's deadline left no time to try again; "
                "sent again with the same idempotency key, the command finds the write if "
                "it was stored and stores it once if not"
            )
        raise EventStoreUnavailableError(
            f"stream {self._cfg.stream} refused the write: another write of "
            f"{aggregate_id} is in flight there and not stored yet ({tried + 1} tries"
            f"{f'; {why}' if why else ''}): its leader waits for a quorum of replicas "
            "(more than half of the NATS cluster's servers down or cut off?) and stores "
            "nothing until a majority is back; sent again with the same ids (the same "
            "idempotency key) it is stored once"
        )

    async def _held(self, failed: BaseException, attempts: int) -> Exception:
        """What a write that the stream held through every attempt (its ack not come
        within the store's own wait, or an earlier attempt of it in process) is
        answered, from the stream's own word on its leader (STREAM.INFO, as a publish
        the call's deadline cut: ``_write_cut``): no leader, or one that lost quorum:
        EventStoreUnavailableError naming it; a leader with its quorum:
        UnacknowledgedWriteError (a slow write, write health left alone). It was
        unavailable "no leader, or lost quorum, or a full disk" whatever the stream said,
        and the publisher turned NOT_SERVING on a healthy cluster."""
        if isinstance(failed, _InProcess):
            what = (
                f"stream {self._cfg.stream} has not stored an earlier attempt of this "
                f"write yet (JetStream: {failed.said}; {attempts} attempts)"
            )
        else:
            waited = failed.waited if isinstance(failed, _Unacknowledged) else 0.0
            what = (
                f"stream {self._cfg.stream} did not acknowledge the write within "
                f"{waited:.1f} s ({attempts} attempts)"
            )
        resend = (
            "it may be stored: sent again with the same ids (the same idempotency key) it "
            "is stored once"
        )
        try:
            why = await self._trouble()
        except DeadlineCutError as exc:
            return DeadlineCutError(
                f"{what}, and the call's deadline came before its leader could be asked "
                f"why ({exc}); {resend}"
            )
        except (JsApiError, *_TRANSIENT) as exc:
            # Not known: every cause it may be, as it was.
            return EventStoreUnavailableError(f"{failed} ({attempts} attempts; {exc!r})")
        if isinstance(why, StreamMissingError):
            return why
        if why is not None:
            return EventStoreUnavailableError(f"{what}: {why}; {resend}")
        return UnacknowledgedWriteError(
            f"{what}, though it has a leader with a quorum of current replicas: a slow "
            "or full disk at its leader, or a busy server (see `jetsource infra "
            f"status`); {resend}"
        )

    def _unacknowledged(self, waited: float) -> str:
        return (
            f"stream {self._cfg.stream} did not acknowledge the write within {waited:.1f} s: "
            "it has no leader, or its leader lost quorum (more than half of the NATS "
            "cluster's servers down or cut off) and stores nothing until a majority is "
            "back, or its server's disk is full (see `jetsource infra status`); the write "
            "may be stored once it recovers: sent again with the same ids (the same "
            "idempotency key) it is stored once"
        )

    def _in_process(self, said: str) -> str:
        return (
            f"stream {self._cfg.stream} has not stored an earlier attempt of this write "
            f"yet (JetStream: {said}): its leader waits for a quorum of replicas (more "
            "than half of the NATS cluster's servers down or cut off?) and stores nothing "
            "until a majority is back; sent again with the same ids (the same idempotency "
            "key) it is stored once"
        )

    async def _base(self, aggregate_id: str, expected: Expected) -> tuple[int, int]:
        known = self._positions.get(aggregate_id)
        if known is not None and (
            expected is ExpectedVersion.ANY or (isinstance(expected, int) and known[0] == expected)
        ):
            return known  # stale? then the server's sequence check rejects and we reload
        return await self._last(aggregate_id)

    async def _conflict(
        self,
        aggregate_id: str,
        events: Sequence[NewEvent],
        expected: Expected,
        actual: int,
        tail: RawMessage | None = None,
    ) -> AppendResult:
        """The aggregate is not where we expected: our own earlier append, or a conflict."""
        found = await self._find(aggregate_id, events, tail)
        if found is not None:
            return found
        raise ConcurrencyError(aggregate_id, expected, actual)

    async def _find(
        self, aggregate_id: str, events: Sequence[NewEvent], tail: RawMessage | None = None
    ) -> AppendResult | None:
        """Were these events stored already (a retry after a lost ack)? Return that result.

        The common case is cheap: our events are the aggregate's newest, so the last one
        (``tail``, if the caller just fetched it) is checked first, and the run before
        it; otherwise the aggregate is scanned. Every one stored: each where it is; some
        but not all: ``PartlyStoredError`` (never the positions of other events).
        """
        ids = [e.event_id for e in events]
        n = len(ids)
        last = tail if tail is not None else await self._tail(aggregate_id)
        if last is None:
            return None
        try:
            newest = self._envelope(last)
        except PayloadDecodeError:
            newest = EventEnvelope()  # not ours: look through the history below
        if newest.event_id == ids[-1] and last.seq not in self._voids:
            v, s = newest.aggregate_version, last.seq
            if n == 1:
                return AppendResult(aggregate_id, [v], [s], ids, duplicate=True)
            # An atomic batch occupies consecutive sequences. But the last one stored
            # says nothing of the others: events of several requests merged into one
            # append (the observer's batcher) may be stored in part, the last by an
            # append of its own. So the run before it is read (one page).
            run: list[RecordedEvent] = []
            if v >= n and s >= n:
                with contextlib.suppress(BeyondHorizonError):  # the history below says
                    run = await self.read_aggregate(
                        aggregate_id, from_version=v - n + 1, to_version=v, from_seq=s - n + 1
                    )
            if [r.event_id for r in run] == ids:
                return stored_already(aggregate_id, ids, run)
            # Not stored as one run: the whole history says which are.
        wanted = set(ids)
        history = await self.live_history(aggregate_id)
        found = {r.event_id: r for r in history if r.event_id in wanted}
        if not found:
            return None
        if len(found) < len(wanted):
            stored = [i for i in ids if i in found]
            raise PartlyStoredError(aggregate_id, stored, history[-1].version if history else 0)
        # Every one stored (also by appends of their own): each where it is.
        return stored_already(aggregate_id, ids, [found[i] for i in ids])

    # -- reads --------------------------------------------------------------------

    def _stream_missing(self) -> StreamMissingError:
        return StreamMissingError(
            f"stream {self._cfg.stream} does not exist: create it with `jetsource streams ensure`"
        )

    async def _not_taken(self) -> JetsourceError:
        """Why a call had no responders: the stream is gone, or it is there but no
        longer takes this store's subjects (edited), which "does not exist" misnamed,
        or it takes them but answers no direct gets (``allow_direct`` false); or it
        has no leader (an election, or a cluster that lost quorum: STREAM.INFO is not
        answered, or says the stream is there): unavailable for a while, not missing
        ("does not exist: create it with `jetsource streams ensure`" sent operators
        to the wrong fix during a quorum loss).

        One STREAM.INFO answers every call failing at once, and its answer is kept for
        ``_DIAGNOSIS_TTL_S``: otherwise each failing call of an outage (every append,
        every read) added a request of up to ``request_timeout_s``."""
        cached = self._diagnosis
        if cached is not None and time.monotonic() - cached[0] < _DIAGNOSIS_TTL_S:
            kind, why = cached[1], cached[2]
        else:
            task = self._diagnosing
            if task is None:
                # Shared by the calls failing meanwhile: not bound by the deadline of
                # the one that started it (it would have ended the others' answer).
                task = self._diagnosing = deadline.spawn(self._diagnose())
                task.add_done_callback(self._diagnosed)
            # shielded: one caller cancelled does not cancel the others' answer; each
            # waits for it within its own call's deadline (it waited up to the 5 s
            # STREAM.INFO timeout, past a shorter deadline: a bare DEADLINE_EXCEEDED).
            what = f"stream {self._cfg.stream}'s STREAM.INFO (why it took no request)"
            wait, cut = deadline.wait(self._cfg.request_timeout_s + 1.0, what)
            try:
                async with asyncio.timeout(wait if cut else None):
                    kind, why = await asyncio.shield(task)
            except TimeoutError as exc:
                if not cut or task.done():
                    raise
                raise deadline.cut_short(what, wait) from exc
        if kind == "missing":
            return StreamMissingError(why)
        return _ElectingError(why) if kind == "electing" else EventStoreUnavailableError(why)

    def _diagnosed(self, task: asyncio.Future[tuple[str, str]]) -> None:
        if self._diagnosing is task:
            self._diagnosing = None
        if not task.cancelled() and task.exception() is None:
            self._diagnosis = (time.monotonic(), *task.result())

    def _leaderless(self, said: str) -> str:
        return (
            f"stream {self._cfg.stream} took no request and has no leader ({said}): its "
            "NATS cluster is electing one, or lost quorum (more than half of its servers "
            "down or cut off); it answers again once a majority is back (nothing is "
            "missing: `jetsource streams ensure` cannot help)"
        )

    async def _diagnose(self) -> tuple[str, str]:
        missing = str(self._stream_missing())
        try:
            info = await jsapi.api(
                self._replies, f"STREAM.INFO.{self._cfg.stream}", {}, self._cfg.request_timeout_s
            )
        except JsApiError as exc:
            if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND:
                return "missing", missing
            return "leaderless", self._leaderless(f"STREAM.INFO: {exc}")
        except NoRespondersError:  # no JetStream API at all
            return "missing", missing
        except _TRANSIENT as exc:
            return "leaderless", self._leaderless(f"STREAM.INFO not answered: {exc!r}")
        config = info.get("config", {})
        subjects = config.get("subjects") or []
        prefix = self._cfg.subject_prefix
        if not any(_covers(str(s), prefix) for s in subjects):
            return "missing", (
                f"stream {self._cfg.stream} exists but does not take this store's subjects "
                f"{prefix}.> (its subjects are {subjects[:5]!r}; were they edited?): put "
                "them back with `jetsource streams ensure`"
            )
        if not config.get("allow_direct", False):
            return "missing", (
                f"stream {self._cfg.stream} exists but answers no direct gets (allow_direct "
                "is false; the store reads through them): turn it back on with "
                "`jetsource streams ensure`"
            )
        # There and as configured: its leader went away since (an election).
        leader = (info.get("cluster") or {}).get("leader") or "none"
        return "electing", self._leaderless(f"STREAM.INFO says it exists, leader {leader}")

    async def _scan(self, subject: str, from_seq: int) -> AsyncIterator[RecordedEvent]:
        """Every message matching ``subject`` decoded; a message that does not decode
        is skipped if an operator voided it, else CorruptEventError. A stream that is
        not there is StreamMissingError (a direct get to it has no responders)."""
        pages = jsapi.direct_get_batch(
            self._replies, self._cfg.stream, subject, from_seq, self._cfg.request_timeout_s
        )
        while True:
            try:
                raw = await anext(pages)
            except StopAsyncIteration:
                return
            except NoRespondersError:
                raise self._stream_missing() from None
            try:
                yield await self.open(raw)
            except PayloadDecodeError as exc:
                aggregate_id = raw.subject.rsplit(".", 2)[-2]
                if not await self.voided(aggregate_id, raw.seq):
                    raise CorruptEventError(aggregate_id, raw.seq, str(exc)) from exc

    def void_subject(self, aggregate_id: str, stream_seq: int) -> str:
        """Where an operator's void of one stream sequence is recorded: beside the
        events, in the same stream, outside the subjects readers and consumers read."""
        return f"{void_prefix(self._cfg.subject_prefix)}.{aggregate_id}.{stream_seq}"

    def _heard_void(self, stream_seq: int) -> None:
        """A void recorded now (by this process or another): what this process
        computed from histories read before may hold the voided event (a state cache,
        a kept answer, a snapshot's warm state), so it is all forgotten, the way an
        erasure heard of makes it forgotten (``crypto.erasures_heard``). Voids are
        rare operator acts; every cache rebuilds from the stream, which steps over."""
        if stream_seq not in self._voids:
            self._voids.add(stream_seq)
            crypto.note_erasure()

    def known_voided(self, stream_seq: int) -> bool:
        """Whether this store has heard of a void of ``stream_seq`` (every void recorded
        before :meth:`start`, and each one since as it is recorded): no I/O, so a
        consumer can ask it of every message it delivers."""
        return stream_seq in self._voids

    async def voided(self, aggregate_id: str, stream_seq: int) -> bool:
        """Has an operator voided this stream sequence? Asked only for a message that
        is not a valid event at its place, so it costs nothing on the usual path;
        a void is never undone, so a yes is remembered."""
        if stream_seq in self._voids:
            return True
        raw = await self._call(
            lambda: jsapi.last_for_subject(
                self._replies,
                self._cfg.stream,
                self.void_subject(aggregate_id, stream_seq),
                self._cfg.request_timeout_s,
            )
        )
        if raw is not None:
            self._voids.add(stream_seq)
        return raw is not None

    async def void(self, stream_seq: int, reason: str, actor: str) -> tuple[str, bool]:
        """Record an operator's void of one stream sequence of an aggregate, as an
        envelope of its own (type ``SequenceVoided``) on the void subject beside the
        events; nothing is deleted. From then on every reader steps over it. Returns
        the aggregate id and whether it was voided before."""
        await self.start()
        raw = await self._call(
            lambda: jsapi.direct_get(
                self._replies, self._cfg.stream, {"seq": stream_seq}, self._cfg.request_timeout_s
            )
        )
        prefix = self._cfg.subject_prefix + "."
        if raw is None or not raw.subject.startswith(prefix):
            raise ValidationError(
                f"stream sequence {stream_seq} of {self._cfg.stream} holds no event "
                f"(nothing stored there, or not under {prefix}>)",
                field="seq",
            )
        aggregate_id = raw.subject[len(prefix) :].split(".", 1)[0]
        if await self.voided(aggregate_id, stream_seq):
            return aggregate_id, True
        record = EventEnvelope(
            event_id=uuid7(),
            event_type="SequenceVoided",
            schema_version=1,
            aggregate_type=self._cfg.aggregate_type,
            aggregate_id=aggregate_id,
            source="repair",
            metadata={"voided_seq": str(stream_seq), "reason": reason[:1000], "actor": actor},
            occurred_at=to_timestamp(now_ns()),
        )
        message = OutMessage(
            self.void_subject(aggregate_id, stream_seq),
            record.SerializeToString(deterministic=True),
            {"Nats-Msg-Id": f"void-{self._cfg.stream}-{stream_seq}"},
        )
        await self._call(partial(self._publish, [message]))
        self._heard_void(stream_seq)
        self._positions.pop(aggregate_id, None)
        return aggregate_id, False

    async def _in_chain(
        self, aggregate_id: str, raw: RawMessage, expected: int | None
    ) -> RecordedEvent | None:
        """The message as the next event of the aggregate's history (``expected``: the
        version it must carry, None when not known), or CorruptEventError naming its
        sequence. A voided message is read as a no-op event if it holds the expected
        version, else not at all."""
        record: RecordedEvent | None
        try:
            record = await self.open(raw)
            problem = None
            if expected is not None and record.version != expected:
                problem = f"it carries version {record.version} where {expected} belongs"
        except PayloadDecodeError as exc:
            record, problem = None, str(exc)
        if problem is None and raw.seq not in self._voids:
            return record
        if problem is not None and not await self.voided(aggregate_id, raw.seq):
            raise CorruptEventError(aggregate_id, raw.seq, problem)
        if record is None or problem is not None:
            return None
        return voided_event(record)

    # -- the compaction horizon ------------------------------------------------------

    @property
    def _compacted(self) -> bool:
        """Can this stream's histories start after version 1 (archived and purged)?"""
        return self._cfg.retention == "age+compaction"

    async def horizon(self, aggregate_id: str) -> Horizon | None:
        """The aggregate's compaction horizon (None: its whole history is live)."""
        if not self._compacted:
            return None
        found = await self._call(
            lambda: horizons.read(
                self._replies, self._cfg.stream, aggregate_id, self._cfg.request_timeout_s
            )
        )
        return found[0] if found else None

    async def _before_horizon(self, aggregate_id: str, time_ns: int) -> None:
        """BeyondHorizonError if ``time_ns`` lies before the aggregate's horizon: the
        first event after it may be purged, so the live stream cannot say. Before the
        latest time an archived version was recorded, not its last's: with stamps
        stepping back, the story's prefix recorded by then (recorded_by) may end at an
        archived version stamped later than the horizon's own."""
        horizon = await self.horizon(aggregate_id)
        if horizon is not None and horizon.covers(time_ns):
            raise BeyondHorizonError(aggregate_id, horizon)

    async def _chain_start(
        self, aggregate_id: str, raw: RawMessage, from_version: int, expected: int | None
    ) -> int | None:
        """The version the first message read must carry. A history that starts past
        what was asked for (past version 1 from the start, or past ``from_version``
        from a sequence hint) starts at its compaction horizon when one covers the
        gap: BeyondHorizonError if versions asked for were purged, else the read
        starts there. Without a horizon nothing changes (the chain check names it)."""
        if not self._compacted:
            return expected
        try:
            version = self._envelope(raw).aggregate_version
        except PayloadDecodeError:
            return expected
        if version <= (expected if expected is not None else from_version):
            return expected
        horizon = await self.horizon(aggregate_id)
        if horizon is None or version > horizon.version + 1:
            return expected
        if from_version <= horizon.version:
            raise BeyondHorizonError(aggregate_id, horizon)
        return version if expected is not None else None

    async def live_history(self, aggregate_id: str) -> list[RecordedEvent]:
        """Every event of the aggregate still in the live stream (from its horizon on)."""
        try:
            return await self.read_aggregate(aggregate_id)
        except BeyondHorizonError as exc:
            return await self.read_aggregate(
                aggregate_id, from_version=exc.horizon.version + 1, from_seq=exc.horizon.seq + 1
            )

    async def read_aggregate(
        self,
        aggregate_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        until_time: datetime | int | None = None,
        from_seq: int = 1,
        to_seq: int | None = None,
    ) -> list[RecordedEvent]:
        check_read(aggregate_id, from_version)
        await self.start()
        # Up to a time: up to the story's first event recorded after it (recorded_by),
        # not the stream's (seq_at_time): a stream's stamps may step back, and the
        # story's events after another's stamped later may still be recorded by then.
        limit_ns = to_ns(until_time) if until_time is not None else None
        seq_bound = to_seq
        subject = self._subject_filter(aggregate_id)
        ours = subject[:-1]  # "<prefix>.<id>.": the aggregate's subjects start so
        stream, timeout = self._cfg.stream, self._cfg.request_timeout_s
        out: list[RecordedEvent] = []

        # The version the next message must carry: known from the start of the
        # aggregate, or once a first message is read after a sequence hint.
        expected: list[int | None] = [None]
        stepped = [False]

        async def collect() -> None:
            out.clear()  # a retried read starts over
            expected[0] = 1 if from_seq <= 1 else None
            started = False
            seq, wanted = from_seq, from_version  # next sequence to ask for, next version
            while True:
                # Versions are contiguous, so a read up to a version asks for exactly
                # the events it still lacks, and never for more than the sequence bound
                # allows. Only while it walks up to from_version from a from_seq hint
                # below it (seen after a first page) does it take whole pages.
                batch = jsapi.DIRECT_GET_PAGE
                need = None if to_version is None else to_version - wanted + 1
                if need is not None and (out or seq == from_seq):
                    batch = min(batch, need)
                span = None if seq_bound is None else seq_bound - seq + 1
                if span is not None:
                    batch = min(batch, span)
                if batch < 1:
                    return
                # A filtered batch costs the server time in the length of the stream
                # after seq; an unfiltered one does not. When the sequence range left
                # holds at most twice the events still wanted (they are dense in it, as
                # in a run of the aggregate's own commands), read the whole range
                # unfiltered and keep ours: one cheap request, and the last one.
                whole = (
                    span is not None
                    and need is not None
                    and span <= min(2 * need, jsapi.DIRECT_GET_PAGE)
                )
                page = await jsapi.direct_get_page(
                    self._replies,
                    stream,
                    None if whole else subject,
                    seq,
                    batch if not whole or span is None else span,
                    timeout,
                )
                for raw in page.messages:
                    if seq_bound is not None and raw.seq > seq_bound:
                        return
                    if whole and not raw.subject.startswith(ours):
                        continue
                    if not started:
                        started = True
                        expected[0] = await self._chain_start(
                            aggregate_id, raw, from_version, expected[0]
                        )
                    checked = await self._in_chain(aggregate_id, raw, expected[0])
                    if checked is None:
                        stepped[0] = True  # the subjects' last sequence may be this one
                        continue  # voided, with no place in the history
                    record = checked
                    expected[0] = record.version + 1
                    if to_version is not None and record.version > to_version:
                        return
                    if limit_ns is not None and record.recorded_at_ns > limit_ns:
                        return
                    if record.version >= from_version:
                        out.append(record)
                        wanted = record.version + 1
                if whole or page.pending == 0 or not page.messages:
                    return
                seq = page.messages[-1].seq + 1

        await self._call(collect)
        if self._compacted and (not out or out[0].version > from_version):
            # Nothing (or a later start) where the range asked for begins: were the
            # events there purged? Then the live stream cannot answer.
            wanted = to_version is None or to_version >= from_version
            horizon = await self.horizon(aggregate_id) if wanted else None
            if horizon is not None and from_version <= horizon.version and from_seq <= horizon.seq:
                raise BeyondHorizonError(aggregate_id, horizon)
        if out and not stepped[0]:
            self._remember(aggregate_id, out[-1].version, out[-1].stream_seq)
        return out

    async def read_all(
        self, from_seq: int = 1, to_seq: int | None = None, subject_filter: str | None = None
    ) -> AsyncIterator[RecordedEvent]:
        await self.start()
        subject = subject_filter or f"{self._cfg.subject_prefix}.>"
        async for record in self._scan(subject, from_seq):
            if to_seq is not None and record.stream_seq > to_seq:
                return
            yield record

    async def last_version(self, aggregate_id: str) -> int:
        validate_aggregate_id(aggregate_id)
        await self.start()
        version, _ = await self._last(aggregate_id)
        return version

    async def seq_at_time(self, time: datetime | int) -> int:
        await self.start()
        t = store_time_ns(time)
        after = await self._call(
            lambda: jsapi.first_at_or_after(
                self._replies, self._cfg.stream, t + 1, None, self._cfg.request_timeout_s
            )
        )
        if after is not None:
            return after.seq - 1
        info = await self.stream_info()
        return int(info["state"]["last_seq"])

    async def version_at_time(self, aggregate_id: str, time: datetime | int) -> int:
        """One direct get: the aggregate's first event recorded after ``time`` (a
        single get by time and subject costs the server next to nothing); the version
        before it is the answer. With none after it, the last event is the answer,
        unless it was appended (after the time) between the two looks: look again."""
        validate_aggregate_id(aggregate_id)
        await self.start()
        t = store_time_ns(time)
        subject = self._subject_filter(aggregate_id)
        stream, timeout = self._cfg.stream, self._cfg.request_timeout_s
        for _ in range(3):
            after = await self._call(
                lambda: jsapi.first_at_or_after(self._replies, stream, t + 1, subject, timeout)
            )
            if after is not None:
                if self._compacted:  # (clocks disagree: no shortcut by max_age)
                    await self._before_horizon(aggregate_id, t)
                try:
                    version = self._envelope(after).aggregate_version
                except PayloadDecodeError:
                    break  # not an event: the counting read below says what it is
                # A restored message was stamped at the restore, after it was first
                # recorded (Jetsource-Recorded-At, the time reads use): nats-server
                # searched by the restore's stamps, so every event before this one was
                # recorded by then, and this one may be too.
                if recorded_ns(after) > t:
                    return version - 1
                # nats-server's search by time takes stamps as never going backwards:
                # inside a stepped-back window (or in a restored stream) it lands on a
                # message of the story recorded by then. The story's prefix recorded by
                # then (recorded_by) goes on past it: read on from it, up to the first
                # event recorded after the time (the read stops there).
                rest = await self.read_aggregate(
                    aggregate_id, from_version=version, from_seq=after.seq, until_time=t
                )
                return version - 1 + len(rest)
            if self._compacted:
                # Every live event recorded by then: the archived ones may not be (a
                # stepped-back stream). Asked side by side: no longer to wait.
                last, _ = await asyncio.gather(
                    self._tail(aggregate_id), self._before_horizon(aggregate_id, t)
                )
            else:
                last = await self._tail(aggregate_id)
            if last is None:
                return 0
            if last.time_ns <= t:  # (restored: recorded before this stamp)
                return self._position(aggregate_id, last)[0]
        # Appends keep racing the look-ups (or a message is not an event): read what
        # was recorded by then instead.
        try:
            events = await self.read_aggregate(aggregate_id, until_time=t)
        except BeyondHorizonError as exc:
            if exc.horizon.covers(t):
                raise
            # Every archived version recorded by then: the prefix goes on in the live
            # stream (the archive reader, given this error, answered the horizon's).
            rest = await self.read_aggregate(
                aggregate_id,
                from_version=exc.horizon.version + 1,
                from_seq=exc.horizon.seq + 1,
                until_time=t,
            )
            return exc.horizon.version + len(rest)
        return events[-1].version if events else 0
