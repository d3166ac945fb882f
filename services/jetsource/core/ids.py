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
_last_ms = 0
_counter = 0


def uuid7() -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix ms, then a 12-bit counter keeping ids from
    one process strictly increasing within a millisecond, then random bits."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
            ms = _last_ms
        else:
            _last_ms, _counter = ms, 0
        counter = _counter
    # random is reseeded from os.urandom at import and after fork: unique enough for
    # ids, and an order of magnitude cheaper than a syscall per id on the append path.
    rand = random.getrandbits(62)
    h = f"{(ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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
