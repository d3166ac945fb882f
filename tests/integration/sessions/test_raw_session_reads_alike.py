"""A session written by another writer than the emitter (raw RecordBatch, `observe
import`): `list` and `show` of both readers answer the same command and error. The
command was only the process's name and the error only the failure's top-level
`error`: `list` showed them, `show` said none; and the stream reader's list took an
`error` from any ending while the query reader's took the registry's, a failure's
(found by a differential check of both readers). Both list the endings' error by the
rule `show` folds them with (`ending_error`): a failure's kept through a later
completion, where the registry keeps the last ending's (none after it)."""

from __future__ import annotations

import pytest

from jetsource._gen.process.v1 import observer_pb2 as ob
from jetsource.core.ids import uuid7
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.sessions.connect import open_sessions
from jetsource.domains.sessions.ledger import QueryReader
from jetsource.domains.sessions.service import Sessions
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.e2e.test_process_query import Stack, stack  # noqa: F401  (the fixture)
from tests.integration.sessions.ledger_input import listed_when_caught_up, raw

pytestmark = pytest.mark.e2e


async def test_list_and_show_of_either_reader_agree_on_a_raw_session(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
) -> None:
    failed, cancelled, again = str(uuid7()), str(uuid7()), str(uuid7())
    events = [
        raw(failed, "process_started", kind="session", name="raw failed", session={"argv": []}),
        raw(failed, "process_failed", error="boom"),
        raw(cancelled, "process_started", kind="session", name="raw cancelled"),
        raw(cancelled, "process_cancelled", error="not a failure"),
        raw(again, "process_started", kind="session", name="failed then completed"),
        raw(again, "process_failed", error="first"),
        raw(again, "process_completed"),
    ]
    await stack.record.RecordBatch(ob.RecordBatchRequest(events=events), timeout=10)
    want = {
        failed: ("raw failed", "failed", "boom"),
        cancelled: ("raw cancelled", "interrupted", ""),
        again: ("failed then completed", "completed", "first"),
    }
    query = Sessions(QueryReader(stack.reads))

    async def timeline_caught_up(sessions: Sessions) -> bool:
        return len(await sessions.reader.events(again)) == 3

    async with open_sessions(SessionsAppSettings(nats=settings.nats)) as client:
        for sessions in (client.sessions, query):
            reader = type(sessions.reader).__name__
            # The read models catch up: the events (the timeline) and the listing (the
            # process registry) are two models, each at its own pace.
            listed = await listed_when_caught_up(
                sessions, want, lambda r: (r.command, r.status, r.error), timeline_caught_up
            )
            assert listed == want, reader
            for sid in want:
                record, _, _ = await sessions.show(sid)
                assert (record.command, record.status, record.error) == want[sid], (reader, sid)
