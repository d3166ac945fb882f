"""Sessions on the whole process ledger (real NATS, Valkey and graph store): recorded
through the observer (gRPC), read back both from the stream (LedgerReader) and from
the read models through ProcessQueryService (QueryReader). The two readers pass the
same checks: the session is a root process of kind ``session`` in the registry, its
events come back in seq order with the user-facing format, follow continues live,
replay equals the follower's state, and a pruned session is gone."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.domains.sessions.connect import open_sessions
from jetsource.domains.sessions.emit import Session, session
from jetsource.domains.sessions.ledger import LedgerReader, ObserverWriter, QueryReader
from jetsource.domains.sessions.progress import SessionState, evolve
from jetsource.domains.sessions.service import Sessions
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.e2e.test_process_query import Stack, stack  # noqa: F401  (the fixture)

pytestmark = pytest.mark.e2e


async def contract(sessions: Sessions, writer: ObserverWriter, tag: str) -> None:
    async with session(writer, f"context generate {tag}", argv=["gen"]) as done:
        done.emit("level_started", {"level": 0, "node_ids": ["a"]})
        done.emit("node_generation_failed", {"node_id": "a", "error": "quota"})

    async def listed() -> dict[str, str]:
        return {r.session_id: r.status for r in await sessions.list_sessions()}

    for _ in range(200):  # the read models catch up
        if (await listed()).get(done.id) == "completed":
            break
        await asyncio.sleep(0.05)
    assert (await listed())[done.id] == "completed"
    procs = await sessions.reader.processes()
    assert (procs[done.id].kind, procs[done.id].parent) == ("session", "")
    events = await sessions.export(done.id)
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert [e.type for e in events] == [
        "session_started", "level_started", "node_generation_failed", "session_ended"
    ]  # fmt: skip
    assert events[0].data["argv"] == ["gen"]

    live = Session(writer, f"watch {tag}")
    await live.__aenter__()
    state = SessionState()
    seen: list[int] = []

    async def follower() -> None:
        nonlocal state
        async for r in sessions.follow(live.id):
            state = evolve(state, r.event)
            seen.append(r.event.seq)

    task = asyncio.create_task(follower())
    live.emit("watch_started", {"paths": ["src"]})
    live.emit("file_changed", {"path": "src/a.py"})
    await live.flush()
    for _ in range(200):
        if len(seen) >= 3:
            break
        await asyncio.sleep(0.05)
    assert seen == [1, 2, 3]  # seen while the session is active
    await live.close()
    await asyncio.wait_for(task, 30)
    assert seen == [1, 2, 3, 4]
    for _ in range(200):
        if len(await sessions.export(live.id)) == 4:
            break
        await asyncio.sleep(0.05)
    assert await sessions.replay(live.id) == state


async def test_both_readers_pass_the_same_checks_on_the_ledger(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
) -> None:
    writer = ObserverWriter(stack.record)
    query = Sessions(QueryReader(stack.reads))
    await contract(query, writer, "via query")
    async with open_sessions(SessionsAppSettings(nats=settings.nats)) as client:
        assert isinstance(client.sessions.reader, LedgerReader)
        await contract(client.sessions, writer, "via stream")


async def test_unknown_session_reads_as_empty_not_an_error(stack: Stack) -> None:  # noqa: F811
    reader = QueryReader(stack.reads)
    assert await reader.events("no-such-session") == []
    with pytest.raises(grpc.aio.AioRpcError):
        await QueryReader(stack.reads, timeout_s=5).events("bad id with spaces")


async def test_the_tools_read_through_the_query_service_when_told_to(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
) -> None:
    from jetsource.domains.sessions.settings import SessionsSettings

    async with session(ObserverWriter(stack.record), "scan") as s:
        s.emit("scan_started", {"root": "/"})
    chosen = SessionsSettings(reader="query", process_query=f"127.0.0.1:{stack.query.port}")
    async with open_sessions(SessionsAppSettings(nats=settings.nats, sessions=chosen)) as client:
        assert isinstance(client.sessions.reader, QueryReader)
        for _ in range(200):
            if len(await client.sessions.reader.events(s.id)) == 3:
                break
            await asyncio.sleep(0.05)
        record, state, _ = await client.sessions.show(s.id)
        assert (record.status, record.command, state.scan["root"]) == ("completed", "scan", "/")


async def test_a_component_process_of_the_sdk_nests_under_the_session(
    stack: Stack,  # noqa: F811
) -> None:
    from typing import Any, cast

    from jetsource.sdk import Observer

    async with (
        Observer(f"127.0.0.1:{stack.observer.port}") as observer,
        session(ObserverWriter(stack.record), "context generate") as s,
    ):
        async with observer.process("anthropic call", kind="provider", parent=cast(Any, s)) as p:
            p.emit("provider_request_sent", {"request_id": "r1", "provider": "anthropic"})
        await observer.flush()
    reader = QueryReader(stack.reads)
    for _ in range(200):
        procs = await reader.processes()
        if procs.get(p.process_id) and procs[p.process_id].status == "completed":
            break
        await asyncio.sleep(0.05)
    child = procs[p.process_id]
    assert (child.parent, child.kind, child.name) == (s.id, "provider", "anthropic call")
    tree = await Sessions(reader).tree(s.id)
    assert [c.process_id for c in tree[s.id]] == [p.process_id]
