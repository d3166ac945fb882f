"""An erasure heard while a call is in flight: what the call read or folded before it
may hold values the erasure closed, so no cache keeps it, even when another call began
after the erasure and emptied the caches before the first one finished (each cache's
``ErasureWatch`` is told once). The time-travel loader's case is in
test_timetravel_cache.py; the projector's models in
tests/integration/test_erasure_in_flight_models.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jetsource.core import crypto
from jetsource.core.envelope import AppendResult, RecordedEvent
from jetsource.domains.context.commands import CommandHandler, CommandOptions
from jetsource.domains.context.events import registry
from jetsource.domains.context.model import AddDecision, CreateContext
from jetsource.eventstore.memory import InMemoryEventStore
from jetsource.projection.contract import TransientError
from tests.unit.test_generic_snapshots import add, model_on, new_store


class ErasingAppends(InMemoryEventStore):
    """Its next append hears of an erasure before it answers."""

    erase_next = False

    async def append(self, *args: Any, **kwargs: Any) -> AppendResult:
        result = await super().append(*args, **kwargs)
        if self.erase_next:
            self.erase_next = False
            crypto.note_erasure()
        return result


async def test_the_publisher_keeps_no_state_folded_before_an_erasure() -> None:
    store = ErasingAppends(registry)
    handler = CommandHandler(store)
    await handler.execute("c1", CreateContext("story"), CommandOptions("k0"))
    await handler.execute("c1", AddDecision("d0", "first"), CommandOptions("k1"))
    assert "c1" in handler._cache
    # The erasure is heard while the append is in flight: the entry is dropped.
    store.erase_next = True
    await handler.execute("c1", AddDecision("d1", "second"), CommandOptions("k2"))
    assert "c1" not in handler._cache
    # The next command reads the story again, and keeps it.
    await handler.execute("c1", AddDecision("d2", "third"), CommandOptions("k3"))
    assert handler._cache["c1"].state.version == 4


async def test_the_publisher_empties_its_cache_on_the_fast_path_too() -> None:
    store = InMemoryEventStore(registry)
    handler = CommandHandler(store)
    await handler.execute("c1", CreateContext("story"), CommandOptions("k0"))
    before = handler._cache["c1"]
    crypto.note_erasure()
    await handler.execute("c1", AddDecision("d0", "first"), CommandOptions("k1"))
    assert handler._cache["c1"] is not before  # read again, not the state held before


class SlowReads(InMemoryEventStore):
    """Reads that hear of an erasure and wait for the test before answering."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.erase_during_next_read = False
        self.started = asyncio.Event()
        self.go_on = asyncio.Event()

    async def read_aggregate(self, aggregate_id: str, *args: Any, **kw: Any) -> list[RecordedEvent]:
        out = await super().read_aggregate(aggregate_id, *args, **kw)
        if self.erase_during_next_read:
            self.erase_during_next_read = False
            crypto.note_erasure()
            self.started.set()
            await self.go_on.wait()
        return out


async def test_a_publisher_load_across_an_erasure_is_not_cached() -> None:
    store = SlowReads(registry)
    handler = CommandHandler(store)
    await handler.execute("c1", CreateContext("story"), CommandOptions("k0"))
    handler._cache.clear()
    store.erase_during_next_read = True
    first = asyncio.create_task(handler.load("c1"))
    await store.started.wait()
    await handler.load("c2")  # begins after the erasure: empties the cache
    store.go_on.set()
    loaded = await first
    assert loaded.state.version == 1
    assert "c1" not in handler._cache


async def test_the_snapshotter_saves_nothing_folded_before_an_erasure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = new_store()
    await add(store, "c1", [1, 2, 3, 4, 5, 6, 7, 8])
    records = [r async for r in store.read_all()]
    model, snapshots = model_on(store)
    await model.apply(records[:4])  # the snapshot at 4, and c1 kept warm at 4
    assert "c1" in model._warm
    assert [s.version async for s in snapshots.all()] == [4]
    # The erasure is heard after the batch began (while it folds version 6): the
    # boundary at 8 is not saved from the warm state, the batch is delivered again.
    heard = crypto.erasures_heard()
    evolve = model.codec.evolve_one

    def evolve_and_hear(state: Any, record: RecordedEvent) -> Any:
        if record.version == 6:
            crypto.note_erasure()
        return evolve(state, record)

    monkeypatch.setattr(model.codec, "evolve_one", evolve_and_hear)
    with pytest.raises(TransientError):
        await model.apply(records[4:8])
    monkeypatch.undo()
    assert crypto.erasures_heard() == heard + 1
    assert [s.version async for s in snapshots.all()] == [4]
    assert not model._warm
    # Delivered again (read as it now reads): saved.
    outcome = await model.apply(records[4:8])
    assert not outcome.waiting and not outcome.failed
    assert sorted([s.version async for s in snapshots.all()]) == [4, 8]
