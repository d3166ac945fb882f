"""The SDK's session API on real servers (NATS, Valkey, graph store: the process ledger
stack): ``observer.session(...)`` records ``session_started`` first (seq 1) and
``session_ended`` last: completed on a normal exit, failed on an exception,
interrupted on KeyboardInterrupt or cancellation; the exception goes on."""

from __future__ import annotations

import asyncio

import pytest

from jetsource.domains.sessions.format import SessionEvent
from jetsource.domains.sessions.ledger import QueryReader
from jetsource.sdk import Observer
from tests.e2e.test_process_query import Stack, stack  # noqa: F401  (the fixture)

pytestmark = pytest.mark.e2e


async def recorded(stack: Stack, session_id: str) -> list[SessionEvent]:  # noqa: F811
    """The session's events once its end is in the read models."""
    reader = QueryReader(stack.reads)
    events: list[SessionEvent] = []
    for _ in range(300):
        events = [r.event for r in await reader.events(session_id)]
        if events and events[-1].type == "session_ended":
            break
        await asyncio.sleep(0.05)
    return events


def observer_of(stack: Stack) -> Observer:  # noqa: F811
    return Observer(f"127.0.0.1:{stack.observer.port}", source="sdk-test")


async def test_a_normal_exit_ends_the_session_completed_last(stack: Stack) -> None:  # noqa: F811
    async with observer_of(stack) as observer:
        async with observer.session("context generate", argv=["gen", "-v"]) as s:
            s.emit("level_started", {"level": 0, "nodes": 3})
            async with observer.process("llm call", kind="provider") as p:
                p.emit("provider_request_sent", {"request_id": "r1"})
            s.emit("level_completed", {"level": 0})
        await observer.flush()
    events = await recorded(stack, s.id)
    assert [(e.seq, e.type) for e in events] == [
        (1, "session_started"),
        (2, "level_started"),
        (3, "level_completed"),
        (4, "session_ended"),
    ]
    assert events[0].data["command"] == "context generate"
    assert events[0].data["argv"] == ["gen", "-v"]
    assert events[-1].data["status"] == "completed"
    # A process of the SDK inside the block nests under the session.
    procs = await QueryReader(stack.reads).processes()
    for _ in range(200):
        if p.process_id in procs:
            break
        await asyncio.sleep(0.05)
        procs = await QueryReader(stack.reads).processes()
    assert procs[p.process_id].parent == s.id


async def test_an_exception_ends_the_session_failed_last_and_goes_on(
    stack: Stack,  # noqa: F811
) -> None:
    async with observer_of(stack) as observer:
        with pytest.raises(ValueError, match="boom"):
            async with observer.session("scan") as s:
                s.emit("scan_started", {"root": "/"})
                raise ValueError("boom")
    events = await recorded(stack, s.id)
    assert [e.type for e in events] == ["session_started", "scan_started", "session_ended"]
    assert events[0].seq == 1
    assert events[-1].data["status"] == "failed"
    assert events[-1].data["error"] == "ValueError: boom"


async def test_ctrl_c_ends_the_session_interrupted_last(stack: Stack) -> None:  # noqa: F811
    async with observer_of(stack) as observer:
        with pytest.raises(KeyboardInterrupt):
            async with observer.session("watch") as s:
                s.emit("watch_started", {"paths": ["src"]})
                raise KeyboardInterrupt
    events = await recorded(stack, s.id)
    assert [e.type for e in events] == ["session_started", "watch_started", "session_ended"]
    assert events[0].seq == 1
    assert events[-1].data == {
        "status": "interrupted",
        "error": "KeyboardInterrupt",
        "duration_ms": events[-1].data["duration_ms"],
    }


async def test_cancellation_ends_the_session_interrupted_last(stack: Stack) -> None:  # noqa: F811
    started = asyncio.Event()
    ids: list[str] = []

    async def run(observer: Observer) -> None:
        async with observer.session("serve") as s:
            ids.append(s.id)
            s.emit("request_served", {"n": 1})
            started.set()
            await asyncio.sleep(3600)

    async with observer_of(stack) as observer:
        task = asyncio.create_task(run(observer))
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    events = await recorded(stack, ids[0])
    assert [(e.seq, e.type) for e in events] == [
        (1, "session_started"),
        (2, "request_served"),
        (3, "session_ended"),
    ]
    assert (events[-1].data["status"], events[-1].data["error"]) == (
        "interrupted",
        "CancelledError",
    )
