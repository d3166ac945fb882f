"""The event format users see (the JSON export, the follow stream, JSONL files):

    {"ts": "2026-12-02T21:40:00.123Z", "session": "<id>", "seq": 1,
     "type": "session_started", "data": {...}}

and its mapping onto the process ledger. A session is a root process of kind
``session``; its events are that process's events and ``seq`` is its ``process_seq``
(assigned by the store, contiguous from 1). The two ends of a session are the
process lifecycle so the registry understands them with no special case:

- ``session_started`` is ``process_started`` with ``{"kind": "session", "name":
  <command>, "session": <the user's data>}``,
- ``session_ended`` is ``process_completed`` (status completed),
  ``process_failed`` (failed; ``error`` copied up for the registry) or
  ``process_cancelled`` (interrupted), each carrying the user's data under
  ``"session"``; a ``process_interrupted`` (the ledger's fourth ending) reads as
  ``session_ended`` (interrupted) too.

Every other type is recorded as is, its data the payload. The user's data sits whole
under one key, so the round trip JSON -> canonical -> JSON gives back the same
document. Reading ignores unknown fields; unknown types pass through untouched.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format, struct_pb2

from jetsource._gen.process.v1 import events_pb2
from jetsource.core.clock import from_timestamp, to_timestamp
from jetsource.core.ids import MAX_AGGREGATE_ID_LENGTH, uuid7
from jetsource.core.printable import not_one_line_at, refused_at
from jetsource.core.structvalue import SAFE_INTEGER, NotAStructValue, check_struct_value
from jetsource.domains.process.validation import FIXED_LIMITS

SESSION_KIND = "session"
SESSION_STARTED, SESSION_ENDED = "session_started", "session_ended"
PROCESS_STARTED = "process_started"
ENDINGS = {
    "completed": "process_completed",
    "failed": "process_failed",
    "interrupted": "process_cancelled",
}
# What each of the ledger's endings reads as: ``process_interrupted`` too, which no
# session writer sends but a raw one may (the registry ends the process with it, so
# a session read it as active while the registry listed it interrupted).
ENDED_STATUS = {**{v: k for k, v in ENDINGS.items()}, "process_interrupted": "interrupted"}
# A failed session_ended that names no error has no error on the ledger's ending (the
# registry's error is none). Endings recorded before 2026-12-07 hold "failed" there,
# which every reader takes as written ("failed"): it is not told from a user's "failed".
# Types a session's user data may not carry: the ledger's own lifecycle (an emitted
# ``process_interrupted`` ended the session's process on the ledger while it went on).
RESERVED = frozenset({PROCESS_STARTED, *ENDED_STATUS})

_TYPE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
MAX_TYPE_LENGTH = 64  # the ledger's bound on an event type
_SESSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")
_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}(?:Z|[+-]\d{2}:\d{2})")
MS = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_KEY_WIDTH = 12  # seq digits in keys: lexical order = numeric order up to 10^12 events
_IMPORT_NS = uuid.UUID("5b1f0e4c-2d6a-5e8b-9c3d-16a0c7e2f401")


class EventFormatError(ValueError):
    """A session event document that is not valid; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def new_session_id() -> str:
    """A session id: a UUIDv7 (time-ordered, a per-process counter within a millisecond
    and 62 random bits), so ids made at any rate, in any number of processes, differ."""
    return uuid7()


def event_key(session: str, seq: int) -> str:
    """``<session>:<seq>`` with seq zero-padded: keys sort as (session, seq) do."""
    return f"{session}:{seq:0{_KEY_WIDTH}d}"


def format_ts(ns: int) -> str:
    """ISO 8601, UTC, milliseconds: ``2026-12-02T21:40:00.123Z``."""
    ms = ns // MS
    # Not strftime: its %Y wrote the year 500 as "500", which parse_ts refuses, so an
    # exported line did not import again.
    d = _EPOCH + timedelta(milliseconds=ms)
    return (
        f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
        f".{ms % 1000:03d}Z"
    )


def parse_ts(text: Any) -> int:
    """Nanoseconds since the epoch from an ISO 8601 timestamp with milliseconds."""
    if not isinstance(text, str) or not _TS.fullmatch(text):
        raise EventFormatError(
            "ts", f"{text!r} is not ISO 8601 with milliseconds (2026-12-02T21:40:00.123Z)"
        )
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise EventFormatError("ts", f"{text!r}: {e}") from None
    try:
        when.astimezone(UTC)  # an offset can take it past the years 1..9999
    except (OverflowError, ValueError):
        raise EventFormatError("ts", f"{text!r} is outside the years 1..9999 UTC") from None
    # Exact milliseconds: int(timestamp()) rounded a time before 1970 towards it, so
    # 1969-12-31T23:59:59.500Z read back as 1970-01-01T00:00:00.500Z.
    return ((when - _EPOCH) // timedelta(milliseconds=1)) * MS


@dataclass(frozen=True)
class SessionEvent:
    ts_ns: int
    session: str
    seq: int
    type: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ts(self) -> str:
        return format_ts(self.ts_ns)

    @property
    def key(self) -> str:
        return event_key(self.session, self.seq)

    def to_dict(self) -> dict[str, Any]:
        return {"ts": self.ts, "session": self.session, "seq": self.seq, "type": self.type,
                "data": self.data}  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, doc: Any) -> SessionEvent:
        """Parse one document, strictly on the five fields and ignoring any others."""
        if not isinstance(doc, dict):
            raise EventFormatError("event", f"must be a JSON object, not {type(doc).__name__}")
        for name in ("ts", "session", "seq", "type", "data"):
            if name not in doc:
                raise EventFormatError(name, "is missing")
        ts_ns = parse_ts(doc["ts"])
        session = doc["session"]
        if (
            not isinstance(session, str)
            or not _SESSION.fullmatch(session)
            or len(session) > MAX_AGGREGATE_ID_LENGTH
        ):
            raise EventFormatError(
                "session", f"{session!r} is not a session id (letters, digits, '-', '_')"
            )
        seq = doc["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise EventFormatError("seq", f"{seq!r} must be an integer >= 1")
        event_type = doc["type"]
        check_type(event_type)
        if event_type in RESERVED:
            raise EventFormatError(
                "type", f"{event_type} is the ledger's own; use session_started/session_ended"
            )
        data = doc["data"]
        if not isinstance(data, dict):
            raise EventFormatError("data", f"must be a JSON object, not {type(data).__name__}")
        check_numbers(data, "data", level=stored_level(event_type))
        status = data.get("status")
        if event_type == SESSION_ENDED and not (isinstance(status, str) and status in ENDINGS):
            raise EventFormatError(
                "data.status", f"session_ended needs status one of {sorted(ENDINGS)}"
            )
        if event_type == SESSION_STARTED and seq != 1:
            raise EventFormatError("seq", "session_started is always seq 1")
        command = data.get("command")
        if (
            event_type == SESSION_STARTED
            and isinstance(command, str)
            and (at := not_one_line_at(command)) is not None
        ):
            # The session's root process is named by it (one line, as the observer and
            # the emitter take names): refused here, naming the line, before anything
            # of an import is recorded.
            raise EventFormatError(
                "data.command",
                f"holds {refused_at(command, at)}: it takes one line of printable text",
            )
        return cls(ts_ns, session, seq, event_type, data)

    @classmethod
    def from_json(cls, text: str | bytes) -> SessionEvent:
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise EventFormatError("event", f"not JSON: {e}") from None
        except RecursionError:
            # Nested past the parser's recursion limit: not a ValueError (an INTERNAL).
            raise EventFormatError("event", "not JSON this reads: nested too deep") from None
        return cls.from_dict(doc)


def check_type(event_type: Any) -> None:
    """An event type is snake_case, at most 64 characters (what the ledger records)."""
    if not isinstance(event_type, str) or not _TYPE.fullmatch(event_type):
        raise EventFormatError("type", f"{event_type!r} must be snake_case")
    if len(event_type) > MAX_TYPE_LENGTH:
        raise EventFormatError(
            "type", f"at most {MAX_TYPE_LENGTH} characters, got {len(event_type)}"
        )


def check_numbers(value: Any, where: str, *, level: int = 1) -> None:
    """The ledger keeps data as a protobuf Struct, whose numbers are doubles: an
    integer beyond 2^53 would come back changed, so it is refused, not rounded. A value
    a Struct cannot hold at all (a datetime, a set, bytes, a non-str key) is refused
    here naming its field (``data.a[0]``), not by protobuf's bare "Unexpected type".

    ``level``: the level ``value`` (an object or list) is stored at in the recorded
    event's data, the data object itself the first: session_started's and
    session_ended's data is stored under ``data.session`` (``stored_level``), a
    session's metadata under that (3). Nesting is counted as stored, as the observer
    counts it."""
    try:
        check_struct_value(value, where, _dotted, noun="recorded")
    except NotAStructValue as exc:
        raise EventFormatError(exc.field, exc.message) from None
    deep = _too_deep_at(value, where, level)
    if deep is not None:
        # The observer's bound (no setting changes it): a payload deeper than this was
        # recorded straight to the stream (an import, the emitter on the ledger), and
        # from 34 levels no reader parsed it: the session (and the query reader's
        # `list`) answered DATA_LOSS until an operator voided the event.
        stored = "" if level == 1 else f" as stored (under {level - 1} the ledger adds)"
        raise EventFormatError(deep, f"is nested deeper than {MAX_DEPTH} levels{stored}")


def stored_level(event_type: str) -> int:
    """The level a session event's data object is stored at on the ledger (see
    ``to_canonical``): session_started's and session_ended's under ``data.session``
    (2), any other event's as the data itself (1)."""
    return 2 if event_type in (SESSION_STARTED, SESSION_ENDED) else 1


# Objects and lists in one event's data, itself the first level: the observer's
# FIXED_LIMITS.max_depth, so both ways to the ledger take the same data.
MAX_DEPTH = FIXED_LIMITS.max_depth


def _too_deep_at(value: Any, where: str, depth: int) -> str | None:
    """The field of the first object or list of ``value`` (at ``depth``) nested deeper
    than MAX_DEPTH, or None."""
    if depth > MAX_DEPTH:
        return where
    if isinstance(value, dict):
        items: Any = ((_dotted(where, k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for field_, item in items:
        if isinstance(item, (dict, list, tuple)):
            found = _too_deep_at(item, field_, depth + 1)
            if found is not None:
                return found
    return None


def _dotted(where: str, key: str) -> str:
    return f"{where}.{key}"


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(data)
    return s


def to_canonical(event: SessionEvent, *, source: str = "jetsource.sessions") -> (
    events_pb2.CanonicalEvent
):  # fmt: skip
    """The ledger's canonical event for a session event, recorded on the session's root
    process. The idempotency key is ``<session>:<seq>``: recording the same session
    event twice (a re-import, a retry) appends it once."""
    ce = events_pb2.CanonicalEvent(
        process_id=event.session,
        source=source,
        # Known only for an event that has a seq (an import): then a second import of
        # it appends nothing. A live emitter's events are made idempotent by event id.
        idempotency_key=event.key if event.seq > 0 else "",
        # and its id is derived from the same key, so even a writer that dedupes only
        # by event id (the stream's duplicate window) appends it once.
        event_id=str(uuid.uuid5(_IMPORT_NS, event.key)) if event.seq > 0 else "",
        occurred_at=to_timestamp(event.ts_ns),
    )
    if event.type == SESSION_STARTED:
        command = event.data.get("command")
        ce.event_type = PROCESS_STARTED
        payload: dict[str, Any] = {
            "kind": SESSION_KIND,
            "name": command if isinstance(command, str) else "",
            "session": event.data,
        }
    elif event.type == SESSION_ENDED:
        ce.event_type = ENDINGS[event.data["status"]]
        payload = {"session": event.data}
        if event.data["status"] == "failed" and "error" in event.data:
            payload["error"] = event.data["error"]
    else:
        ce.event_type = event.type
        payload = event.data
    ce.data.CopyFrom(_struct(payload))
    return ce


def _data(event: events_pb2.CanonicalEvent) -> dict[str, Any]:
    if event.WhichOneof("payload") == "data":
        out: dict[str, Any] = json_format.MessageToDict(event.data)
        return out
    if event.WhichOneof("payload") == "typed":
        return {"content_type": event.typed.content_type, "bytes": len(event.typed.data)}
    return {}


def restore_ints(value: Any) -> Any:
    """Struct keeps numbers as doubles: give integral ones back as ints (JSON has one
    number type; 3 and 3.0 are the same number, but users expect 3)."""
    # <= : 2^53 itself is exact in a double, and check_numbers lets it through.
    if isinstance(value, float) and value.is_integer() and abs(value) <= SAFE_INTEGER:
        return int(value)
    if isinstance(value, dict):
        return {k: restore_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [restore_ints(v) for v in value]
    return value


def error_text(value: Any) -> str:
    """A session's error as text, one rendering for every reader (``sessions list``
    and ``show`` from the endings, the snapshot's failures): a
    string as written, other JSON (a number, an object, a list, a boolean: the format
    takes any JSON) as compact JSON with its integral numbers as ints, none as ''."""
    if value is None or isinstance(value, str):
        return value or ""
    return json.dumps(
        restore_ints(value), ensure_ascii=False, separators=(",", ":"), sort_keys=True
    )


def ending_said(event_type: str, data: dict[str, Any]) -> Any:
    """The error a session's ending on the ledger says (``data``: the ending's payload),
    as ``from_stored`` reads it: the user's ``error`` under "session" (even null), else
    a failure's error copied up for the registry; None: it names none."""
    user = _object(data.get("session"))
    if "error" in user:
        return user["error"]
    return data.get("error") if event_type == ENDINGS["failed"] else None


def ending_error(before: str, said: Any) -> str:
    """A session's error once an ending saying ``said`` is read: any JSON but none is
    the error (as ``error_text``), none keeps the one an earlier ending said. The one
    rule of ``sessions show`` (the fold), and ``sessions list`` with either reader:
    a completed ending naming an error then a failed one naming none listed ''
    while show said the first."""
    return before if said is None else error_text(said)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def from_stored(stored: events_pb2.StoredEvent, session: str | None = None) -> SessionEvent:
    """A session event from a stored event of the session's root process."""
    ce = stored.event
    data = restore_ints(_data(ce))
    event_type = ce.event_type
    # The observer records any JSON under any key, so the user's data under
    # "session" may be a string, a list or null: such a shape is read as absent (the
    # format promises "data is a JSON object", and an export must import again).
    if event_type == PROCESS_STARTED and data.get("kind") == SESSION_KIND:
        event_type = SESSION_STARTED
        name = data.get("name")
        data = _object(data.get("session"))
        if not isinstance(data.get("command"), str) and isinstance(name, str) and name:
            # A writer other than the emitter may name the command only as the
            # process's name (what `sessions list` shows): `show` and `export` say it too.
            data = {**data, "command": name}
    elif event_type in ENDED_STATUS:
        # The ledger's ending decides the status (what the registry shows, and what
        # an import maps back to the same ending); the emitter's data always agrees.
        status = ENDED_STATUS[event_type]
        user = _object(data.get("session"))
        error = data.get("error")
        data = user if user.get("status") == status else {**user, "status": status}
        if event_type == ENDINGS["failed"] and "error" not in data and error is not None:
            # Likewise the error the ledger's ending carries (what `list` shows).
            data = {**data, "error": error}
        event_type = SESSION_ENDED
    ts_ns = from_timestamp(ce.occurred_at) if ce.HasField("occurred_at") else 0
    if not ts_ns and stored.HasField("recorded_at"):
        ts_ns = from_timestamp(stored.recorded_at)
    return SessionEvent(
        ts_ns=(ts_ns // MS) * MS,
        session=session or ce.process_id,
        seq=stored.process_seq,
        type=event_type,
        data=data,
    )


def to_message(event: SessionEvent) -> Any:
    """The session event as ``jetsource.process.v1.SessionEvent`` (what ``WatchSession``
    streams): the same five fields as the JSON document."""
    from jetsource._gen.process.v1 import query_pb2

    return query_pb2.SessionEvent(
        ts=to_timestamp(event.ts_ns),
        session=event.session,
        seq=event.seq,
        type=event.type,
        data=_struct(event.data),
    )


def from_message(message: Any) -> SessionEvent:
    """The session event a ``jetsource.process.v1.SessionEvent`` carries."""
    ts_ns = from_timestamp(message.ts) if message.HasField("ts") else 0
    data = restore_ints(json_format.MessageToDict(message.data))
    return SessionEvent(ts_ns, message.session, int(message.seq), message.type, data)
