"""Publisher -> projector and snapshotter -> query, through gRPC only (real NATS,
Valkey and graph store; every service in this process on its own port)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.context.v1 import query_pb2 as q
from jetsource._gen.context.v1 import query_pb2_grpc as q_grpc
from jetsource.client import ContextClient, QueryClient, error_details
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.model import fold
from jetsource.domains.context.serialize import state_to_dict
from jetsource.domains.context.views import context_view
from jetsource.projection.bootstrap import open_projection
from jetsource.projection.host import ProjectorService
from jetsource.publisher.server import Publisher
from jetsource.publisher.server import build as build_publisher
from jetsource.publisher.settings import PublisherOptions, PublisherSettings
from jetsource.query.server import Query
from jetsource.query.server import build as build_query
from jetsource.query.settings import QueryOptions, QuerySettings
from jetsource.snapshotter.settings import SnapshotterOptions, SnapshotterSettings
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.e2e
Code = grpc.StatusCode
EVERY = 10


@dataclass
class Stack:
    publisher: Publisher
    query: Query
    commands: ContextClient
    reads: QueryClient
    publisher_settings: PublisherSettings
    tasks: list[asyncio.Task[None]]
    stop: asyncio.Event

    async def restart_publisher(self) -> None:
        await self.publisher.stop(1.0)
        await self.commands.close()
        self.publisher = await build_publisher(self.publisher_settings)
        self.commands = ContextClient(f"127.0.0.1:{self.publisher.port}", actor="tester")


@pytest.fixture
async def stack(settings: JetsourceSettings, unique: str) -> AsyncIterator[Stack]:
    base = projector_settings(settings, unique, snapshots={"every": EVERY})
    shared = {name: getattr(base, name) for name in JetsourceSettings.model_fields}
    publisher_settings = PublisherSettings(
        **shared, publisher=PublisherOptions(grpc_port=0, metrics_port=0)
    )
    publisher = await build_publisher(publisher_settings)
    stop = asyncio.Event()
    projector = ProjectorService(await open_projection(base))
    snap_settings = SnapshotterSettings(
        **shared,
        projector=base.projector,
        snapshotter=SnapshotterOptions(**{**base.projector.model_dump(), "models": ["snapshots"]}),
    )
    snapshotter = ProjectorService(await open_projection(snap_settings.runtime()))
    tasks = [asyncio.create_task(s.run(stop)) for s in (projector, snapshotter)]
    query = await build_query(
        QuerySettings(
            **shared,
            projector=base.projector,
            query=QueryOptions(grpc_port=0, metrics_port=0, watch_poll_s=0.5),
        )
    )
    s = Stack(
        publisher,
        query,
        ContextClient(f"127.0.0.1:{publisher.port}", actor="tester"),
        QueryClient(f"127.0.0.1:{query.port}", timeout=5.0),
        publisher_settings,
        tasks,
        stop,
    )
    yield s
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await s.commands.close()
    await s.reads.close()
    await s.query.stop(0)
    await s.publisher.stop(0)
    for service in (projector, snapshotter):
        for name in ("context", "timeline", "graph"):
            await service.projection.model(name, 1).drop()
        await service.projection.close()


async def write_story(c: ContextClient, cid: str, decisions: int) -> int:
    await c.create_context(cid, "A story", description="told in events", tags=["e2e"])
    last = None
    for n in range(decisions):
        last = await c.add_decision(cid, f"d{n}", f"decision {n}", rationale="why not")
        if n % 3 == 2:
            await c.add_subtask(cid, f"t{n}", f"subtask {n}", assignee="ana")
            last = await c.link_dependency(cid, f"t{n}", f"d{n}")
    assert last is not None
    return int(last.version)


def view_at(records: list[Any], version: int) -> q.ContextView:
    state = fold([r.event for r in records[:version]], context_id=records[0].aggregate_id)
    return context_view(state_to_dict(state))


async def test_a_story_through_all_four_services(stack: Stack) -> None:
    version = await write_story(stack.commands, "e2e-story", 24)
    records = await stack.publisher.store.read_aggregate("e2e-story")
    assert version == len(records) == 1 + 24 + 2 * 8

    # Read your write: the projector may still be working; min_version waits for it.
    now = await stack.reads.get_context("e2e-story", min_version=version)
    assert not now.behind and now.source == q.READ_SOURCE_READ_MODEL
    assert now.context == view_at(records, version)

    # Time travel: every version, and times at, between, before-after events.
    for v in range(1, version + 1):
        at = await stack.reads.at_version("e2e-story", v)
        assert at.context == view_at(records, v), v
        assert at.last_stream_sequence == records[v - 1].stream_seq
    for i, r in enumerate(records):
        for t, expected in ((r.recorded_at_ns, i + 1), (r.recorded_at_ns - 1, i)):
            if expected == 0 or (i and records[i - 1].recorded_at_ns == r.recorded_at_ns):
                continue
            at_time = await stack.reads.at_time("e2e-story", t)
            assert at_time.context == view_at(records, expected), (t, expected)
    # Snapshots arrive from the snapshotter; later reads start from them.
    for _ in range(200):
        late = await stack.reads.at_version("e2e-story", version)
        if late.snapshot_version == version - version % EVERY:
            break
        await asyncio.sleep(0.05)
    assert late.snapshot_version == version - version % EVERY
    assert late.events_folded == version % EVERY
    assert late.context == view_at(records, version)

    # History in pages: every event once, in order.
    seen, token = [], ""
    while True:
        page = await stack.reads.list_events("e2e-story", limit=7, page_token=token)
        seen += [e.version for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(range(1, version + 1))
    first = (await stack.reads.list_events("e2e-story", limit=1)).events[0]
    assert first.event.WhichOneof("event") == "context_created"
    assert first.event.context_created.title == "A story" and first.event_id

    listed = await stack.reads.list_contexts(status=q.CONTEXT_STATUS_OPEN)
    assert "e2e-story" in [c.context_id for c in listed.contexts]
    assert not (await stack.reads.list_contexts(status=q.CONTEXT_STATUS_CLOSED)).contexts

    graph = None
    for _ in range(200):
        with contextlib.suppress(grpc.aio.AioRpcError):
            graph = await stack.reads.graph("e2e-story", depth=1)
            if graph.version == version:
                break
        await asyncio.sleep(0.05)
    assert graph is not None and graph.version == version
    kinds = {n.id: n.kind for n in graph.nodes}
    assert kinds["e2e-story"] == q.GRAPH_NODE_KIND_STORY
    assert sum(k == q.GRAPH_NODE_KIND_DECISION for k in kinds.values()) == 24
    assert sum(k == q.GRAPH_NODE_KIND_SUBTASK for k in kinds.values()) == 8
    around = await stack.reads.graph("e2e-story", depth=1, root_id="t2")
    assert {n.id for n in around.nodes} == {"t2", "d2", "e2e-story"}
    assert ("DEPENDS_ON", "t2", "d2") in {(e.type, e.from_id, e.to_id) for e in around.edges}
    assert [n.id for n in (await stack.reads.graph("e2e-story", depth=0)).nodes] == ["e2e-story"]


async def test_bad_input_gets_a_clear_status_and_changes_nothing(stack: Stack) -> None:
    version = await write_story(stack.commands, "bad-input", 2)
    created = (await stack.reads.list_events("bad-input", limit=1)).events[0].recorded_at
    before = Timestamp(seconds=created.seconds - 3600)
    stub = q_grpc.ContextQueryServiceStub(stack.reads._channel)
    cases: list[tuple[str, Any, grpc.StatusCode, str]] = [
        ("GetContext", q.GetContextRequest(context_id="nobody"), Code.NOT_FOUND, "nobody"),
        ("GetContext", q.GetContextRequest(context_id="a.b"), Code.INVALID_ARGUMENT, "context_id"),
        ("GetContext", q.GetContextRequest(context_id=""), Code.INVALID_ARGUMENT, "context_id"),
        (
            "GetContext",
            q.GetContextRequest(context_id="bad-input", min_version=-1),
            Code.INVALID_ARGUMENT,
            "min_version",
        ),
        (
            "GetContextAtVersion",
            q.GetContextAtVersionRequest(context_id="bad-input", version=-3),
            Code.INVALID_ARGUMENT,
            "version",
        ),
        (
            "GetContextAtVersion",
            q.GetContextAtVersionRequest(context_id="bad-input", version=2**62),
            Code.INVALID_ARGUMENT,
            "version",
        ),
        (
            "GetContextAtVersion",
            q.GetContextAtVersionRequest(context_id="bad-input", version=version + 1),
            Code.OUT_OF_RANGE,
            f"at version {version}",
        ),
        (
            "GetContextAtVersion",
            q.GetContextAtVersionRequest(context_id="nobody", version=1),
            Code.NOT_FOUND,
            "nobody",
        ),
        (
            "GetContextAtTime",
            q.GetContextAtTimeRequest(context_id="bad-input", time=before),
            Code.NOT_FOUND,
            "did not exist yet",
        ),
        (
            "GetContextAtTime",
            q.GetContextAtTimeRequest(context_id="bad-input"),
            Code.INVALID_ARGUMENT,
            "time",
        ),
        (
            "ListEvents",
            q.ListEventsRequest(context_id="bad-input", limit=-1),
            Code.INVALID_ARGUMENT,
            "limit",
        ),
        (
            "ListEvents",
            q.ListEventsRequest(context_id="bad-input", limit=5000),
            Code.INVALID_ARGUMENT,
            "limit",
        ),
        (
            "ListEvents",
            q.ListEventsRequest(context_id="bad-input", from_version=-1),
            Code.INVALID_ARGUMENT,
            "from_version",
        ),
        (
            "ListEvents",
            q.ListEventsRequest(context_id="bad-input", page_token="junk!"),
            Code.INVALID_ARGUMENT,
            "page_token",
        ),
        ("ListEvents", q.ListEventsRequest(context_id="nobody"), Code.NOT_FOUND, "nobody"),
        ("ListContexts", q.ListContextsRequest(page_size=-5), Code.INVALID_ARGUMENT, "page_size"),
        ("ListContexts", q.ListContextsRequest(status=42), Code.INVALID_ARGUMENT, "status"),  # type: ignore[arg-type]
        (
            "GetDecisionGraph",
            q.GetDecisionGraphRequest(context_id="bad-input", depth=99),
            Code.INVALID_ARGUMENT,
            "depth",
        ),
        (
            "GetDecisionGraph",
            q.GetDecisionGraphRequest(context_id="nobody", depth=1),
            Code.NOT_FOUND,
            "nobody",
        ),
    ]
    for rpc, request, code, words in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await getattr(stub, rpc)(request, timeout=5)
        assert info.value.code() == code, (rpc, request, info.value.details())
        assert words in (info.value.details() or ""), (rpc, info.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        watch = stub.WatchContext(q.WatchContextRequest(context_id="nobody"))
        async for _ in watch:
            pass
    assert info.value.code() == Code.NOT_FOUND

    # Read-your-writes that cannot be met: behind (or FAILED_PRECONDITION when strict).
    ask = q.GetContextRequest(context_id="bad-input", min_version=version + 5)
    behind = await stub.GetContext(ask, timeout=0.5)
    assert behind.behind and behind.context.version == version
    ask.strict = True
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetContext(ask, timeout=0.5)
    assert info.value.code() == Code.FAILED_PRECONDITION
    assert f"min_version {version + 5}" in (info.value.details() or "")
    assert await stack.publisher.store.last_version("bad-input") == version


async def test_watch_delivers_each_event_once_across_restart_and_reconnect(
    stack: Stack,
) -> None:
    await stack.commands.create_context("watched", "Watched")
    got: list[q.WatchContextResponse] = []

    async def follow(from_version: int, until: int) -> None:
        call = stack.reads.watch("watched", from_version=from_version)
        async for change in call:
            got.append(change)
            if change.event.version >= until:
                call.cancel()
                return

    first = asyncio.create_task(follow(1, 6))
    for n in range(3):
        await stack.commands.add_decision("watched", f"a{n}", f"before restart {n}")
    await stack.restart_publisher()
    for n in range(2):
        await stack.commands.add_decision("watched", f"b{n}", f"after restart {n}")
    await asyncio.wait_for(first, 10)
    # The client went away at version 6; it comes back asking for what follows.
    second = asyncio.create_task(follow(got[-1].event.version + 1, 10))
    for n in range(4):
        await stack.commands.add_decision("watched", f"c{n}", f"after reconnect {n}")
    await asyncio.wait_for(second, 10)

    records = await stack.publisher.store.read_aggregate("watched")
    assert [c.event.version for c in got] == list(range(1, 11))
    assert [c.event.event_id for c in got] == [r.event_id for r in records]
    for change in got:
        assert change.state == view_at(records, change.event.version)


BIG = "😀" * 10_000  # the longest body there is in characters: 40,000 bytes
CAP = 2 * 1024 * 1024  # publisher.max_context_bytes's default
LIMIT = 4 * 1024 * 1024  # gRPC's message limit


async def test_a_story_grown_to_the_cap_is_refused_and_stays_readable_everywhere(
    stack: Stack,
) -> None:
    """The probe's story: AddDecision(body=10,000 emoji) again and again. The publisher
    refuses the command that would pass the cap (FAILED_PRECONDITION, not the
    RESOURCE_EXHAUSTED a client retries), and everything of the story answers within
    the message limit: the state, time travel at the cap, history (pages end by
    bytes), a watch from version 1."""
    cid = "at-the-cap"
    await stack.commands.create_context(cid, "Big")
    added = 0
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        for added in range(100):
            await stack.commands.add_decision(cid, f"d{added}", "t", body=BIG)
    assert refused.value.code() == Code.FAILED_PRECONDITION, refused.value.details()
    assert f"past the cap of {CAP:,} bytes" in (refused.value.details() or "")
    details = error_details(refused.value)
    assert details.reason == "CONTEXT_TOO_LARGE"
    assert details.metadata["max_context_bytes"] == str(CAP)
    version = 1 + added  # the decision numbered ``added`` was refused
    assert added == 52 and await stack.publisher.store.last_version(cid) == version

    now = await stack.reads.get_context(cid, min_version=version)
    assert CAP - 50_000 < now.context.ByteSize() <= CAP and now.context.version == version
    assert (await stack.reads.at_version(cid, version)).context == now.context
    assert (await stack.reads.at_time(cid, time.time_ns())).context == now.context

    page = await stack.reads.list_events(cid, limit=1000)
    assert [e.version for e in page.events] == list(range(1, version + 1))
    assert page.ByteSize() <= CAP and not page.next_page_token

    watched: list[int] = []
    call = stack.reads.watch(cid, from_version=1)
    async for change in call:
        watched.append(change.event.version)
        if change.event.version == version:
            assert change.state == now.context
            call.cancel()
            break
    assert watched == list(range(1, version + 1))


async def test_a_story_written_past_the_limit_before_the_cap_says_so_clearly(
    stack: Stack,
) -> None:
    """A story that grew past the message limit before the publisher capped stories:
    what cannot be sent is FAILED_PRECONDITION naming its size and what to read
    instead; its history, and its state at earlier versions, still answer."""
    cid = "past-the-limit"
    events = [NewEvent(ev.ContextCreated(title="old"))] + [
        NewEvent(ev.DecisionAdded(decision_id=f"d{i}", title="t", body=BIG)) for i in range(115)
    ]
    for i in range(0, len(events), 20):
        await stack.publisher.store.append(cid, events[i : i + 20], i)
    stub = q_grpc.ContextQueryServiceStub(stack.reads._channel)
    for rpc, request in (
        ("GetContext", q.GetContextRequest(context_id=cid, min_version=116)),
        ("GetContextAtVersion", q.GetContextAtVersionRequest(context_id=cid, version=116)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(stub, rpc)(request, timeout=5)
        assert err.value.code() == Code.FAILED_PRECONDITION, (rpc, err.value.details())
        assert f"past the {LIMIT:,}-byte message limit" in (err.value.details() or "")
        assert error_details(err.value).reason == "CONTEXT_TOO_LARGE"
    assert (await stack.reads.at_version(cid, 100)).context.version == 100

    # History: pages end before 2 MiB of events (the default page budget), each with
    # the token of the next.
    seen: list[int] = []
    token, pages = "", 0
    while True:
        page = await stack.reads.list_events(cid, limit=1000, page_token=token)
        assert page.ByteSize() <= CAP
        seen += [e.version for e in page.events]
        token, pages = page.next_page_token, pages + 1
        if not token:
            break
    assert seen == list(range(1, 117)) and pages == 3

    watched: list[int] = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for change in stack.reads.watch(cid, from_version=100):
            watched.append(change.event.version)
    assert err.value.code() == Code.FAILED_PRECONDITION
    assert error_details(err.value).reason == "CONTEXT_TOO_LARGE"
    assert watched == list(range(100, watched[-1] + 1)) and watched[-1] < 116


async def test_a_watch_from_a_version_not_reached_yet_starts_there(stack: Stack) -> None:
    await stack.commands.create_context("ahead", "Ahead")
    await stack.commands.add_decision("ahead", "d0", "first")  # version 2
    got: list[int] = []

    async def follow() -> None:
        call = stack.reads.watch("ahead", from_version=10)
        async for change in call:
            got.append(change.event.version)
            assert change.state.version == change.event.version
            if change.event.version == 11:
                call.cancel()
                return

    watching = asyncio.create_task(follow())
    await asyncio.sleep(0.2)  # the watch is waiting past version 2
    for n in range(1, 10):
        await stack.commands.add_decision("ahead", f"d{n}", f"decision {n}")  # 3 .. 11
    await asyncio.wait_for(watching, 10)
    assert got == [10, 11]


async def test_min_version_of_a_story_that_does_not_exist_is_not_found_at_once(
    stack: Stack,
) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.reads.get_context("nowhere-at-all", min_version=1)  # deadline 5 s
    assert err.value.code() == Code.NOT_FOUND
    assert time.monotonic() - started < 1.0
