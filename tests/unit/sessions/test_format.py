"""The user-facing event format and its mapping onto the ledger (issue #16's unit tests)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetsource._gen.process.v1 import events_pb2
from jetsource.domains.sessions.format import (
    EventFormatError,
    SessionEvent,
    event_key,
    from_stored,
    new_session_id,
    parse_ts,
    to_canonical,
)

SID = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


def doc(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "ts": "2026-12-02T21:40:00.123Z",
        "session": SID,
        "seq": 3,
        "type": "level_started",
        "data": {"level": 0, "nodes": 2},
    }
    base.update(over)
    return base


def stored(event: SessionEvent, global_seq: int = 99) -> events_pb2.StoredEvent:
    """What the ledger gives back for a recorded event (positions assigned by it)."""
    return events_pb2.StoredEvent(
        event=to_canonical(event), global_seq=global_seq, process_seq=event.seq
    )


def test_serialization_is_valid_json_with_the_five_fields() -> None:
    e = SessionEvent.from_dict(doc())
    out = json.loads(e.to_json())
    assert out == doc()
    assert list(out) == ["ts", "session", "seq", "type", "data"]


def test_deserialization_is_equivalent_and_ignores_unknown_fields() -> None:
    e = SessionEvent.from_dict(doc(extra="ignored", another={"x": 1}))
    assert e == SessionEvent.from_dict(doc())
    assert "extra" not in e.to_dict()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ts", "2026-12-02T21:40:00Z"),  # no milliseconds
        ("ts", "2026-12-02 21:40:00.123Z"),
        ("ts", "2026-12-02T21:40:00.123"),  # no zone
        ("ts", "2026-13-02T21:40:00.123Z"),  # no 13th month
        ("ts", 1733175600123),
        ("session", "a.b"),
        ("session", ""),
        ("seq", 0),
        ("seq", "3"),
        ("seq", True),
        ("type", "LevelStarted"),
        ("type", "level-started"),
        ("type", "process_started"),  # the ledger's own
        ("data", [1, 2]),
        ("data", {"n": 2**60}),  # beyond what the ledger's numbers keep exactly
    ],
)
def test_bad_documents_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(EventFormatError) as info:
        SessionEvent.from_dict(doc(**{field: value}))
    assert info.value.field.split(".")[0] == field


def test_missing_fields_are_named() -> None:
    for name in ("ts", "session", "seq", "type", "data"):
        d = doc()
        del d[name]
        with pytest.raises(EventFormatError, match=f"^{name}: is missing"):
            SessionEvent.from_dict(d)


def test_timestamp_keeps_milliseconds_and_zones() -> None:
    assert parse_ts("2026-12-02T21:40:00.123Z") == parse_ts("2026-12-02T22:40:00.123+01:00")
    e = SessionEvent.from_dict(doc(ts="2026-12-02T22:40:00.123+01:00"))
    assert e.ts == "2026-12-02T21:40:00.123Z"


def test_session_started_is_seq_1_and_session_ended_names_a_status() -> None:
    with pytest.raises(EventFormatError, match="seq"):
        SessionEvent.from_dict(doc(type="session_started", seq=2, data={"command": "x"}))
    with pytest.raises(EventFormatError, match=r"data\.status"):
        SessionEvent.from_dict(doc(type="session_ended", data={}))


def test_session_ends_map_onto_the_process_lifecycle() -> None:
    start = SessionEvent.from_dict(
        doc(type="session_started", seq=1, data={"command": "context generate", "kind": "x"})
    )
    ce = to_canonical(start)
    assert (ce.event_type, ce.data["kind"], ce.data["name"]) == (
        "process_started",
        "session",
        "context generate",
    )
    for status, process_type in [
        ("completed", "process_completed"),
        ("failed", "process_failed"),
        ("interrupted", "process_cancelled"),
    ]:
        end = SessionEvent.from_dict(doc(type="session_ended", data={"status": status}))
        assert to_canonical(end).event_type == process_type
        assert from_stored(stored(end)) == end
    assert from_stored(stored(start)) == start


def test_an_imported_event_is_idempotent_by_session_and_seq() -> None:
    e = SessionEvent.from_dict(doc())
    assert to_canonical(e).idempotency_key == event_key(SID, 3)


def test_keys_keep_the_lexical_order_of_session_and_seq() -> None:
    keys = [event_key(SID, n) for n in (1, 2, 9, 10, 11, 99, 100, 1000, 10**9)]
    assert keys == sorted(keys)
    other = new_session_id()
    assert sorted([event_key(other, 2), event_key(SID, 10)]) == sorted(
        [event_key(SID, 10), event_key(other, 2)]
    )


def test_session_ids_are_unique_under_rapid_creation() -> None:
    ids: list[str] = []
    lock = threading.Lock()

    def make() -> None:
        mine = [new_session_id() for _ in range(5000)]
        with lock:
            ids.extend(mine)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 40_000
    assert len(set(ids)) == len(ids)
    for i in ids[:10]:
        SessionEvent.from_dict(doc(session=i))  # each is a valid session id


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False, width=64).filter(
        lambda f: not f.is_integer()
    )
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
types = st.sampled_from(
    ["level_started", "node_generation_failed", "queue_stats", "something_new", "x1_y2"]
)


@settings(max_examples=200, deadline=None)
@given(
    ms=st.integers(min_value=0, max_value=4_102_444_800_000),
    seq=st.integers(min_value=1, max_value=10**12),
    event_type=types,
    data=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    end=st.sampled_from(["completed", "failed", "interrupted"]),
)
def test_round_trip_json_canonical_json_is_lossless(
    ms: int, seq: int, event_type: str, data: dict[str, object], end: str
) -> None:
    cases = [
        {"type": event_type, "seq": seq, "data": data},
        {"type": "session_started", "seq": 1, "data": data},
        {"type": "session_ended", "seq": seq, "data": {**data, "status": end}},
    ]
    for case in cases:
        from datetime import UTC, datetime

        ts = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
            f"{ms % 1000:03d}Z"
        )
        text = json.dumps({"ts": ts, "session": SID, **case})
        event = SessionEvent.from_json(text)
        wire = stored(event).SerializeToString()
        back = from_stored(events_pb2.StoredEvent.FromString(wire))
        assert json.loads(back.to_json()) == json.loads(text)


def test_the_ledger_s_process_interrupted_reads_as_an_interrupted_end_and_is_reserved() -> None:
    """The ledger's fourth ending (a raw writer's, or `observe import`'s) ends a session
    as interrupted, as the registry lists it: it read as a plain event, so the session
    stayed `active` in `show` and the stream reader's `list` (and `follow` never ended).
    Users' events may not take the type: an emitted `process_interrupted` ended the
    session's process on the ledger while the session went on."""
    ended = events_pb2.StoredEvent(
        event=events_pb2.CanonicalEvent(process_id=SID, event_type="process_interrupted"),
        global_seq=7,
        process_seq=4,
    )
    read = from_stored(ended)
    assert (read.type, read.data, read.seq) == ("session_ended", {"status": "interrupted"}, 4)
    # What it reads as imports again as the same ending status.
    assert to_canonical(read).event_type == "process_cancelled"
    with pytest.raises(EventFormatError, match="type"):
        SessionEvent.from_dict(doc(type="process_interrupted", data={}))


def raw_stored(event_type: str, seq: int, **data: Any) -> events_pb2.StoredEvent:
    """An event a writer other than the emitter put on the ledger."""
    ce = events_pb2.CanonicalEvent(process_id=SID, event_type=event_type)
    ce.data.update(data)
    return events_pb2.StoredEvent(event=ce, global_seq=seq, process_seq=seq)


def test_a_raw_session_s_command_and_error_read_as_list_shows_them() -> None:
    """A session another writer recorded names its command only as the process's name
    and its error only at the ending's top level (what `sessions list` shows): `show`
    and `export` said no command and no error."""
    start = from_stored(raw_stored("process_started", 1, kind="session", name="raw cmd"))
    assert start.data == {"command": "raw cmd"}
    failed = from_stored(raw_stored("process_failed", 2, error="boom"))
    assert failed.data == {"status": "failed", "error": "boom"}
    # What the session's own data says wins; an ending other than a failure names none.
    own = from_stored(
        raw_stored("process_started", 1, kind="session", name="n", session={"command": "c"})
    )
    assert own.data == {"command": "c"}
    done = from_stored(raw_stored("process_completed", 2, error="not a failure"))
    assert done.data == {"status": "completed"}
    # What they read as imports again as the same events.
    for event in (start, failed):
        assert from_stored(stored(event)) == event


def test_a_failure_naming_no_error_records_none_and_an_old_placeholder_reads_as_written() -> None:
    """A failure that names no error has no error on the ledger's ending (the registry,
    which `sessions list` reads, has none): it recorded the placeholder "failed", the
    very error a user may write, so `list` could not tell the two apart. An ending
    recorded before with that placeholder reads as written, "failed", as `list` says."""
    quiet = SessionEvent.from_dict(doc(type="session_ended", data={"status": "failed"}))
    assert "error" not in to_canonical(quiet).data
    assert from_stored(stored(quiet)) == quiet
    told = SessionEvent.from_dict(
        doc(type="session_ended", data={"status": "failed", "error": "failed"})
    )
    assert to_canonical(told).data["error"] == "failed"
    assert from_stored(stored(told)).data["error"] == "failed"
    old = events_pb2.CanonicalEvent(process_id=SID, event_type="process_failed")
    old.data.update({"session": {"status": "failed"}, "error": "failed"})
    read = from_stored(events_pb2.StoredEvent(event=old, global_seq=9, process_seq=2))
    assert read.data == {"status": "failed", "error": "failed"}
