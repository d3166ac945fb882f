"""`sessions list` on the query reader asked ListProcesses for every process of every
tree (children included) and kept the roots of kind session: a ledger of 2,000 processes
under 20 sessions was paged through whole. It asks for kind ``session`` now."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from jetsource._gen.process.v1 import query_pb2
from jetsource.domains.sessions.ledger import QueryReader
from jetsource.domains.sessions.service import Sessions

SESSIONS, CHILDREN = 20, 100


class Stub:
    def __init__(self) -> None:
        self.listed = 0  # processes answered by ListProcesses
        self.endings_read: list[str] = []  # sessions whose endings were read
        started = Timestamp(seconds=1_700_000_000)
        self.everyone = []
        for i in range(SESSIONS):
            sid = f"s{i:03d}"
            self.everyone.append(
                query_pb2.ProcessInfo(
                    process_id=sid,
                    kind="session",
                    name="run",
                    status=query_pb2.PROCESS_STATUS_COMPLETED,
                    started_at=started,
                )
            )
            self.everyone += [
                query_pb2.ProcessInfo(
                    process_id=f"{sid}-c{j:03d}",
                    parent_process_id=sid,
                    root_process_id=sid,
                    kind="task",
                    name="step",
                    status=query_pb2.PROCESS_STATUS_COMPLETED,
                    started_at=started,
                )
                for j in range(CHILDREN)
            ]

    async def ListProcesses(self, request: Any, **_: Any) -> Any:
        chosen = [p for p in self.everyone if not request.kind or p.kind == request.kind]
        start = int(request.page_token or 0)
        page = chosen[start : start + request.page_size]
        self.listed += len(page)
        more = start + len(page) < len(chosen)
        return query_pb2.ListProcessesResponse(
            processes=page, next_page_token=str(start + len(page)) if more else ""
        )

    async def GetProcessTimeline(self, request: Any, **_: Any) -> Any:
        # an ended session's endings (its error): none named here
        self.endings_read.append(request.process_id)
        return query_pb2.GetProcessTimelineResponse()

    async def GetProcess(self, request: Any, **_: Any) -> Any:
        info = query_pb2.ProcessInfo(process_id=request.process_id, last_process_seq=3)
        info.last_recorded_at.seconds = 1_700_000_100
        return query_pb2.GetProcessResponse(process=info)


async def test_the_query_reader_lists_sessions_without_every_process() -> None:
    stub = Stub()
    listed = await Sessions(QueryReader(stub, page_size=100)).list_sessions()
    assert len(listed) == SESSIONS
    assert stub.listed == SESSIONS  # not the 2,020 processes of every tree


async def test_the_query_reader_reads_the_endings_of_the_sessions_listed_only() -> None:
    """An ended session's error is read from its endings (the registry keeps only a
    failure's): for the sessions a limited list shows, not for every session."""
    stub = Stub()
    listed = await Sessions(QueryReader(stub, page_size=100)).list_sessions(limit=5)
    assert sorted(stub.endings_read) == sorted(r.session_id for r in listed)
    assert len(listed) == 5
