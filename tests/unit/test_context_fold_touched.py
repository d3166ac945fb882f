"""The fold reports the nodes it put, and the context model writes just those: on
generated histories cut into random batches, what the model sends for a batch from
that report is exactly what comparing every node of the two states gives, and the
fold's state is the one ``fold`` and ``evolve`` give."""

from __future__ import annotations

import random
from dataclasses import replace
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from valkey.asyncio import Valkey

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.domains.context.model import ContextState, EvolveError, evolve, fold, fold_touched
from jetsource.domains.context.samples import story_events
from jetsource.domains.context.serialize import shell_to_dict, state_to_dict
from jetsource.domains.context.valkey_models import ContextModel, context_spec


def model() -> ContextModel:
    # Never connects: only the field computation is used.
    return ContextModel(context_spec(1), Valkey(), "t", None, 10)  # type: ignore[arg-type]


def pairs(sets: list[str]) -> dict[str, str]:
    assert len(sets) % 2 == 0
    out = dict(zip(sets[::2], sets[1::2], strict=True))
    assert len(out) == len(sets) // 2  # no field twice
    return out


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    size=st.integers(1, 150),
    cuts=st.integers(0, 2**32),
    max_nodes=st.one_of(st.none(), st.integers(1, 30)),
)
def test_the_put_nodes_are_the_changed_nodes(
    seed: int, size: int, cuts: int, max_nodes: int | None
) -> None:
    m = model()
    events = story_events("s", size, seed, max_nodes=max_nodes)
    rng = random.Random(cuts)
    state = ContextState(id="s")
    stepped = state
    meta = {"seq": 1, "applied": 1, "created_at": 1, "updated_at": 2}
    i = 0
    while i < len(events):
        n = rng.choice([1, 1, 1, 2, 3, 8, 40])
        batch = events[i : i + n]
        i += len(batch)
        new, decisions, subtasks, _ = fold_touched(batch, state)
        for e in batch:
            stepped = evolve(stepped, e)
        assert new == stepped == fold(batch, state)
        # Exactly the nodes that are not the same object as before, none removed.
        for put, before, after in (
            (decisions, state.decisions, new.decisions),
            (subtasks, state.subtasks, new.subtasks),
        ):
            assert set(before) <= set(after)
            assert set(put) == {k for k in after if before.get(k) is not after[k]}
        sets, dels = m._fields(meta, state, new, (decisions, subtasks))
        full_sets, full_dels = m._fields(meta, state, new)
        assert pairs(sets) == pairs(full_sets)
        assert dels == full_dels == []
        state = new
    # From nothing (a story written whole) the report is not used: every node is sent.
    whole, _ = m._fields(meta, None, state, ({}, {}))
    assert pairs(whole) == pairs(m._fields(meta, None, state)[0])
    assert len(pairs(whole)) == 1 + len(state.decisions) + len(state.subtasks) + len(
        state.dependencies
    )


def test_fold_touched_from_nothing_puts_every_node() -> None:
    events = story_events("s", 60, 3)
    state, decisions, subtasks, _ = fold_touched(events, context_id="s")
    assert state == fold(events, context_id="s")
    assert list(decisions) == list(state.decisions)
    assert list(subtasks) == list(state.subtasks)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.integers(1, 80))
def test_the_shell_is_the_state_without_its_nodes(seed: int, size: int) -> None:
    state = fold(story_events("s", size, seed), context_id="s")
    bare = replace(
        state,
        decisions=MappingProxyType({}),
        subtasks=MappingProxyType({}),
        dependencies=frozenset(),
    )
    assert shell_to_dict(state) == state_to_dict(bare)
    assert list(shell_to_dict(state)) == list(state_to_dict(state))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.integers(1, 150), cuts=st.integers(0, 2**32))
def test_folding_owned_maps_in_place_gives_what_a_copying_fold_gives(
    seed: int, size: int, cuts: int
) -> None:
    events = story_events("s", size, seed)
    rng = random.Random(cuts)
    state, maps = ContextState(id="s"), None
    i = 0
    while i < len(events):
        batch = events[i : i + rng.choice([1, 2, 5, 30])]
        i += len(batch)
        expected = fold(batch, state)  # before: the in-place fold changes state's maps
        copied = fold_touched(batch, state)
        folded = fold_touched(batch, state, own=maps)
        assert folded.state == expected == copied.state
        assert (folded.decisions_put, folded.subtasks_put) == (
            copied.decisions_put,
            copied.subtasks_put,
        )
        if maps is not None:
            assert folded.maps[0] is maps[0] and folded.maps[1] is maps[1]
        assert folded.maps == (dict(expected.decisions), dict(expected.subtasks))
        assert list(folded.maps[0]) == list(expected.decisions)  # the order too
        state, maps = folded.state, folded.maps


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.integers(2, 120), at=st.integers(0, 2**32))
def test_a_refused_event_puts_the_owned_maps_back(seed: int, size: int, at: int) -> None:
    events = story_events("s", size, seed)
    cut = at % (len(events) - 1) + 1
    state, _, _, maps = fold_touched(events[:cut], context_id="s")
    before = (list(maps[0].items()), list(maps[1].items()))
    # A valid run of events, then one the state refuses (a second ContextCreated).
    refused = [*events[cut:], ev.ContextCreated(title="again")]
    with pytest.raises(EvolveError):
        fold_touched(refused, state, own=maps)
    assert (list(maps[0].items()), list(maps[1].items())) == before
    assert fold_touched(events[cut:], state, own=maps).state == fold(events, context_id="s")


def test_own_must_be_the_maps_of_the_state() -> None:
    state = fold(story_events("s", 30), context_id="s")
    with pytest.raises(ValueError):
        fold_touched([], state, own=({}, {}))
