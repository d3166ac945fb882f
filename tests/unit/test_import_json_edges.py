"""JSON lines the import commands read (``observe import``, ``sessions import``) and the
SDK's payload check, with what JSON can spell and a protobuf Struct cannot hold: a lone
surrogate escape (``"\\ud800"``) in any key or string, nesting past the parser's recursion
limit, integers past a double. Each is refused naming the line and the field; before,
``observe import`` answered ``INTERNAL: unexpected SystemError`` (a surrogate in
``typed``), ``RecursionError`` (a deep line) or ``OverflowError`` (a 400-digit integer
in ``data``), rounded a 20-digit integer silently, and ``sessions import`` raised the same
RecursionError and a UnicodeEncodeError. Found by generated inputs (fuzz5, round 5)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetsource.core.errors import ValidationError
from jetsource.domains.process.adapters import JsonlAdapter, Line, PositionFile
from jetsource.domains.sessions.format import EventFormatError, SessionEvent
from jetsource.sdk.observe import _check_json

GOOD: dict[str, Any] = {
    "process_id": "p1",
    "event_type": "process_started",
    "occurred_at": "2026-01-01T00:00:00Z",
    "data": {"kind": "job", "x": [1, {"y": "z"}]},
    "attributes": {"a": "b"},
    "typed": None,
}
SESSION: dict[str, Any] = {
    "ts": "2026-01-01T00:00:00.000Z",
    "session": "s1",
    "seq": 1,
    "type": "session_started",
    "data": {"command": "x"},
}
# Spelled into the JSON text as they are (json.dumps would escape or refuse them).
POISON = {
    "surrogate": '"\\ud800"',
    "surrogate_pair_half": '"a\\udfffb"',
    "deep": "[" * 5000 + "]" * 5000,
    "huge": "9" * 400,
    "past_2_53": "12345678901234567890",
}


def observe_line(text: str) -> Any:
    return JsonlAdapter("src").normalize(Line(0, len(text) + 1, 7, text.encode() + b"\n"))


def spliced(doc: dict[str, Any], path: list[str], poison: str) -> str:
    """``doc`` as JSON with the value at ``path`` replaced by ``poison``'s raw text."""
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = "@@POISON@@"
    return json.dumps(doc).replace('"@@POISON@@"', poison)


OBSERVE_PATHS = [
    ["typed"],
    ["typed", "content_type"],
    ["typed", "@key"],
    ["data", "x"],
    ["data", "@key"],
    ["attributes", "a"],
    ["source"],
]


@settings(max_examples=60, derandomize=True, deadline=None)
@given(path=st.sampled_from(OBSERVE_PATHS), poison=st.sampled_from(sorted(POISON)))
def test_observe_import_refuses_what_json_spells_and_a_struct_cannot_hold(
    path: list[str], poison: str
) -> None:
    if poison in ("huge", "past_2_53") and path[0] != "data":
        poison = "surrogate"  # a number where text goes: protobuf's own refusal
    doc = {k: v for k, v in GOOD.items() if v is not None}
    if path[0] == "typed":
        doc.pop("data")  # one payload or the other
    if path[-1] == "@key":  # a key holding the surrogate (only strings are keys)
        text = spliced(doc, [*path[:-1], "k"], '"v"').replace('"k"', POISON["surrogate"], 1)
    else:
        text = spliced(doc, path, POISON[poison])
    with pytest.raises(ValidationError) as err:
        observe_line(text)
    assert (err.value.field or "").startswith("line 7"), (text[:200], err.value.field)
    assert str(err.value).startswith("line 7"), str(err.value)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"process_id": "p2", "event_type": "log", "typed": "\\ud800"}', "line 7.typed"),
        ('{"process_id": "p2", "event_type": "log", "typed": {"\\ud800": 1}}', "line 7.typed"),
        (
            '{"process_id": "p2", "event_type": "log", "data": {"x": ' + "9" * 400 + "}}",
            "line 7.data.x",
        ),
        (
            '{"process_id": "p2", "event_type": "log", "data": {"x": 12345678901234567890}}',
            "line 7.data.x",
        ),
        (
            '{"process_id": "p2", "event_type": "log", "data": {"x": '
            + "[" * 3000
            + "]" * 3000
            + "}}",
            "line 7",
        ),
    ],
    ids=["typed_surrogate", "typed_surrogate_key", "huge_int", "int_past_2_53", "deep"],
)
def test_observe_import_minimal_examples(line: str, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        observe_line(line)
    assert err.value.field == field, str(err.value)


def test_observe_import_still_takes_a_good_line() -> None:
    (event,) = observe_line(json.dumps({k: v for k, v in GOOD.items() if v is not None}))
    assert event.process_id == "p1" and event.data["x"][1]["y"] == "z"


@pytest.mark.parametrize(
    ("poison", "field"),
    [("surrogate", "data.x"), ("deep", "event"), ("past_2_53", "data.x")],
)
def test_sessions_import_refuses_them_naming_the_field(poison: str, field: str) -> None:
    with pytest.raises(EventFormatError) as err:
        SessionEvent.from_json(spliced(SESSION, ["data", "x"], POISON[poison]))
    assert err.value.field == field, str(err.value)


def test_the_sdk_refuses_a_lone_surrogate_and_deep_nesting_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"data\['a'\]\[0\]: holds a lone"):
        _check_json({"a": ["\ud800"]}, "data")
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(500):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(ValueError, match="nested deeper than 100"):
        _check_json(deep, "data")


# -- the position file of observe import (--state), damaged or edited by hand ------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    doc=st.one_of(
        JSON_VALUES,
        st.fixed_dictionaries(
            {"source": st.just("S"), "offset": JSON_VALUES, "line": JSON_VALUES},
            optional={"last": JSON_VALUES, "tail": JSON_VALUES},
        ),
    )
)
def test_a_damaged_position_file_is_refused_naming_it(doc: Any, tmp_path_factory: Any) -> None:
    """Whatever the file holds: the adapter resumes from it, or ValidationError (the
    CLI's exit 2 naming the file); a null offset, a list of ``last`` events, an offset of
    1e400 or ``true`` were an INTERNAL TypeError / OverflowError or read from byte 1."""
    path = tmp_path_factory.mktemp("pos") / "pos.json"
    path.write_text(json.dumps(doc))
    try:
        adapter = JsonlAdapter.resume("S", PositionFile(path).load(), "jsonl")
    except ValidationError as exc:
        assert exc.field == "state"
        return
    assert type(adapter.offset) is int and adapter.offset >= 0
    assert type(adapter.line_number) is int and adapter.line_number >= 0
