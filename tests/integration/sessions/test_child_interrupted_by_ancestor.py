"""A process in a session's tree with no ending of its own is `interrupted` when an
ancestor ended while it ran, with either reader, as the process registry has it
(docs/process-ledger.md): by an ancestor's ending stored once the chain of links up to
it existed; the first stored wins, its `ended_at` the ending's time and no error; a
child's own ending wins. A child stored after the ending stays `running`, whatever the
events' times (the registry's documented limitation: a `RecordBatch` is stored process
by process, so a flush's child may land either side of its parent's ending, and both
readers go by the order stored). The stream reader
(LedgerReader's lifecycle fold) never interrupted a child: a step running when its
session ended read ('running', 0) there and ('interrupted', the session's end) with
the query reader. The kept process list (the TUI's, ``ProcessList``) says what a whole
read says."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jetsource._gen.process.v1 import observer_pb2 as ob
from jetsource.core.ids import uuid7
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.sessions.connect import open_sessions
from jetsource.domains.sessions.ledger import ProcessList, ProcessSummary, QueryReader
from jetsource.domains.sessions.service import SessionNotFoundError, Sessions
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.e2e.test_process_query import Stack, stack  # noqa: F401  (the fixture)
from tests.integration.sessions.ledger_input import raw

pytestmark = pytest.mark.e2e

T0 = 1_790_000_000_000_000_000
S = 1_000_000_000  # a second in ns


def at(pid: str, event_type: str, t: int, parent: str = "", **data: Any) -> Any:
    e = raw(pid, event_type, **data)
    e.parent_process_id = parent
    e.occurred_at.FromNanoseconds(t)
    return e


async def test_a_child_running_when_an_ancestor_ended_is_interrupted_with_either_reader(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
) -> None:
    sid = str(uuid7())
    a, p, c, b, d, q, h, late, x, y, g = (str(uuid7()) for _ in range(11))
    step = {"kind": "step", "name": "step"}
    requests = [
        [
            at(sid, "process_started", T0, kind="session", name="s", session={"argv": []}),
            at(a, "process_started", T0 + S, sid, **step),
            at(p, "process_started", T0 + S, sid, **step),
            at(q, "process_started", T0 + S, sid, **step),
            at(c, "process_started", T0 + 2 * S, p, **step),
        ],
        # an SDK's flush of a parent that ended while its child ran (stored process by
        # process: Y's start may land after X's failure, and the session's end then
        # interrupts Y)
        [
            at(x, "process_started", T0 + S, sid, **step),
            at(y, "process_started", T0 + S + S // 2, x, **step),
            at(x, "process_failed", T0 + 2 * S, error="x"),
        ],
        [at(p, "process_failed", T0 + 3 * S, error="boom")],
        [
            at(b, "process_started", T0 + 4 * S, sid, **step),
            at(b, "process_completed", T0 + 5 * S),
            at(d, "process_started", T0 + 4 * S, sid, **step),
        ],
        [at(sid, "process_completed", T0 + 6 * S)],
        [
            at(d, "process_completed", T0 + 7 * S),  # its own ending wins
            at(q, "process_failed", T0 + 8 * S, error="q"),
            # stored after P's failure and the session's end, started before both: the
            # order stored decides, it stays running (the documented limitation)
            at(g, "process_started", T0 + 2 * S + S // 2, p, **step),
            at(late, "process_started", T0 + 9 * S, sid, **step),  # after the end
        ],
        # started before the session's end (T0+6) and Q's failure (T0+8), stored after
        # both: running, as G
        [at(h, "process_started", T0 + 5 * S, q, **step)],
    ]
    want = {
        sid: {
            a: ("interrupted", T0 + 6 * S, ""),
            p: ("failed", T0 + 3 * S, "boom"),
            q: ("failed", T0 + 8 * S, "q"),
            x: ("failed", T0 + 2 * S, "x"),
            b: ("completed", T0 + 5 * S, ""),
            d: ("completed", T0 + 7 * S, ""),
            late: ("running", 0, ""),
        },
        p: {
            c: ("interrupted", T0 + 3 * S, ""),
            g: ("running", 0, ""),
        },
        q: {h: ("running", 0, "")},
    }

    def listed(every: dict[str, ProcessSummary]) -> dict[str, tuple[str, int, str]]:
        return {k: (every[k].status, every[k].ended_ns, every[k].error) for k in flat if k in every}

    query = Sessions(QueryReader(stack.reads))
    async with open_sessions(SessionsAppSettings(nats=settings.nats)) as client:
        # the stream reader's kept list, read after each request: folded in pieces
        kept = ProcessList(client.sessions.reader)
        for batch in requests:
            await stack.record.RecordBatch(ob.RecordBatchRequest(events=batch), timeout=10)
            await kept.read()
        # Y as the order stored says: interrupted by X's failure if its start was
        # stored before it, else by the session's end (it ran when the session ended)
        y_start, x_events = (
            await client.sessions.reader.first(y),
            await client.sessions.reader.events(x),
        )
        assert y_start is not None and len(x_events) == 2  # X started, X failed
        before = y_start.global_seq < x_events[-1].global_seq
        want[x] = {y: ("interrupted", T0 + (2 if before else 6) * S, "")}
        flat = {k: v for kids in want.values() for k, v in kids.items()}
        for sessions in (client.sessions, query):
            reader = type(sessions.reader).__name__
            got: dict[str, dict[str, tuple[str, int, str]]] = {}
            for _ in range(200):  # the registry catches up
                try:
                    tree = await sessions.tree(sid)
                except SessionNotFoundError:
                    tree = {}
                got = {
                    parent: {k.process_id: (k.status, k.ended_ns, k.error) for k in kids}
                    for parent, kids in tree.items()
                }
                if got == want:
                    break
                await asyncio.sleep(0.05)
            assert got == want, reader
            # the whole list of processes says the same (the TUI's process tree)
            every = await sessions.reader.processes()
            assert listed(every) == flat, reader
        # and the stream reader's list kept between reads, folded piece by piece
        assert listed(await kept.read()) == flat
        assert kept.whole_reads == 1
