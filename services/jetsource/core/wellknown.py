"""Values of protobuf's well-known types that no reader of an event can show.

A ``google.protobuf.Timestamp`` outside the years 1..9999 (or with nanos outside
0..999999999) and a ``google.protobuf.Value`` holding NaN or an infinity are valid
protobuf, but protobuf's JSON refuses them (``Timestamp is not valid``, ``Fail to
serialize NaN for Value.number_value``) and datetime cannot hold the time: every
reader that renders the event (REST, exports, the sessions list) failed on one stored
event. No writer stores them (each checks its times and numbers); a message carrying
one was published raw and is as corrupt as a payload that does not parse.
"""

from __future__ import annotations

import math
import re
from typing import Any

from google.protobuf.message import Message

TIMESTAMP, VALUE = "google.protobuf.Timestamp", "google.protobuf.Value"
STRUCT, LIST = "google.protobuf.Struct", "google.protobuf.ListValue"
# A Timestamp's own range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z.
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799
# Value.number_value (field 2, fixed64: tag 0x11) whose exponent bits are all ones
# (NaN or an infinity, little-endian). Bytes that do not hold this pattern hold no such
# number, so the walk over a Struct (every process event's body) is skipped for them.
_NON_FINITE = re.compile(rb"\x11[\x00-\xff]{6}[\xf0-\xff][\x7f\xff]", re.DOTALL)

# message full name -> (holds a Timestamp, holds a Value) somewhere below it
_HOLDS: dict[str, tuple[bool, bool]] = {}


def _holds(desc: Any) -> tuple[bool, bool]:
    known = _HOLDS.get(desc.full_name)
    if known is not None:
        return known
    if desc.full_name == TIMESTAMP:
        return _HOLDS.setdefault(desc.full_name, (True, False))
    if desc.full_name == VALUE:
        return _HOLDS.setdefault(desc.full_name, (False, True))
    _HOLDS[desc.full_name] = (False, False)  # a message that holds itself: no loop
    time = value = False
    for field in desc.fields:
        if field.message_type is not None:
            t, v = _holds(field.message_type)
            time, value = time or t, value or v
    _HOLDS[desc.full_name] = (time, value)
    return time, value


def unshowable(message: Message, payload: bytes = b"") -> str | None:
    """Where ``message`` holds a time or number no reader can show and what it is
    (``"its provider_timestamp is no time (seconds ..., nanos ...; ...)"``), or None.
    ``payload``, the bytes it was parsed from, lets a message with no such number be
    passed without a walk over its Values."""
    time, value = _holds(message.DESCRIPTOR)
    if value and payload and not _NON_FINITE.search(payload):
        value = False
    if not time and not value:
        return None
    return _walk(message, "", time, value)


def _walk(message: Message, path: str, time: bool, value: bool) -> str | None:
    name = message.DESCRIPTOR.full_name
    if name == TIMESTAMP:
        seconds, nanos = message.seconds, message.nanos  # type: ignore[attr-defined]
        if MIN_SECONDS <= seconds <= MAX_SECONDS and 0 <= nanos <= 999_999_999:
            return None
        return (
            f"its {path or 'payload'} is no time (seconds {seconds}, nanos {nanos}; "
            "years 1 to 9999, nanos 0 to 999999999)"
        )
    if name == VALUE:
        kind = message.WhichOneof("kind")
        if kind == "number_value":
            number = message.number_value  # type: ignore[attr-defined]
            if math.isfinite(number):
                return None
            return f"its {path or 'payload'} is {number}, a number no JSON holds"
        if kind in ("struct_value", "list_value"):
            return _walk(getattr(message, kind), path, time, value)
        return None
    # A Struct's and a list's values named as in the JSON they stand for.
    if name == STRUCT:
        items = [(f"{path}[{k[:40]!r}]", m) for k, m in message.fields.items()]  # type: ignore[attr-defined]
        return _first(items, time, value)
    if name == LIST:
        items = [(f"{path}[{i}]", m) for i, m in enumerate(message.values)]  # type: ignore[attr-defined]
        return _first(items, time, value)
    for field, held in message.ListFields():
        sub = field.message_type
        if sub is None:
            continue
        t, v = _holds(sub)
        if not ((t and time) or (v and value)):
            continue
        at = f"{path}.{field.name}" if path else field.name
        if sub.GetOptions().map_entry:
            inner = sub.fields_by_name["value"]
            if inner.message_type is None:
                continue
            items = [(f"{at}[{str(k)[:40]!r}]", m) for k, m in held.items()]
        elif field.is_repeated:
            items = [(f"{at}[{i}]", m) for i, m in enumerate(held)]
        else:
            items = [(at, held)]
        found = _first(items, time, value)
        if found:
            return found
    return None


def _first(items: list[tuple[str, Message]], time: bool, value: bool) -> str | None:
    for where, m in items:
        found = _walk(m, where, time, value)
        if found:
            return found
    return None
