"""The publisher's command handler folds its own appends into the cached state's maps in
place (model.fold_touched(own=...)) once the maps are its own, instead of copying every
node of the story per command; a state it did not make (the loader's, maybe shared
with the loader's cache) is never changed, and the cached state always equals a full
fold of what is stored."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from jetsource.domains.context.commands import CommandHandler, CommandOptions
from jetsource.domains.context.events import registry
from jetsource.domains.context.model import (
    AddDecision,
    AddSubtask,
    ContextState,
    CreateContext,
    fold,
)
from jetsource.eventstore.memory import InMemoryEventStore


async def _stored_state(store: InMemoryEventStore, cid: str) -> ContextState:
    return fold((r.event for r in await store.read_aggregate(cid)), context_id=cid)


async def test_own_appends_fold_in_place_and_equal_a_full_fold() -> None:
    store = InMemoryEventStore(registry)
    handler = CommandHandler(store)
    await handler.execute("c1", CreateContext("story"), CommandOptions("k0"))
    await handler.execute("c1", AddDecision("d0", "first"), CommandOptions("k1"))
    loaded = handler._cache["c1"]
    assert loaded.maps is not None
    decisions, subtasks = loaded.maps
    before = loaded.state
    for i in range(1, 30):
        await handler.execute("c1", AddDecision(f"d{i}", f"t{i}"), CommandOptions(f"k-{i}"))
    await handler.execute("c1", AddSubtask("s1", "sub"), CommandOptions("k-s"))
    assert handler._cache["c1"] is loaded
    assert loaded.maps[0] is decisions and loaded.maps[1] is subtasks  # no copies
    assert loaded.state == await _stored_state(store, "c1")
    assert loaded.state.version == 32 and before.version == 2
    # A duplicate answers the original without folding anything.
    again = await handler.execute("c1", AddDecision("d5", "t5"), CommandOptions("k-5"))
    assert again.duplicate and loaded.state.version == 32


async def test_a_refused_command_leaves_the_folded_state_as_it_was() -> None:
    store = InMemoryEventStore(registry)
    handler = CommandHandler(store)
    await handler.execute("c2", CreateContext("story"), CommandOptions("k0"))
    await handler.execute("c2", AddDecision("d0", "first"), CommandOptions("k1"))
    try:
        await handler.execute("c2", AddDecision("d0", "again"), CommandOptions("k2"))
    except Exception:
        pass
    else:  # pragma: no cover
        raise AssertionError("a decision id used twice was accepted")
    await handler.execute("c2", AddDecision("d1", "next"), CommandOptions("k3"))
    assert handler._cache["c2"].state == await _stored_state(store, "c2")


class Loader:
    """A loader whose state object is kept (as a snapshot cache would keep it)."""

    def __init__(self, state: ContextState, last_seq: int) -> None:
        self.point = SimpleNamespace(state=state, last_seq=last_seq, keys={})

    async def load(self, context_id: str, **_: Any) -> Any:
        return self.point


async def test_a_state_from_the_loader_is_never_changed() -> None:
    store = InMemoryEventStore(registry)
    seed = CommandHandler(store)
    await seed.execute("c3", CreateContext("story"), CommandOptions("k0"))
    await seed.execute("c3", AddDecision("d0", "first"), CommandOptions("k1"))
    shared = await _stored_state(store, "c3")
    last_seq = (await store.read_aggregate("c3"))[-1].stream_seq
    handler = CommandHandler(store, loader=Loader(shared, last_seq))  # type: ignore[arg-type]
    for i in range(1, 5):
        await handler.execute("c3", AddDecision(f"d{i}", "t"), CommandOptions(f"k-{i}"))
    assert list(shared.decisions) == ["d0"] and shared.version == 2
    assert handler._cache["c3"].state == await _stored_state(store, "c3")
    # A reload (the tail folded onto the cached state) makes the maps shared again.
    reloaded = await handler.load("c3")
    assert reloaded.maps is None
    await handler.execute("c3", AddDecision("d9", "t"), CommandOptions("k-9"))
    assert reloaded.maps is not None
    assert reloaded.state == await _stored_state(store, "c3")
