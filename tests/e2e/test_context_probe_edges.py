"""Edges of the context services' inputs, over the real services (publisher ->
projector and snapshotter -> query, gRPC only): ids that collide with the story's,
malformed fields sent to a context that is missing or closed, history of a context
that does not exist read from past its start."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import grpc
import pytest

from jetsource._gen.context.v1 import commands_pb2 as c
from jetsource._gen.context.v1 import commands_pb2_grpc as c_grpc
from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.context.v1 import query_pb2 as q
from jetsource._gen.context.v1 import query_pb2_grpc as q_grpc
from jetsource.client import QueryClient, error_details
from jetsource.core.envelope import NewEvent
from jetsource.query.server import build as build_query
from jetsource.query.settings import QuerySettings
from tests.e2e.test_query import Stack, stack  # noqa: F401  (the fixture)

pytestmark = pytest.mark.e2e
Code = grpc.StatusCode


async def _graph(s: Stack, cid: str, version: int, **kw: Any) -> q.GetDecisionGraphResponse:
    """The graph once the model has applied ``version`` of the story."""
    for _ in range(150):
        try:
            graph = await s.reads.graph(cid, **kw)
            if graph.version >= version:
                return graph
        except grpc.aio.AioRpcError as exc:
            if exc.code() != Code.FAILED_PRECONDITION:
                raise
        await asyncio.sleep(0.1)
    raise AssertionError(f"the graph model never reached version {version} of {cid}")


def _options() -> c.CommandOptions:
    return c.CommandOptions(idempotency_key=str(uuid.uuid4()), actor="tester")


async def test_a_node_named_like_its_story_is_refused_and_one_stored_before_hides_nothing(
    stack: Stack,  # noqa: F811
) -> None:
    """A decision or subtask whose id is its story's id made GetDecisionGraph answer
    the decision in the story's place (the story's node gone, a HAS_DECISION edge
    from the decision to itself): the API names the story by its id. Now such an id
    is refused naming its field, and a story that holds one from before answers its
    story node and the node both, told apart by their kinds."""
    cid = "probe-same-id"
    await stack.commands.create_context(cid, "story")
    for call, field in (
        (stack.commands.add_decision(cid, cid, "named like the story"), "decision_id"),
        (stack.commands.add_subtask(cid, cid, "named like the story"), "subtask_id"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == Code.INVALID_ARGUMENT, refused.value.details()
        assert field in (refused.value.details() or "")
        assert field in error_details(refused.value).fields
    assert len(await stack.publisher.store.read_aggregate(cid)) == 1  # nothing appended

    # A story written before the rule (straight into the stream).
    old = "probe-same-id-old"
    await stack.publisher.store.append(
        old,
        [
            NewEvent(ev.ContextCreated(title="old story")),
            NewEvent(ev.DecisionAdded(decision_id=old, title="named like the story")),
            NewEvent(ev.SubtaskAdded(subtask_id="t1", title="task")),
            NewEvent(
                ev.DependencyLinked(
                    from_id="t1",
                    from_kind=ev.NODE_KIND_SUBTASK,
                    to_id=old,
                    to_kind=ev.NODE_KIND_DECISION,
                )
            ),
        ],
        0,
    )
    graph = await _graph(stack, old, 4, depth=3)
    nodes = [(n.id, n.kind, n.distance) for n in graph.nodes]
    assert nodes[0] == (old, q.GRAPH_NODE_KIND_STORY, 0), nodes  # the story is the root
    assert sorted(nodes) == sorted(
        [
            (old, q.GRAPH_NODE_KIND_STORY, 0),
            (old, q.GRAPH_NODE_KIND_DECISION, 1),
            ("t1", q.GRAPH_NODE_KIND_SUBTASK, 1),
        ]
    ), nodes
    assert {(e.type, e.from_id, e.to_id) for e in graph.edges} == {
        ("HAS_DECISION", old, old),
        ("HAS_SUBTASK", old, "t1"),
        ("DEPENDS_ON", "t1", old),
    }
    # From the subtask: its neighbours are the story and the decision, one hop each.
    around = await _graph(stack, old, 4, depth=1, root_id="t1")
    assert sorted((n.id, n.kind, n.distance) for n in around.nodes) == sorted(
        [
            ("t1", q.GRAPH_NODE_KIND_SUBTASK, 0),
            (old, q.GRAPH_NODE_KIND_STORY, 1),
            (old, q.GRAPH_NODE_KIND_DECISION, 1),
        ]
    )
    only = await _graph(stack, old, 4, depth=0)
    assert [(n.id, n.kind) for n in only.nodes] == [(old, q.GRAPH_NODE_KIND_STORY)]


# Each command with one malformed field: (rpc, request fields, the field named).
MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("AddDecision", {"decision_id": "bad id", "title": "t"}, "decision_id"),
    ("AddDecision", {"decision_id": "d9", "title": " "}, "title"),
    ("AddDecision", {"decision_id": "d9", "title": "t", "body": "\x1b[2J"}, "body"),
    ("AddDecision", {"decision_id": "d9", "title": "t", "affects": ["a.b"]}, "affects"),
    ("ReviseDecision", {"decision_id": "d1"}, "title"),
    ("ReviseDecision", {"decision_id": "x" * 65, "title": "t"}, "decision_id"),
    ("SupersedeDecision", {"decision_id": "d1", "superseded_by": ""}, "superseded_by"),
    ("SupersedeDecision", {"decision_id": "d1", "superseded_by": "d2", "reason": "\x00"}, "reason"),
    ("AddSubtask", {"subtask_id": "t9", "title": "a" * 201}, "title"),
    ("AddSubtask", {"subtask_id": "t9", "title": "t", "assignee": "a\nb"}, "assignee"),
    ("UpdateSubtask", {"subtask_id": "t1", "status": 99}, "status"),
    ("UpdateSubtask", {"subtask_id": "t1", "progress": 101}, "progress"),
    ("UpdateSubtask", {"subtask_id": "t1"}, "status"),
    ("LinkDependency", {"from_id": "t1", "to_id": "*"}, "to_id"),
    ("CloseContext", {"reason": "a\x1b]0;title\x07b"}, "reason"),
]


@pytest.mark.parametrize("state", ["missing", "closed", "open"])
async def test_a_malformed_field_is_invalid_argument_whatever_the_context_state(
    stack: Stack,  # noqa: F811
    state: str,
) -> None:
    """A malformed field was FAILED_PRECONDITION ("does not exist", "is closed") while
    the context was missing or closed, and INVALID_ARGUMENT naming it once the
    context was open: the same bad request, two answers. Every command's fields are
    now checked before the state, and nothing is appended."""
    cid = f"probe-malformed-{state}"
    if state != "missing":
        await stack.commands.create_context(cid, "story")
        await stack.commands.add_decision(cid, "d1", "one")
        await stack.commands.add_decision(cid, "d2", "two")
        await stack.commands.add_subtask(cid, "t1", "task")
        if state == "closed":
            await stack.commands.close_context(cid, "done")
    before = len(await stack.publisher.store.read_aggregate(cid))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.publisher.port}") as channel:
        stub = c_grpc.ContextCommandServiceStub(channel)
        for rpc, fields, field in MALFORMED:
            request = getattr(c, f"{rpc}Request")(context_id=cid, options=_options(), **fields)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await getattr(stub, rpc)(request, timeout=10)
            said = (rpc, fields, refused.value.code(), refused.value.details())
            assert refused.value.code() == Code.INVALID_ARGUMENT, said
            assert field in error_details(refused.value).fields, said
    assert len(await stack.publisher.store.read_aggregate(cid)) == before


async def test_events_of_an_unknown_context_are_not_found_from_any_version(
    stack: Stack,  # noqa: F811
) -> None:
    """ListEvents of a context that does not exist answered NOT_FOUND from version 1
    only: from any later version it answered an empty page, as if the story existed
    and had no events there yet. Past the end of a story that exists, a page is
    still empty (no more events yet)."""
    for start in (2, 5, 10**12):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.reads.list_events("probe-nobody", from_version=start)
        assert refused.value.code() == Code.NOT_FOUND, (start, refused.value.details())
        assert "probe-nobody" in (refused.value.details() or "")
    await stack.commands.create_context("probe-some", "story")
    page = await stack.reads.list_events("probe-some", from_version=5)
    assert not page.events and not page.next_page_token
    first = await stack.reads.list_events("probe-some", limit=1)
    assert [e.version for e in first.events] == [1] and first.next_page_token
    # The token, used after the story grew, goes on from where it stopped.
    await stack.commands.add_decision("probe-some", "d1", "one")
    rest = await stack.reads.list_events("probe-some", page_token=first.next_page_token)
    assert [e.version for e in rest.events] == [2]


async def test_a_watch_meeting_a_refused_event_ends_with_data_loss_naming_it(
    stack: Stack,  # noqa: F811
) -> None:
    """A stored event the domain refuses (here: a revision of a decision the story
    never had) is DATA_LOSS naming its stream sequence on every read; WatchContext
    folded it unchecked and ended INTERNAL ("a bug"). Now it sends every version
    before it, then ends with the same DATA_LOSS."""
    cid = "probe-watch-corrupt"
    appended = await stack.publisher.store.append(
        cid,
        [
            NewEvent(ev.ContextCreated(title="t")),
            NewEvent(ev.DecisionAdded(decision_id="d1", title="t")),
            NewEvent(ev.DecisionRevised(decision_id="nope", title="x")),
            NewEvent(ev.DecisionAdded(decision_id="d2", title="t")),
        ],
        0,
    )
    bad_seq = appended.stream_seqs[2]
    seen: list[int] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.query.port}") as channel:
        stub = q_grpc.ContextQueryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for message in stub.WatchContext(
                q.WatchContextRequest(context_id=cid), timeout=10
            ):
                seen.append(message.event.version)
        with pytest.raises(grpc.aio.AioRpcError) as read:
            await stub.GetContextAtVersion(
                q.GetContextAtVersionRequest(context_id=cid, version=4), timeout=10
            )
    assert seen == [1, 2]
    for refused in (ended.value, read.value):
        assert refused.code() == Code.DATA_LOSS, refused.details()
        assert f"stream sequence {bad_seq}" in (refused.details() or "")
        details = error_details(refused)
        assert details.reason == "CORRUPT_EVENT"
        assert details.metadata["stream_sequence"] == str(bad_seq)


async def test_a_decision_graph_past_the_message_limit_is_refused_saying_how_to_narrow_it(
    stack: Stack,  # noqa: F811
) -> None:
    """A graph answer repeats what a story's view holds once (each HAS_SUBTASK edge
    names the story): 30,000 subtasks of a story with a 128-character id are a 409 kB
    view, a fifth of the publisher's cap, and a 5 MB graph, which gRPC refused after
    the handler with RESOURCE_EXHAUSTED (clients retry it). Now the answer's size is
    checked first: FAILED_PRECONDITION, reason CONTEXT_TOO_LARGE, saying to ask for
    fewer hops or a root. Shown on a query service with an 8 KiB message limit."""
    settings = stack.query.projection.settings
    assert isinstance(settings, QuerySettings)
    small = settings.model_copy(
        update={
            "grpc": settings.grpc.model_copy(update={"max_message_bytes": 8 * 1024}),
            "query": settings.query.model_copy(update={"grpc_port": 0, "metrics_port": 0}),
        }
    )
    query = await build_query(small)
    cid = "probe-" + "g" * 58
    try:
        await stack.commands.create_context(cid, "story")
        last = None
        for i in range(150):
            last = await stack.commands.add_subtask(cid, f"t{i}", "x")
        assert last is not None
        await stack.commands.link_dependency(cid, "t1", "t0")
        await _graph(stack, cid, last.version + 1, depth=1)  # projected
        async with QueryClient(f"127.0.0.1:{query.port}", timeout=10) as reads:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await reads.graph(cid, depth=1)
            assert refused.value.code() == Code.FAILED_PRECONDITION, refused.value.details()
            said = refused.value.details() or ""
            assert "depth" in said and "root_id" in said and "message limit" in said
            details = error_details(refused.value)
            assert details.reason == "CONTEXT_TOO_LARGE"
            assert details.metadata["max_message_bytes"] == str(8 * 1024)
            assert int(details.metadata["graph_bytes"]) > 8 * 1024
            # Narrowed, it answers.
            around = await reads.graph(cid, depth=1, root_id="t1")
            assert {n.id for n in around.nodes} == {"t1", "t0", cid}
    finally:
        await query.stop(0)


async def test_a_subtask_status_of_a_newer_version_reads_the_same_every_way(
    stack: Stack,  # noqa: F811
) -> None:
    """A SubtaskUpdated with a status number this server has no name for (as a newer
    version may write): snapshots and the read model wrote it "unspecified" and read
    it back as todo, so the state at a version depended on whether a snapshot was
    used (time travel said 99 before the snapshot, todo after it; GetContext said
    0), and UpdateSubtask on it was a KeyError answered INTERNAL. Now the number
    round-trips everywhere and the update is FAILED_PRECONDITION naming it."""
    cid = "probe-future-status"
    await stack.publisher.store.append(
        cid,
        [
            NewEvent(ev.ContextCreated(title="t")),
            NewEvent(ev.SubtaskAdded(subtask_id="s1", title="x")),
            NewEvent(ev.SubtaskUpdated(subtask_id="s1", status=cast(Any, 99), progress=5)),
            *(NewEvent(ev.SubtaskAdded(subtask_id=f"t{i}", title="y")) for i in range(9)),
        ],
        0,
    )
    last = 12  # a snapshot is written at 10 (every 10 events in this stack)
    for _ in range(100):
        at = await stack.reads.at_version(cid, last)
        if at.snapshot_version == 10:
            break
        await asyncio.sleep(0.1)
    assert at.snapshot_version == 10, "no snapshot at version 10"

    def status(view: q.ContextView) -> int:
        return next(t.status for t in view.subtasks if t.id == "s1")

    assert status(at.context) == 99
    assert status((await stack.reads.at_version(cid, 3)).context) == 99  # from events only
    now = await stack.reads.get_context(cid, min_version=last)
    assert now.source == q.READ_SOURCE_READ_MODEL and status(now.context) == 99
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.commands.update_subtask(cid, "s1", progress=6)
    assert refused.value.code() == Code.FAILED_PRECONDITION, refused.value.details()
    assert "status 99" in (refused.value.details() or "")
    assert len(await stack.publisher.store.read_aggregate(cid)) == last
    # The publisher loaded the story through that snapshot: it still knows the status.
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await stack.commands.update_subtask(cid, "s1", status="done")
    assert again.value.code() == Code.FAILED_PRECONDITION
