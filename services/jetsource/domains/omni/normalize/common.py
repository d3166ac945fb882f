"""What every normalizer shares: the event id, the per-request context, typed access to the
JSON body that names the failing field, and timestamp parsing."""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from google.protobuf.timestamp_pb2 import Timestamp

from jetsource._gen.omni.v1.events_pb2 import NormalizedEvent
from jetsource.core.printable import not_one_line_at, refused_at
from jetsource.domains.omni.normalize.errors import Malformed, quoted

# The longest handle (a sender's or recipient's id on its provider) the identity service
# takes (identity.MAX_EXTERNAL_ID): a body naming a longer one is Malformed, naming the
# field it came from, before anything is written.
MAX_HANDLE = 256
# The longest conversation, channel, thread or guild id an event may carry (the ingress
# refuses a longer one, naming its field; the reads refuse to look one up).
MAX_CONVERSATION_ID = 256
# Integers a normalizer takes: a 64-bit field's range, and at most this many ASCII digits
# when sent as a string (int() of a 5,000-digit string raises past Python's own limit).
MIN_INT, MAX_INT, MAX_INT_DIGITS = -(2**63), 2**64 - 1, 20

# The longest value of an enum-like field (a receipt's status, a presence) a normalizer
# keeps when it does not know it (see provider_kind).
MAX_KIND = 64

# Fixed forever: event ids are uuid5(OMNI_NAMESPACE, the JSON array
# [provider, instance, provider_event_id]) (JSON, so that no choice of strings can collide).
OMNI_NAMESPACE = uuid.UUID("6f6d6e69-0000-4000-8000-6a6574737263")


def event_id(provider: str, instance: str, provider_event_id: str) -> str:
    """The normalized event id: the same provider event on the same instance always gets the
    same id, however often it is delivered."""
    key = json.dumps([provider, instance, provider_event_id], separators=(",", ":"))
    return str(uuid.uuid5(OMNI_NAMESPACE, key))


def digest(value: Any) -> str:
    """A short stable digest of a JSON value, for provider events that carry no id of their own
    (presence): equal bodies give equal digests, so a re-delivery keeps its id."""
    raw = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def timestamp(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt if dt.tzinfo else dt.replace(tzinfo=UTC))
    return ts


@dataclass(frozen=True, slots=True)
class Context:
    """One webhook request: where it came in and when; shared by the events it yields."""

    provider: str
    instance: str
    received_at: datetime
    raw_ref: str

    def event(self, fmt: str, provider_event_id: str) -> NormalizedEvent:
        """A new event with the fields every normalizer fills the same way."""
        ev = NormalizedEvent(
            id=event_id(self.provider, self.instance, provider_event_id),
            provider=self.provider,
            provider_event_id=provider_event_id,
            instance_name=self.instance,
            raw_ref=self.raw_ref,
            provider_format=fmt,
        )
        ev.received_at.CopyFrom(timestamp(self.received_at))
        return ev


_TYPE_NAMES = {str: "a string", bool: "a boolean", dict: "an object", list: "an array"}


class Node:
    """A JSON object together with its path in the body, so that every missing or mistyped
    field is reported by its full path (``entry[0].changes[0].value.messages[0].from``)."""

    __slots__ = ("path", "raw")

    def __init__(self, raw: Mapping[str, Any], path: str = "") -> None:
        self.raw = raw
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def _get(self, key: str, kind: type, required: bool) -> Any:
        value = self.raw.get(key)
        if value is None:
            if required:
                raise Malformed(self.at(key), "required field is missing")
            return None
        # bool is an int in Python; a JSON true is never a number here.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise Malformed(self.at(key), f"must be {_TYPE_NAMES.get(kind, kind.__name__)}")
        return value

    def req_str(self, key: str) -> str:
        value: str = self._get(key, str, True)
        if not value:
            raise Malformed(self.at(key), "must not be empty")
        return value

    def opt_str(self, key: str, default: str = "") -> str:
        value = self._get(key, str, False)
        return default if value is None else value

    def req_handle(self, key: str) -> str:
        """A required handle (a user id, a phone number): a non-empty string of at most
        MAX_HANDLE characters."""
        return check_handle(self.req_str(key), self.at(key))

    def opt_handle(self, key: str) -> str:
        return check_handle(self.opt_str(key), self.at(key))

    def opt_bool(self, key: str) -> bool:
        return bool(self._get(key, bool, False))

    def opt_int(self, key: str) -> int:
        """An integer that providers send as a number or as a decimal string."""
        value = self.raw.get(key)
        if value is None:
            return 0
        return as_int(value, self.at(key))

    def opt_count(self, key: str, bits: int = 32) -> int:
        """A non-negative integer (a size, a duration, a count) that fits its proto field."""
        value = self.opt_int(key)
        if not 0 <= value < 1 << bits:
            raise Malformed(self.at(key), f"must be an integer from 0 to {(1 << bits) - 1}")
        return value

    def opt_float(self, key: str) -> float | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Malformed(self.at(key), "must be a number")
        try:
            number = float(value)  # a JSON integer literal of 400 digits: OverflowError
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise Malformed(self.at(key), "must be a finite number")
        return number

    def coordinate(self, key: str, limit: float) -> float:
        """A required latitude (limit 90) or longitude (limit 180)."""
        value = self.opt_float(key)
        if value is None:
            raise Malformed(self.at(key), "required field is missing")
        if not -limit <= value <= limit:
            raise Malformed(self.at(key), f"must be between -{limit:g} and {limit:g}")
        return value

    def req(self, key: str) -> Any:
        """A required value of any JSON type."""
        value = self.raw.get(key)
        if value is None:
            raise Malformed(self.at(key), "required field is missing")
        return value

    def unix_seconds(self, key: str) -> Timestamp:
        return unix_seconds(self.req(key), self.at(key))

    def obj(self, key: str) -> Node:
        return Node(self._get(key, dict, True), self.at(key))

    def opt_obj(self, key: str) -> Node | None:
        value = self._get(key, dict, False)
        return None if value is None else Node(value, self.at(key))

    def _list(self, key: str, required: bool) -> list[Any]:
        value = self._get(key, list, required)
        return [] if value is None else value

    def objs(self, key: str, required: bool = False) -> Iterator[Node]:
        """Each element of an array of objects."""
        for i, item in enumerate(self._list(key, required)):
            where = f"{self.at(key)}[{i}]"
            if not isinstance(item, dict):
                raise Malformed(where, "must be an object")
            yield Node(item, where)

    def str_list(self, key: str) -> list[str]:
        """An optional array of strings."""
        out = []
        for i, item in enumerate(self._list(key, False)):
            if not isinstance(item, str):
                raise Malformed(f"{self.at(key)}[{i}]", "must be a string")
            out.append(item)
        return out


def check_handle(value: str, field: str) -> str:
    """``value`` when it can be a handle ("" for none), else Malformed naming ``field``.
    A handle is one line (core.printable's rule): it keys the identity it resolves to,
    and is shown and logged; one holding a control character or U+2028/U+2029 (no
    provider sends one: a phone number's digits, a JID, a snowflake) was taken and
    linked as it came."""
    if len(value) > MAX_HANDLE:
        raise Malformed(
            field, f"is {len(value)} characters; a handle is at most {MAX_HANDLE} characters"
        )
    at = not_one_line_at(value)
    if at is not None:
        raise Malformed(
            field,
            f"holds {refused_at(value, at)}: a handle is one line of printable text",
        )
    return value


def provider_kind(value: str, field: str, what: str) -> str:
    """``value`` of an enum-like field (a receipt's ``status``, a presence) as it came,
    known to this normalizer or not: providers add values (WhatsApp's receipt statuses
    ``deleted``, ``warning``, ``played``; Discord's presences) without notice, and a
    body naming one was refused 422 naming the field, which the provider retries and
    at last disables the webhook for, losing the rest of the body. The caller maps a
    value it does not know to the enum's UNSPECIFIED and keeps the value in
    ``metadata.extra``. Still Malformed, naming ``field``: an empty value, one longer
    than MAX_KIND characters (it is part of the event's provider id, shown and logged)
    or one that is not one line of printable text."""
    if not value:
        raise Malformed(field, "must not be empty")
    if len(value) > MAX_KIND:
        raise Malformed(
            field,
            f"{what} {quoted(value, 20)}: a {what} is at most {MAX_KIND} characters",
        )
    at = not_one_line_at(value)
    if at is not None:
        raise Malformed(field, f"{what} holds {refused_at(value, at)}: it is one line of text")
    return value


def id_part(value: str) -> str:
    """``value`` (an enum-like field's, see provider_kind) as a part of a provider event
    id: as it came when made of ``[A-Za-z0-9_.-~]`` only (every value known today, so
    their ids are unchanged), else percent-encoded (UTF-8). The parts of an id are
    joined by ':', so a value holding one made one id of two receipts: a group receipt
    of status ``read:4915100000001`` and no member had the id of member 4915100000001's
    ``read``, and the second stored was taken for a re-delivery and lost. Encoded,
    distinct values are distinct ids (no ':' left, a '%' written ``%25``), and a
    re-delivery is the same id."""
    return quote(value, safe="", errors="surrogatepass")


def as_int(value: Any, field: str) -> int:
    """An integer sent as a JSON number, a string of ASCII digits or a protobufjs Long
    (``{"low": .., "high": .., "unsigned": ..}``, as Baileys sends some counters and
    timestamps), within a 64-bit range; else Malformed naming ``field``. Digits other
    than ASCII ones (a superscript two, fullwidth, Arabic-Indic) are refused: int()
    reads some and raises on others."""
    if isinstance(value, bool):
        raise Malformed(field, "must be an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        if not (0 < len(value) <= MAX_INT_DIGITS and value.isascii() and value.isdigit()):
            raise Malformed(
                field, f"must be an integer (or a string of 1 to {MAX_INT_DIGITS} ASCII digits)"
            )
        number = int(value)
    elif isinstance(value, Mapping) and "low" in value:
        low = _long_half(value.get("low"), f"{field}.low")
        high = _long_half(value.get("high"), f"{field}.high")
        if value.get("unsigned") is True:
            high &= 0xFFFFFFFF
        number = (high << 32) | (low & 0xFFFFFFFF)
    else:
        raise Malformed(field, "must be an integer (or a decimal string)")
    if not MIN_INT <= number <= MAX_INT:
        raise Malformed(field, f"must be an integer from {MIN_INT} to {MAX_INT}")
    return number


def _long_half(value: Any, field: str) -> int:
    """One 32-bit half of a protobufjs Long (signed or unsigned; missing or null: 0)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise Malformed(field, "must be an integer")
    if not -(2**31) <= value < 2**32:
        raise Malformed(field, "must be a 32-bit integer")
    return value


# A JSON escape of a UTF-16 surrogate (\\ud800 to \\udfff): a body without one holds no
# lone surrogate, so only a body with one is walked.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone UTF-16 surrogate: no Unicode character, so it has no
    UTF-8 encoding and no protobuf string takes it."""
    return _SURROGATE.search(text) is not None


def surrogate_path(body: Any, text: str) -> str | None:
    """The path, as Malformed names fields (``entry[0].changes[0].value.messages[0].from``),
    of the first string or object key of ``body`` (parsed from ``text``) holding a lone
    surrogate, or None. Python's json reads a ``\\ud800`` escape into such a str; the
    body is walked only when ``text`` has an escape of a surrogate at all."""
    if _SURROGATE_ESCAPE.search(text) is None:
        return None
    todo: list[tuple[Any, str]] = [(body, "")]
    while todo:
        value, path = todo.pop()
        if isinstance(value, str):
            if has_surrogate(value):
                return path or "body"
        elif isinstance(value, dict):
            items = []
            for k, v in value.items():
                where = f"{path}.{k}" if path else k
                if has_surrogate(k):
                    return where.encode("utf-8", "backslashreplace").decode()
                items.append((v, where))
            todo.extend(reversed(items))
        elif isinstance(value, list):
            todo.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(value))))
    return None


def unix_seconds(value: Any, field: str) -> Timestamp:
    seconds = as_int(value, field)
    if not 0 <= seconds < 253402300800:  # year 10000
        raise Malformed(field, "is not a plausible unix time in seconds")
    ts = Timestamp()
    ts.FromSeconds(seconds)
    return ts


def unix_millis(value: Any, field: str) -> Timestamp:
    millis = as_int(value, field)
    if not 0 <= millis < 253402300800000:
        raise Malformed(field, "is not a plausible unix time in milliseconds")
    ts = Timestamp()
    ts.FromMilliseconds(millis)
    return ts


def iso_time(value: Any, field: str) -> Timestamp:
    if not isinstance(value, str):
        raise Malformed(field, "must be an ISO 8601 time string")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Malformed(field, "must be an ISO 8601 time string") from None
    try:
        return timestamp(dt)
    except (OverflowError, ValueError):
        # 0001-01-01T00:00:00+01:00 is a valid string of a time before year 1 in UTC.
        raise Malformed(field, "must be a time from year 1 to 9999 in UTC") from None
