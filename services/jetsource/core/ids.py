"""Identifiers: UUIDv7 event ids and validated aggregate ids."""

from __future__ import annotations

import random
import re
import threading
import time

from jetsource.core.errors import InvalidAggregateIdError

MAX_AGGREGATE_ID_LENGTH = 128
# One NATS subject token: no dots, spaces or wildcards; a safe, boring alphabet.
_AGGREGATE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")
_EVENT_TYPE = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")

_lock = threading.Lock()
_acquire, _release = _lock.acquire, _lock.release  # (a `with` costs twice as much)
_last_ms = 0
_counter = 0
_head = "00000000-0000-"  # the text of _last_ms: "tttttttt-tttt-"
# "7ccc-": the version nibble and the 12-bit counter, for every counter value.
_VERSION_AND_COUNTER = tuple(f"7{c:03x}-" for c in range(0x1000))
_VARIANT = 0b10 << 62
_getrandbits = random.getrandbits
_time_ns = time.time_ns


def _head_of(ms: int) -> str:
    h = f"{ms & 0xFFFF_FFFF_FFFF:012x}"
    return f"{h[:8]}-{h[8:]}-"


def uuid7() -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix ms, then a 12-bit counter keeping ids from
    one process strictly increasing within a millisecond, then random bits.

    One event id per appended event: the millisecond's text is made once per
    millisecond, the counter's comes from a table, and the random bits are formatted
    by ``hex`` (no format spec to parse): 15k -> 8.5k instructions per id
    (callgrind, issue 23)."""
    global _last_ms, _counter, _head
    _acquire()
    try:
        ms = _time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms, _counter = ms, 0
            _head = _head_of(ms)
        else:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
                _head = _head_of(_last_ms)
        head = _head + _VERSION_AND_COUNTER[_counter]
    finally:
        _release()
    # random is reseeded from os.urandom at import and after fork: unique enough for
    # ids, and an order of magnitude cheaper than a syscall per id on the append path.
    # With the variant's leading bit set, hex() always gives "0x" and 16 digits.
    rand = hex(_getrandbits(62) | _VARIANT)
    return f"{head}{rand[2:6]}-{rand[6:]}"


def validate_aggregate_id(aggregate_id: str, field: str = "aggregate_id") -> str:
    if not isinstance(aggregate_id, str) or not aggregate_id:
        raise InvalidAggregateIdError(f"{field} must be a non-empty string", field)
    if len(aggregate_id) > MAX_AGGREGATE_ID_LENGTH:
        raise InvalidAggregateIdError(
            f"{field} is {len(aggregate_id)} characters; at most {MAX_AGGREGATE_ID_LENGTH} allowed",
            field,
        )
    if not _AGGREGATE_ID.fullmatch(aggregate_id):
        raise InvalidAggregateIdError(
            f"{field} {aggregate_id!r} is invalid: use letters, digits, '-' and '_' only "
            "(no dots, spaces or wildcards), starting with a letter or digit",
            field,
        )
    return aggregate_id


def valid_event_type(event_type: str) -> bool:
    return bool(_EVENT_TYPE.fullmatch(event_type))
