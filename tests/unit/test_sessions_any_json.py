"""A session's events as the ledger may hold them: the observer records any JSON in any
field, so every field the sessions format and fold read may hold any JSON type. Reading
such a session (format, fold, record, export, the WatchSession message) never fails; a
field of the wrong shape reads as absent, and what is exported imports again.

``odd_session`` is also what the ledger-stack test records through the observer."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import struct_pb2

from jetsource._gen.process.v1 import events_pb2
from jetsource.domains.sessions.catalog import load_catalog
from jetsource.domains.sessions.format import (
    EventFormatError,
    SessionEvent,
    from_stored,
    to_message,
)
from jetsource.domains.sessions.progress import SessionState, evolve
from jetsource.domains.sessions.record import record_of

# Every JSON type, and the edges of some.
SHAPES: list[Any] = [
    None, True, 0, -1.5, 2**53, "", "x", [], [None, 1, "a", {}, []], {}, {"a": {"b": [1]}},
]  # fmt: skip
# What the fold reads (progress.py), beside every field the catalog names.
FOLD_KEYS = {
    "command", "status", "error", "plan", "level", "node_ids", "nodes", "completed",
    "failed", "request_id", "node_id", "provider", "paths", "path",
}  # fmt: skip
ENDINGS = ("process_completed", "process_failed", "process_cancelled")


def _types_and_keys() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for spec in load_catalog().events.values():
        if spec.type in ("session_started", "session_ended"):
            continue
        out[spec.type] = set(spec.schema.get("properties", {})) | FOLD_KEYS
    return out


def odd_session(process_id: str, shape: Any, ending: str = "process_completed") -> list[
    events_pb2.CanonicalEvent
]:  # fmt: skip
    """A session as a raw writer may record it: every field the catalog or the fold
    knows set to ``shape``, once alone and once beside a usable node, request and
    level (so the fold's deeper branches read it too)."""

    def event(event_type: str, data: dict[str, Any]) -> events_pb2.CanonicalEvent:
        e = events_pb2.CanonicalEvent(process_id=process_id, event_type=event_type)
        s = struct_pb2.Struct()
        s.update(data)
        e.data.CopyFrom(s)
        return e

    out = [event("process_started", {"kind": "session", "name": "odd", "session": shape})]
    for event_type, keys in sorted(_types_and_keys().items()):
        out.append(event(event_type, dict.fromkeys(keys, shape)))
        usable = {"node_id": "n", "request_id": "r", "level": 1}
        out.append(event(event_type, {**dict.fromkeys(keys, shape), **usable}))
    out.append(event("plan_constructed", {"plan": [{"level": 1, "node_ids": shape}, shape]}))
    out.append(event(ending, {"session": shape, "error": shape}))
    return out


def stored(events: list[events_pb2.CanonicalEvent]) -> list[events_pb2.StoredEvent]:
    out = []
    for i, e in enumerate(events, 1):
        s = events_pb2.StoredEvent(event=e, global_seq=i, process_seq=i)
        s.recorded_at.FromNanoseconds(1_800_000_000_000_000_000 + i * 1_000_000)
        out.append(s)
    return out


def check_readable(events: list[SessionEvent]) -> SessionState:
    """What every reader does with a session's events, none of which may fail."""
    state = SessionState()
    for e in events:
        assert isinstance(e.data, dict), (e.type, e.data)
        again = SessionEvent.from_json(e.to_json())  # the export imports again
        assert again == e
        to_message(e)  # WatchSession's message
        state = evolve(state, e)
    json.dumps(record_of(state, events[-1].ts_ns, events[-1].ts_ns, 60).to_dict())
    assert state.status in ("completed", "failed", "interrupted")
    assert all(isinstance(x, str) for x in (state.command, state.error, state.generation))
    assert all(isinstance(n.error, str) and isinstance(n.provider, str) for n in state.nodes)
    assert isinstance(state.watch.get("paths", []), list)
    assert isinstance(state.watch.get("last_path", ""), str)
    return state


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("shape", SHAPES, ids=[json.dumps(s) for s in SHAPES])
def test_a_session_whose_fields_hold_any_json_type_reads_and_exports(
    shape: Any, ending: str
) -> None:
    events = [from_stored(s) for s in stored(odd_session("s1", shape, ending))]
    assert events[0].type == "session_started" and events[-1].type == "session_ended"
    # The ledger's ending is the status, whatever the user's data says.
    status = {"process_completed": "completed", "process_failed": "failed"}
    want = status.get(ending, "interrupted")
    assert events[-1].data["status"] == want
    assert check_readable(events).status == want


@pytest.mark.parametrize("shape", SHAPES, ids=[json.dumps(s) for s in SHAPES])
def test_a_session_ended_whose_status_is_not_one_folds_as_completed(shape: Any) -> None:
    """A ledger event a raw writer typed ``session_ended`` itself (not a process
    ending) passes through as is; the fold takes a status it does not know as absent."""
    ended = SessionEvent(1, "s1", 2, "session_ended", {"status": shape, "error": shape})
    state = evolve(SessionState(), ended)
    assert (state.status, isinstance(state.error, str)) == ("completed", True)


def test_the_user_data_of_a_well_formed_session_is_kept_whole() -> None:
    """The wrong shapes are read as absent; the right ones are not touched."""
    started = events_pb2.CanonicalEvent(process_id="s1", event_type="process_started")
    started.data.update({"kind": "session", "name": "c", "session": {"command": "c", "x": [1]}})
    ended = events_pb2.CanonicalEvent(process_id="s1", event_type="process_failed")
    ended.data.update({"error": "e", "session": {"status": "failed", "error": "e", "n": 2}})
    first, last = (from_stored(s) for s in stored([started, ended]))
    assert first.data == {"command": "c", "x": [1]}
    assert last.data == {"status": "failed", "error": "e", "n": 2}


@pytest.mark.parametrize("shape", SHAPES, ids=[json.dumps(s) for s in SHAPES])
def test_an_import_line_whose_status_is_any_json_is_refused_naming_it(shape: Any) -> None:
    line = {"ts": "2026-12-02T21:40:00.123Z", "session": "s1", "seq": 2,
            "type": "session_ended", "data": {"status": shape}}  # fmt: skip
    with pytest.raises(EventFormatError) as refused:
        SessionEvent.from_dict(line)
    assert refused.value.field == "data.status"
