"""Sessions on the whole process ledger (real NATS, Valkey and graph store): recorded
through the observer (gRPC), read back both from the stream (LedgerReader) and from
the read models through ProcessQueryService (QueryReader). The two readers pass the
same checks: the session is a root process of kind ``session`` in the registry, its
events come back in seq order with the user-facing format, follow continues live,
replay equals the follower's state, and a pruned session is gone."""

from __future__ import annotations

import asyncio
from typing import Any

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


async def test_watch_session_streams_an_active_session_from_a_seq_in_order(
    stack: Stack,  # noqa: F811
) -> None:
    from jetsource._gen.process.v1 import query_pb2
    from jetsource.domains.sessions.format import from_message

    writer = ObserverWriter(stack.record)
    live = Session(writer, "watch", argv=["w"])
    await live.__aenter__()
    for i in range(3):
        live.emit("file_changed", {"path": f"f{i}", "n": i})
    await live.flush()
    reader = QueryReader(stack.reads)

    async def caught_up() -> bool:  # both models: WatchSession asks the registry first
        return len(await reader.events(live.id)) == 4 and live.id in await reader.processes()

    for _ in range(400):
        if await caught_up():
            break
        await asyncio.sleep(0.05)
    assert await caught_up(), "the read models did not catch up within 20 s"
    call = stack.reads.WatchSession(query_pb2.WatchSessionRequest(session_id=live.id, after_seq=2))
    got: list[Any] = []

    async def read() -> None:
        async for reply in call:
            got.append(from_message(reply.event))
            if got[-1].type == "session_ended":
                return

    task = asyncio.create_task(read())
    for _ in range(200):
        if len(got) >= 2 or task.done():
            break
        await asyncio.sleep(0.05)
    if task.done():
        task.result()  # the call's error, if it ended early
    assert [e.seq for e in got] == [3, 4]  # the backlog above seq 2, while still active
    live.emit("file_changed", {"path": "late", "n": 9})  # committed while watched
    await live.close()
    await asyncio.wait_for(task, 30)
    assert [e.seq for e in got] == [3, 4, 5, 6]
    assert [e.type for e in got] == ["file_changed"] * 3 + ["session_ended"]
    assert {e.session for e in got} == {live.id}
    assert got[0].data == {"path": "f1", "n": 1}  # ints back as ints
    assert got[2].data == {"path": "late", "n": 9}
    assert got[-1].data["status"] == "completed"
    assert all(e.ts_ns > 0 for e in got)
    # The same as the export, mapped in one place (format.py).
    exported = {r.event.seq: r.event for r in await reader.events(live.id)}
    assert all(exported[e.seq] == e for e in got)
    # From 0: session_started is seq 1.
    first = stack.reads.WatchSession(query_pb2.WatchSessionRequest(session_id=live.id))
    async for reply in first:
        assert (reply.event.seq, reply.event.type) == (1, "session_started")
        assert list(reply.event.data["argv"]) == ["w"]
        break
    first.cancel()


@pytest.mark.parametrize(
    ("request_fields", "code", "field"),
    [
        ({"session_id": "bad id with spaces"}, grpc.StatusCode.INVALID_ARGUMENT, "session_id"),
        ({"session_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "session_id"),
        ({"session_id": "s1", "after_seq": -1}, grpc.StatusCode.INVALID_ARGUMENT, "after_seq"),
        ({"session_id": "no-such-session"}, grpc.StatusCode.NOT_FOUND, "no-such-session"),
    ],
)
async def test_watch_session_refuses_bad_input_naming_the_field(
    stack: Stack,  # noqa: F811
    request_fields: dict[str, Any],
    code: grpc.StatusCode,
    field: str,
) -> None:
    from jetsource._gen.process.v1 import query_pb2

    call = stack.reads.WatchSession(query_pb2.WatchSessionRequest(**request_fields), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == code
    assert field in (caught.value.details() or "")


async def test_following_an_unknown_session_through_the_query_service_is_not_found(
    stack: Stack,  # noqa: F811
) -> None:
    from jetsource.domains.sessions.service import SessionNotFoundError

    with pytest.raises(SessionNotFoundError):
        async for _ in Sessions(QueryReader(stack.reads, timeout_s=0.5)).follow("no-such"):
            pass


async def test_watch_session_refuses_a_process_that_is_not_a_session(
    stack: Stack,  # noqa: F811
) -> None:
    from jetsource._gen.process.v1 import query_pb2
    from jetsource.sdk import Observer

    async with Observer(f"127.0.0.1:{stack.observer.port}") as observer:
        async with observer.process("job", kind="pipeline") as p:
            p.emit("step", {"n": 1})
        await observer.flush()
    reader = QueryReader(stack.reads)
    for _ in range(200):
        if p.process_id in await reader.processes():
            break
        await asyncio.sleep(0.05)
    call = stack.reads.WatchSession(
        query_pb2.WatchSessionRequest(session_id=p.process_id), timeout=10
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cli_follow_reads_through_watch_session_when_told_to(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
) -> None:
    import json
    import os
    import sys

    # No heartbeat in the expected lines: a loaded machine can be quiet for 10 s here.
    live = Session(ObserverWriter(stack.record), "watch", heartbeat_s=3600)
    await live.__aenter__()
    live.emit("file_changed", {"path": "a.py"})
    await live.flush()
    env = {
        **os.environ,
        "JETSOURCE_NATS__URL": SessionsAppSettings(nats=settings.nats).nats_url(),
        "JETSOURCE_SESSIONS__READER": "query",
        "JETSOURCE_SESSIONS__PROCESS_QUERY": f"127.0.0.1:{stack.query.port}",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from jetsource.cli.sessions import app; app(prog_name='jetsource sessions')",
        "follow",
        live.id,
        "--after",
        "1",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
    assert (first["seq"], first["type"], first["data"]) == (2, "file_changed", {"path": "a.py"})
    live.emit("file_changed", {"path": "b.py"})  # committed while followed
    await live.close()
    rest = (await asyncio.wait_for(proc.stdout.read(), 30)).decode().splitlines()
    assert [(json.loads(line)["seq"], json.loads(line)["type"]) for line in rest] == [
        (3, "file_changed"),
        (4, "session_ended"),
    ]
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_a_session_tree_holds_that_session_s_subtree_and_nothing_else(
    stack: Stack,  # noqa: F811
    settings: JetsourceSettings,
) -> None:
    """Two sessions with processes nested two levels deep: each one's tree is its own
    subtree (children of children included), through either reader."""
    from typing import cast

    from jetsource.domains.sessions.service import SessionNotFoundError
    from jetsource.sdk import Observer

    writer = ObserverWriter(stack.record)
    want: dict[str, dict[str, list[str]]] = {}
    async with Observer(f"127.0.0.1:{stack.observer.port}") as observer:
        for name in ("left", "right"):
            async with session(writer, f"tree {name}") as s:
                async with (
                    observer.process(f"{name} agent", kind="agent", parent=cast(Any, s)) as a,
                    observer.process(f"{name} tool", kind="tool", parent=a) as t,
                ):
                    t.emit("step_done", {"n": 1})
                async with observer.process(
                    f"{name} call", kind="provider", parent=cast(Any, s)
                ) as c:
                    pass
                await observer.flush()
            want[s.id] = {s.id: sorted([a.process_id, c.process_id]), a.process_id: [t.process_id]}
    every = {pid for tree in want.values() for kids in tree.values() for pid in kids}
    query = QueryReader(stack.reads)
    for _ in range(400):  # the read models catch up
        procs = await query.processes()
        if all(pid in procs and procs[pid].status == "completed" for pid in every):
            break
        await asyncio.sleep(0.05)
    async with open_sessions(SessionsAppSettings(nats=settings.nats)) as client:
        for sessions in (Sessions(query), client.sessions):
            for sid, tree in want.items():
                got = await sessions.tree(sid)
                assert {k: sorted(p.process_id for p in v) for k, v in got.items()} == tree
            with pytest.raises(SessionNotFoundError):
                await sessions.tree("no-such-session")
