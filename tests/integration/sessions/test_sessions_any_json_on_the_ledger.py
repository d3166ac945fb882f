"""Sessions whose event data a raw writer filled with every JSON type (recorded through
the observer, which checks no schema) read back on the whole ledger stack: ``show``,
``export`` and ``follow`` with both readers, ``WatchSession``, and the CLI's ``show``
and ``export``, never fail; every exported line is in the documented format (data is
a JSON object), so the export imports again."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from typer.testing import CliRunner

from jetsource._gen.process.v1 import observer_pb2, query_pb2
from jetsource.cli import output as out
from jetsource.cli.sessions import app
from jetsource.core.ids import uuid7
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.sessions.connect import open_sessions
from jetsource.domains.sessions.format import SessionEvent, from_message
from jetsource.domains.sessions.ledger import QueryReader
from jetsource.domains.sessions.service import Sessions
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.e2e.test_process_query import Stack, stack  # noqa: F401  (the fixture)
from tests.unit.test_sessions_any_json import check_readable, odd_session

pytestmark = pytest.mark.e2e
# One of each JSON type (the unit test folds more shapes of each).
SHAPES: list[Any] = [None, True, 1.5, "x", [1, "a", None], {"a": [1]}]


async def read_back(sessions: Sessions, sid: str, count: int) -> None:
    record, _, _ = await sessions.show(sid)
    assert (record.status, record.event_count) == ("completed", count)
    exported = await sessions.export(sid)
    assert [e.seq for e in exported] == list(range(1, count + 1))
    check_readable(exported)
    followed = [r.event async for r in sessions.follow(sid)]
    assert followed == exported


async def test_sessions_whose_data_holds_any_json_type_read_everywhere(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
) -> None:
    sids = {f"odd-{i}-{uuid7()}": shape for i, shape in enumerate(SHAPES)}
    counts = {}
    for sid, shape in sids.items():
        events = odd_session(sid, shape)
        counts[sid] = len(events)
        await stack.record.RecordBatch(observer_pb2.RecordBatchRequest(events=events), timeout=10)
    query = Sessions(QueryReader(stack.reads))
    for _ in range(400):  # the read models catch up
        listed = {r.session_id: r for r in await query.list_sessions()}
        if all(sid in listed and listed[sid].event_count == n for sid, n in counts.items()):
            break
        await asyncio.sleep(0.05)

    async def watched(sid: str, n: int) -> None:
        got: list[SessionEvent] = []
        async for reply in stack.reads.WatchSession(
            query_pb2.WatchSessionRequest(session_id=sid), timeout=10
        ):
            got.append(from_message(reply.event))
            if got[-1].type == "session_ended":
                break
        assert [e.seq for e in got] == list(range(1, n + 1))
        assert got == await query.export(sid)

    async with open_sessions(SessionsAppSettings(nats=settings.nats)) as client:
        await asyncio.gather(
            *(read_back(query, sid, n) for sid, n in counts.items()),
            *(read_back(client.sessions, sid, n) for sid, n in counts.items()),
            *(watched(sid, n) for sid, n in counts.items()),
        )

    # The commands a user runs, through the query service.
    runner = CliRunner(
        env={
            "JETSOURCE_NATS__URL": SessionsAppSettings(nats=settings.nats).nats_url(),
            "JETSOURCE_SESSIONS__READER": "query",
            "JETSOURCE_SESSIONS__PROCESS_QUERY": f"127.0.0.1:{stack.query.port}",
        }
    )

    async def cli(*args: str) -> Any:
        result = await asyncio.to_thread(runner.invoke, app, list(args), catch_exceptions=False)
        out.set_mode(None)
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result.stdout

    for sid in [sid for sid, shape in sids.items() if shape in (None, "x", [1, "a", None])]:
        shown = json.loads(await cli("show", sid, "-o", "json"))
        assert (shown["status"], shown["event_count"]) == ("completed", counts[sid])
        lines = (await cli("export", sid)).splitlines()
        assert [SessionEvent.from_json(line).seq for line in lines] == list(
            range(1, counts[sid] + 1)
        )
        assert all(isinstance(json.loads(line)["data"], dict) for line in lines)
