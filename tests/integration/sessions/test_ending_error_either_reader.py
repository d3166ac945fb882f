"""A session's error is its endings' by one rule, for `sessions show` and `sessions
list` with either reader: any ending's error (interrupted and completed too), kept
through a later ending that names none. The query reader's list took the registry's
error (only a failure's), so it listed null for an interrupted or completed session
that named one while `show` said it; and the stream reader's list cleared an error
through a later failed ending naming none while `show` kept it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from jetsource._gen.process.v1 import observer_pb2 as ob
from jetsource.core.ids import uuid7
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.sessions.connect import open_sessions
from jetsource.domains.sessions.format import SessionEvent, to_canonical
from jetsource.domains.sessions.ledger import QueryReader
from jetsource.domains.sessions.service import SessionNotFoundError, Sessions
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.e2e.test_process_query import Stack, stack  # noqa: F401  (the fixture)
from tests.integration.sessions.ledger_input import listed_when_caught_up

pytestmark = pytest.mark.e2e

TS = 1_764_583_200_000_000_000


def session(sid: str, *endings: dict[str, Any]) -> list[SessionEvent]:
    out = [SessionEvent(TS, sid, 1, "session_started", {"command": "deploy"})]
    out += [SessionEvent(TS, sid, 2 + i, "session_ended", e) for i, e in enumerate(endings)]
    return out


async def test_list_and_show_of_either_reader_take_the_endings_error_alike(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
) -> None:
    ids = {name: str(uuid7()) for name in ("cut", "done", "fine", "bad", "kept", "twice")}
    written = {
        "cut": session(ids["cut"], {"status": "interrupted", "error": "SIGTERM"}),
        "done": session(ids["done"], {"status": "completed", "error": {"warnings": 2}}),
        "fine": session(ids["fine"], {"status": "completed"}),
        "bad": session(ids["bad"], {"status": "failed", "error": "exit 3"}),
        "kept": session(ids["kept"], {"status": "completed", "error": "Y"}, {"status": "failed"}),
        "twice": session(
            ids["twice"], {"status": "failed", "error": "X"}, {"status": "completed", "error": 7}
        ),
    }
    events = [to_canonical(e) for events in written.values() for e in events]
    await stack.record.RecordBatch(ob.RecordBatchRequest(events=events), timeout=10)
    want = {
        ids["cut"]: ("interrupted", "SIGTERM"),
        ids["done"]: ("completed", '{"warnings":2}'),
        ids["fine"]: ("completed", ""),
        ids["bad"]: ("failed", "exit 3"),
        ids["kept"]: ("failed", "Y"),
        ids["twice"]: ("completed", "7"),
    }
    query = Sessions(QueryReader(stack.reads))
    async with open_sessions(SessionsAppSettings(nats=settings.nats)) as client:
        for sessions in (client.sessions, query):
            reader = type(sessions.reader).__name__
            for sid in want:
                # The query reader reads the process models, which catch up at their pace
                # (CI, stop 52: not found right after the RecordBatch).
                shown: tuple[str, str] | None = None
                for _ in range(200):
                    with contextlib.suppress(SessionNotFoundError):
                        record, _, _ = await sessions.show(sid)
                        shown = (record.status, record.error)
                        if shown == want[sid]:
                            break
                    await asyncio.sleep(0.05)
                assert shown == want[sid], (reader, sid)
            # The read models catch up (the listing is the registry's, at its pace).
            listed = await listed_when_caught_up(sessions, want, lambda r: (r.status, r.error))
            assert listed == want, reader


class _Counting:
    """The query stub, counting the timelines read (the endings' reads)."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self.timelines: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    async def GetProcessTimeline(self, request: Any, **kw: Any) -> Any:
        self.timelines.append(request.process_id)
        return await self._stub.GetProcessTimeline(request, **kw)


async def test_the_query_reader_reads_the_endings_of_the_rows_listed_with_errors_only(
    stack: Stack,  # noqa: F811
) -> None:
    """`list --status running -n 2` over ended sessions read every ended session's
    endings (before the filter, the limit); the TUI's list and prune, which show no
    error, read them all too. Now: the rows listed with their errors only."""
    mark = f"ends-{uuid7()}"
    ids = [str(uuid7()) for _ in range(6)]
    events = [
        to_canonical(e)
        for sid in ids
        for e in [
            SessionEvent(TS, sid, 1, "session_started", {"command": mark}),
            SessionEvent(TS, sid, 2, "session_ended", {"status": "completed", "error": "E"}),
        ]
    ]
    await stack.record.RecordBatch(ob.RecordBatchRequest(events=events), timeout=10)
    counting = _Counting(stack.reads)
    sessions = Sessions(QueryReader(counting))
    for _ in range(200):  # the registry catches up
        listed = await sessions.list_sessions(search=mark)
        if len(listed) == len(ids) and all(r.status == "completed" for r in listed):
            break
        await asyncio.sleep(0.05)
    assert len(listed) == len(ids)
    assert counting.timelines == []  # no error asked for: none read
    assert await sessions.list_sessions(["running"], mark, 2, with_errors=True) == []
    assert counting.timelines == []
    listed = await sessions.list_sessions(["completed"], mark, 2, with_errors=True)
    assert [r.error for r in listed] == ["E", "E"]
    assert sorted(counting.timelines) == sorted(r.session_id for r in listed)
