"""jetsource.core.heap: the periodic freeze the publisher runs (its state cache changes
with every command), and the sweep that finds cycles dropped after they were frozen."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from typing import Any

from jetsource.core.heap import HeapKeeper


class Node:
    def __init__(self) -> None:
        self.me: Any = self


async def test_keep_freezes_what_lives_every_period_until_cancelled() -> None:
    heap = HeapKeeper(enabled=True)
    try:
        task = asyncio.create_task(heap.keep(0.01))
        kept = [[i] for i in range(1000)]  # what a cache grew by
        await asyncio.sleep(0.1)
        assert heap.freezes >= 3
        assert gc.get_freeze_count() >= len(kept)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        done = heap.freezes
        await asyncio.sleep(0.05)
        assert heap.freezes == done  # cancelled: no more freezes
    finally:
        gc.unfreeze()


async def test_keep_does_nothing_when_off() -> None:
    heap = HeapKeeper()
    before = gc.get_freeze_count()
    await asyncio.wait_for(heap.keep(0.01), 1)  # returns at once
    heap.settle()
    assert heap.freezes == 0 and gc.get_freeze_count() == before


async def test_a_cycle_frozen_alive_and_dropped_is_freed_by_the_sweep() -> None:
    heap = HeapKeeper(enabled=True, sweep_every_s=3600)
    try:
        node = Node()
        gone = weakref.ref(node)
        heap.settle()  # the cycle is alive: frozen with the rest
        del node
        gc.collect()  # a full collection does not walk the frozen generation
        assert gone() is not None
        heap.sweep_every_s = 0.0  # now due: unfreeze, collect, freeze
        task = asyncio.create_task(heap.keep(0.01))
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert heap.sweeps >= 1
        assert gone() is None
    finally:
        gc.unfreeze()
