"""uuid7's cheaper text (a millisecond's text made once, a counter table, ``hex``):
still valid, canonical and strictly increasing per process, whatever the clock does."""

from __future__ import annotations

import sys
import threading
import time
import uuid

import pytest

from jetsource.core import ids
from jetsource.core.ids import uuid7


def _check(values: list[str]) -> None:
    assert values == sorted(values) and len(set(values)) == len(values)
    for text in values:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # canonical: lower case, dashes in place
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122


def test_ids_carry_the_time_and_a_counter() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid.UUID(uuid7())
    after = time.time_ns() // 1_000_000
    assert before <= value.int >> 80 <= after + 1
    _check([uuid7() for _ in range(20_000)])


def test_a_frozen_clock_borrows_the_next_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    frozen = (time.time_ns() // 1_000_000 + 5_000) * 1_000_000
    monkeypatch.setattr(ids, "_time_ns", lambda: frozen)
    values = [uuid7() for _ in range(3 * 4096 + 10)]
    _check(values)
    stamps = [uuid.UUID(v).int >> 80 for v in values]
    assert stamps[0] == frozen // 1_000_000
    assert stamps[-1] == frozen // 1_000_000 + 3  # 4,096 ids per millisecond
    counters = [(uuid.UUID(v).int >> 64) & 0xFFF for v in values]
    assert counters[4095:4098] == [4095, 0, 1]


def test_a_clock_going_back_keeps_ids_increasing(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [(time.time_ns() // 1_000_000 + 10_000) * 1_000_000]
    monkeypatch.setattr(ids, "_time_ns", lambda: now[0])
    first = [uuid7() for _ in range(10)]
    now[0] -= 60_000_000_000  # a minute back
    second = [uuid7() for _ in range(10)]
    now[0] += 120_000_000_000  # and well past where it was
    third = [uuid7() for _ in range(10)]
    _check(first + second + third)
    assert uuid.UUID(third[0]).int >> 80 == now[0] // 1_000_000


def test_threads_get_unique_increasing_ids() -> None:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        out: list[list[str]] = [[] for _ in range(4)]
        threads = [
            threading.Thread(target=lambda o=o: o.extend(uuid7() for _ in range(10_000)))
            for o in out
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    for mine in out:
        _check(mine)
    assert len({v for mine in out for v in mine}) == 40_000


def test_random_bits_differ() -> None:
    tails = {uuid7()[19:] for _ in range(1_000)}
    assert len(tails) == 1_000
