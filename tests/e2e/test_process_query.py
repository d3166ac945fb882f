"""Observer -> projector (the process models) -> ProcessQueryService, over gRPC only
(real NATS, Valkey and graph store; every service in this process on its own port).

A small tree is recorded through the observer (a grandchild before its parent); the
query service answers the registry, the tree, timelines (a process, a subtree,
filtered, paged, as known at a recorded time and as of an occurred time), events
across processes, a watch that continues live, and refuses bad requests with
INVALID_ARGUMENT naming the field, unknown processes with NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from jetsource._gen.process.v1 import events_pb2 as ev
from jetsource._gen.process.v1 import observer_pb2 as ob
from jetsource._gen.process.v1 import observer_pb2_grpc as ob_grpc
from jetsource._gen.process.v1 import query_pb2 as q
from jetsource._gen.process.v1 import query_pb2_grpc as q_grpc
from jetsource.core.settings import JetsourceSettings
from jetsource.observer.server import Observer
from jetsource.observer.server import build as build_observer
from jetsource.observer.settings import ObserverOptions, ObserverSettings
from jetsource.processquery.server import ProcessQuery
from jetsource.processquery.server import build as build_query
from jetsource.processquery.service import WATCHES
from jetsource.processquery.settings import ProcessQueryOptions, ProcessQuerySettings
from jetsource.projection.bootstrap import open_projection
from jetsource.projection.host import ProjectorService
from tests.integration.process_read.ledger import forget_consumers
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.e2e
Code = grpc.StatusCode
MODELS = ["processes", "process_timeline", "process_graph"]
T0 = 1_800_000_000  # occurred times of the test's events, seconds


@dataclass
class Stack:
    observer: Observer
    query: ProcessQuery
    record: ob_grpc.ObserverServiceStub
    reads: q_grpc.ProcessQueryServiceStub
    channels: list[grpc.aio.Channel]


@pytest.fixture
async def stack(settings: JetsourceSettings, unique: str) -> AsyncIterator[Stack]:
    base = projector_settings(settings, unique, models=MODELS)
    shared = {name: getattr(base, name) for name in JetsourceSettings.model_fields}
    observer = await build_observer(
        ObserverSettings(
            **shared,
            observer=ObserverOptions(grpc_port=0, metrics_port=0, claims_bucket=f"CL_{unique}"),
        )
    )
    stop = asyncio.Event()
    projection = await open_projection(base)
    await forget_consumers(projection.nc, "PROCESS_EVENTS")
    projector = ProjectorService(projection)
    task = asyncio.create_task(projector.run(stop))
    query = await build_query(
        ProcessQuerySettings(
            **shared,
            projector=base.projector,
            process_query=ProcessQueryOptions(grpc_port=0, metrics_port=0, watch_poll_s=0.5),
        )
    )
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{observer.port}"),
        grpc.aio.insecure_channel(f"127.0.0.1:{query.port}"),
    ]
    yield Stack(
        observer,
        query,
        ob_grpc.ObserverServiceStub(channels[0]),
        q_grpc.ProcessQueryServiceStub(channels[1]),
        channels,
    )
    for c in channels:
        await c.close()
    await query.stop(0)
    stop.set()
    await task
    await forget_consumers(observer.nc, "PROCESS_EVENTS")
    await observer.stop(0)


def event(
    pid: str, event_type: str, at: int, parent: str = "", cause: str = "", **data: Any
) -> ev.CanonicalEvent:
    e = ev.CanonicalEvent(
        process_id=pid,
        parent_process_id=parent,
        event_type=event_type,
        source="e2e",
        causation_id=cause,
        occurred_at=Timestamp(seconds=T0 + at),
    )
    body = Struct()
    body.update(data)
    e.data.CopyFrom(body)
    return e


async def visible(reads: q_grpc.ProcessQueryServiceStub, pid: str, count: int) -> None:
    started = time.monotonic()
    while True:
        try:
            got = await reads.GetProcess(q.GetProcessRequest(process_id=pid), timeout=5)
            if got.process.event_count >= count:
                return
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == Code.NOT_FOUND
        assert time.monotonic() - started < 30, f"{pid} not visible with {count} events"
        await asyncio.sleep(0.05)


async def refused(call: Any, request: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        result = call(request, timeout=5)
        if hasattr(result, "__aiter__"):
            async for _ in result:
                pass
        else:
            await result
    return info.value


async def test_the_ledger_read_side_over_grpc(stack: Stack, unique: str) -> None:
    root, child, grand = f"r{unique}", f"c{unique}", f"g{unique}"
    # The grandchild first: its parent is recorded later.
    first = await stack.record.RecordBatch(
        ob.RecordBatchRequest(
            events=[
                event(grand, "process_started", 5, parent=child, kind="tool", name="grep"),
                event(grand, "tool_called", 6, tool="grep"),
            ]
        ),
        timeout=10,
    )
    cause = first.positions[1].event_id
    await stack.record.RecordBatch(
        ob.RecordBatchRequest(
            events=[
                event(root, "process_started", 0, kind="pipeline", name="generate"),
                event(child, "process_started", 1, parent=root, kind="agent", name="planner"),
                event(child, "step_done", 7, cause=cause, step=1),
                event(grand, "process_failed", 8, error="no match"),
                event(child, "process_completed", 9),
            ]
        ),
        timeout=10,
    )
    await visible(stack.reads, child, 3)
    await visible(stack.reads, grand, 3)
    reads = stack.reads

    # The registry: the grandchild was linked when its parent appeared.
    g = (await reads.GetProcess(q.GetProcessRequest(process_id=grand), timeout=5)).process
    assert (g.root_process_id, g.depth, g.parent_process_id) == (root, 2, child)
    assert (g.kind, g.name, g.status, g.parent_pending) == (
        "tool",
        "grep",
        q.PROCESS_STATUS_FAILED,
        False,
    )
    assert g.error.string_value == "no match" and g.ended_at.seconds == T0 + 8
    r = (await reads.GetProcess(q.GetProcessRequest(process_id=root), timeout=5)).process
    assert (r.status, list(r.children), r.depth) == (q.PROCESS_STATUS_RUNNING, [child], 0)

    # Listing: by root, newest first, paged one at a time with no repeats.
    seen: list[str] = []
    token = ""
    while True:
        page = await reads.ListProcesses(
            q.ListProcessesRequest(root_process_id=root, page_size=1, page_token=token), timeout=5
        )
        seen += [p.process_id for p in page.processes]
        token = page.next_page_token
        if not token:
            break
    # Newest first by first appearance (the first global_seq of each process).
    firsts = {}
    for pid in (root, child, grand):
        tl = await reads.GetProcessTimeline(q.GetProcessTimelineRequest(process_id=pid), timeout=5)
        firsts[pid] = tl.events[0].global_seq
    assert seen == sorted(firsts, key=firsts.__getitem__, reverse=True)
    assert seen[-1] == grand  # recorded before its parent and the root
    failed = await reads.ListProcesses(
        q.ListProcessesRequest(statuses=[q.PROCESS_STATUS_FAILED], root_process_id=root),
        timeout=5,
    )
    assert [p.process_id for p in failed.processes] == [grand]
    # A start window alone: the start-time index, newest started first, paged.
    window = q.TimeWindow(**{"from": Timestamp(seconds=T0 + 1), "to": Timestamp(seconds=T0 + 6)})
    started: list[str] = []
    token = ""
    while True:
        page = await reads.ListProcesses(
            q.ListProcessesRequest(started=window, page_size=1, page_token=token), timeout=5
        )
        started += [p.process_id for p in page.processes]
        token = page.next_page_token
        if not token:
            break
    mine = [pid for pid in started if pid in (root, child, grand)]
    assert mine == [grand, child] and len(started) == len(set(started))
    kids = await reads.ListProcesses(q.ListProcessesRequest(parent_process_id=child), timeout=5)
    assert [p.process_id for p in kids.processes] == [grand]

    # The tree, whole and cut at depth 1.
    tree = await reads.GetProcessTree(q.GetProcessTreeRequest(process_id=root), timeout=5)
    assert tree.root.children[0].children[0].process.process_id == grand and not tree.truncated
    cut = await reads.GetProcessTree(
        q.GetProcessTreeRequest(process_id=root, max_depth=1), timeout=5
    )
    assert cut.truncated and not cut.root.children[0].children

    # Timelines: a process in process_seq order; the subtree in global order, paged.
    own = await reads.GetProcessTimeline(q.GetProcessTimelineRequest(process_id=grand), timeout=5)
    assert [e.process_seq for e in own.events] == [1, 2, 3]
    assert [e.event.event_type for e in own.events] == [
        "process_started",
        "tool_called",
        "process_failed",
    ]
    whole: list[ev.StoredEvent] = []
    token = ""
    while True:
        page = await reads.GetProcessTimeline(
            q.GetProcessTimelineRequest(
                process_id=root, subtree=True, page_size=2, page_token=token
            ),
            timeout=5,
        )
        whole += page.events
        token = page.next_page_token
        if not token:
            break
    seqs = [e.global_seq for e in whole]
    assert len(whole) == 7 and seqs == sorted(seqs)
    sub = await reads.GetProcessTimeline(
        q.GetProcessTimelineRequest(process_id=child, subtree=True), timeout=5
    )
    assert {e.event.process_id for e in sub.events} == {child, grand} and len(sub.events) == 6
    typed = await reads.GetProcessTimeline(
        q.GetProcessTimelineRequest(process_id=root, subtree=True, event_types=["process_started"]),
        timeout=5,
    )
    assert len(typed.events) == 3
    # As of occurred time T0+6: what had happened by then (the last events had not).
    as_of = await reads.GetProcessTimeline(
        q.GetProcessTimelineRequest(process_id=root, subtree=True, as_of=Timestamp(seconds=T0 + 6)),
        timeout=5,
    )
    assert {e.event.event_type for e in as_of.events} == {"process_started", "tool_called"}
    # As known at the grandchild's second record time: only the first batch.
    known = await reads.GetProcessTimeline(
        q.GetProcessTimelineRequest(process_id=grand, known_at=own.events[1].recorded_at),
        timeout=5,
    )
    assert [e.process_seq for e in known.events] == [1, 2]

    # Across processes, by global_seq range.
    low = min(seqs)
    listed = await reads.ListEvents(
        q.ListEventsRequest(from_global_seq=low, to_global_seq=low + 1), timeout=5
    )
    assert [e.global_seq for e in listed.events] == [low, low + 1]

    # Watch: what is there after a position, then live.
    watch = reads.WatchProcess(
        q.WatchProcessRequest(process_id=root, subtree=True, after_global_seq=seqs[-2]), timeout=30
    )
    stream = watch.__aiter__()
    assert (await stream.__anext__()).event.global_seq == seqs[-1]
    await stack.record.Record(
        ob.RecordRequest(event=event(root, "process_completed", 10)), timeout=5
    )
    live = await asyncio.wait_for(stream.__anext__(), 10)
    assert (live.event.event.process_id, live.event.event.event_type) == (root, "process_completed")
    watch.cancel()

    # Refusals name the field; nothing unknown is made up.
    bad = [
        (reads.GetProcess, q.GetProcessRequest(process_id="a.b"), "process_id"),
        (reads.GetProcess, q.GetProcessRequest(), "process_id"),
        (reads.ListProcesses, q.ListProcessesRequest(statuses=[9]), "statuses[0]"),  # type: ignore[list-item]
        (reads.ListProcesses, q.ListProcessesRequest(page_size=100_000), "page_size"),
        (reads.ListProcesses, q.ListProcessesRequest(page_token="junk"), "page_token"),
        (reads.ListProcesses, q.ListProcessesRequest(root_process_id="a b"), "root_process_id"),
        (
            reads.GetProcessTimeline,
            q.GetProcessTimelineRequest(process_id=root, event_types=["no-dash"]),
            "event_types[0]",
        ),
        (
            reads.GetProcessTimeline,
            q.GetProcessTimelineRequest(process_id=root, known_at=Timestamp(nanos=-1)),
            "known_at",
        ),
        (
            reads.GetProcessTimeline,
            q.GetProcessTimelineRequest(
                process_id=root,
                occurred=q.TimeWindow(**{"from": Timestamp(seconds=5), "to": Timestamp(seconds=1)}),
            ),
            "occurred",
        ),
        (
            reads.GetProcessTimeline,
            q.GetProcessTimelineRequest(process_id=root, page_token=token or "x" * 40),
            "page_token",
        ),
        (
            reads.ListEvents,
            q.ListEventsRequest(from_global_seq=9, to_global_seq=3),
            "to_global_seq",
        ),
        (reads.WatchProcess, q.WatchProcessRequest(process_id="*"), "process_id"),
    ]
    for call, request, field in bad:
        error = await refused(call, request)
        assert error.code() == Code.INVALID_ARGUMENT, (field, error)
        assert field in (error.details() or ""), (field, error.details())
    # A token of one request is refused for another.
    page = await reads.ListProcesses(
        q.ListProcessesRequest(root_process_id=root, page_size=1), timeout=5
    )
    error = await refused(
        reads.ListProcesses, q.ListProcessesRequest(kind="agent", page_token=page.next_page_token)
    )
    assert error.code() == Code.INVALID_ARGUMENT and "page_token" in (error.details() or "")
    for call, request in (
        (reads.GetProcess, q.GetProcessRequest(process_id=f"nope{unique}")),
        (reads.GetProcessTree, q.GetProcessTreeRequest(process_id=f"nope{unique}")),
        (reads.GetProcessTimeline, q.GetProcessTimelineRequest(process_id=f"nope{unique}")),
        (reads.WatchProcess, q.WatchProcessRequest(process_id=f"nope{unique}")),
    ):
        assert (await refused(call, request)).code() == Code.NOT_FOUND


# -- the command line ---------------------------------------------------------------------


async def cli(stack: Stack, *args: str) -> tuple[int, str, str]:
    """``jetsource ARGS`` as a user runs it (a subprocess: this loop keeps serving)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    env["JETSOURCE_CLIENT__PROCESS_QUERY"] = f"127.0.0.1:{stack.query.port}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jetsource",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


async def test_jetsource_process_commands(stack: Stack, unique: str) -> None:
    root, child = f"r{unique}", f"c{unique}"
    await stack.record.RecordBatch(
        ob.RecordBatchRequest(
            events=[
                event(root, "process_started", 0, kind="pipeline", name="generate"),
                event(child, "process_started", 1, parent=root, kind="agent", name="planner"),
                event(child, "level_started", 2, level=1),
                event(child, "process_completed", 3),
            ]
        ),
        timeout=10,
    )
    await visible(stack.reads, child, 3)

    code, stdout, _ = await cli(stack, "process", "list", "--root", root, "-o", "json")
    assert code == 0
    listed = json.loads(stdout)
    assert sorted(p["process_id"] for p in listed["processes"]) == sorted([child, root])
    assert {p["process_id"]: p["status"] for p in listed["processes"]}[child] == "completed"

    code, stdout, _ = await cli(stack, "process", "show", child, "-o", "json")
    shown = json.loads(stdout)
    assert (code, shown["parent_process_id"], shown["depth"], shown["event_count"]) == (
        0,
        root,
        1,
        3,
    )

    code, stdout, _ = await cli(stack, "process", "tree", root, "-o", "json")
    tree = json.loads(stdout)
    assert tree["root"]["children"][0]["process_id"] == child and not tree["truncated"]
    code, stdout, _ = await cli(stack, "process", "tree", root)
    assert code == 0 and f"  {child} [agent] planner: completed" in stdout

    code, stdout, _ = await cli(
        stack, "process", "timeline", root, "--subtree", "--all", "--page-size", "1", "-o", "json"
    )
    events = json.loads(stdout)["events"]
    # The subtree in global order (the observer orders each process, not the batch).
    assert [e["global_seq"] for e in events] == sorted(e["global_seq"] for e in events)
    assert [e["event"]["event_type"] for e in events if e["event"]["process_id"] == child] == [
        "process_started",
        "level_started",
        "process_completed",
    ]
    assert [e["event"]["process_id"] for e in events].count(root) == 1
    level = [e for e in events if e["event"]["event_type"] == "level_started"]
    assert level[0]["event"]["data"] == {"level": 1}
    # printed as the integer it was sent as (a Struct holds doubles: it printed 1.0)
    assert type(level[0]["event"]["data"]["level"]) is int
    code, stdout, _ = await cli(
        stack, "process", "timeline", child, "--type", "level_started", "-o", "json"
    )
    assert [e["process_seq"] for e in json.loads(stdout)["events"]] == [2]

    code, stdout, _ = await cli(
        stack, "process", "watch", root, "--subtree", "--timeout", "3", "-o", "json"
    )
    assert code == 0
    assert len([json.loads(x) for x in stdout.splitlines()]) == 4

    code, _, stderr = await cli(stack, "process", "show", "a.b", "-o", "json")
    error = json.loads(stderr)["error"]
    assert (code, error["code"]) == (1, "INVALID_ARGUMENT") and "process_id" in error["message"]
    code, _, stderr = await cli(stack, "process", "show", f"nope{unique}", "-o", "json")
    assert (code, json.loads(stderr)["error"]["code"]) == (1, "NOT_FOUND")
    code, _, _ = await cli(stack, "process", "list", "--status", "bogus")
    assert code == 2


def open_watches() -> float:
    return float(WATCHES._value.get())


async def wait_watches(n: float, what: str) -> float:
    started = time.monotonic()
    while open_watches() != n:
        assert time.monotonic() - started < 5, f"{what}: {open_watches()} watches still open"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_watches_end_when_the_client_goes_and_when_the_server_stops(
    stack: Stack, unique: str
) -> None:
    """A watch's handler ends within a poll when its client cancels or its deadline
    passes, and a watch open when the query service stops ends with UNAVAILABLE (so the
    client reconnects elsewhere): none keeps polling after its client or its server is
    gone."""
    root = f"w{unique}"
    await stack.record.Record(ob.RecordRequest(event=event(root, "process_started", 0)), timeout=5)
    await visible(stack.reads, root, 1)
    base = open_watches()

    async def opened(timeout: float) -> Any:
        watch = stack.reads.WatchProcess(q.WatchProcessRequest(process_id=root), timeout=timeout)
        stream = watch.__aiter__()
        assert (await asyncio.wait_for(stream.__anext__(), 10)).event.event.process_id == root
        return watch, stream

    watch, _ = await opened(30)
    assert open_watches() == base + 1
    watch.cancel()
    await wait_watches(base, "after the client cancelled")

    _, stream = await opened(1.0)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(stream.__anext__(), 10)
    assert info.value.code() == Code.DEADLINE_EXCEEDED
    await wait_watches(base, "after the deadline")

    _, stream = await opened(30)
    await stack.query.stop(1.0)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(stream.__anext__(), 10)
    assert info.value.code() == Code.UNAVAILABLE
    await wait_watches(base, "after the server stopped")


async def test_a_read_with_min_process_seq_sees_what_the_observer_just_recorded(
    stack: Stack, unique: str
) -> None:
    """Read your writes through the real observer, projector and query service: each
    event is read back at once with the process_seq the observer answered, and every
    read shows it (never NOT_FOUND, never an older state); the CLI's --min-seq too."""
    reads = stack.reads
    for i in range(20):
        pid = f"ryw{i}{unique}"
        started = await stack.record.Record(
            ob.RecordRequest(event=event(pid, "process_started", i, kind="agent")), timeout=10
        )
        at = started.position.process_seq
        shown = await reads.GetProcess(
            q.GetProcessRequest(process_id=pid, min_process_seq=at), timeout=10
        )
        assert shown.process.last_process_seq >= at
        ended = await stack.record.Record(
            ob.RecordRequest(event=event(pid, "process_completed", i + 1)), timeout=10
        )
        at = ended.position.process_seq
        timeline, shown = await asyncio.gather(
            reads.GetProcessTimeline(
                q.GetProcessTimelineRequest(process_id=pid, min_process_seq=at), timeout=10
            ),
            reads.GetProcess(q.GetProcessRequest(process_id=pid, min_process_seq=at), timeout=10),
        )
        assert [e.event.event_type for e in timeline.events] == [
            "process_started",
            "process_completed",
        ]
        assert shown.process.status == q.PROCESS_STATUS_COMPLETED

    pid = f"rywcli{unique}"
    got = await stack.record.Record(
        ob.RecordRequest(event=event(pid, "process_started", 0, kind="tool")), timeout=10
    )
    seq = str(got.position.process_seq)
    code, stdout, _ = await cli(stack, "process", "show", pid, "--min-seq", seq, "-o", "json")
    assert (code, json.loads(stdout)["last_process_seq"]) == (0, 1)
    code, stdout, _ = await cli(stack, "process", "timeline", pid, "--min-seq", seq, "-o", "json")
    assert code == 0 and len(json.loads(stdout)["events"]) == 1
    code, _, stderr = await cli(
        stack, "process", "show", pid, "--min-seq", "5", "--timeout", "1", "-o", "json"
    )
    error = json.loads(stderr)["error"]
    assert (code, error["code"]) == (1, "FAILED_PRECONDITION")
    assert "min_process_seq 5 not reached" in error["message"]


async def test_every_kind_the_observer_records_can_be_listed(stack: Stack, unique: str) -> None:
    """The observer and ListProcesses agree on what a kind is (at most 128 characters,
    no control characters): a kind ListProcesses refuses is refused when recorded, so
    no process is recorded that can never be listed by its kind."""
    longest = "k" * 127 + unique[-1]
    pid = f"kind-{unique}"
    await stack.record.Record(
        ob.RecordRequest(event=event(pid, "process_started", 0, kind=longest)), timeout=5
    )
    for kind in ("k" * 129, "a\x85b", "a\u2028b"):
        bad = event(f"kind-bad-{unique}", "process_started", 0, kind=kind)
        error = await refused(stack.record.Record, ob.RecordRequest(event=bad))
        assert error.code() == Code.INVALID_ARGUMENT and "event.data.kind" in (
            error.details() or ""
        )
        error = await refused(stack.reads.ListProcesses, q.ListProcessesRequest(kind=kind))
        assert error.code() == Code.INVALID_ARGUMENT and "kind" in (error.details() or "")
    await visible(stack.reads, pid, 1)
    listed = await stack.reads.ListProcesses(q.ListProcessesRequest(kind=longest), timeout=5)
    assert [p.process_id for p in listed.processes] == [pid]
