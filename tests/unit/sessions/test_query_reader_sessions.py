"""`sessions list` on the query reader asked ListProcesses for every process of every
tree (children included) and kept the roots of kind session: a ledger of 2,000 processes
under 20 sessions was paged through whole. It asks for kind ``session`` now."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from jetsource._gen.process.v1 import query_pb2
from jetsource.domains.sessions.ledger import QueryReader
from jetsource.domains.sessions.service import SessionList, Sessions

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
    reader = QueryReader(stub, page_size=100)
    listed = await Sessions(reader).list_sessions(limit=5, with_errors=True)
    assert sorted(stub.endings_read) == sorted(r.session_id for r in listed)
    assert len(listed) == 5


async def test_a_list_that_shows_no_error_reads_no_endings() -> None:
    """The TUI's list (no error column, read every 2 s) and prune (which never says
    the error) read no session's endings: they read every ended session's, one
    timeline scan each, on every refresh."""
    stub = Stub()
    sessions = Sessions(QueryReader(stub, page_size=100))
    listing = SessionList(sessions)
    for _ in range(3):
        assert len(await listing.read()) == SESSIONS
    assert len(await sessions.list_sessions()) == SESSIONS
    report = await sessions.prune(None, older_than_s=0, keep=1, dry_run=True)
    assert len(report.pruned) == SESSIONS - 1
    assert stub.endings_read == []


async def test_the_endings_are_read_for_the_rows_past_the_status_filter_only() -> None:
    """--status running --limit 5 over 20 ended sessions listed none and read the
    endings of 20; the endings of the rows listed are read, after the filter and
    the limit."""
    stub = Stub()
    sessions = Sessions(QueryReader(stub, page_size=100))
    assert await sessions.list_sessions(["running"], limit=5, with_errors=True) == []
    assert stub.endings_read == []
    listed = await sessions.list_sessions(["completed"], limit=5, with_errors=True)
    assert len(listed) == 5
    assert sorted(stub.endings_read) == sorted(r.session_id for r in listed)


class _Refused(grpc.aio.AioRpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "refused", None)


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.DATA_LOSS, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.NOT_FOUND],
)
async def test_a_session_whose_endings_cannot_be_read_keeps_the_registrys_error(
    code: grpc.StatusCode,
) -> None:
    """A parked timeline (DATA_LOSS) or a deadline for one session took the whole
    list down (only NOT_FOUND was taken); that row keeps the registry's error now,
    the others have their endings'."""
    stub = Stub()
    newest = stub.everyone[-(CHILDREN + 1)]  # s019, the first listed
    newest.error.string_value = "from the registry"
    answer = stub.GetProcessTimeline

    async def timeline(request: Any, **kw: Any) -> Any:
        if request.process_id == "s019":
            raise _Refused(code)
        return await answer(request, **kw)

    stub.GetProcessTimeline = timeline  # type: ignore[method-assign]
    listed = await Sessions(QueryReader(stub, page_size=100)).list_sessions(
        limit=3, with_errors=True
    )
    errors = {r.session_id: r.error for r in listed}
    assert errors == {"s019": "from the registry", "s018": "", "s017": ""}


async def test_an_unreachable_query_service_is_not_asked_for_every_sessions_endings() -> None:
    """UNAVAILABLE for the first sessions' endings: the list comes back with the
    registry's errors, and the sessions after are not asked for (each would wait
    for the deadline)."""
    stub = Stub()
    asked: list[str] = []

    async def timeline(request: Any, **_: Any) -> Any:
        asked.append(request.process_id)
        raise _Refused(grpc.StatusCode.UNAVAILABLE)

    stub.GetProcessTimeline = timeline  # type: ignore[method-assign]
    listed = await Sessions(QueryReader(stub, page_size=100)).list_sessions(with_errors=True)
    assert len(listed) == SESSIONS and all(r.error == "" for r in listed)
    assert len(asked) < SESSIONS
