"""A subtree WatchProcess and a process that joins the subtree below the watch's
position: a child recorded before its parent (C, naming D) has its history when D
arrives under the watched root. The watch read the subtree by a global-sequence cursor
and so never sent C's events recorded before that cursor (GetProcessTimeline of the
subtree had them); it now sends them once, when C is seen to join, in global order
among themselves, whether or not C records anything after."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
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
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import process_query_settings

pytestmark = pytest.mark.integration


async def append(p: Projection, pid: str, event_type: str, parent: str = "") -> None:
    body = ProcessEventBody(data=struct_pb2.Struct())
    news = [NewEvent(body, event_type=event_type, parent_aggregate_id=parent)]
    await p.domain_store("process").append(pid, news, ANY)


@contextlib.asynccontextmanager
async def projecting(p: Projection) -> AsyncIterator[None]:
    """The registry and the timeline applied as events come (a projector's workers)."""
    workers = []
    for name in (PROCESSES, TIMELINE):
        await p.control.ensure(name, 1)
        workers.append(
            Worker(p.nc, p.store_for(name), p.model(name, 1), p.dead_letters, p.settings.projector)
        )
    tasks = [asyncio.ensure_future(w.run()) for w in workers]
    try:
        yield
    finally:
        for w in workers:
            w.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


class Watch:
    """A WatchProcess call read in the background: (global seq, process, type)."""

    def __init__(self, reads: q_grpc.ProcessQueryServiceStub, pid: str) -> None:
        self.call = reads.WatchProcess(q.WatchProcessRequest(process_id=pid, subtree=True))
        self.got: list[tuple[int, str, str]] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for reply in self.call:
            e = reply.event
            self.got.append((e.global_seq, e.event.process_id, e.event.event_type))

    async def until(self, n: int) -> list[tuple[int, str, str]]:
        for _ in range(200):
            if len(self.got) >= n or self.task.done():
                break
            await asyncio.sleep(0.05)
        if self.task.done():
            self.task.result()
        await asyncio.sleep(0.3)  # and nothing more (no event twice)
        return list(self.got)


async def exists(reads: q_grpc.ProcessQueryServiceStub, pid: str) -> bool:
    try:
        await reads.GetProcess(q.GetProcessRequest(process_id=pid), timeout=10)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return False
    return True


async def timeline(reads: q_grpc.ProcessQueryServiceStub, pid: str) -> list[Any]:
    answer = await reads.GetProcessTimeline(
        q.GetProcessTimelineRequest(process_id=pid, subtree=True, page_size=1000), timeout=10
    )
    return [(e.global_seq, e.event.process_id, e.event.event_type) for e in answer.events]


@pytest.mark.parametrize("watched", ["root", "child"], ids=["a-root", "a-child-of-a-root"])
async def test_a_process_that_joins_below_the_cursor_is_sent_once(
    ledger: Projection, watched: str
) -> None:
    """root R (and, watched in the second case, its child A); C names D, which is not
    recorded yet, and records twice; the watched process records, so the watch's
    cursor passes C's events; then D arrives with the watched process as its parent."""
    p = ledger
    top = "R" if watched == "root" else "A"
    await append(p, "R", "process_started")
    if top == "A":
        await append(p, "A", "process_started", parent="R")
    query = await build(process_query_settings(p.settings, watch_poll_s=0.2))
    try:
        async with (
            projecting(p),
            grpc.aio.insecure_channel(f"127.0.0.1:{query.port}") as channel,
        ):
            reads = q_grpc.ProcessQueryServiceStub(channel)
            for _ in range(200):  # the registry has it (the watch asks)
                if await exists(reads, top):
                    break
                await asyncio.sleep(0.05)
            watch = Watch(reads, top)
            assert [t for _, _, t in await watch.until(1)] == ["process_started"]

            await append(p, "C", "process_started", parent="D")
            await append(p, "C", "c_step")
            await append(p, "C", "c_step")
            await append(p, top, "top_step")
            assert [(w, t) for _, w, t in await watch.until(2)][1:] == [(top, "top_step")]

            await append(p, "D", "process_started", parent=top)
            got = await watch.until(6)
            joined = got[2:]
            # C's three events, sent once, in global order among themselves, and D's.
            assert sorted(joined) == sorted(e for e in await timeline(reads, top) if e[1] in "CD")
            c = [e for e in joined if e[1] == "C"]
            assert [t for _, _, t in c] == ["process_started", "c_step", "c_step"]
            assert [g for g, _, _ in c] == sorted(g for g, _, _ in c)

            await append(p, "C", "c_after")
            await append(p, "D", "d_step")
            got = await watch.until(8)
            assert [t for _, _, t in got[6:]] == ["c_after", "d_step"]
            # Every event of the subtree once: what the timeline holds now.
            assert sorted(got) == await timeline(reads, top)
            watch.call.cancel()
    finally:
        await query.stop(0)
