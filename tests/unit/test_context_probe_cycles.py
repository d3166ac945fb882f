"""Dependencies of a large story: a fold and the cycle check stay linear.

A story of tens of thousands of linked subtasks is within the publisher's size cap
(32,000 in a chain encode to 1 MB). Every DependencyLinked copied the whole set of
dependencies (a fold of that story took 9 s, every reader folding it from version 1
paid it), and the cycle check scanned every dependency for every node it walked
(0.4 s for one LinkDependency on a chain of 4,000, 25 s at 32,000, the publisher's
event loop held all that time)."""

from __future__ import annotations

import time

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.domains.context import model as m


def _chain(n: int) -> list[object]:
    return [
        ev.ContextCreated(title="t"),
        *(ev.SubtaskAdded(subtask_id=f"t{i}", title="x") for i in range(n)),
        *(
            ev.DependencyLinked(
                from_id=f"t{i}",
                from_kind=ev.NODE_KIND_SUBTASK,
                to_id=f"t{i + 1}",
                to_kind=ev.NODE_KIND_SUBTASK,
            )
            for i in range(n - 1)
        ),
    ]


def test_a_fold_of_many_dependencies_is_linear() -> None:
    events = _chain(20_000)
    started = time.perf_counter()
    state = m.fold(events, context_id="s")  # type: ignore[arg-type]
    took = time.perf_counter() - started
    assert len(state.dependencies) == 19_999 and isinstance(state.dependencies, frozenset)
    assert took < 1.0, f"folding 20,000 links took {took:.2f} s (3.5 s when quadratic)"


def test_a_fold_of_links_leaves_the_state_it_started_from_as_it_was() -> None:
    events = _chain(10)
    before = m.fold(events[:15], context_id="s")  # type: ignore[arg-type]
    deps = before.dependencies
    copy = set(deps)
    after = m.fold(events[15:], before)  # type: ignore[arg-type]
    assert before.dependencies is deps and set(deps) == copy
    step = before
    for event in events[15:]:
        step = m.evolve(step, event)  # type: ignore[arg-type]
    assert after == step and isinstance(after.dependencies, frozenset)
    one = m.fold(events[15:16], before)  # type: ignore[arg-type]
    assert one == m.evolve(before, events[15]) and isinstance(one.dependencies, frozenset)  # type: ignore[arg-type]
    assert before.dependencies is deps and set(deps) == copy
    # A fold without links keeps the very set (the read models compare it by identity).
    same = m.fold([ev.SubtaskAdded(subtask_id="z", title="z")], after)
    assert same.dependencies is after.dependencies


@pytest.mark.parametrize("n", [6_000])
def test_the_cycle_check_of_a_long_chain_is_linear(n: int) -> None:
    state = m.fold(_chain(n), context_id="s")  # type: ignore[arg-type]
    started = time.perf_counter()
    with pytest.raises(m.DomainError, match="cycle"):
        m.decide(m.LinkDependency(f"t{n - 1}", "t0"), state)
    events = m.decide(m.LinkDependency("t0", f"t{n - 1}"), state)  # a shortcut: no cycle
    took = time.perf_counter() - started
    assert len(events) == 1
    assert took < 0.25, f"two cycle checks on a chain of {n:,} took {took:.2f} s"
