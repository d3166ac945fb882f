"""Plausible story histories for demos, tests and benchmarks.

Every history is produced by ``decide`` on the evolving state, so it is valid by the
domain's own rules: decisions added, revised and superseded, subtasks moving through
their statuses, dependencies without cycles.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from google.protobuf.message import Message

from jetsource.domains.context.model import (
    TRANSITIONS,
    AddDecision,
    AddSubtask,
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
)


def _commands(
    state: ContextState, rng: random.Random, n: int, max_nodes: int | None = None
) -> Iterator[Command]:
    active = [d.id for d in state.decisions.values() if d.active]
    open_tasks = [t for t in state.subtasks.values() if TRANSITIONS[t.status]]
    nodes = list(state.decisions) + list(state.subtasks)
    roll = rng.random()
    if max_nodes is not None and len(nodes) >= max_nodes and active:
        # A long-lived story: its decisions are revised and its work progresses.
        if roll < 0.5 and open_tasks:
            task = rng.choice(open_tasks)
            status = rng.choice(sorted(TRANSITIONS[task.status]))
            yield UpdateSubtask(task.id, status=status, progress=rng.randint(0, 100))
        yield ReviseDecision(rng.choice(active), body=f"revised at {n}")
        return
    if roll < 0.25 or not nodes:
        yield AddDecision(
            f"d{n}",
            f"decision {n}",
            body=f"we decided thing {n} " * rng.randint(1, 4),
            rationale="because it is simpler",
            author=rng.choice(["ana", "bo", "agent-7"]),
            affects=rng.sample(nodes, k=min(len(nodes), rng.randint(0, 2))),
        )
    if roll < 0.45:
        yield AddSubtask(f"t{n}", f"subtask {n}", assignee=rng.choice(["ana", "bo", "agent-3"]))
    if roll < 0.70 and open_tasks:
        task = rng.choice(open_tasks)
        status = rng.choice(sorted(TRANSITIONS[task.status]))
        yield UpdateSubtask(task.id, status=status, progress=rng.randint(0, 100))
    if roll < 0.80 and active:
        yield ReviseDecision(rng.choice(active), body=f"revised at {n}")
    if roll < 0.88 and len(active) >= 2:
        old, new = rng.sample(active, 2)
        yield SupersedeDecision(old, new, reason="better idea")
    if len(nodes) >= 2:
        a, b = rng.sample(nodes, 2)
        yield LinkDependency(a, b)
    yield AddDecision(f"d{n}x", f"decision {n}x")


def story_events(
    context_id: str, events: int, seed: int = 0, max_nodes: int | None = None
) -> list[Message]:
    """A history of about ``events`` events (at least 1) for one story. With
    ``max_nodes``, once it has that many decisions and subtasks it only revises and
    progresses them (a long-lived story) instead of growing."""
    rng = random.Random(f"{context_id}:{seed}")
    state = ContextState(id=context_id)
    out: list[Message] = []
    for message in decide(CreateContext(f"story {context_id}", created_by="sampler"), state):
        state = evolve(state, message)
        out.append(message)
    n = 0
    while len(out) < events:
        n += 1
        for command in _commands(state, rng, n, max_nodes):
            try:
                produced = decide(command, state)
            except DomainError:
                continue
            for message in produced:
                state = evolve(state, message)
                out.append(message)
            break
    return out[:events]
