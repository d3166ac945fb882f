"""GetDecisionGraph while the graph model lags the story: FAILED_PRECONDITION ("not
in the graph model yet"), never INVALID_ARGUMENT for a root the story has.

CI once got INVALID_ARGUMENT "root_id: no decision or subtask 'sec-1' in context
'sec-1'" for the story itself: the story's node, its decisions and its subtasks are
three reads, and a model catching up answered the first without the story and the
next with decisions applied meanwhile. The same answer came for a decision the story
has and the model had not applied yet. Against the real servers (NATS, the graph
store); the model is applied by hand to a chosen point."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from jetsource._gen.context.v1 import query_pb2 as pb
from jetsource.core.envelope import NO_STREAM, NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.history import StateLoader
from jetsource.domains.context.model import (
    AddDecision,
    AddSubtask,
    ContextState,
    CreateContext,
    decide,
    evolve,
)
from jetsource.domains.context.query_service import ContextQueryService, QueryError
from jetsource.domains.context.query_settings import QueryOptions
from jetsource.projection.bootstrap import Projection
from tests.projector_fixtures import projection_of

pytestmark = pytest.mark.integration

STORY = "lagging"


class Deadline:
    """The servicer context the service reads: only its deadline."""

    def time_remaining(self) -> float:
        return 10.0


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with projection_of(settings, unique, models=("graph",)) as p:
        yield p


async def graph(service: ContextQueryService, root_id: str = "") -> Any:
    request = pb.GetDecisionGraphRequest(context_id=STORY, root_id=root_id, depth=2)
    return await service.GetDecisionGraph(request, Deadline())


async def refused(service: ContextQueryService, root_id: str = "") -> QueryError:
    with pytest.raises(QueryError) as caught:
        await graph(service, root_id)
    return caught.value


async def test_a_lagging_graph_model_is_not_an_invalid_root(projection: Projection) -> None:
    p = projection
    state = ContextState(id=STORY)
    events = []
    for command in (
        CreateContext("A story"),
        AddDecision("d1", "One"),
        AddSubtask("t1", "Do it"),
        AddDecision("d2", "Two"),
    ):
        for message in decide(command, state):
            state = evolve(state, message)
            events.append(message)
    await p.store.append(STORY, [NewEvent(e) for e in events], NO_STREAM)
    records = await p.store.read_aggregate(STORY)
    model = p.model("graph", 1)
    await model.setup()
    service = ContextQueryService(
        p, StateLoader(p.store, p.snapshots, 10), QueryOptions(grpc_port=0, metrics_port=0)
    )

    # Nothing applied: not in the graph model yet.
    assert (await refused(service)).code == grpc.StatusCode.FAILED_PRECONDITION

    # The story and d1 applied: d1 answers; t1 and d2 are the story's, not yet applied.
    await model.apply(records[:2])
    assert {n.id for n in (await graph(service, "d1")).nodes} == {STORY, "d1"}
    for root in ("t1", "d2"):
        error = await refused(service, root)
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION, (root, error)
        assert "not in the graph model yet" in str(error), error
    # A root the story has not: INVALID_ARGUMENT naming root_id, lagging or not.
    error = await refused(service, "nope")
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and "root_id" in str(error), error

    # The three reads raced the projector: decisions and subtasks without the story.
    served = next(m for (name, _), m in service._models.items() if name == "graph")
    nodes = served.nodes

    async def without_story(story: str) -> list[tuple[str, dict[str, Any]]]:
        return [(k, n) for k, n in await nodes(story) if k != "story"]

    served.nodes = without_story
    for root in ("", STORY, "d1"):
        error = await refused(service, root)
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION, (root, error)
    served.nodes = nodes

    # Caught up: every root answers, and no edge names a node the answer lacks.
    await model.apply(records[2:])
    for root in ("", "d1", "t1", "d2"):
        answer = await graph(service, root)
        ids = {n.id for n in answer.nodes}
        assert {STORY, "d1", "t1", "d2"} >= ids and root in ids | {""}, answer
        assert all(e.from_id in ids and e.to_id in ids for e in answer.edges), answer
    assert (await graph(service)).version == len(records)
    error = await refused(service, "nope")
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error


async def test_a_bad_root_is_invalid_while_the_graph_model_is_behind(
    projection: Projection,
) -> None:
    """A root the story has not, or one no command could name, was FAILED_PRECONDITION
    ("not in the graph model yet") while the model had not applied the story, and
    INVALID_ARGUMENT once it had: INVALID_ARGUMENT while it lags too now; a valid root
    still waits for the model. An unknown story stays NOT_FOUND and a parked one
    DATA_LOSS whatever the root (test_context_repeated_version)."""
    p = projection
    state = ContextState(id=STORY)
    events = []
    for command in (CreateContext("A story"), AddDecision("d1", "One")):
        for message in decide(command, state):
            state = evolve(state, message)
            events.append(message)
    await p.store.append(STORY, [NewEvent(e) for e in events], NO_STREAM)
    await p.model("graph", 1).setup()  # nothing applied: the model is behind
    service = ContextQueryService(
        p, StateLoader(p.store, p.snapshots, 10), QueryOptions(grpc_port=0, metrics_port=0)
    )
    for root in ("nope", "bad id!", "x" * 65, "../d1", "d1\n"):
        error = await refused(service, root)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, (root, error)
        assert str(error) == f"root_id: no decision or subtask {root!r} in context {STORY!r}"
    for root in ("", STORY, "d1"):
        error = await refused(service, root)
        assert error.code == grpc.StatusCode.FAILED_PRECONDITION, (root, error)
    # An unknown story stays NOT_FOUND, whatever root is asked for: a malformed one
    # too (a681b7e answered INVALID_ARGUMENT for it, before looking for the story).
    for root in ("", "d1", "nope", "bad id!", "x" * 65):
        request = pb.GetDecisionGraphRequest(context_id="no-such-story", root_id=root)
        with pytest.raises(QueryError) as caught:
            await service.GetDecisionGraph(request, Deadline())
        assert caught.value.code == grpc.StatusCode.NOT_FOUND, (root, caught.value)
        assert str(caught.value) == "context 'no-such-story' not found", (root, caught.value)
