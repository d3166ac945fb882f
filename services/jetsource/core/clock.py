"""Time as integer nanoseconds since the Unix epoch.

JetStream stamps each message with nanosecond precision; Python datetimes hold only
microseconds, so exact time bounds are kept as int nanoseconds end to end.
"""

from __future__ import annotations

import re
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


# Years 1..9999 in UTC (what a protobuf Timestamp holds), in ns since the epoch.
MIN_RFC3339_NS = -62_135_596_800 * NS
MAX_RFC3339_NS = 253_402_300_800 * NS - 1
_I64 = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})?",
    re.ASCII,  # not other scripts' digits
)


# What a refusal of a time shows as accepted ones (the CLI's options, the TUI's box).
TIME_EXAMPLE = "2026-12-06T10:00:00Z or 2026-12-06T11:00:00.5+01:00"


def parse_time_ns(text: str, *, int64: bool = False, offset_required: bool = False) -> int:
    """A time a person or a client wrote, as ns since the epoch (UTC): RFC 3339 with
    ``Z`` or any offset, ``T``/``t``/space between date and time, up to 9 fractional
    digits; without an offset it is UTC unless ``offset_required``. The one grammar of
    every time a user gives (CLI options, omni's ``since``); ``ValueError`` saying why
    for anything else: a date that does not exist, before year 1 or after 9999 in UTC,
    or (``int64``) outside what int64 nanoseconds hold (1677..2262)."""
    m = _RFC3339.fullmatch(text.strip())
    if not m:
        raise ValueError("not an RFC 3339 time")
    day, clock, frac, offset = m.groups()
    if offset is None and offset_required:
        raise ValueError("no offset: end it with Z or +HH:MM")
    zone = "+00:00" if offset is None or offset in ("Z", "z") else offset
    if not (int(zone[1:3]) <= 23 and int(zone[4:6]) <= 59):
        # (datetime's own words were "offset must be a timedelta strictly between
        # -timedelta(hours=24) and timedelta(hours=24), not datetime.timedelta(...)")
        raise ValueError(f"not a valid time (offset {zone} is no UTC offset: -23:59 to +23:59)")
    try:
        when = datetime.fromisoformat(f"{day}T{clock}{zone}")
    except ValueError as exc:
        raise ValueError(f"not a valid time ({exc})") from None
    delta = when - _EPOCH  # exact, even where the UTC time is outside datetime's range
    ns = (delta.days * 86_400 + delta.seconds) * NS + int((frac or "").ljust(9, "0"))
    if not MIN_RFC3339_NS <= ns <= MAX_RFC3339_NS:
        raise ValueError("outside years 1..9999 UTC")
    if int64 and not -(2**63) <= ns <= _I64:
        raise ValueError("outside what int64 nanoseconds hold (1677-09-21..2262-04-11 UTC)")
    return ns


def format_rfc3339_ns(ns: int) -> str:
    at = datetime.fromtimestamp(ns // NS, UTC)
    # The year as four digits (RFC 3339): strftime's %Y wrote year 1 as "1".
    return f"{at.year:04d}-{at:%m-%dT%H:%M:%S}.{ns % NS:09d}Z"


def to_timestamp(ns: int) -> Timestamp:
    return Timestamp(seconds=ns // NS, nanos=ns % NS)


def from_timestamp(ts: Timestamp) -> int:
    return ts.seconds * NS + ts.nanos


# Later than any event (2200-01-01). nats-server keeps times as int64 nanoseconds and
# a start time near their end (2262) wraps around, so asking "what was stored by
# then?" for a later time is asked for this one instead.
MAX_TIME_NS = 7_258_118_400 * 10**9
# Earlier than any event (a nanosecond before 1970). A start time before 1678 does not
# fit either: nats-server refused years up to about 900 (408 Malformed Request) and
# wrapped later ones round to the future (1000..1677 read as 2169..2261, so "what was
# stored by then?" answered everything), so a time before it is asked for as this one.
MIN_TIME_NS = -1


# The longest age a stream keeps messages for (max_age settings): JetStream takes it as
# int64 nanoseconds (292 years); a longer one was refused at stream creation with a bare
# "invalid JSON ... cannot unmarshal number" (and infinity raised OverflowError).
MAX_AGE_S = (2**63 - 1) // NS


def store_time_ns(value: datetime | int) -> int:
    """``value`` as a time to ask the event stream about (what was stored by then):
    clamped to [MIN_TIME_NS, MAX_TIME_NS], which answer as any time beyond them."""
    return max(MIN_TIME_NS, min(to_ns(value), MAX_TIME_NS))
