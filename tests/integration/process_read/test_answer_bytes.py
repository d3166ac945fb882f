"""Answers of the process query service bounded in bytes, and a tree that says
``truncated`` only when it left out something it would have shown.

One event may hold 256 KiB and one process 64 attributes of 4 KiB, so a page of 100 of
them is over gRPC's 4 MiB message limit: the service could not send it
(RESOURCE_EXHAUSTED) and the reader could never get past it. Pages of events and of
processes now end at the item that reaches ``MAX_PAGE_BYTES`` (with a token: the next
page goes on from there, nothing skipped or repeated), a tree is cut there
(``truncated``)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from jetsource._gen.process.v1 import query_pb2 as q
from jetsource._gen.process.v1 import query_pb2_grpc as q_grpc
from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.envelope import ANY, NewEvent
from jetsource.domains.process.models import PROCESSES, TIMELINE
from jetsource.processquery.server import build
from jetsource.projection.bootstrap import Projection
from tests.integration.process_read.ledger import apply_model
from tests.projector_fixtures import process_query_settings

pytestmark = pytest.mark.integration
PAGE_BYTES = 8192
KIDS = 12


async def append(
    p: Projection, pid: str, *types: str, parent: str = "", data: Any = None, **attrs: str
) -> None:
    body = ProcessEventBody(data=struct_pb2.Struct(), attributes=attrs)
    body.data.update(data or {})
    news = [NewEvent(body, event_type=t, parent_aggregate_id=parent) for t in types]
    await p.domain_store("process").append(pid, news, ANY)


async def pages(call: Any, request: Any, field: str) -> tuple[list[Any], list[int]]:
    """Every page of a paged read: the items, and each answer's size in bytes."""
    items: list[Any] = []
    sizes: list[int] = []
    while True:
        answer = await call(request, timeout=10)
        items += getattr(answer, field)
        sizes.append(answer.ByteSize())
        if not answer.next_page_token:
            return items, sizes
        request.page_token = answer.next_page_token


async def test_pages_and_trees_end_at_their_byte_budget_and_lose_nothing(
    ledger: Projection,
) -> None:
    p = ledger
    await append(p, "root", "process_started", data={"kind": "job"})
    for i in range(KIDS):
        kid = f"kid-{i:02d}"
        attrs = {f"a{j}": "v" * 1000 for j in range(3)}  # a process of ~3 KB
        await append(p, kid, "process_started", parent="root", data={"kind": "step"}, **attrs)
        await append(p, kid, *["chunk"] * 4, data={"blob": "x" * 3000})
    # Events of 200 KB: the service's defaults, gRPC's 4 MiB limit.
    await append(p, "big", "process_started", data={"kind": "blob"})
    for _ in range(5):
        await append(p, "big", *["chunk"] * 5, data={"blob": "y" * 200_000})
    await apply_model(p, PROCESSES)
    await apply_model(p, TIMELINE)

    small = await build(
        process_query_settings(p.settings, max_page_bytes=PAGE_BYTES, max_tree_bytes=PAGE_BYTES)
    )
    roomy = await build(process_query_settings(p.settings))
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{small.port}") as c1,
            grpc.aio.insecure_channel(f"127.0.0.1:{roomy.port}") as c2,
        ):
            reads = q_grpc.ProcessQueryServiceStub(c1)
            big = await pages(
                q_grpc.ProcessQueryServiceStub(c2).GetProcessTimeline,
                q.GetProcessTimelineRequest(process_id="big"),
                "events",
            )
            assert [e.process_seq for e in big[0]] == list(range(1, 27))
            assert len(big[1]) > 1 and max(big[1]) < 3 * 1024 * 1024

            whole = (
                await q_grpc.ProcessQueryServiceStub(c2).GetProcessTimeline(
                    q.GetProcessTimelineRequest(process_id="root", subtree=True, page_size=1000),
                    timeout=10,
                )
            ).events
            assert len(whole) == 1 + KIDS * 5
            cases: list[tuple[Any, str, Any]] = [
                # the stored bytes as they are (a root's tree, nothing to filter)
                (q.GetProcessTimelineRequest(process_id="root", subtree=True), "events", whole),
                # merged per process, filtered
                (
                    q.GetProcessTimelineRequest(process_id="kid-03", event_types=["chunk"]),
                    "events",
                    [e for e in whole if e.event.process_id == "kid-03"][1:],
                ),
                (q.ListEventsRequest(event_types=["chunk"]), "events", None),
            ]
            for request, field, want in cases:
                call = getattr(reads, type(request).__name__.removesuffix("Request"))
                request.page_size = 1000
                got, sizes = await pages(call, request, field)
                one_event = max(e.ByteSize() for e in got) + 8
                assert len(sizes) > 1 and max(sizes) <= PAGE_BYTES + one_event, sizes
                gs = [e.global_seq for e in got]
                assert gs == sorted(set(gs))
                if want is not None:
                    assert gs == [e.global_seq for e in want]
                else:
                    assert len(got) == KIDS * 4 + 25  # the kids' and big's chunks

            for request in (
                q.ListProcessesRequest(root_process_id="root", page_size=1000),
                q.ListProcessesRequest(kind="step", page_size=1000),
                # the start-time index
                q.ListProcessesRequest(
                    started=q.TimeWindow(**{"from": whole[0].recorded_at}), page_size=1000
                ),
            ):
                got, sizes = await pages(reads.ListProcesses, request, "processes")
                one_row = max(r.ByteSize() for r in got) + 8
                assert len(sizes) > 1 and max(sizes) <= PAGE_BYTES + one_row, sizes
                ids = [r.process_id for r in got]
                assert len(ids) == len(set(ids))
                assert {f"kid-{i:02d}" for i in range(KIDS)} <= set(ids)

            tree = await reads.GetProcessTree(q.GetProcessTreeRequest(process_id="root"))
            assert tree.truncated and 0 < len(tree.root.children) < KIDS
            assert tree.ByteSize() <= PAGE_BYTES
    finally:
        await small.stop(0)
        await roomy.stop(0)


async def test_a_tree_is_truncated_only_when_it_leaves_out_what_it_would_show(
    ledger: Projection,
) -> None:
    """root -> done (completed) -> busy (running); root -> other (running)."""
    p = ledger
    await append(p, "root", "process_started")
    await append(p, "done", "process_started", parent="root")
    await append(p, "done", "process_completed")
    await append(p, "busy", "process_started", parent="done")
    await append(p, "other", "process_started", parent="root")
    await apply_model(p, PROCESSES)
    completed, running = q.PROCESS_STATUS_COMPLETED, q.PROCESS_STATUS_RUNNING
    query = await build(process_query_settings(p.settings, max_tree_nodes=2))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{query.port}") as channel:
            reads = q_grpc.ProcessQueryServiceStub(channel)

            async def tree(**fields: Any) -> tuple[list[str], bool]:
                got = await reads.GetProcessTree(
                    q.GetProcessTreeRequest(process_id="root", **fields), timeout=10
                )
                shown, todo = [], list(got.root.children)
                while todo:
                    node = todo.pop(0)
                    shown.append(node.process.process_id)
                    todo += node.children
                return shown, got.truncated

            # Cut at depth 1: below "done" is only "busy", which statuses hides.
            assert await tree(max_depth=1, statuses=[completed]) == (["done"], False)
            assert await tree(max_depth=1) == (["done"], True)
            assert await tree(max_depth=1, statuses=[completed, running]) == (["done"], True)
            # At MAX_TREE_NODES (2: the root and one): what statuses hides is not counted.
            assert await tree(statuses=[completed]) == (["done"], False)
            assert await tree() == (["done"], True)
    finally:
        await query.stop(0)
