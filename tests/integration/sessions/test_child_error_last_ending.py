"""A process in a session's tree (``Sessions.tree``) has the error of its last ending,
with either reader, as the process registry has it since 6657dee: a failure's
``data.error``, none for another ending. The stream reader folded the old rule, a
failure's error kept through a later ending (a step that failed naming 'boom' and then
completed read ('completed', 'boom') there, ('completed', '') with the query reader),
and a process of kind session under a parent by a session's rule (found by review12b)."""

from __future__ import annotations

import asyncio

import pytest

from jetsource._gen.process.v1 import observer_pb2 as ob
from jetsource.core.ids import uuid7
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.sessions.connect import open_sessions
from jetsource.domains.sessions.ledger import QueryReader
from jetsource.domains.sessions.service import SessionNotFoundError, Sessions
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.e2e.test_process_query import Stack, stack  # noqa: F401  (the fixture)
from tests.integration.sessions.ledger_input import raw

pytestmark = pytest.mark.e2e


async def test_a_child_has_the_error_of_its_last_ending_with_either_reader(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
) -> None:
    sid = str(uuid7())
    healed, cancelled, failed_last, nested = (str(uuid7()) for _ in range(4))
    events = [raw(sid, "process_started", kind="session", name="s", session={"argv": []})]
    for child, kind in ((healed, "step"), (cancelled, "step"), (failed_last, "step")):
        start = raw(child, "process_started", kind=kind, name=kind)
        start.parent_process_id = sid
        events.append(start)
    start = raw(nested, "process_started", kind="session", name="nested", session={})
    start.parent_process_id = sid
    events += [
        start,
        raw(healed, "process_failed", error="boom"),
        raw(healed, "process_completed"),
        raw(cancelled, "process_failed", error="boom"),
        raw(cancelled, "process_cancelled", error="not a failure's"),
        raw(failed_last, "process_completed"),
        raw(failed_last, "process_failed", error="second"),
        raw(nested, "process_failed", error="boom"),
        raw(nested, "process_completed", session={"error": "a session's rule"}),
        raw(sid, "process_completed"),
    ]
    await stack.record.RecordBatch(ob.RecordBatchRequest(events=events), timeout=10)
    want = {
        healed: ("completed", ""),
        cancelled: ("cancelled", ""),
        failed_last: ("failed", "second"),
        nested: ("completed", ""),
    }
    query = Sessions(QueryReader(stack.reads))
    async with open_sessions(SessionsAppSettings(nats=settings.nats)) as client:
        for sessions in (client.sessions, query):
            reader = type(sessions.reader).__name__
            got: dict[str, tuple[str, str]] = {}
            for _ in range(200):  # the registry catches up
                try:
                    tree = await sessions.tree(sid)
                except SessionNotFoundError:
                    tree = {}
                got = {p.process_id: (p.status, p.error) for p in tree.get(sid, [])}
                if {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in want.items()}:
                    break
                await asyncio.sleep(0.05)
            assert got == want, reader
