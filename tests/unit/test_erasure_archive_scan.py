"""The erasure's scan of a compacted stream's archive, one segment at a time (an
archive may not fit in memory): each archived sequence is looked at once though
segments overlap, and what it keeps to know that is a bit per sequence. It kept a set
of every archived sequence: 100M archived events held about 6 GB."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.eventstore import jsapi
from jetsource.projection import erasure

REF = b"r" * 16
PREFIX = "ctx.events"


@dataclass
class Entry:
    name: str
    first_seq: int
    last_seq: int


class Message:
    __slots__ = ("data", "seq", "subject")

    def __init__(self, seq: int, subject: str, data: bytes) -> None:
        self.seq, self.subject, self.data = seq, subject, data


class Archive:
    """Segments made when read (as an object store's bytes are decoded each time)."""

    def __init__(self, segments: dict[str, list[int]], holder: int) -> None:
        self.segments = segments
        boxed = EventEnvelope()
        boxed.sealed.add(key_ref=REF)
        self.boxed, self.holder = boxed.SerializeToString(), holder

    async def entries(self) -> list[Entry]:
        return [Entry(n, min(s), max(s)) for n, s in self.segments.items()]

    async def read(self, entry: Entry, cache: bool = True) -> list[Message]:
        return [
            Message(
                seq,
                f"{PREFIX}.a{seq % 50}.E" if seq != self.holder else f"{PREFIX}.held.E",
                self.boxed if seq == self.holder else b"",
            )
            for seq in self.segments[entry.name]
        ]


class Store:
    settings = SimpleNamespace(stream="S", subject_prefix=PREFIX, request_timeout_s=1.0)
    _replies = None

    async def start(self) -> None:
        pass


@pytest.fixture(autouse=True)
def no_live_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    async def empty(*args: Any) -> AsyncIterator[Any]:
        for _ in ():
            yield

    monkeypatch.setattr(jsapi, "direct_get_batch", empty)


async def test_overlapping_segments_each_sequence_once() -> None:
    base = 10**9
    segments = {
        "even": [base + i for i in range(0, 200, 2)],
        "odd": [base + i for i in range(1, 200, 2)],
        "again": [base + i for i in range(50, 150)],  # a second archiver's copy
    }
    found, seen = await erasure.holders(Store(), REF, Archive(segments, base + 77))  # type: ignore[arg-type]
    assert (found, seen) == (["held"], 200)


async def test_the_scan_keeps_no_set_of_archived_sequences() -> None:
    base, per, count = 10**9, 2_000, 50
    segments = {f"s{n}": [base + i for i in range(n * per, (n + 1) * per)] for n in range(count)}
    archive = Archive(segments, base + 123)
    tracemalloc.start()
    try:
        found, seen = await erasure.holders(Store(), REF, archive)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (found, seen) == (["held"], per * count)
    # One segment's messages at a time; a set of the 100 000 sequences took ~7 MB.
    assert peak < 2_500_000, peak
