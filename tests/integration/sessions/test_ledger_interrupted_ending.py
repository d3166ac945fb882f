"""A session ended on the ledger by ``process_interrupted`` (the registry's fourth
ending, which a raw writer or ``observe import`` may send): both readers list and show
it ``interrupted``, ``follow`` ends at it, and its export imports again as already
recorded. Before, the stream reader and ``show`` said ``active`` while the query
reader listed it ``interrupted`` (found by a differential check of both readers
against the ledger), and ``follow`` waited for a ``session_ended`` that never came.
The emitter refuses the type (it ended the session's process on the ledger while the
session went on)."""

from __future__ import annotations

import asyncio

import pytest

from jetsource._gen.process.v1 import observer_pb2 as ob
from jetsource.core.ids import uuid7
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.sessions.connect import open_sessions
from jetsource.domains.sessions.emit import session
from jetsource.domains.sessions.importing import Line, plan_import
from jetsource.domains.sessions.ledger import ObserverWriter, QueryReader, recorded_at
from jetsource.domains.sessions.service import Sessions
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.e2e.test_process_query import Stack, stack  # noqa: F401  (the fixture)
from tests.integration.sessions.ledger_input import raw

pytestmark = pytest.mark.e2e


async def test_a_session_ended_by_process_interrupted_reads_interrupted_everywhere(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
) -> None:
    sid = str(uuid7())
    await stack.record.RecordBatch(
        ob.RecordBatchRequest(
            events=[
                raw(sid, "process_started", kind="session", name="raw run"),
                raw(sid, "level_started", level=0),
                raw(sid, "process_interrupted"),
            ]
        ),
        timeout=10,
    )
    query = Sessions(QueryReader(stack.reads))
    async with open_sessions(SessionsAppSettings(nats=settings.nats)) as client:
        for sessions in (client.sessions, query):
            # The read models catch up: the events (the timeline) and the listing (the
            # process registry) are two models, each at its own pace; events seen are
            # no promise the registry has the session yet.
            listed: dict[str, str] = {}
            for _ in range(200):
                if len(await sessions.reader.events(sid)) == 3:
                    listed = {r.session_id: r.status for r in await sessions.list_sessions()}
                    if listed.get(sid) == "interrupted":
                        break
                await asyncio.sleep(0.05)
            assert listed.get(sid) == "interrupted", (type(sessions.reader), listed.get(sid))
            record, _, _ = await sessions.show(sid)
            assert record.status == "interrupted", type(sessions.reader)
            events = await sessions.export(sid)
            assert [(e.seq, e.type) for e in events][-1] == (3, "session_ended")
            assert events[-1].data == {"status": "interrupted"}

            async def follow(sessions: Sessions = sessions) -> list[int]:
                return [r.event.seq async for r in sessions.follow(sid)]

            assert await asyncio.wait_for(follow(), 10) == [1, 2, 3]  # it ends there
        # The export imports again: every line already recorded, nothing to append.
        lines = [Line(i + 1, e) for i, e in enumerate(events)]
        plans = await plan_import(lines, lambda s, seq: recorded_at(client.store, s, seq))
        assert [(p.new, p.known) for p in plans] == [([], 3)]


async def test_the_emitter_refuses_process_interrupted(stack: Stack) -> None:  # noqa: F811
    async with session(ObserverWriter(stack.record), "emits an ending") as s:
        with pytest.raises(ValueError, match="process_interrupted"):
            s.emit("process_interrupted", {})
        s.emit("level_started", {"level": 0})
