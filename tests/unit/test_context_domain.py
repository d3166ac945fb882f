"""The context domain: every invariant, and a property test over random command sequences."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetsource.core.errors import ValidationError
from jetsource.domains.context.model import (
    BLOCKED,
    CANCELLED,
    DONE,
    IN_PROGRESS,
    MAX_TEXT,
    MAX_TITLE,
    TODO,
    TRANSITIONS,
    AddDecision,
    AddSubtask,
    CloseContext,
    Command,
    ContextState,
    CreateContext,
    DomainError,
    LinkDependency,
    ReviseDecision,
    SupersedeDecision,
    UpdateSubtask,
    decide,
    evolve,
    fold,
)


def run(*commands: Command, context_id: str = "c1") -> ContextState:
    state = ContextState(id=context_id)
    for command in commands:
        for event in decide(command, state):
            state = evolve(state, event)
    return state


STORY = (
    CreateContext("Checkout", created_by="ana"),
    AddDecision("d1", "Use NATS"),
    AddDecision("d2", "Use JetStream", rationale="durable"),
    AddSubtask("s1", "Write publisher"),
    AddSubtask("s2", "Write projector"),
)


def test_a_story_lifecycle() -> None:
    state = run(
        *STORY,
        ReviseDecision("d1", body="core NATS", revised_by="bo"),
        SupersedeDecision("d1", "d2", reason="need persistence"),
        LinkDependency("s2", "s1"),
        LinkDependency("s1", "d2"),
        UpdateSubtask("s1", status=IN_PROGRESS, progress=50),
        UpdateSubtask("s1", status=DONE, progress=100),
        CloseContext("shipped", "ana"),
    )
    assert state.version == 12 and state.closed
    assert state.decisions["d1"].superseded_by == "d2" and state.decisions["d1"].revisions == 1
    assert state.subtasks["s1"].status == DONE and state.subtasks["s1"].progress == 100
    assert state.dependencies == {("s2", "s1"), ("s1", "d2")}


@pytest.mark.parametrize(
    ("commands", "message"),
    [
        ((AddDecision("d1", "x"),), "does not exist: create it first"),
        ((CreateContext("a"), CreateContext("b")), "already exists"),
        ((*STORY, CloseContext(), AddSubtask("s9", "late")), "closed and accepts no changes"),
        ((*STORY, AddDecision("d1", "again")), "'d1' is already used"),
        ((*STORY, AddSubtask("d1", "clash")), "'d1' is already used"),
        ((*STORY, ReviseDecision("nope", title="t")), "decision 'nope' does not exist"),
        ((*STORY, SupersedeDecision("nope", "d1")), "decision 'nope' does not exist"),
        ((*STORY, SupersedeDecision("d1", "d1")), "cannot supersede itself"),
        ((*STORY, SupersedeDecision("d1", "d2"), ReviseDecision("d1", title="t")), "superseded"),
        ((*STORY, SupersedeDecision("d1", "d2"), SupersedeDecision("d2", "d1")), "superseded"),
        ((*STORY, LinkDependency("s1", "s1")), "cannot depend on itself"),
        ((*STORY, LinkDependency("s1", "zz")), "'zz' is neither"),
        ((*STORY, LinkDependency("s1", "s2"), LinkDependency("s1", "s2")), "already depends"),
        ((*STORY, LinkDependency("s1", "s2"), LinkDependency("s2", "s1")), "cycle"),
        (
            (
                *STORY,
                LinkDependency("s1", "s2"),
                LinkDependency("s2", "d1"),
                LinkDependency("d1", "s1"),
            ),
            "cycle",
        ),
        ((*STORY, UpdateSubtask("s1", status=DONE)), "cannot move from todo to done"),
        (
            (*STORY, UpdateSubtask("s1", status=CANCELLED), UpdateSubtask("s1", progress=3)),
            "cancelled and cannot change",
        ),
        ((*STORY, UpdateSubtask("nope", progress=1)), "subtask 'nope' does not exist"),
        ((*STORY, AddDecision("d3", "t", affects=["ghost"])), "affects unknown"),
    ],
)
def test_invariant_violations_are_domain_errors(
    commands: tuple[Command, ...], message: str
) -> None:
    *setup, last = commands
    state = run(*setup)
    with pytest.raises(DomainError, match=message):
        decide(last, state)


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (CreateContext(""), "title"),
        (CreateContext("x" * (MAX_TITLE + 1)), "title"),
        (CreateContext("t", tags=["ok", ""]), "tags"),
        (AddDecision("bad id", "t"), "decision_id"),
        (AddDecision("d9", "t", body="x" * (MAX_TEXT + 1)), "body"),
        (AddSubtask("", "t"), "subtask_id"),
        (UpdateSubtask("s1", progress=101), "progress"),
        (UpdateSubtask("s1"), "status"),
        (UpdateSubtask("s1", status=99), "status"),  # type: ignore[arg-type]
        (LinkDependency("a.b", "s1"), "from_id"),
    ],
)
def test_malformed_commands_name_the_field(command: Command, field: str) -> None:
    state = run(*STORY) if not isinstance(command, CreateContext) else ContextState(id="c")
    with pytest.raises(ValidationError) as err:
        decide(command, state)
    assert err.value.field == field
    assert field in str(err.value) or "nothing to update" in str(err.value)


def test_status_transitions() -> None:
    assert DONE not in TRANSITIONS[TODO]
    state = run(*STORY, UpdateSubtask("s1", status=BLOCKED), UpdateSubtask("s1", status=TODO))
    assert state.subtasks["s1"].status == TODO


# -- property test ---------------------------------------------------------------------

IDS = ["a", "b", "c", "d", "e"]
ids = st.sampled_from(IDS)
text = st.text(max_size=12)
statuses = st.sampled_from([TODO, IN_PROGRESS, BLOCKED, DONE, CANCELLED])
commands = st.one_of(
    st.builds(CreateContext, title=text),
    st.builds(AddDecision, decision_id=ids, title=text, affects=st.lists(ids, max_size=2)),
    st.builds(ReviseDecision, decision_id=ids, title=text, body=text),
    st.builds(SupersedeDecision, decision_id=ids, superseded_by=ids),
    st.builds(AddSubtask, subtask_id=ids, title=text),
    st.builds(
        UpdateSubtask,
        subtask_id=ids,
        status=st.none() | statuses,
        assignee=st.none() | text,
        progress=st.none() | st.integers(-5, 105),
    ),
    st.builds(LinkDependency, from_id=ids, to_id=ids),
    st.builds(CloseContext, reason=text),
)


def check_invariants(state: ContextState, applied: int) -> None:
    assert state.version == applied
    assert not set(state.decisions) & set(state.subtasks)
    nodes = set(state.decisions) | set(state.subtasks)
    for frm, to in state.dependencies:
        assert frm in nodes and to in nodes and frm != to
    # acyclic: repeatedly remove nodes without outgoing edges
    edges = set(state.dependencies)
    remaining = set(nodes)
    while remaining:
        sinks = {n for n in remaining if not any(f == n and t in remaining for f, t in edges)}
        assert sinks, f"dependency cycle among {remaining}"
        remaining -= sinks
    for d in state.decisions.values():
        if d.superseded_by:
            assert d.superseded_by in state.decisions and d.superseded_by != d.id
        assert len(d.title) <= MAX_TITLE
    for s in state.subtasks.values():
        assert 0 <= s.progress <= 100 and s.status in TRANSITIONS


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(commands, max_size=40))
def test_random_commands_never_break_an_invariant(sequence: list[Command]) -> None:
    state, applied = ContextState(id="p"), 0
    emitted: list[Any] = []
    for command in sequence:
        try:
            events = decide(command, state)
        except (DomainError, ValidationError):
            continue  # refused: state unchanged
        for event in events:
            state = evolve(state, event)  # decide never emits what evolve rejects
            applied += 1
        emitted.extend(events)
        check_invariants(state, applied)
        if state.closed:
            with pytest.raises(DomainError):
                decide(AddSubtask("z", "late"), state)
    # fold (linear, in place on private copies) equals evolving one by one...
    assert fold(emitted, context_id="p") == state
    # ...also from a mid-way state, which it must leave untouched
    half = fold(emitted[: len(emitted) // 2], context_id="p")
    before = (dict(half.decisions), dict(half.subtasks))
    assert fold(emitted[len(emitted) // 2 :], half) == state
    assert (dict(half.decisions), dict(half.subtasks)) == before


def test_unknown_events_only_advance_the_version() -> None:
    from jetsource.core.codec import UnknownEvent

    state = run(*STORY)
    after = evolve(state, UnknownEvent("Future", 1, b""))
    assert after.version == state.version + 1 and after.decisions == state.decisions
