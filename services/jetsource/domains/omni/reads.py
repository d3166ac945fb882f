"""The omni reads, from its Valkey read models (and the raw archive for a payload):
one implementation behind the gRPC OmniQueryService and the ingress's REST /api/v1/.

Lists are newest first by stream sequence (the global order); a page token holds the
stream sequence of the page's last event (the next page starts below it), opaque and
tamper-evident: base64url(version | sequence | tag), the tag an HMAC-SHA256 over the
list it belongs to (which read, and its filters, conversation or identity) and the
sequence. A token changed, made up, cut short, or taken from another list is refused
naming ``page_token`` (a bare sequence was read by every list alike: another list's
token was accepted and its page answered as if it belonged to this one).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import hashlib
import heapq
import hmac
import re
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from valkey.asyncio import Valkey

from jetsource._gen.omni.v1.events_pb2 import NormalizedEvent
from jetsource._gen.omni.v1.query_pb2 import (
    EventView,
    Handle,
    IdentityView,
    ProcessingStatus,
)
from jetsource._gen.omni.v1.raw_pb2 import RawPayload
from jetsource.core.clock import now_ns, to_timestamp
from jetsource.core.envelope import RecordedEvent
from jetsource.core.errors import JetsourceError, ValidationError
from jetsource.core.ids import validate_aggregate_id
from jetsource.core.printable import (
    ID_TAKES,
    UNSAFE,
    escape,
    not_id_at,
    not_one_line_at,
    refused_at,
)
from jetsource.domains.omni.events import handle_name, is_identity
from jetsource.domains.omni.identity import MAX_EXTERNAL_ID
from jetsource.domains.omni.models import (
    OMNI_EVENTS,
    OMNI_IDENTITIES,
    event_commands,
    event_rule,
    identity_rule,
    short_direction,
    short_type,
    taken,
)
from jetsource.domains.omni.normalize.common import MAX_CONVERSATION_ID
from jetsource.domains.omni.raw import RawArchive
from jetsource.domains.omni.settings import INSTANCE_NAME
from jetsource.projection.valkey import valkey_io

DAY_NS = 24 * 3600 * 1_000_000_000
DEFAULT_PAGE = 50
# Events looked at per page when filters narrow an index (the page ends early, with a
# token to go on, rather than scanning without bound).
SCAN_LIMIT = 5_000
# What a page of events may take (encoded): the gRPC message limit less room for the
# rest of the answer. A page ends before an event that would pass it (its token goes on
# at that event); a page holds one event at least.
PAGE_MARGIN = 64 * 1024
DEFAULT_PAGE_BYTES = 4 * 1024 * 1024 - PAGE_MARGIN
# The handles (and merged identities) an identity holds in FindIdentity, ListIdentities
# and GetIdentityTimeline answers: the first by name, their counts beside them; the rest
# are GetIdentity's to page (every one of them was answered: an identity of tens of
# thousands of handles bloated every list page it was on, past the message limit broke
# the answer).
LISTED_HANDLES = 100


# Walks the narrowest index newest first and keeps the events whose filter fields match,
# in Valkey (one round trip however many it has to look at). KEYS[1]: the index;
# ARGV: namespace, top score, floor score, how many, scan limit, instance, provider,
# type, direction ("" = any). Returns the ids and scores found, and the score to go on
# from ("" when the index is exhausted).
_FILTER_LUA = """
local ns, top, floor = ARGV[1], ARGV[2], ARGV[3]
local want, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local wanted = {ARGV[6], ARGV[7], ARGV[8], ARGV[9]}
local out, scanned = {}, 0
while scanned < limit do
  local rows = redis.call('ZREVRANGEBYSCORE', KEYS[1], top, floor, 'WITHSCORES', 'LIMIT', 0, 256)
  if #rows == 0 then return {out, ''} end
  for j = 1, #rows, 2 do
    local id, score = rows[j], rows[j + 1]
    scanned = scanned + 1
    local f = redis.call('HMGET', ns .. ':e:' .. id, 'i', 'p', 't', 'd')
    local ok = true
    for k = 1, 4 do
      if wanted[k] ~= '' and f[k] ~= wanted[k] then ok = false end
    end
    if ok then
      out[#out + 1] = id
      out[#out + 1] = score
      if #out / 2 >= want then return {out, score} end
    end
    top = '(' .. score
  end
  if #rows < 512 then return {out, ''} end
end
return {out, string.sub(top, 2)}
"""


class NotFoundError(JetsourceError):
    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class NotYetVisibleError(NotFoundError):
    """The stream has it, the read model has not applied it yet (it lags by a few
    milliseconds as a rule): FAILED_PRECONDITION / 409, "try again shortly"; never
    NOT_FOUND for what was accepted a moment ago."""


# An aggregate's events as the read models apply them (voided ones left out).
History = Callable[[str], Awaitable[list[RecordedEvent]]]


@dataclass(frozen=True)
class Filters:
    instance: str = ""
    provider: str = ""
    event_type: str = ""  # message, reaction, ... ("" = any)
    direction: str = ""  # inbound, outbound, system

    def keys(self) -> list[str]:
        out = []
        if self.instance:
            out.append(f"r:i:{self.instance}")
        if self.provider:
            out.append(f"r:p:{self.provider}")
        if self.event_type:
            out.append(f"r:t:{self.event_type}")
        if self.direction:
            out.append(f"r:d:{self.direction}")
        return out

    def match(self, e: NormalizedEvent) -> bool:
        return (
            (not self.instance or e.instance_name == self.instance)
            and (not self.provider or e.provider == self.provider)
            and (not self.event_type or short_type(e.event_type) == self.event_type)
            and (not self.direction or short_direction(e.direction) == self.direction)
        )


def _text(v: bytes | str | None) -> str:
    if v is None:
        return ""
    return v.decode() if isinstance(v, bytes) else v


_FIELDS = ("ev", "seq", "st", "att", "wk", "err", "upd")


def _view(values: list[Any]) -> EventView | None:
    ev, seq, st, att, wk, err, upd = values
    if ev is None:
        return None
    event = NormalizedEvent()
    event.ParseFromString(ev)
    attempts = int(att or 0)
    status = ProcessingStatus(
        state=_text(st),
        attempts=attempts,
        retry_count=max(0, attempts - 1),
        worker=_text(wk),
        last_error=_text(err),
        updated_at=to_timestamp(int(upd or 0)),
    )
    return EventView(event=event, stream_seq=int(seq or 0), status=status)


def fitting(views: list[EventView | None], budget: int) -> tuple[list[EventView], int]:
    """The views (missing ones left out) up to the first that would take the page past
    ``budget`` encoded bytes (one at least), and how many of ``views`` they cover."""
    out: list[EventView] = []
    used = 0
    for n, view in enumerate(views):
        if view is None:
            continue
        size = view.ByteSize() + 8  # the field's tag and length
        if out and used + size > budget:
            return out, n
        out.append(view)
        used += size
    return out, len(views)


def check_identity_id(identity_id: str) -> None:
    """ValidationError naming identity_id unless it is one (idn-...)."""
    read_text(identity_id, "identity_id", ident=True)
    validate_aggregate_id(identity_id, "identity_id")
    if not is_identity(identity_id):
        raise ValidationError(
            f"{identity_id!r} is not an identity id (idn-...)", field="identity_id"
        )


def _identity_view(
    identity_id: str, doc: dict[bytes, bytes], handles: dict[bytes, bytes], merged: list[bytes]
) -> IdentityView | None:
    if not doc:
        return None
    view = IdentityView(
        identity_id=identity_id,
        display_name=_text(doc.get(b"name")),
        merged_into=_text(doc.get(b"into")),
        created_by=_text(doc.get(b"by")),
        merged_from=sorted(_text(m) for m in merged),
        handle_count=len(handles),
        merged_from_count=len(merged),
    )
    for name, instance in sorted(handles.items()):
        provider, _, external_id = _text(name).partition(":")
        view.handles.append(
            Handle(provider=provider, external_id=external_id, instance=_text(instance))
        )
    return view


def listed(view: IdentityView, most: int, keep: tuple[str, str] | None = None) -> IdentityView:
    """``view`` as the reads other than GetIdentity answer it: its first ``most`` handles
    (by name) and merged identities (by id); handle_count and merged_from_count say how
    many it has. ``keep`` (FindIdentity's handle, provider and external_id) is among the
    handles whatever its name: when it sorts past the first ``most``, the answer is the
    first ``most`` - 1 and it (still in the order of their names; FindIdentity answered
    an identity without the very handle it was asked about)."""
    if keep is not None and len(view.handles) > most:
        past = [h for h in view.handles[most:] if (h.provider, h.external_id) == keep]
        if past:
            kept = Handle()
            kept.CopyFrom(past[0])
            del view.handles[max(most - 1, 0) :]
            view.handles.append(kept)
    del view.handles[most:]
    del view.merged_from[most:]
    return view


def page_size(requested: int, maximum: int, default: int = DEFAULT_PAGE) -> int:
    """``requested``, or ``default`` for 0; else ValidationError naming page_size, saying
    what 0 means for this read (GetIdentity's 0 is the maximum, not DEFAULT_PAGE: its
    refusal said "(0: 50)")."""
    if requested < 0 or requested > maximum:
        raise ValidationError(f"page_size must be 0..{maximum} (0: {default})", field="page_size")
    return requested or default


_TOKEN_VERSION = 1
_TAG = 16
_SEQ = struct.Struct(">Q")
_TOKEN_FAULT = "page_token is not one this read returned for this request (start without one)"
# A token of a list ordered by name (PageTokens.after): its own first byte, and a
# bound on its length (a handle's name is at most ~300 bytes; base64 of 4 KiB).
_NAME_TOKEN = 2
_NAME_TOKEN_CHARS = 4096


def _body_and_tag(token: str) -> tuple[bytes, bytes]:
    """A page token's body and its MAC (unpadded URL-safe base64); a token that is no
    base64 is refused naming ``page_token``."""
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii") + b"=" * (-len(token) % 4))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise ValidationError(_TOKEN_FAULT, field="page_token") from None
    return raw[:-_TAG], raw[-_TAG:]


class PageTokens:
    """Page tokens bound to the list they page (see the module's docstring). The key
    comes from the read models' prefix, so every ingest replica reads every replica's
    tokens; it detects tampering and mix-ups, it is not a secret."""

    def __init__(self, seed: str) -> None:
        self._key = hashlib.sha256(
            f"jetsource omni page tokens v{_TOKEN_VERSION}|{seed}".encode()
        ).digest()

    def _tag(self, read: str, bound: str, body: bytes) -> bytes:
        text = f"{read}\0{bound}\0".encode("utf-8", "surrogatepass")
        return hmac.new(self._key, text + body, hashlib.sha256).digest()[:_TAG]

    def make(self, read: str, bound: str, seq: int) -> str:
        body = bytes([_TOKEN_VERSION]) + _SEQ.pack(seq)
        return base64.urlsafe_b64encode(body + self._tag(read, bound, body)).decode().rstrip("=")

    def below(self, read: str, bound: str, token: str) -> float:
        """The highest stream sequence a page may start at (no token: the newest)."""
        if not token:
            return float("inf")
        body, tag = _body_and_tag(token)
        if (
            len(body) != 1 + _SEQ.size
            or body[0] != _TOKEN_VERSION
            or not hmac.compare_digest(tag, self._tag(read, bound, body))
        ):
            raise ValidationError(_TOKEN_FAULT, field="page_token")
        seq = int(_SEQ.unpack(body[1:])[0])
        if not 1 <= seq < 2**63:
            raise ValidationError(_TOKEN_FAULT, field="page_token")
        return seq - 1

    # A list ordered by name (an identity's handles): the token holds the page's last
    # name, the next page starts after it (a handle linked or unlinked between pages
    # moves no other: none is skipped or repeated).

    def make_after(self, read: str, bound: str, name: str) -> str:
        body = bytes([_NAME_TOKEN]) + name.encode("utf-8", "surrogatepass")
        return base64.urlsafe_b64encode(body + self._tag(read, bound, body)).decode().rstrip("=")

    def after(self, read: str, bound: str, token: str) -> str | None:
        """The name a page starts after (no token: None, from the first)."""
        if not token:
            return None
        if len(token) > _NAME_TOKEN_CHARS:
            raise ValidationError(_TOKEN_FAULT, field="page_token")
        body, tag = _body_and_tag(token)
        if (
            len(body) < 2
            or body[0] != _NAME_TOKEN
            or not hmac.compare_digest(tag, self._tag(read, bound, body))
        ):
            raise ValidationError(_TOKEN_FAULT, field="page_token")
        return body[1:].decode("utf-8", "surrogatepass")


PROVIDERS = ("whatsapp", "discord")


def read_text(value: str, field: str, ident: bool = False) -> str:
    """A value a read names, refused naming ``field`` and the character (escaped:
    U+0000) when no stored record can hold it, and so not looked up: a control
    character or U+2028/U+2029 (the ingress refuses a webhook whose handle,
    conversation or message id holds one); ``ident``, an id of ours (an event's, an
    identity's, an instance), a bidi embedding, override or isolate too. A NUL was
    looked up and answered as an empty page, or NOT_FOUND echoing it raw. A handle's
    or a conversation's bidi controls are the provider's text (stored as it came):
    looked up, and escaped in an answer (:func:`shown`)."""
    at = not_id_at(value) if ident else not_one_line_at(value)
    if at is not None:
        takes = ID_TAKES if ident else "one line of printable text"
        raise ValidationError(
            f"{field} holds {refused_at(value, at)}: it takes {takes}", field=field
        )
    return value


# What a terminal must not get raw (core.printable.UNSAFE: controls, bidi marks and
# controls) and the line and paragraph separators, which end a line in a log.
_NOT_SHOWN = re.compile(f"{UNSAFE.pattern}|[\u2028\u2029]")


def shown(value: str) -> str:
    """``value`` as an answer's message may hold it (a handle, a path): each character a
    terminal or a log must not get raw (a bidi override, an ESC, U+2028) as its escape."""
    return _NOT_SHOWN.sub(lambda m: escape(m.group()), value)


def provider_name(value: str, field: str = "provider") -> str:
    """A provider a read may name: empty (any) or one the ingress serves."""
    read_text(value, field, ident=True)
    if value and value not in PROVIDERS:
        raise ValidationError(
            f"{field} {value[:40]!r} is not a provider (one of {', '.join(PROVIDERS)})",
            field=field,
        )
    return value


def instance_name(value: str, field: str = "instance") -> str:
    """An instance a read may name: no instance is named otherwise (settings), and a
    name is a part of the read model's keys (``a:b`` would read another key)."""
    read_text(value, field, ident=True)
    if not INSTANCE_NAME.fullmatch(value):
        raise ValidationError(
            f"{field} {value[:80]!r} is not an instance name (1-64 letters, digits, "
            "'-', '_' or '.', starting with a letter or digit)",
            field=field,
        )
    return value


class OmniReads:
    def __init__(
        self,
        redis: Valkey,
        prefix: str,
        active: Callable[[str], Awaitable[int]],
        raw: RawArchive,
        seq_at_time: Callable[[int], Awaitable[int]],
        max_page_size: int = 1000,
        history: History | None = None,
        last_version: Callable[[str], Awaitable[int]] | None = None,
        lookup: Callable[[str, str], Awaitable[str | None]] | None = None,
        max_page_bytes: int = DEFAULT_PAGE_BYTES,
    ) -> None:
        self.redis = redis
        self.max_page_bytes = max_page_bytes
        # Read when the model lacks an event or identity: the answer is the stream's.
        self._history = history
        self._last_version = last_version
        self._lookup = lookup  # the handles bucket: who holds a handle now
        self.prefix = prefix
        self._active = active
        self.raw = raw
        self._seq_at_time = seq_at_time
        self.max_page_size = max_page_size
        # Handles per identity in the answers other than GetIdentity's: no more than
        # GetIdentity's first page holds.
        self.listed = min(LISTED_HANDLES, max_page_size)
        self._default_floor: tuple[float, int] | None = None
        self._filter = redis.register_script(_FILTER_LUA)
        self._tokens = PageTokens(prefix)

    async def _floor(self, since_ns: int | None) -> int:
        """The first stream sequence at or after ``since`` (default: 24 h ago). The
        default window's floor is looked up at most once a second (it moves with the
        clock, a second is nothing against 24 h), so a read costs no NATS round trip."""
        if since_ns is None:
            at = time.monotonic()
            if self._default_floor is not None and at - self._default_floor[0] < 1.0:
                return self._default_floor[1]
            floor = await self._seq_at_time(now_ns() - DAY_NS) + 1
            self._default_floor = (at, floor)
            return floor
        # seq_at_time(t) is the last sequence stored at or before t: the one before an
        # event stored at exactly ``since`` is the last one stored before it.
        return (await self._seq_at_time(since_ns - 1)) + 1 if since_ns > 0 else 1

    async def ns(self, model: str) -> str:
        return f"{self.prefix}:{model}:v{await self._active(model)}"

    async def _views(self, ns: str, ids: list[str]) -> list[EventView | None]:
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hmget(f"{ns}:e:{i}", *_FIELDS)
        rows = await valkey_io(pipe.execute())
        return [_view(r) for r in rows]

    # -- events -------------------------------------------------------------------------

    async def recent(
        self, filters: Filters, since_ns: int | None, size: int, token: str
    ) -> tuple[list[EventView], str]:
        provider_name(filters.provider)
        if filters.instance:
            instance_name(filters.instance)
        size = page_size(size, self.max_page_size)
        bound = "\0".join(
            (filters.instance, filters.provider, filters.event_type, filters.direction)
        )
        top = self._tokens.below("recent", bound, token)
        floor = await self._floor(since_ns)
        ns = await self.ns(OMNI_EVENTS)
        keys = filters.keys() or ["r:all"]
        if len(keys) > 1:
            pipe = self.redis.pipeline(transaction=False)
            for k in keys:
                pipe.zcard(f"{ns}:{k}")
            sizes = await valkey_io(pipe.execute())
            keys = [k for _, k in sorted(zip(sizes, keys, strict=True))]
        index = f"{ns}:{keys[0]}"
        if len(keys) > 1:
            events, go_on = await self._filtered(ns, index, filters, top, floor, size)
            return events, self._tokens.make("recent", bound, go_on) if go_on else ""
        rows = await valkey_io(
            self.redis.zrevrangebyscore(
                index,
                "+inf" if top == float("inf") else int(top),
                floor,
                start=0,
                num=size,
                withscores=True,
            )
        )
        views = await self._views(ns, [_text(m) for m, _ in rows])
        out, n = fitting(views, self.max_page_bytes)
        if n < len(rows):  # cut by its bytes: the next page starts at the event left out
            return out, self._tokens.make("recent", bound, int(rows[n][1]) + 1)
        more = len(rows) == size
        return out, self._tokens.make("recent", bound, int(rows[-1][1])) if more and rows else ""

    async def _filtered(
        self, ns: str, index: str, filters: Filters, top: float, floor: int, size: int
    ) -> tuple[list[EventView], int]:
        """A page of the events ``filters`` match, and the sequence to go on below
        (0: the index is exhausted)."""
        found, go_on = await valkey_io(
            self._filter(
                keys=[index],
                args=[
                    ns,
                    "+inf" if top == float("inf") else int(top),
                    floor,
                    size,
                    SCAN_LIMIT,
                    filters.instance,
                    filters.provider,
                    filters.event_type,
                    filters.direction,
                ],
            )
        )
        ids = [_text(found[i]) for i in range(0, len(found), 2)]
        views = await self._views(ns, ids)
        out, n = fitting(views, self.max_page_bytes)
        if n < len(ids):  # cut by its bytes: the next page starts at the event left out
            return out, int(float(_text(found[2 * n + 1]))) + 1
        return out, int(float(_text(go_on))) if go_on else 0

    async def event(self, event_id: str) -> EventView:
        """The model's view of the event, unless the model is behind the stream for it
        (it has not applied the event, or a processing step recorded a moment ago):
        then the stream's, folded as the model will show it. Read after write, from
        whichever ingress the step went through. The stream's version of the event is
        one direct get, asked beside the model's read (not after it)."""
        read_text(event_id, "event_id", ident=True)
        validate_aggregate_id(event_id, "event_id")
        ns = await self.ns(OMNI_EVENTS)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(f"{ns}:e:{event_id}", *_FIELDS)
        pipe.hget(f"{ns}:ver", event_id)
        written: int | BaseException = 0
        if self._last_version is None or is_identity(event_id):
            row, ver = await valkey_io(pipe.execute())
        else:
            rows: list[Any] | BaseException
            rows, written = await asyncio.gather(
                valkey_io(pipe.execute()), self._last_version(event_id), return_exceptions=True
            )
            if isinstance(rows, BaseException):
                raise rows  # Valkey away: 503, as every read
            row, ver = rows
        view = _view(row)
        if isinstance(written, BaseException):
            if view is None or not isinstance(written, Exception):
                raise written
            # The stream could not say (NATS away, a damaged tail): the model's view, as
            # before there was this check; the stream is read only to be fresher.
            written = 0
        # The version the model applied last; a row of a model built before versions
        # were kept has none: its EventReceived (1) at least.
        applied = int(ver) if ver else (1 if view is not None else 0)
        if view is None or written > applied:
            view = await self._event_from_stream(event_id) or view
        if view is None:
            raise NotFoundError(f"no event {event_id!r}", "event_id")
        return view

    async def _event_from_stream(self, event_id: str) -> EventView | None:
        """An event the model has not applied yet, as the model will show it: its
        aggregate's events folded through the model's own commands (read after write:
        a webhook's event read right after its 200 is found)."""
        if self._history is None or is_identity(event_id):
            return None
        key = f"e:{event_id}"
        fields: dict[str, Any] = {}
        received = False
        for record in await self._history(event_id):
            rule = event_rule(record)
            if not taken(rule, record, received):
                break  # refused by the model (dead-lettered): nothing past it is applied
            received = received or rule == "first"
            for op, _, args in event_commands(record):
                if op == "HSET" and args[0] == key:
                    fields.update(zip(args[1::2], args[2::2], strict=True))
        return _view([fields.get(f) for f in _FIELDS])

    async def raw_payload(self, raw_id: str) -> RawPayload | None:
        return await self.raw.get(raw_id) if raw_id else None

    def _paging(self, size: int, token: str, read: str, bound: str) -> tuple[int, float]:
        """The page's size and the sequence it starts below, checked before any model
        is read (a bad page_size or page_token is INVALID_ARGUMENT whatever the model's
        state: it was NOT_FOUND, FAILED_PRECONDITION or UNAVAILABLE from the identity or
        the active version looked up first). The token is bound to ``read`` and
        ``bound`` (the list it pages)."""
        return page_size(size, self.max_page_size), self._tokens.below(read, bound, token)

    async def _page(
        self, ns: str, keys: list[str], size: int, top: float, read: str, bound: str
    ) -> tuple[list[EventView], str]:
        """Newest first across ``keys`` (sorted sets of event ids by sequence), ``size``
        and ``top`` as :meth:`_paging` checked them."""
        pipe = self.redis.pipeline(transaction=False)
        for k in keys:
            pipe.zrevrangebyscore(
                f"{ns}:{k}",
                "+inf" if top == float("inf") else int(top),
                1,
                start=0,
                num=size + 1,
                withscores=True,
            )
        found = await valkey_io(pipe.execute())
        merged = heapq.nlargest(size + 1, {(int(s), _text(m)) for rows in found for m, s in rows})
        more = len(merged) > size
        merged = merged[:size]
        views = await self._views(ns, [m for _, m in merged])
        out, n = fitting(views, self.max_page_bytes)
        if n < len(merged):  # cut by its bytes: the next page starts at the event left out
            return out, self._tokens.make(read, bound, merged[n][0] + 1)
        return out, self._tokens.make(read, bound, merged[-1][0]) if more and merged else ""

    async def conversation(
        self, provider: str, instance: str, conversation_id: str, size: int, token: str
    ) -> tuple[list[EventView], str]:
        for name, value in (
            ("provider", provider),
            ("instance", instance),
            ("conversation_id", conversation_id),
        ):
            if not value:
                raise ValidationError(f"{name} is required", field=name)
        provider_name(provider)
        instance_name(instance)
        if len(conversation_id) > MAX_CONVERSATION_ID:
            # No stored event has a longer one (the ingress refuses it, naming its
            # field): answered as an empty list before, a key of any length built.
            raise ValidationError(
                f"conversation_id is {len(conversation_id)} characters; at most "
                f"{MAX_CONVERSATION_ID}",
                field="conversation_id",
            )
        read_text(conversation_id, "conversation_id")
        key = f"c:{provider}:{instance}:{conversation_id}"
        size, top = self._paging(size, token, "conversation", key)
        ns = await self.ns(OMNI_EVENTS)
        return await self._page(ns, [key], size, top, "conversation", key)

    async def timeline(
        self, identity_id: str, size: int, token: str
    ) -> tuple[IdentityView, list[EventView], str]:
        check_identity_id(identity_id)
        size, top = self._paging(size, token, "timeline", identity_id)
        identity = await self.identity(identity_id)
        ids = [identity.identity_id, *await self._merged_from(identity.identity_id)]
        ns = await self.ns(OMNI_EVENTS)
        events, next_token = await self._page(
            ns, [f"tl:{i}" for i in ids], size, top, "timeline", identity_id
        )
        return listed(identity, self.listed), events, next_token

    # -- identities ---------------------------------------------------------------------------

    async def _merged_from(self, identity_id: str) -> list[str]:
        """Every identity merged into this one, transitively."""
        ns = await self.ns(OMNI_IDENTITIES)
        out: list[str] = []
        todo = [identity_id]
        while todo and len(out) < 1000:
            current = todo.pop()
            for m in await valkey_io(self.redis.hkeys(f"{ns}:i:{current}:m")):
                merged = _text(m)
                if merged not in out and merged != identity_id:
                    out.append(merged)
                    todo.append(merged)
        return out

    async def identity(self, identity_id: str) -> IdentityView:
        check_identity_id(identity_id)
        ns = await self.ns(OMNI_IDENTITIES)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(f"{ns}:i:{identity_id}")
        pipe.hgetall(f"{ns}:i:{identity_id}:h")
        pipe.hkeys(f"{ns}:i:{identity_id}:m")
        doc, handles, merged = await valkey_io(pipe.execute())
        view = _identity_view(identity_id, doc, handles, merged)
        if view is None:
            if (
                self._last_version is not None
                and await self._last_version(identity_id)
                and await self._opened(identity_id)
            ):
                # Its handles and merges come from other identities' events too: not
                # folded here from its own; the model has them in a moment.
                raise NotYetVisibleError(
                    f"identity {identity_id!r} is not in the read model yet; try again shortly",
                    "identity_id",
                )
            raise NotFoundError(f"no identity {identity_id!r}", "identity_id")
        return view

    async def identity_page(
        self, identity_id: str, size: int, token: str
    ) -> tuple[IdentityView, str]:
        """GetIdentity: the identity with one page of its handles (in the order of their
        names, provider:external_id), and the token of the next page ("" when none).
        ``size`` 0 is max_page_size, not DEFAULT_PAGE: a client written before paging
        (it sends 0 and reads no token) sees every handle of all but the rarest
        identity; an identity of more handles answered them all, past the gRPC message
        limit from some 10,000 on (ANSWER_TOO_LARGE, the identity unreadable)."""
        check_identity_id(identity_id)
        size = page_size(size, self.max_page_size, default=self.max_page_size)
        after = self._tokens.after("identity", identity_id, token)
        view = await self.identity(identity_id)
        names = [f"{h.provider}:{h.external_id}" for h in view.handles]
        start = bisect.bisect_right(names, after) if after is not None else 0
        end = start + size
        page = list(view.handles[start:end])
        del view.handles[:]
        view.handles.extend(page)
        if end >= len(names):
            return view, ""
        return view, self._tokens.make_after("identity", identity_id, names[end - 1])

    async def _opened(self, identity_id: str) -> bool:
        """Whether the stream's history of an identity the model does not hold yet
        opens it as the model takes it (an IdentityCreated of its own at version 1). One
        the model refused (dead-lettered) was answered "not in the read model yet; try
        again shortly" for good; it is no identity."""
        if self._history is None:
            return True
        history = await self._history(identity_id)
        return bool(history) and identity_rule(history[0]) == "first"

    async def _identity_views(self, ns: str, ids: list[str]) -> list[IdentityView | None]:
        """The model's identities (None: not in it), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(f"{ns}:i:{i}")
            pipe.hgetall(f"{ns}:i:{i}:h")
            pipe.hkeys(f"{ns}:i:{i}:m")
        rows = await valkey_io(pipe.execute()) if ids else []
        return [_identity_view(i, *rows[3 * n : 3 * n + 3]) for n, i in enumerate(ids)]

    async def find(self, provider: str, external_id: str) -> IdentityView:
        if not provider or not external_id:
            raise ValidationError(
                "provider and external_id are required",
                field="provider" if not provider else "external_id",
            )
        provider_name(provider)
        # The handles' own bound: a longer id names no handle, and echoed whole in the
        # NOT_FOUND (a 1 MB id) the answer's status outgrew the client's metadata limit
        # (it saw RESOURCE_EXHAUSTED "received metadata size exceeds hard limit").
        if len(external_id) > MAX_EXTERNAL_ID:
            raise ValidationError(
                f"external_id must be 1..{MAX_EXTERNAL_ID} characters", field="external_id"
            )
        read_text(external_id, "external_id")
        ns = await self.ns(OMNI_IDENTITIES)
        found = await valkey_io(self.redis.hget(f"{ns}:h", handle_name(provider, external_id)))
        if not found:
            if await self._held(provider, external_id):
                raise NotYetVisibleError(
                    f"the handle {provider}:{shown(external_id)} is not in the read model yet; "
                    "try again shortly",
                    "external_id",
                )
            raise NotFoundError(
                f"no identity has the handle {provider}:{shown(external_id)}", "external_id"
            )
        view = await self.identity(_text(found))
        seen = {view.identity_id}
        while view.merged_into and view.merged_into not in seen:
            seen.add(view.merged_into)
            view = await self.identity(view.merged_into)
        return listed(view, self.listed, keep=(provider, external_id))

    async def _held(self, provider: str, external_id: str) -> bool:
        """Whether the handles bucket says an identity holds the handle."""
        if self._lookup is None:
            return False
        try:
            return bool(await self._lookup(provider, external_id))
        except ValidationError:
            return False  # not a handle the ingress could have met

    async def identities(
        self, provider: str, include_merged: bool, size: int, token: str
    ) -> tuple[list[IdentityView], str]:
        provider_name(provider)
        size = page_size(size, self.max_page_size)
        bound = f"{provider}\0{int(include_merged)}"
        top = self._tokens.below("identities", bound, token)
        ns = await self.ns(OMNI_IDENTITIES)
        index = f"{ns}:ip:{provider}" if provider else f"{ns}:ia"
        out: list[IdentityView] = []
        scanned = used = 0
        while len(out) < size:
            if scanned >= SCAN_LIMIT:
                # Listed ones few among many merged (or linked away): the page ends
                # here, its token going on below the last one looked at.
                return out, self._tokens.make("identities", bound, int(top) + 1)
            rows = await valkey_io(
                self.redis.zrevrangebyscore(
                    index,
                    "+inf" if top == float("inf") else int(top),
                    1,
                    start=0,
                    num=min(max(size - len(out), 64), SCAN_LIMIT - scanned),
                    withscores=True,
                )
            )
            if not rows:
                return out, ""
            scanned += len(rows)
            views = await self._identity_views(ns, [_text(m) for m, _ in rows])
            for (_, score), view in zip(rows, views, strict=True):
                top = int(score) - 1
                if view is None:
                    continue
                # The provider's index lists every identity that ever held one of its
                # handles: one whose handles were all linked away holds none now (a merged
                # one is listed by the handles it had, which went to its survivor).
                if (
                    provider
                    and not view.merged_into
                    and not any(h.provider == provider for h in view.handles)
                ):
                    continue
                if include_merged or not view.merged_into:
                    listed(view, self.listed)
                    used += view.ByteSize() + 8
                    if out and used > self.max_page_bytes:
                        # Cut by its bytes (identities with many handles): the next page
                        # starts at this one.
                        return out, self._tokens.make("identities", bound, int(score) + 1)
                    out.append(view)
                    if len(out) == size:
                        return out, self._tokens.make("identities", bound, int(score))
        return out, ""
