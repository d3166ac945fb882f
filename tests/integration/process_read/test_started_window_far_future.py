"""ListProcesses(started=) over start times after 2255: the start-time index scores
processes by ``started_at`` in µs, a double in Valkey, exact only up to 2^53 µs
(2255-06-05). Past it the score is rounded (to 32 µs in year 9999, which the observer
accepts), and the window's bounds were rounded the same way, so ``to`` (exclusive) cut
off every process whose score rounded to its own: a window of year 9999 around
processes started 2 µs apart answered none of them, another lost the last one. The
index now takes the rounded bounds inclusively and the exact window is the service's
(in ns, from the registry), so every window answers exactly the processes started in
it, and paging through them (page size 1 to 3) shows each once."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from jetsource._gen.process.v1 import query_pb2 as q
from jetsource._gen.process.v1 import query_pb2_grpc as q_grpc
from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.envelope import ANY, NewEvent
from jetsource.domains.process.models import PROCESSES
from jetsource.processquery.server import build
from jetsource.projection.bootstrap import Projection
from tests.integration.process_read.ledger import apply_model
from tests.projector_fixtures import process_query_settings

pytestmark = pytest.mark.integration
S = 10**9
BASE = 253_402_300_700  # 9999-12-31T23:58:20Z, in seconds
STARTS_US = [1, 3, 5, 7, 9, 11, 13, 40, 70, 100]  # µs after BASE, all under 128 µs


def at(us: int) -> Timestamp:
    return Timestamp(seconds=BASE, nanos=us * 1000)


async def test_windows_after_2255_answer_exactly_the_processes_started_in_them(
    ledger: Projection,
) -> None:
    p = ledger
    body = ProcessEventBody(data=struct_pb2.Struct())
    for us in STARTS_US:
        started = NewEvent(body, event_type="process_started", occurred_at_ns=BASE * S + us * 1000)
        await p.domain_store("process").append(f"f{us:03d}", [started], ANY)
    await apply_model(p, PROCESSES)
    svc = await build(process_query_settings(p.settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}") as ch:
            s = q_grpc.ProcessQueryServiceStub(ch)

            async def listed(low: int, high: int, size: int = 100) -> list[str]:
                window = q.TimeWindow(**{"from": at(low), "to": at(high)})
                seen: list[str] = []
                token = ""
                while True:
                    r = await s.ListProcesses(
                        q.ListProcessesRequest(started=window, page_size=size, page_token=token),
                        timeout=10,
                    )
                    seen += [i.process_id for i in r.processes]
                    token = r.next_page_token
                    if not token:
                        return seen

            for low, high in [(0, 4), (6, 12), (8, 41), (13, 14), (12, 13), (0, 101), (40, 71)]:
                want = {f"f{us:03d}" for us in STARTS_US if low <= us < high}
                got = await listed(low, high)
                assert sorted(got) == sorted(want), (low, high)  # each once, none lost
            for size in (1, 2, 3):
                got = await listed(0, 1000, size)
                assert sorted(got) == sorted(f"f{us:03d}" for us in STARTS_US), size
    finally:
        await svc.stop(0)
