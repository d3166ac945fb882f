"""The id of a process of another kind (a task's, from `process list`) given to the
sessions commands: show, export (with or without --after), follow and tree all answer
the unknown session's NOT_FOUND saying "it is a process of kind K, not a session",
with either reader. Only show and export from the start did: `follow` yielded the
task's events as session lines and then waited live for ever (a task writes no
session_ended), `export --after 1` printed its events, and `tree` said not found
without the kind."""

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
from tests.integration.sessions.test_cli import cli

pytestmark = pytest.mark.e2e


async def test_every_read_of_a_tasks_id_says_it_is_no_session(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
) -> None:
    task, sid = str(uuid7()), str(uuid7())
    events = [
        raw(task, "process_started", kind="task", name="build"),
        raw(task, "step", n=1),
        raw(task, "step", n=2),
        raw(sid, "process_started", kind="session", name="deploy", session={}),
    ]
    await stack.record.RecordBatch(ob.RecordBatchRequest(events=events), timeout=10)
    said = f"session {task!r} not found: it is a process of kind task, not a session"
    query = Sessions(QueryReader(stack.reads))
    async with open_sessions(SessionsAppSettings(nats=settings.nats)) as client:
        for sessions in (client.sessions, query):
            reader = type(sessions.reader).__name__
            for _ in range(200):  # the read models catch up
                if len(await sessions.reader.events(task)) == 3 and (
                    await sessions.reader.subtree(task)
                ):
                    break
                await asyncio.sleep(0.05)
            reads = {
                "show": sessions.show(task),
                "export": sessions.export(task),
                "export --after 1": sessions.export(task, after_seq=1),
                "tree": sessions.tree(task),
            }
            for what, read in reads.items():
                with pytest.raises(SessionNotFoundError) as caught:
                    await read
                assert str(caught.value) == said, (reader, what)
            for after in (0, 1):
                lines = []
                with pytest.raises(SessionNotFoundError) as caught:
                    async with asyncio.timeout(5):  # it waited live for ever
                        async for r in sessions.follow(task, after):
                            lines.append(r.event.seq)
                assert (str(caught.value), lines) == (said, []), (reader, after)
            # a session still reads as one
            assert [e.seq for e in await sessions.export(sid, after_seq=0)] == [1], reader
            assert await sessions.export(sid, after_seq=1) == [], reader
            assert await sessions.tree(sid) == {}, reader
    # The commands: NOT_FOUND (exit 1) naming the kind, nothing printed.
    for args in (("follow", task), ("export", task, "--after", "1"), ("show", task)):
        run = await cli(SessionsAppSettings(nats=settings.nats), *args)
        assert (run.returncode, run.stdout) == (1, ""), (args, run)
        assert "it is a process of kind task, not a session" in run.stderr, (args, run)
