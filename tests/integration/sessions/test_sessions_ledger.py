"""Issue #16's integration tests on a real NATS server: sessions recorded on the
process ledger's stream by the emitter, read back, followed live, replayed, marked
interrupted and pruned."""

from __future__ import annotations

import asyncio
import time

import pytest

from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.emit import Session, session
from jetsource.domains.sessions.format import SessionEvent, to_canonical
from jetsource.domains.sessions.progress import COMPLETE, fold
from jetsource.domains.sessions.service import Sessions


async def test_started_is_seq_1_ten_events_are_ten_sequential_records_ended_is_last(
    client: SessionsClient,
) -> None:
    async with session(client.writer, "context generate", argv=["ctx", "gen"]) as s:
        for i in range(10):
            s.emit("scan_progress", {"files_scanned": i})
    events = await client.sessions.export(s.id)
    assert [e.seq for e in events] == list(range(1, 13))
    assert events[0].type == "session_started"
    assert events[0].data["command"] == "context generate"
    assert events[0].data["argv"] == ["ctx", "gen"]
    assert [e.data["files_scanned"] for e in events[1:11]] == list(range(10))
    assert events[-1].type == "session_ended" and events[-1].data["status"] == "completed"
    record, _, _ = await client.sessions.show(s.id)
    assert (record.status, record.event_count, record.command) == (
        "completed",
        12,
        "context generate",
    )


async def test_an_exception_ends_the_session_failed_with_its_message(
    client: SessionsClient,
) -> None:
    holder: list[Session] = []
    with pytest.raises(RuntimeError, match="disk on fire"):
        async with session(client.writer, "context generate") as s:
            holder.append(s)
            s.emit("level_started", {"level": 0})
            raise RuntimeError("disk on fire")
    events = await client.sessions.export(holder[0].id)
    assert [e.type for e in events] == ["session_started", "level_started", "session_ended"]
    assert events[-1].data["status"] == "failed"
    assert "disk on fire" in events[-1].data["error"]
    record, _, _ = await client.sessions.show(holder[0].id)
    assert record.status == "failed"


async def test_cancellation_ends_the_session_interrupted(client: SessionsClient) -> None:
    started = asyncio.Event()
    ids: list[str] = []

    async def run() -> None:
        async with session(client.writer, "watch") as s:
            ids.append(s.id)
            s.emit("watch_started", {"paths": ["."]})
            started.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(run())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    events = await client.sessions.export(ids[0])
    assert events[-1].type == "session_ended"
    assert events[-1].data["status"] == "interrupted"


async def test_follow_reads_events_committed_while_the_session_is_active(
    client: SessionsClient,
) -> None:
    s = Session(client.writer, "context generate")
    await s.__aenter__()
    seen: list[SessionEvent] = []
    six = asyncio.Event()

    async def follower() -> None:
        async for r in client.sessions.follow(s.id):
            seen.append(r.event)
            if len(seen) == 6:
                six.set()

    task = asyncio.create_task(follower())
    for i in range(5):
        s.emit("level_started", {"level": i})
        await s.flush()
        await asyncio.sleep(0.02)
    await asyncio.wait_for(six.wait(), 5)
    assert [e.seq for e in seen] == [1, 2, 3, 4, 5, 6]  # seen while active
    await s.close()
    await asyncio.wait_for(task, 5)  # ends after session_ended
    assert seen[-1].type == "session_ended"
    assert [e.seq for e in seen] == list(range(1, 8))


async def test_replay_rebuilds_the_state_the_live_follower_ended_with(
    client: SessionsClient,
) -> None:
    s = Session(client.writer, "context generate")
    await s.__aenter__()
    live = None
    states = []

    async def follower() -> None:
        nonlocal live
        from jetsource.domains.sessions.progress import SessionState, evolve

        state = SessionState()
        async for r in client.sessions.follow(s.id):
            state = evolve(state, r.event)
            states.append(state)
        live = state

    task = asyncio.create_task(follower())
    s.emit("level_started", {"level": 0, "node_ids": ["a", "b"]})
    s.emit("provider_request_sent", {"request_id": "r1", "provider": "p", "node_id": "a"})
    s.emit("provider_response_received", {"request_id": "r1", "provider": "p"})
    s.emit("node_generation_failed", {"node_id": "b", "error": "refused"})
    s.emit("level_completed", {"level": 0})
    await s.close()
    await asyncio.wait_for(task, 5)
    replayed = await client.sessions.replay(s.id)
    assert live == replayed
    assert replayed.node("a").status == COMPLETE  # type: ignore[union-attr]
    assert replayed.failures[0].error == "refused"
    # replay to a seq equals the follower's state at that seq
    assert await client.sessions.replay(s.id, to_seq=3) == states[2]


async def test_a_session_without_an_end_stays_readable_and_is_marked_interrupted(
    client: SessionsClient,
) -> None:
    s = Session(client.writer, "context generate", heartbeat_s=60)
    await s.__aenter__()
    s.emit("level_started", {"level": 0})
    await s.flush()
    # the emitter is gone: no session_ended, no heartbeat
    assert s._task is not None
    s._task.cancel()
    record, state, _ = await client.sessions.show(s.id)
    assert (record.status, state.count) == ("active", 2)
    later = Sessions(
        client.sessions.reader,
        client.sessions.settings,
        clock=lambda: time.time_ns() + 61 * 10**9,
    )
    record, state, events = await later.show(s.id)
    assert record.status == "interrupted"
    assert [r.event.type for r in events] == ["session_started", "level_started"]
    listed = {r.session_id: r.status for r in await later.list_sessions()}
    assert listed[s.id] == "interrupted"


async def test_a_quiet_emitter_sends_heartbeats(client: SessionsClient) -> None:
    async with session(client.writer, "watch", heartbeat_s=0.2) as s:
        await asyncio.sleep(0.7)
    types = [e.type for e in await client.sessions.export(s.id)]
    assert types.count("session_heartbeat") >= 2
    assert types[0] == "session_started" and types[-1] == "session_ended"


async def test_a_commit_error_marks_the_session_failed(client: SessionsClient) -> None:
    class Refusing:
        """The real writer, refusing after the first record: the ledger went away."""

        def __init__(self) -> None:
            self.calls = 0

        async def record(self, events):  # type: ignore[no-untyped-def]
            self.calls += 1
            if self.calls == 2:
                raise ConnectionError("ledger unreachable")
            return await client.writer.record(events)

    async with session(Refusing(), "context generate") as s:
        s.emit("level_started", {"level": 0})
        await s.flush()
        s.emit("level_started", {"level": 1})  # dropped: the session failed
    events = await client.sessions.export(s.id)
    assert [e.type for e in events] == ["session_started", "session_ended"]
    assert events[-1].data["status"] == "failed"
    assert "ingest commit failed: ledger unreachable" in events[-1].data["error"]
    assert events[-1].data["dropped"] == 2


async def test_importing_the_same_jsonl_twice_appends_once(client: SessionsClient) -> None:
    lines = [
        '{"ts":"2026-12-02T21:40:00.001Z","session":"imp-1","seq":1,"type":"session_started",'
        '"data":{"command":"scan"}}',
        '{"ts":"2026-12-02T21:40:00.002Z","session":"imp-1","seq":2,"type":"scan_started",'
        '"data":{"root":"/"}}',
    ]
    canon = [to_canonical(SessionEvent.from_json(line)) for line in lines]
    first = await client.writer.record(canon)
    assert [p.process_seq for p in first] == [1, 2]
    again = [to_canonical(SessionEvent.from_json(line)) for line in lines]
    second = await client.writer.record(again)
    assert [p.process_seq for p in second] == [1, 2]
    exported = await client.sessions.export("imp-1")
    assert [e.to_json() for e in exported] == lines
    assert fold(exported).command == "scan"
