"""Keeping the garbage collector's pauses off requests, in services that hold caches.

A full collection walks every object the collector tracks: a service's modules (some
70,000 objects after start-up) and its caches' states (the publisher's folded stories,
time travel's states and answers). They live as long as the process or the cache
entry, and what is freed of them is freed by reference counting (they hold no cycles),
so walking them finds nothing, and each walk is a pause of every call in flight: in
the publisher at 16 clients, full collections of 180-370 ms were its p99 (measured
with ``gc.callbacks`` in the benchmark's publisher process).

``HeapKeeper`` moves what lives into the collector's permanent generation
(``gc.freeze``, which costs the same whatever the heap holds), where full collections
do not walk it:
  - :meth:`settle` once start-up is done (collect, then freeze);
  - :meth:`grew` after a call that grew a cache (the freeze runs once the loop is
    free of that call's step: the query service, whose caches grow on some reads);
  - :meth:`keep`, a task that freezes every ``every_s`` (the publisher, whose cache
    changes with every command; while calls are in flight there is no quiet moment to
    wait for).
The young objects of the calls in flight are collected as usual. A cycle that was
alive when frozen and dropped later is not found by the young collections: a full
sweep (unfreeze, collect, freeze) runs every ``sweep_every_s``, and sooner once the
heap holds ``sweep_growth`` times the blocks it held after the last sweep (or
start-up; ``sys.getallocatedblocks``, some 50 us, where counting the frozen objects
walks them all). Every freeze also freezes the calls in flight, and a read of the graph
store leaves cycles (the driver's result objects): the query service under a steady
load of graph reads held some 100 MB of them within the 600 s, a bound that grew with
the request rate; a sweep per doubling costs a full collection per as many objects
frozen since, so its pauses are as rare as before when the heap holds still.
``enabled`` is off by default (tests and libraries keep the collector as it is);
servers turn it on for their process. A long job in a process that is no server (a
rebuild, in the CLI or in its build workers) keeps the heap only while it runs
(:func:`kept_while`), and leaves the collector as it found it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import time
from collections.abc import AsyncIterator

# The heap's size (allocated blocks) below which growth does not sweep it (a service
# holds some 650,000 after start-up).
SWEEP_MIN_BLOCKS = 1_000_000


class HeapKeeper:
    def __init__(
        self, enabled: bool = False, sweep_every_s: float = 600.0, sweep_growth: float = 2.0
    ) -> None:
        self.enabled = enabled
        self.sweep_every_s = sweep_every_s
        self.sweep_growth = sweep_growth
        self.freezes = 0
        self.sweeps = 0
        self._due = False
        self._swept = time.monotonic()
        self._sweep_at = 0  # the heap's size (blocks) that sweeps it (0: not known)

    def _swept_now(self) -> None:
        self._swept = time.monotonic()
        self._sweep_at = int(max(sys.getallocatedblocks(), SWEEP_MIN_BLOCKS) * self.sweep_growth)

    def settle(self) -> None:
        """Collect, then freeze what lives (after start-up)."""
        if self.enabled:
            gc.collect()
            gc.freeze()
            self._swept_now()

    def grew(self) -> None:
        """A cache holds more: freeze once the current call's step is done."""
        if self.enabled and not self._due:
            self._due = True
            asyncio.get_running_loop().call_soon(self._freeze)

    async def keep(self, every_s: float = 1.0) -> None:
        """Freeze what lives every ``every_s`` until cancelled (when ``enabled``)."""
        while self.enabled:
            await asyncio.sleep(every_s)
            self._freeze()

    def _freeze(self) -> None:
        self._due = False
        gc.freeze()
        if not self._sweep_at:
            self._swept_now()
        if (
            time.monotonic() - self._swept >= self.sweep_every_s
            or sys.getallocatedblocks() >= self._sweep_at
        ):
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self._swept_now()
            self.sweeps += 1
        self.freezes += 1


def keep_in_server(every_s: float) -> asyncio.Task[None]:
    """A server's heap kept from start-up (:meth:`HeapKeeper.settle` now, then a freeze
    every ``every_s``; 0: the collector left as it is): the task to cancel at shutdown."""
    heap = HeapKeeper(enabled=every_s > 0)
    heap.settle()
    return asyncio.create_task(heap.keep(every_s))


@contextlib.asynccontextmanager
async def kept_while(every_s: float = 1.0) -> AsyncIterator[None]:
    """Keep the heap (:meth:`HeapKeeper.keep`) while the body runs, then unfreeze: the
    process's collector as it was. Nothing when something froze it already (a server's
    keeper keeps it; its frozen objects are not this one's to unfreeze). A rebuild's
    full collections walked its growing state for nothing: 5 of 183 ms each in a
    12.8 s one-worker rebuild of 60,000 events (gc.callbacks)."""
    if gc.get_freeze_count():
        yield
        return
    heap = HeapKeeper(enabled=True)
    heap.settle()
    keeper = asyncio.create_task(heap.keep(every_s))
    try:
        yield
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        gc.unfreeze()
