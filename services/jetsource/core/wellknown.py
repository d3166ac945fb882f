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
# message full name -> its fields that can hold either, in field-number order (as
# ListFields gives them): (name, holds a Timestamp, holds a Value, shape)
_PLAN: dict[str, tuple[tuple[str, bool, bool, str], ...]] = {}
# A singular Timestamp field (checked in place: unset, it reads as 0, a time), another
# singular message, a repeated one, a map whose values are messages.
TIME, SINGLE, REPEATED, MAP = "time", "single", "repeated", "map"


def _holds(desc: Any) -> tuple[bool, bool]:
    """Whether a message of type ``desc`` can hold a Timestamp, a Value. Computed for
    every type reachable from it at once, as a fixed point: a type inside a loop
    (A -> B -> A) holds what any type of the loop reaches."""
    known = _HOLDS.get(desc.full_name)
    if known is not None:
        return known
    reach: dict[str, Any] = {}
    stack = [desc]
    while stack:
        d = stack.pop()
        if d.full_name in reach or d.full_name in _HOLDS:
            continue
        reach[d.full_name] = d
        stack.extend(f.message_type for f in d.fields if f.message_type is not None)
    found = {name: (name == TIMESTAMP, name == VALUE) for name in reach}
    changed = True
    while changed:
        changed = False
        for name, d in reach.items():
            time, value = found[name]
            for f in d.fields:
                sub = f.message_type
                if sub is not None:
                    t, v = found.get(sub.full_name) or _HOLDS[sub.full_name]
                    time, value = time or t, value or v
            if (time, value) != found[name]:
                found[name] = (time, value)
                changed = True
    _HOLDS.update(found)
    return _HOLDS[desc.full_name]


def _plan(desc: Any) -> tuple[tuple[str, bool, bool, str], ...]:
    """The fields of ``desc`` a walk must look into (the rest hold neither)."""
    plan = _PLAN.get(desc.full_name)
    if plan is not None:
        return plan
    steps = []
    for field in sorted(desc.fields, key=lambda f: f.number):
        sub = field.message_type
        if sub is None:
            continue
        t, v = _holds(sub)
        if not (t or v):
            continue
        if sub.GetOptions().map_entry:
            if sub.fields_by_name["value"].message_type is None:
                continue
            shape = MAP
        elif field.is_repeated:
            shape = REPEATED
        else:
            shape = TIME if sub.full_name == TIMESTAMP else SINGLE
        steps.append((field.name, t, v, shape))
    plan = _PLAN[desc.full_name] = tuple(steps)
    return plan


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
    desc = message.DESCRIPTOR
    name = desc.full_name
    if name == TIMESTAMP:
        return _no_time(message, path)
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
    for field_name, t, v, shape in _PLAN.get(name) or _plan(desc):
        if not ((t and time) or (v and value)):
            continue
        if shape == TIME:
            found = _no_time(getattr(message, field_name), path, field_name)
            if found:
                return found
            continue
        if shape == SINGLE:
            if not message.HasField(field_name):
                continue
            held = getattr(message, field_name)
        else:
            held = getattr(message, field_name)
            if not held:
                continue
        at = f"{path}.{field_name}" if path else field_name
        if shape == MAP:
            items = [(f"{at}[{str(k)[:40]!r}]", m) for k, m in held.items()]
        elif shape == REPEATED:
            items = [(f"{at}[{i}]", m) for i, m in enumerate(held)]
        else:
            items = [(at, held)]
        found = _first(items, time, value)
        if found:
            return found
    return None


def _no_time(stamp: Any, path: str, field_name: str = "") -> str | None:
    seconds, nanos = stamp.seconds, stamp.nanos
    if MIN_SECONDS <= seconds <= MAX_SECONDS and 0 <= nanos <= 999_999_999:
        return None
    if field_name:
        path = f"{path}.{field_name}" if path else field_name
    return (
        f"its {path or 'payload'} is no time (seconds {seconds}, nanos {nanos}; "
        "years 1 to 9999, nanos 0 to 999999999)"
    )


def _first(items: list[tuple[str, Message]], time: bool, value: bool) -> str | None:
    for where, m in items:
        found = _walk(m, where, time, value)
        if found:
            return found
    return None
