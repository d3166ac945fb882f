"""Readers of one archive segment not in the cache at once (several GetContextAtTime
before the horizon for stories of one segment) each fetched and decoded it. One fetch
and decode per segment now, the others awaiting it; its error reaches every reader
and is not kept; a reader cancelled does not cancel it for the others. Counted at a
wrapper around the real local adapter."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from jetsource.archive.objectstore import LocalObjectStore, ObjectStoreError
from jetsource.archive.segment import ArchivedMessage
from jetsource.archive.store import Archive, SegmentEntry

READERS = 5


class _Counting:
    """LocalObjectStore, its segment gets counted; ``gate`` (when set) holds each
    until opened, ``fail`` makes that many of them fail first."""

    def __init__(self, root: Path) -> None:
        self.real = LocalObjectStore(root)
        self.gets: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail = 0

    @property
    def location(self) -> str:
        return self.real.location

    async def put(self, key: str, data: bytes, create_only: bool = False) -> bool:
        return await self.real.put(key, data, create_only)

    async def get(self, key: str) -> bytes | None:
        if not key.startswith("segments/"):
            return await self.real.get(key)
        self.gets.append(key)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise ObjectStoreError(f"{self.location}: get {key}: connection reset")
        return await self.real.get(key)

    async def list(self, prefix: str) -> list[str]:
        return await self.real.list(prefix)

    async def delete(self, key: str) -> None:
        await self.real.delete(key)


def _messages(n: int) -> list[ArchivedMessage]:
    return [
        ArchivedMessage(i, 1_700_000_000_000_000_000 + i, f"ce.events.a{i % 3}.X", {}, b"x" * i)
        for i in range(1, n + 1)
    ]


async def _sealed(tmp_path: Path) -> tuple[_Counting, SegmentEntry]:
    objects = _Counting(tmp_path)
    entry = await Archive(objects, "CE").write(_messages(300), {})
    objects.gets.clear()
    return objects, entry


async def test_readers_of_one_uncached_segment_share_one_fetch(tmp_path: Path) -> None:
    objects, entry = await _sealed(tmp_path)
    archive = Archive(objects, "CE")
    read = await asyncio.gather(*(archive.read(entry) for _ in range(READERS)))
    assert objects.gets == [entry.name]  # was one per reader
    assert all(r == _messages(300) for r in read)
    assert await archive.read(entry) == _messages(300)  # and kept
    assert objects.gets == [entry.name]


async def test_its_error_reaches_every_reader_and_is_not_kept(tmp_path: Path) -> None:
    objects, entry = await _sealed(tmp_path)
    archive = Archive(objects, "CE")
    objects.fail = 1
    got = await asyncio.gather(
        *(archive.read(entry) for _ in range(READERS)), return_exceptions=True
    )
    assert all(isinstance(e, ObjectStoreError) for e in got), got
    assert objects.gets == [entry.name]
    assert await archive.read(entry) == _messages(300)  # fetched again
    assert objects.gets == [entry.name] * 2


async def test_a_reader_cancelled_does_not_cancel_the_others(tmp_path: Path) -> None:
    objects, entry = await _sealed(tmp_path)
    archive = Archive(objects, "CE")
    objects.gate = asyncio.Event()
    first = asyncio.ensure_future(archive.read(entry))
    await asyncio.sleep(0.01)  # its fetch under way
    others = [asyncio.ensure_future(archive.read(entry)) for _ in range(READERS - 1)]
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    objects.gate.set()
    read = await asyncio.wait_for(asyncio.gather(*others), 5)
    assert all(r == _messages(300) for r in read)
    assert objects.gets == [entry.name]


async def test_reads_without_the_cache_fetch_every_time(tmp_path: Path) -> None:
    objects, entry = await _sealed(tmp_path)
    archive = Archive(objects, "CE")
    await asyncio.gather(*(archive.read(entry, cache=False) for _ in range(2)))
    assert objects.gets == [entry.name] * 2  # the archiver's read-back checks what is stored
