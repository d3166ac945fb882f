"""Canonical events as callers send them -> events the store can append, or a
refusal naming the field. Nothing is appended for a refused event.

JSON input (the JSONL adapter, the CLI) goes through :func:`parse_json_event`, which
refuses unknown fields and a payload that is not a JSON object."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, struct_pb2

from jetsource._gen.process.v1.events_pb2 import CanonicalEvent, ProcessEventBody
from jetsource.core.envelope import NewEvent
from jetsource.core.errors import ValidationError
from jetsource.core.ids import uuid7, validate_aggregate_id
from jetsource.core.printable import ID_TAKES, blank, not_id_at, not_one_line_at, refused_at
from jetsource.core.structvalue import NotAStructValue, check_struct_value, has_lone_surrogate
from jetsource.domains.process.events import registry
from jetsource.domains.process.pruning import PRUNER_ID, RESERVED_TYPES

# Event ids (and causation ids, which name one): a Nats-Msg-Id and a log-safe token.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
# A kind is a ListProcesses filter, which takes at most this many characters.
MAX_KIND = 128
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# google.protobuf.Timestamp's own range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


@dataclass(frozen=True)
class Limits:
    """What one event may carry (the observer's settings)."""

    max_payload_bytes: int = 256 * 1024
    max_attributes: int = 64
    max_attribute_bytes: int = 4096
    max_text: int = 256  # source, correlation id, idempotency key, content type
    max_schema_version: int = 1_000_000
    # Struct levels in ``data``. Each is three protobuf levels (Struct, map entry,
    # Value), protobuf parses at most 100, and every reader adds levels around the
    # payload (a StoredEvent in a response, a session message): a payload that only
    # just parsed here would be unreadable there.
    max_depth: int = 20


# The observer's rules that no setting changes (formats, control characters, fixed
# lengths): what a client can check before sending. The sizes the observer's settings
# set (payload bytes, attribute count) are left to it.
FIXED_LIMITS = Limits(max_payload_bytes=2**62, max_attributes=2**62)


def _plain(value: str, limit: int) -> bool:
    """Within ``limit`` and printable ASCII: what :func:`_text` accepts without a look
    at the pattern."""
    return len(value) <= limit and value.isascii() and value.isprintable()


def text_problem(value: str) -> str | None:
    """Why ``value`` is not one line of text (a control character or a line
    separator, named with its position: jetsource.core.printable's rule), or None."""
    at = not_one_line_at(value)
    if at is None:
        return None
    return f"contains {refused_at(value, at)}"


def _text(value: str, field: str, limit: int) -> None:
    if len(value) > limit:
        raise ValidationError(f"{field} is {len(value)} characters; at most {limit}", field)
    problem = text_problem(value)
    if problem is not None:
        raise ValidationError(f"{field} {problem}", field)


def _id(value: str, field: str, limit: int) -> None:
    """An id the writer chose (an event's source, correlation id, idempotency key): one
    line with no bidi embedding, override or isolate either
    (jetsource.core.printable.NOT_ID), refused naming the field and the character; a
    U+202E was kept and shown escaped."""
    if len(value) > limit:
        raise ValidationError(f"{field} is {len(value)} characters; at most {limit}", field)
    at = not_id_at(value)
    if at is not None:
        raise ValidationError(
            f"{field} contains {refused_at(value, at)}: it takes {ID_TAKES}", field
        )


def kind_problem(kind: str) -> str | None:
    """Why ``kind`` cannot be a process's kind (what ``ListProcesses(kind=)`` can ask
    for), or None."""
    if len(kind) > MAX_KIND:
        return f"is {len(kind)} characters; at most {MAX_KIND}"
    return text_problem(kind)


def _json_value(value: struct_pb2.Value, field: str, depth: int, limits: Limits) -> None:
    which = value.WhichOneof("kind")
    if which == "number_value":
        if not math.isfinite(value.number_value):
            raise ValidationError(
                f"{field} is {value.number_value}: not a JSON number (finite numbers only)",
                field,
            )
    elif which == "struct_value":
        _json_struct(value.struct_value, field, depth + 1, limits)
    elif which == "list_value":
        if depth + 1 > limits.max_depth:
            raise ValidationError(_too_deep(field, limits), field)
        for i, item in enumerate(value.list_value.values):
            _json_value(item, f"{field}[{i}]", depth + 1, limits)


def _too_deep(field: str, limits: Limits) -> str:
    return f"{field} is nested deeper than {limits.max_depth} levels"


def _member(field: str, key: str) -> str:
    return f"{field}.{key}" if _KEY.fullmatch(key) else f"{field}[{key[:40]!r}]"


def _json_struct(s: struct_pb2.Struct, field: str, depth: int, limits: Limits) -> None:
    """A payload every reader can render as JSON: finite numbers, bounded nesting.
    A member's path is made only for what needs one (a nested value or a refusal):
    strings, booleans and finite numbers, most of a payload, need none."""
    if depth > limits.max_depth:
        raise ValidationError(_too_deep(field, limits), field)
    fields = s.fields
    for key in fields:  # not .items(): a generator of the mapping mixin, per member
        value = fields[key]
        which = value.WhichOneof("kind")
        if which == "number_value":
            if math.isfinite(value.number_value):
                continue
        elif which != "struct_value" and which != "list_value":
            continue
        _json_value(value, _member(field, key), depth, limits)


# JSON type names of a ``google.protobuf.Value``'s kinds, for a refusal.
_JSON_TYPE = {
    "null_value": "null",
    "number_value": "a number",
    "string_value": "a string",
    "bool_value": "a boolean",
    "struct_value": "an object",
    "list_value": "a list",
}
# The members of a ``process_started``'s data the registry reads as text: a value of
# another JSON type would be stored and then read as no kind (no name), a process
# that ``ListProcesses(kind=)`` could never find.
STARTED_TEXT = ("kind", "name")


def _started_data(data: struct_pb2.Struct, f: str) -> None:
    fields = data.fields
    for key in STARTED_TEXT:
        value = fields.get(key)
        if value is None:
            continue  # absent: no kind (no name)
        which = value.WhichOneof("kind")
        if which != "string_value":
            raise ValidationError(
                f"{f}data.{key} must be a string, not {_JSON_TYPE.get(which or '', 'empty')}",
                f"{f}data.{key}",
            )
        if key == "kind":
            problem = kind_problem(value.string_value)
            if problem is not None:
                # Stored, it could never be listed by kind.
                raise ValidationError(f"{f}data.kind {problem}", f + "data.kind")
        else:
            problem = text_problem(value.string_value)
            if problem is not None:
                # The process's name in the registry, its lists and trees, one line each
                # (a session's command): an ESC or a CR LF in it was taken as it came.
                raise ValidationError(f"{f}data.name {problem}", f + "data.name")


def _process_id(value: str, field: str) -> None:
    try:
        validate_aggregate_id(value, field=field)
    except ValidationError as exc:
        raise ValidationError(str(exc), field) from None


def _event_id(value: str, field: str) -> None:
    if not _ID.fullmatch(value):
        raise ValidationError(
            f"{field} {value[:80]!r} is invalid: 1 to 128 of letters, digits, '.', '_', ':' "
            "and '-', starting with a letter or digit",
            field,
        )


def to_new_event(event: CanonicalEvent, limits: Limits, at: str = "event") -> NewEvent:
    """The event to append (an event id assigned when absent), or ValidationError
    whose ``field`` is the path of the offending input (``events[3].process_id``).

    Each field is read once (a read of a protobuf field costs as much as a check of
    it: this runs once per event recorded), and plain ASCII text skips the checks
    that only text beyond it can fail."""
    f = f"{at}."
    process_id = event.process_id
    _process_id(process_id, f + "process_id")
    if process_id == PRUNER_ID:
        raise ValidationError(
            f"{f}process_id {PRUNER_ID!r} is reserved for the pruner's tombstones",
            f + "process_id",
        )
    event_id = event.event_id
    if event_id:
        _event_id(event_id, f + "event_id")
    parent = event.parent_process_id
    if parent:
        _process_id(parent, f + "parent_process_id")
        if parent == process_id:
            raise ValidationError(
                f"{f}parent_process_id names the process itself", f + "parent_process_id"
            )
    event_type = event.event_type
    if not event_type:
        raise ValidationError(f"{f}event_type is required", f + "event_type")
    try:
        registry.check_type(event_type)
    except ValidationError as exc:
        raise ValidationError(f"{f}event_type: {exc}", f + "event_type") from None
    if event_type in RESERVED_TYPES:
        raise ValidationError(
            f"{f}event_type {event_type!r} is reserved: only the pruner records it",
            f + "event_type",
        )
    occurred_ns: int | None = None
    if event.HasField("occurred_at"):
        ts = event.occurred_at
        seconds, nanos = ts.seconds, ts.nanos
        if not 0 <= nanos <= 999_999_999 or not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
            raise ValidationError(
                f"{f}occurred_at is not a valid timestamp (seconds {seconds}, nanos "
                f"{nanos}; years 1 to 9999, nanos 0 to 999999999)",
                f + "occurred_at",
            )
        if seconds < 0:
            raise ValidationError(
                f"{f}occurred_at is before 1970-01-01: not a time a process ran",
                f + "occurred_at",
            )
        if seconds == 0 and nanos == 0:
            # The event store takes a zero occurred time for none and stamps the
            # recorded time instead: refused rather than silently replaced.
            raise ValidationError(
                f"{f}occurred_at is 1970-01-01T00:00:00Z, the zero time: not a time a "
                "process ran (leave it unset to take the recorded time)",
                f + "occurred_at",
            )
        # Presence, not truth: 1 ns after the epoch is a time like any other.
        occurred_ns = seconds * 1_000_000_000 + nanos
    max_text = limits.max_text
    source = event.source
    if source and not _plain(source, max_text):
        _id(source, f + "source", max_text)
    schema_version = event.schema_version
    if schema_version > limits.max_schema_version:
        raise ValidationError(
            f"{f}schema_version {schema_version} is above {limits.max_schema_version}",
            f + "schema_version",
        )
    causation_id = event.causation_id
    if causation_id:
        _event_id(causation_id, f + "causation_id")
    idempotency_key = event.idempotency_key
    if idempotency_key and blank(idempotency_key):
        # Taken as a key, it made every later event of the process sent so a duplicate
        # of the first (nothing recorded). Blank is the repo's one rule of empty
        # (printable.blank): white space, and also a zero-width space, a BOM, a word
        # joiner, a Hangul filler, which show nothing as a space does.
        raise ValidationError(
            f"{f}idempotency_key is blank (it shows nothing): send a key, or none",
            f + "idempotency_key",
        )
    correlation_id = event.correlation_id
    if correlation_id and not _plain(correlation_id, max_text):
        _id(correlation_id, f + "correlation_id", max_text)
    if idempotency_key and not _plain(idempotency_key, max_text):
        _id(idempotency_key, f + "idempotency_key", max_text)
    attributes = event.attributes
    if len(attributes) > limits.max_attributes:
        raise ValidationError(
            f"{f}attributes has {len(attributes)} entries; at most {limits.max_attributes}",
            f + "attributes",
        )
    body = ProcessEventBody()
    if attributes:
        kept = body.attributes
        max_attribute = limits.max_attribute_bytes
        for key in attributes:  # not .items(): a generator of the mapping mixin, per entry
            value = attributes[key]
            if not key:
                raise ValidationError(f"{f}attributes has an empty key", f + "attributes")
            if not _plain(key, max_text) or not _plain(value, max_attribute):
                where = f"{f}attributes[{key[:40]!r}]"  # the path, made only when refused
                _text(key, where, max_text)
                _text(value, where, max_attribute)
            kept[key] = value
    which = event.WhichOneof("payload")
    if which == "data":
        data = event.data
        _json_struct(data, f + "data", 1, limits)
        if event_type == "process_started":
            _started_data(data, f)
        body.data.CopyFrom(data)
    elif which == "typed":
        typed = event.typed
        if not typed.content_type:
            raise ValidationError(
                f"{f}typed.content_type is required with typed bytes", f + "typed.content_type"
            )
        _text(typed.content_type, f + "typed.content_type", max_text)
        body.typed.CopyFrom(typed)
    size = body.ByteSize()
    if size > limits.max_payload_bytes:
        where = f + ("typed" if which == "typed" else "data")
        raise ValidationError(
            f"{where}: the payload is {size} bytes; at most {limits.max_payload_bytes} "
            "(JETSOURCE_OBSERVER__MAX_PAYLOAD_BYTES)",
            where,
        )
    return NewEvent(
        body,
        event_id=event_id or uuid7(),
        occurred_at_ns=occurred_ns,
        causation_id=causation_id,
        correlation_id=correlation_id,
        idempotency_key=idempotency_key,
        source=source,
        parent_aggregate_id=parent,
        event_type=event_type,
        schema_version=schema_version,
    )


_FIELDS = {f.json_name for f in CanonicalEvent.DESCRIPTOR.fields} | {
    f.name for f in CanonicalEvent.DESCRIPTOR.fields
}


def parse_json_event(obj: Any, at: str = "event") -> CanonicalEvent:
    """A canonical event from its JSON form (proto3 JSON names, snake_case or
    lowerCamel). Unknown fields, a payload that is not an object and wrong types are
    ValidationError naming the field; nothing is guessed."""
    if not isinstance(obj, Mapping):
        raise ValidationError(f"{at} must be a JSON object, not {type(obj).__name__}", at)
    for key in obj:
        if key not in _FIELDS:
            raise ValidationError(f"{at}.{key} is not a field of a canonical event", f"{at}.{key}")
    for name in ("data", "payload"):
        if name in obj and not isinstance(obj[name], Mapping):
            raise ValidationError(
                f"{at}.{name} must be a JSON object, not {type(obj[name]).__name__}",
                f"{at}.{name}",
            )
    # Before protobuf sees it: a lone surrogate anywhere ("typed": "\ud800" raised a
    # SystemError from protobuf, an INTERNAL of `observe import`), and a payload a Struct
    # would change (an integer past 2^53 silently rounded, one past a double's range an
    # OverflowError) or that nests past what protobuf reads.
    where = _surrogate_path(obj, at)
    if where is not None:
        raise ValidationError(
            f"{where} holds a lone UTF-16 surrogate (U+D800 to U+DFFF not in a pair): no character",
            where,
        )
    for name in ("data", "payload"):
        if name in obj:
            try:
                check_struct_value(obj[name], f"{at}.{name}", _dotted, noun="recorded")
            except NotAStructValue as exc:
                raise ValidationError(str(exc), exc.field) from None
    try:
        return json_format.ParseDict(dict(obj), CanonicalEvent(), ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        # protobuf says "Failed to parse <field> field: ..." or names the field path.
        text = str(exc)
        m = re.search(r"(?:parse|field) (\w+)", text)
        field = f"{at}.{m.group(1)}" if m and m.group(1) in _FIELDS else at
        raise ValidationError(f"{at}: {text}", field) from None


def _dotted(where: str, key: str) -> str:
    return f"{where}.{key}"


def _surrogate_path(obj: Any, at: str) -> str | None:
    """The path of the first key or string of ``obj`` holding a lone surrogate, or None
    (iterative: a JSON document nests as deep as its parser took)."""
    todo: list[tuple[Any, str]] = [(obj, at)]
    while todo:
        value, path = todo.pop()
        if isinstance(value, str):
            if has_lone_surrogate(value):
                return path
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if isinstance(key, str) and has_lone_surrogate(key):
                    return path
                todo.append((item, f"{path}.{key}"))
        elif isinstance(value, list):
            todo.extend((item, f"{path}[{i}]") for i, item in enumerate(value))
    return None


def struct(data: Mapping[str, Any] | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if data:
        s.update(data)
    return s
