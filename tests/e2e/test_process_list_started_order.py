"""ListProcesses with a start window and statuses: newest started first whatever the
number of statuses asked (docs/process-ledger.md). With exactly one status the service
took the status index, in first-appearance order, so `process list --status failed
--started-from T` listed in another order than with two statuses (found by a
differential check against a model of the ledger)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from jetsource._gen.process.v1 import observer_pb2 as ob
from jetsource._gen.process.v1 import query_pb2 as q
from tests.e2e.test_process_query import T0, Stack, event, stack, visible  # noqa: F401

pytestmark = pytest.mark.e2e


async def listed(stack: Stack, request: q.ListProcessesRequest, mine: set[str]) -> list[str]:  # noqa: F811
    """Every page of ``request`` (page size 1), this test's processes only."""
    out: list[str] = []
    while True:
        page = await stack.reads.ListProcesses(request, timeout=5)
        out += [p.process_id for p in page.processes if p.process_id in mine]
        if not page.next_page_token:
            return out
        request.page_token = page.next_page_token


async def test_a_start_window_lists_newest_started_first_with_one_status_too(
    stack: Stack,  # noqa: F811
    unique: str,
) -> None:
    # Recorded in this order, started the other way round: the first recorded started last.
    ids = [f"s{unique}-{i}" for i in range(4)]
    events = []
    for i, pid in enumerate(ids):
        events.append(event(pid, "process_started", 40 - i * 10, kind="tool", name=pid))
        events.append(event(pid, "process_failed" if i % 2 == 0 else "process_cancelled", 50))
    await stack.record.RecordBatch(ob.RecordBatchRequest(events=events), timeout=10)
    for pid in ids:
        await visible(stack.reads, pid, 2)
    window = q.TimeWindow(**{"from": Timestamp(seconds=T0), "to": Timestamp(seconds=T0 + 100)})
    mine = set(ids)
    failed, cancelled = q.PROCESS_STATUS_FAILED, q.PROCESS_STATUS_CANCELLED
    for statuses, want in (
        ([failed], [ids[0], ids[2]]),
        ([cancelled], [ids[1], ids[3]]),
        ([failed, cancelled], ids),
        ([], ids),
    ):
        got = await listed(
            stack, q.ListProcessesRequest(started=window, statuses=statuses, page_size=1), mine
        )
        assert got == want, (statuses, got)
    # A token of one order is not taken by the other (it names another request).
    page = await stack.reads.ListProcesses(
        q.ListProcessesRequest(started=window, statuses=[failed], page_size=1), timeout=5
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.reads.ListProcesses(
            q.ListProcessesRequest(statuses=[failed], page_size=1, page_token=page.next_page_token),
            timeout=5,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
