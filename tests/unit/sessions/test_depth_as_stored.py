"""Sessions and the observer count one nesting limit alike for every event type:
session_started's and session_ended's data is stored under the process's
``data.session``, a level deeper than written, so data nested exactly 20 levels there
passed the sessions check (import, emitter) and the observer refused it."""

from __future__ import annotations

from typing import Any

import pytest

from jetsource.core.errors import ValidationError
from jetsource.domains.process.validation import FIXED_LIMITS, to_new_event
from jetsource.domains.sessions.format import EventFormatError, SessionEvent, to_canonical

TS = "2026-12-01T10:00:00.000Z"


def nested(levels: int, as_list: bool) -> Any:
    """What goes under ``m`` in data that is ``levels`` deep as written (the data object
    the first level): ``levels - 1`` objects (or lists) one in another."""
    value: Any = 1
    for _ in range(levels - 1):
        value = [value] if as_list else {"a": value}
    return value


def doc(event_type: str, value: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"m": value}
    if event_type == "session_started":
        data["command"] = "c"
    if event_type == "session_ended":
        data["status"] = "failed"
        data["error"] = value  # copied up for the registry: stored twice
    seq = 1 if event_type == "session_started" else 2
    return {"ts": TS, "session": "s-1", "seq": seq, "type": event_type, "data": data}


@pytest.mark.parametrize("as_list", [False, True])
@pytest.mark.parametrize("levels", [18, 19, 20, 21])
@pytest.mark.parametrize("event_type", ["deep_data", "session_started", "session_ended"])
def test_sessions_and_the_observer_take_the_same_nesting(
    event_type: str, levels: int, as_list: bool
) -> None:
    document = doc(event_type, nested(levels, as_list))
    try:
        event = SessionEvent.from_dict(document)
    except EventFormatError as exc:
        assert exc.field.startswith("data.m")
        assert "nested deeper than 20 levels" in str(exc)
        sessions_takes = False
    else:
        sessions_takes = True
    observer_takes = True
    try:
        to_new_event(to_canonical(_event(document)), FIXED_LIMITS)
    except ValidationError:
        observer_takes = False
    assert sessions_takes == observer_takes, (event_type, levels, as_list)
    if sessions_takes:
        assert event.data["m"] == document["data"]["m"]


def _event(document: dict[str, Any]) -> SessionEvent:
    """The event as written, unchecked (what it would record)."""
    return SessionEvent(1, document["session"], document["seq"], document["type"], document["data"])


def test_session_started_data_nested_20_levels_as_written_is_refused_naming_the_field() -> None:
    # data (1), m (2), ... m's 19th object at 20 as written, 21 as stored.
    with pytest.raises(EventFormatError) as caught:
        SessionEvent.from_dict(doc("session_started", nested(20, False)))
    assert caught.value.field == "data.m" + ".a" * 18
    assert "as stored" in str(caught.value)
