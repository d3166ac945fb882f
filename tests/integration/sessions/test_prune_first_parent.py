"""The stream reader takes a process's first parent, as the registry does: a child
whose first `process_started` names the session and a later one another parent was
outside the session's tree for the stream reader (the last one won), so `sessions
prune` with the default reader purged the session and left the child's events in the
stream, while the read models forgot it (found by a differential check of both
readers' prunes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from jetsource._gen.process.v1 import events_pb2 as ev
from jetsource._gen.process.v1 import observer_pb2 as ob
from jetsource.core.ids import uuid7
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.process.pruning import PRUNER_ID
from jetsource.domains.sessions.connect import SessionsClient, open_sessions
from jetsource.domains.sessions.service import Sessions
from jetsource.domains.sessions.settings import SessionsAppSettings, SessionsSettings
from jetsource.eventstore import jsapi
from tests.e2e.test_process_query import Stack, stack  # noqa: F401  (the fixture)
from tests.integration.sessions.test_prune_on_the_ledger import (
    Only,
    eventually,
    in_registry,
    stream_counts,
)

pytestmark = pytest.mark.e2e
LONG_AGO = Timestamp(seconds=1_700_000_000)  # 2023: older than any prune rule here


@pytest.fixture
async def client(settings: JetsourceSettings, unique: str) -> AsyncIterator[SessionsClient]:
    chosen = SessionsSettings(reader="stream", claims_bucket=f"CL_{unique}")
    async with open_sessions(SessionsAppSettings(nats=settings.nats, sessions=chosen)) as c:
        c.sessions = Sessions(Only(c.sessions.reader, unique), c.sessions.settings)
        yield c
        # PROCESS_EVENTS is shared: the pruner's events go, as in test_prune_on_the_ledger.
        await jsapi.api(
            c.purger._replies,
            "STREAM.PURGE.PROCESS_EVENTS",
            {"filter": f"process.events.{PRUNER_ID}.>"},
            5.0,
        )


def raw(pid: str, event_type: str, parent: str = "", **data: Any) -> ev.CanonicalEvent:
    body = Struct()
    body.update(data)
    return ev.CanonicalEvent(
        process_id=pid,
        parent_process_id=parent,
        event_type=event_type,
        source="raw",
        occurred_at=LONG_AGO,
        data=body,
    )


async def test_the_stream_reader_prunes_a_child_by_its_first_parent(
    stack: Stack,  # noqa: F811
    client: SessionsClient,
    unique: str,
) -> None:
    sid, kid = str(uuid7()), f"kid-{unique}"
    events = [
        raw(sid, "process_started", kind="session", name=f"old {unique}"),
        raw(kid, "process_started", parent=sid, kind="tool", name="t"),
        raw(kid, "process_started", parent=f"elsewhere-{unique}", kind="tool", name="t"),
        raw(sid, "process_completed"),
    ]
    await stack.record.RecordBatch(ob.RecordBatchRequest(events=events), timeout=10)
    tree = await client.sessions.reader.subtree(sid)
    assert set(tree) == {sid, kid}

    async def in_the_registry() -> bool:
        """the read models have both"""
        return await in_registry(stack, kid) and await in_registry(stack, sid)

    await eventually(in_the_registry)
    report = await client.sessions.prune(client.purger, older_than_s=60, keep=0)
    assert [r.session_id for r in report.pruned] == [sid] and report.processes == 2
    assert await stream_counts(client, [sid, kid]) == {sid: 0, kid: 0}

    async def forgotten() -> bool:
        """the read models forget both"""
        return not await in_registry(stack, kid) and not await in_registry(stack, sid)

    await eventually(forgotten)
