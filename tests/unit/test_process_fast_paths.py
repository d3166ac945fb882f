"""The observer's per-event fast paths (issue 23) accept, refuse and write exactly what
the plain definitions do: a claim's value has the bytes ``json.dumps`` gives, and the
validation of text, attributes and JSON payloads refuses the same inputs naming the
same field, with the same message."""

from __future__ import annotations

import json
import math
import random
import re
import unicodedata

import pytest
from google.protobuf import struct_pb2

from jetsource._gen.process.v1.events_pb2 import CanonicalEvent, ProcessEventBody
from jetsource.core.errors import ValidationError
from jetsource.domains.process.claims import ClaimValue
from jetsource.domains.process.validation import Limits, _json_struct, _text, to_new_event

# Characters that take every branch: control, quote, backslash, non-ASCII (a line
# separator, a letter, a C1 control), and plain text.
ALPHABET = [chr(i) for i in range(0, 130)] + ['"', "\\", "é", "\u2028", "\x85", "😀"]


def _word(rng: random.Random, n: int = 12) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, n)))


def test_a_claim_value_is_written_as_json_dumps_writes_it() -> None:
    rng = random.Random(23)
    for n in range(5000):
        event_id = f"b-{n:06d}:x.y_z" if n % 3 == 0 else _word(rng)
        value = ClaimValue(
            event_id,
            rng.randrange(2**63),
            rng.randrange(2**40) if n % 2 else 0,
            rng.randrange(2**30) if n % 2 else 0,
            rng.randrange(2**63) if n % 2 else 0,
        )
        expected = json.dumps(
            {
                "id": value.event_id,
                "t": value.since_ns,
                "g": value.global_seq,
                "p": value.process_seq,
                "r": value.recorded_ns,
            },
            separators=(",", ":"),
        ).encode()
        assert value.encode() == expected, event_id
        assert ClaimValue.decode(value.encode()) == value


# The definitions before the fast paths: the oracle. A control character is Unicode's
# category Cc (C0, DEL and C1, which the first definition let through), and the line
# and paragraph separators end a line as a newline does.
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _text_plain(value: str, field: str, limit: int) -> None:
    if len(value) > limit:
        raise ValidationError(f"{field} is {len(value)} characters; at most {limit}", field)
    for i, c in enumerate(value):
        if unicodedata.category(c) == "Cc" or c in "\u2028\u2029":
            what = unicodedata.name(c, "").lower() if c in "\u2028\u2029" else "control character"
            raise ValidationError(
                f"{field} contains a {what} (U+{ord(c):04X} at position {i})", field
            )


def _value_plain(value: struct_pb2.Value, field: str, depth: int, limits: Limits) -> None:
    which = value.WhichOneof("kind")
    if which == "number_value" and not math.isfinite(value.number_value):
        raise ValidationError(
            f"{field} is {value.number_value}: not a JSON number (finite numbers only)", field
        )
    if which == "struct_value":
        _struct_plain(value.struct_value, field, depth + 1, limits)
    elif which == "list_value":
        if depth + 1 > limits.max_depth:
            raise ValidationError(f"{field} is nested deeper than {limits.max_depth} levels", field)
        for i, item in enumerate(value.list_value.values):
            _value_plain(item, f"{field}[{i}]", depth + 1, limits)


def _struct_plain(s: struct_pb2.Struct, field: str, depth: int, limits: Limits) -> None:
    if depth > limits.max_depth:
        raise ValidationError(f"{field} is nested deeper than {limits.max_depth} levels", field)
    for key, value in s.fields.items():
        _value_plain(
            value,
            f"{field}.{key}" if _KEY.fullmatch(key) else f"{field}[{key[:40]!r}]",
            depth,
            limits,
        )


def _outcome(check: object, *args: object) -> tuple[str, str] | None:
    try:
        check(*args)  # type: ignore[operator]
    except ValidationError as exc:
        return str(exc), exc.field or ""
    return None


def test_text_is_refused_as_before() -> None:
    rng = random.Random(5)
    for _ in range(20000):
        value = _word(rng, 20)
        limit = rng.choice([5, 10, 256])
        assert _outcome(_text, value, "events[0].source", limit) == _outcome(
            _text_plain, value, "events[0].source", limit
        ), repr(value)


def _random_value(rng: random.Random, depth: int) -> struct_pb2.Value:
    v = struct_pb2.Value()
    kind = rng.choice(["n", "n", "s", "b", "null", "inf", "nan", "struct", "list"])
    if depth > 24 and kind in ("struct", "list"):
        kind = "s"
    if kind == "n":
        v.number_value = rng.uniform(-1e6, 1e6)
    elif kind == "s":
        v.string_value = _word(rng)
    elif kind == "b":
        v.bool_value = rng.random() < 0.5
    elif kind == "null":
        v.null_value = struct_pb2.NULL_VALUE
    elif kind in ("inf", "nan"):
        v.number_value = float(kind) * rng.choice([1, -1])
    elif kind == "struct":
        v.struct_value.CopyFrom(_random_struct(rng, depth + 1))
    else:
        for _ in range(rng.randint(0, 3)):
            v.list_value.values.append(_random_value(rng, depth + 1))
    return v


def _random_struct(rng: random.Random, depth: int = 0) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    # Mostly finite leaves (as payloads are), sometimes deep, sometimes non-finite.
    for _ in range(rng.randint(0, 4)):
        key = rng.choice(["step", "tool", "a b", "x.y", "", _word(rng, 50)])
        s.fields[key].CopyFrom(_random_value(rng, depth) if rng.random() < 0.6 else _leaf(rng))
    return s


def _leaf(rng: random.Random) -> struct_pb2.Value:
    v = struct_pb2.Value()
    v.string_value = "ok"
    return v


@pytest.mark.parametrize("max_depth", [3, 20])
def test_payloads_are_refused_as_before(max_depth: int) -> None:
    rng = random.Random(max_depth)
    limits = Limits(max_depth=max_depth)
    refused = 0
    for _ in range(3000):
        s = _random_struct(rng)
        got = _outcome(_json_struct, s, "events[3].data", 1, limits)
        assert got == _outcome(_struct_plain, s, "events[3].data", 1, limits), s
        refused += got is not None
    assert 300 < refused < 2700  # both kinds of payload were met


def test_attributes_are_refused_as_before() -> None:
    rng = random.Random(11)
    limits = Limits(max_text=8, max_attribute_bytes=12)
    refused = 0
    for _ in range(3000):
        e = CanonicalEvent(process_id="p-1", event_type="step", source="s")
        for _ in range(rng.randint(0, 3)):
            e.attributes[_word(rng, 10)] = _word(rng, 14)
        expected = None
        for key, value in e.attributes.items():
            if not key:
                expected = ("event.attributes has an empty key", "event.attributes")
                break
            where = f"event.attributes[{key[:40]!r}]"
            expected = _outcome(_text_plain, key, where, 8) or _outcome(
                _text_plain, value, where, 12
            )
            if expected:
                break
        got = _outcome(to_new_event, e, limits, "event")
        assert got == expected, dict(e.attributes)
        if got is None:
            body = to_new_event(e, limits).event
            assert isinstance(body, ProcessEventBody)
            assert dict(body.attributes) == dict(e.attributes)
        refused += got is not None
    assert 300 < refused < 2700
