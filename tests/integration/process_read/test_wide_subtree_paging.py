"""Paging through the subtree of a process that is not a root, with many processes
below it: each page asked every process of the subtree for a page's worth of
sequences and merged them (3,000 children, 9,000 events, 91 pages: 14.5 s against
0.3 s for the root's whole tree; quadratic in the subtree's width). A wide subtree's
merged sequences are now kept while its root's tree is unchanged (``KeptSubtrees``):
one merge for all the pages, each page one stamp check and a slice. The pages are the
same (every event once, in global order); an event recorded between two pages is on
a later page; a filter pages the same way."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import struct_pb2

from jetsource._gen.process.v1 import query_pb2 as q
from jetsource._gen.process.v1 import query_pb2_grpc as q_grpc
from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.envelope import ANY, NewEvent
from jetsource.domains.process.models import PROCESSES, TIMELINE
from jetsource.domains.process.models.timeline import ProcessTimelineModel
from jetsource.processquery.server import build
from jetsource.projection.bootstrap import Projection
from tests.integration.process_read.ledger import apply_model
from tests.projector_fixtures import process_query_settings

pytestmark = pytest.mark.integration

KIDS = 100  # wider than KeptSubtrees.WIDE


def event(typ: str, parent: str = "") -> NewEvent:
    body = ProcessEventBody(data=struct_pb2.Struct())
    body.data.update({"kind": "job"})
    return NewEvent(body, event_type=typ, parent_aggregate_id=parent)


async def test_a_wide_subtree_pages_from_one_merge(
    ledger: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = ledger
    store = p.domain_store("process")
    await store.append("root", [event("process_started")], ANY)
    await store.append("mid", [event("process_started", "root"), event("step")], ANY)
    await store.append("aside", [event("process_started", "root"), event("step")], ANY)
    gate = asyncio.Semaphore(32)

    async def kid(i: int) -> None:
        async with gate:
            await store.append(
                f"k{i}", [event("process_started", "mid"), event("step"), event("step")], ANY
            )

    await asyncio.gather(*(kid(i) for i in range(KIDS)))
    await apply_model(p, PROCESSES)
    await apply_model(p, TIMELINE)

    merges = {"all": 0, "per_page": 0}
    merged_all, merged_seqs = ProcessTimelineModel.merged_all, ProcessTimelineModel.merged_seqs

    async def counted_all(self: ProcessTimelineModel, keys: list[str]) -> list[int]:
        merges["all"] += 1
        return await merged_all(self, keys)

    async def counted_seqs(self: ProcessTimelineModel, *args: object) -> list[int]:
        merges["per_page"] += 1
        return await merged_seqs(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ProcessTimelineModel, "merged_all", counted_all)
    monkeypatch.setattr(ProcessTimelineModel, "merged_seqs", counted_seqs)

    svc = await build(process_query_settings(p.settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as ch:
            s = q_grpc.ProcessQueryServiceStub(ch)

            async def pages(
                pid: str, size: int, types: tuple[str, ...] = (), late: bool = False
            ) -> list[tuple[int, str, str]]:
                got: list[tuple[int, str, str]] = []
                token, first = "", True
                while first or token:
                    r = await s.GetProcessTimeline(
                        q.GetProcessTimelineRequest(
                            process_id=pid,
                            subtree=True,
                            page_size=size,
                            page_token=token,
                            event_types=list(types),
                        ),
                        timeout=30,
                    )
                    got += [
                        (e.global_seq, e.event.process_id, e.event.event_type) for e in r.events
                    ]
                    token = r.next_page_token
                    if first and late:  # recorded between two pages
                        await store.append("k0", [event("late")], ANY)
                        await apply_model(p, TIMELINE)
                    first = False
                return got

            whole = await pages("root", 1000)
            want = [x for x in whole if x[1] not in ("root", "aside")]
            assert len(want) == 2 + 3 * KIDS

            got = await pages("mid", 20)
            assert got == want  # every event once, in global order
            # 23 pages: the first merged as a page (its tree's stamp seen once), the
            # tree held still, so one whole merge for the other 22
            assert merges == {"all": 1, "per_page": 1}, merges

            steps = await pages("mid", 7, types=("step",))
            assert steps == [x for x in want if x[2] == "step"]
            assert len(steps) == 1 + 2 * KIDS
            assert merges["per_page"] == 1, merges  # served from what is kept

            after = await pages("mid", 50, late=True)
            assert after[: len(want)] == want
            assert [x[1:] for x in after[len(want) :]] == [("k0", "late")]  # a later page
            # The tree changed once: the next page merged as a page, then whole again
            assert merges == {"all": 2, "per_page": 2}, merges
    finally:
        await svc.stop(0)
