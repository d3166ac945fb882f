"""The archiver sealed a full segment (10,000 events) on the event loop in one go,
some 230 ms, stalling everything else the process does (lease renewals, heartbeats,
reads). Archive.write seals and hashes it in steps that yield to the loop now
(segment.encode_yielding, checksum_yielding). Structural, whatever the machine's
load: a small task runs between the steps (4,000 events here),, before the segment is stored."""

from __future__ import annotations

import asyncio
from pathlib import Path

from jetsource.archive import segment
from jetsource.archive.objectstore import LocalObjectStore
from jetsource.archive.store import Archive
from tests.unit.test_segment_decode_off_loop import _messages

EVENTS = 4_000


class _SeenAtPut:
    """The real local adapter; on storing a segment, how often the small task had run
    since the write began (0: the segment was sealed without a turn for it)."""

    def __init__(self, root: Path, ticks: list[int]) -> None:
        self.real = LocalObjectStore(root)
        self.ticks = ticks
        self.at_put: list[int] = []

    @property
    def location(self) -> str:
        return self.real.location

    async def put(self, key: str, data: bytes, create_only: bool = False) -> bool:
        if key.startswith("segments/"):
            self.at_put.append(self.ticks[0])
        return await self.real.put(key, data, create_only)

    async def get(self, key: str) -> bytes | None:
        return await self.real.get(key)

    async def list(self, prefix: str) -> list[str]:
        return await self.real.list(prefix)

    async def delete(self, key: str) -> None:
        await self.real.delete(key)


async def test_a_large_segment_seals_while_the_loop_serves_a_small_task(tmp_path: Path) -> None:
    messages = _messages(EVENTS)
    ticks = [0]
    objects = _SeenAtPut(tmp_path, ticks)
    stop = asyncio.Event()

    async def small_task() -> None:
        while not stop.is_set():
            await asyncio.sleep(0)
            ticks[0] += 1

    ticker = asyncio.ensure_future(small_task())
    await asyncio.sleep(0)  # it has started
    try:
        ticks[0] = 0
        entry = await Archive(objects, "CE").write(messages, {})
    finally:
        stop.set()
        await ticker
    # A turn at least once per STEP_MESSAGES messages sealed (in place: none, the
    # small task waited the whole encode and checksum).
    steps = EVENTS // segment.STEP_MESSAGES
    assert objects.at_put and objects.at_put[0] >= steps, (objects.at_put, steps)
    stored = await objects.get(entry.name)
    assert stored == segment.encode("CE", messages)  # the same bytes as sealed in place
