"""Timestamps across the whole range a session line may hold (years 1..9999 UTC): what
`export` writes, `import` reads again, to the millisecond. A year below 1000 was written
unpadded ("500-06-01T..."), which import refuses, and a time before 1970 read back a
second late."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetsource.domains.sessions.format import (
    MS,
    EventFormatError,
    SessionEvent,
    format_ts,
    parse_ts,
    to_canonical,
)

YEAR_1 = -62_135_596_800_000  # 0001-01-01T00:00:00.000Z, in ms
YEAR_9999_END = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


@settings(max_examples=300, deadline=None)
@given(ms=st.integers(min_value=YEAR_1, max_value=YEAR_9999_END))
def test_every_millisecond_of_years_1_to_9999_formats_and_parses_back(ms: int) -> None:
    text = format_ts(ms * MS)
    assert len(text) == len("2026-12-02T21:40:00.123Z"), text
    assert parse_ts(text) == ms * MS


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01T00:00:00.000Z",
        "0500-06-01T12:00:00.250Z",
        "0999-12-31T23:59:59.999Z",
        "1900-01-01T00:00:00.001Z",
        "1969-12-31T23:59:59.500Z",
        "1970-01-01T00:00:00.000Z",
        "9999-12-31T23:59:59.999Z",
    ],
)
def test_an_exported_line_imports_again(text: str) -> None:
    line = {"ts": text, "session": "s-1", "seq": 2, "type": "level_started", "data": {}}
    event = SessionEvent.from_json(json.dumps(line))
    assert event.ts == text
    again = SessionEvent.from_json(event.to_json())
    assert again == event
    stored = to_canonical(event)
    assert stored.occurred_at.ToNanoseconds() == event.ts_ns


def test_an_offset_that_takes_the_time_out_of_years_1_to_9999_is_refused() -> None:
    for text in ("0001-01-01T00:00:00.000+01:00", "9999-12-31T23:59:59.999-01:00"):
        with pytest.raises(EventFormatError, match="ts"):
            parse_ts(text)
