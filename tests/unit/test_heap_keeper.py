"""jetsource.core.heap: the periodic freeze the publisher runs (its state cache changes
with every command), and the sweep that finds cycles dropped after they were frozen."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import weakref
from typing import Any

from jetsource.core.heap import SWEEP_MIN_BLOCKS, HeapKeeper, kept_while


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


async def test_cycles_frozen_in_flight_are_swept_once_the_heap_doubles() -> None:
    """Every freeze also freezes what the calls in flight hold, and some of it is
    cycles (a graph read's driver result objects): before, those stayed until the
    next timed sweep (600 s), so a service under a steady load of such calls held
    what that load made in 600 s (the query service: some 100 MB of graph results).
    Now the heap is swept once it holds twice the blocks it held after the last
    sweep."""
    heap = HeapKeeper(enabled=True, sweep_every_s=3600)
    try:
        heap.settle()
        start = max(sys.getallocatedblocks(), SWEEP_MIN_BLOCKS)
        first = Node()
        gone = weakref.ref(first)
        heap._freeze()  # alive (a call in flight): frozen
        del first
        gc.collect()
        assert gone() is not None  # not found by collections: frozen
        for _ in range(start // 10_000):  # calls in flight (a node: 2 blocks)
            batch = [Node() for _ in range(10_000)]
            heap._freeze()
            del batch
            if heap.sweeps:
                break
        assert heap.sweeps == 1
        assert gone() is None
        assert sys.getallocatedblocks() < 2 * start
    finally:
        gc.unfreeze()


async def test_kept_while_freezes_during_the_job_and_leaves_the_collector_as_it_was() -> None:
    gc.unfreeze()  # (whatever a test before left frozen)
    async with kept_while(0.01):
        frozen = gc.get_freeze_count()
        assert frozen > 0  # start-up's objects, out of the full walks
        grown = [[i] for i in range(1000)]  # the job's state, frozen as it grows
        await asyncio.sleep(0.05)
        assert gc.get_freeze_count() >= frozen + len(grown)
    assert gc.get_freeze_count() == 0  # the process's collector as it was
    keepers = [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "") == "HeapKeeper.keep" and not t.done()
    ]
    assert keepers == []  # no keeper left running (other tests' tasks may share the loop)


async def test_kept_while_leaves_a_heap_someone_else_keeps_alone() -> None:
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        async with kept_while(0.01):
            assert gc.get_freeze_count() == before
        assert gc.get_freeze_count() == before  # not unfrozen: not this one's
    finally:
        gc.unfreeze()
