"""A restored message's Jetsource-Recorded-At header (ns since 1970 in ASCII digits)
is its time up to the last nanosecond a Timestamp holds, 9999-12-31T23:59:59.999999999Z
(21 digits); one past it is no time. The header was bounded at 20 digits: times from
the year 5138 on were called no time (poison)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from jetsource.eventstore.jetstream import _MAX_NS, H_RECORDED_AT, _original_ns, recorded_ns
from jetsource.eventstore.jsapi import RawMessage

STREAM_NS = 1_700_000_000_000_000_000


def _raw(header: str) -> RawMessage:
    return RawMessage("p.s.x", 1, STREAM_NS, {H_RECORDED_AT: header}, b"")


def test_the_last_nanosecond_a_timestamp_holds_is_a_time() -> None:
    assert len(str(_MAX_NS)) == 21
    assert datetime.fromtimestamp(_MAX_NS // 10**9, UTC).year == 9999
    assert _original_ns(_raw(str(_MAX_NS))) == _MAX_NS
    assert recorded_ns(_raw(str(_MAX_NS))) == _MAX_NS


@pytest.mark.parametrize("ns", [10**20, 10**20 + 1, 200_000_000_000_000_000_000])
def test_a_time_of_21_digits_is_a_time(ns: int) -> None:
    """10**20 ns is in the year 5138."""
    assert _original_ns(_raw(str(ns))) == ns
    assert recorded_ns(_raw(str(ns))) == ns


@pytest.mark.parametrize("text", [str(_MAX_NS + 1), "9" * 21, "1" + "0" * 21, "9" * 5000])
def test_one_past_the_last_nanosecond_is_no_time(text: str) -> None:
    assert _original_ns(_raw(text)) == -1
    assert recorded_ns(_raw(text)) == STREAM_NS
