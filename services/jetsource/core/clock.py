"""Time as integer nanoseconds since the Unix epoch.

JetStream stamps each message with nanosecond precision; Python datetimes hold only
microseconds, so exact time bounds are kept as int nanoseconds end to end.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

NS = 1_000_000_000


def now_ns() -> int:
    return time.time_ns()


def to_ns(value: datetime | int) -> int:
    if isinstance(value, int):
        return value
    if value.tzinfo is None:
        raise ValueError("naive datetime: give a timezone (UTC) for time bounds")
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * NS + delta.microseconds * 1_000


def to_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // NS, UTC).replace(microsecond=(ns % NS) // 1_000)


def parse_rfc3339_ns(text: str) -> int:
    """Parse a NATS timestamp ("2026-11-23T09:41:21.792992673Z") keeping nanoseconds."""
    if not text.endswith("Z"):
        raise ValueError(f"expected a UTC timestamp ending in Z: {text!r}")
    main, _, frac = text[:-1].partition(".")
    seconds = int(datetime.fromisoformat(main).replace(tzinfo=UTC).timestamp())
    nanos = int((frac + "000000000")[:9]) if frac else 0
    return seconds * NS + nanos


def format_rfc3339_ns(ns: int) -> str:
    base = datetime.fromtimestamp(ns // NS, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ns % NS:09d}Z"


def to_timestamp(ns: int) -> Timestamp:
    return Timestamp(seconds=ns // NS, nanos=ns % NS)


def from_timestamp(ts: Timestamp) -> int:
    return ts.seconds * NS + ts.nanos


# Later than any event (2200-01-01). nats-server keeps times as int64 nanoseconds and
# a start time near their end (2262) wraps around, so asking "what was stored by
# then?" for a later time is asked for this one instead.
MAX_TIME_NS = 7_258_118_400 * 10**9
