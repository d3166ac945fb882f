from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from jetsource.core.clock import (
    format_rfc3339_ns,
    from_timestamp,
    parse_rfc3339_ns,
    to_datetime,
    to_ns,
    to_timestamp,
)
from jetsource.core.errors import InvalidAggregateIdError
from jetsource.core.ids import uuid7, validate_aggregate_id


def test_uuid7_is_version_7_and_increasing() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert len(set(ids)) == 5000
    assert ids == sorted(ids)
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122


@pytest.mark.parametrize("good", ["a", "story-1", "A_b-9", "x" * 128, "0abc"])
def test_valid_aggregate_ids(good: str) -> None:
    assert validate_aggregate_id(good) == good


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "a*", "a>", "x" * 129, "_a", "é"])
def test_invalid_aggregate_ids_name_the_field(bad: str) -> None:
    with pytest.raises(InvalidAggregateIdError, match="context_id") as caught:
        validate_aggregate_id(bad, field="context_id")
    assert caught.value.field == "context_id"  # for the error's details, not only its text


def test_nanosecond_timestamps_round_trip() -> None:
    text = "2026-11-23T09:41:21.792992673Z"
    ns = parse_rfc3339_ns(text)
    assert ns % 1_000_000_000 == 792992673
    assert format_rfc3339_ns(ns) == text
    assert from_timestamp(to_timestamp(ns)) == ns
    assert parse_rfc3339_ns("2026-11-23T09:41:21Z") == ns - 792992673
    assert parse_rfc3339_ns("2026-11-23T09:41:21.5Z") == ns - 292992673


def test_datetimes_convert_and_naive_ones_are_refused() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert to_datetime(to_ns(moment)) == moment
    with pytest.raises(ValueError, match="naive"):
        to_ns(datetime(2026, 1, 1))
