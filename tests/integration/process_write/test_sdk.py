"""The Python SDK against a real observer: nesting through contextvars (asyncio
tasks too), the lifecycle events, batching, and the policy when the observer is
unreachable (buffer, drop-oldest with a count, resend with the same ids)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jetsource.devstack.servers import free_port
from jetsource.observer.server import Observer, build
from jetsource.sdk import Observer as Client
from jetsource.sdk.observe import current_process
from tests.infra import Server
from tests.integration.process_write.conftest import observer_settings

pytestmark = pytest.mark.integration


async def events_of(observer: Observer, process_id: str) -> list[tuple[str, dict[str, Any], str]]:
    return [
        (r.event_type, dict(r.event.data), r.envelope.parent_aggregate_id)  # type: ignore[union-attr]
        for r in await observer.store.read_aggregate(process_id)
    ]


async def test_nested_processes_take_their_parent_from_the_context_across_tasks(
    observer: Observer,
) -> None:
    client = Client(f"127.0.0.1:{observer.port}", source="pytest", flush_interval_s=0.01)
    ids: dict[str, str] = {}
    async with client:
        async with client.process("generate", kind="pipeline", attributes={"run": 7}) as root:
            ids["root"] = root.process_id
            root.emit("level_started", {"level": 1})

            async def stage(i: int) -> None:
                async with client.process(f"stage-{i}", kind="stage") as s:
                    ids[f"stage-{i}"] = s.process_id
                    assert current_process() is s
                    async with client.process(f"tool-{i}", kind="tool") as t:
                        ids[f"tool-{i}"] = t.process_id
                        t.emit("tool_called", {"i": i})
                    if i == 2:
                        raise ValueError("boom")

            outcomes = await asyncio.gather(*(stage(i) for i in range(3)), return_exceptions=True)
            assert isinstance(outcomes[2], ValueError)
            assert current_process() is root

            async def hangs() -> None:
                async with client.process("slow", kind="tool") as slow:
                    ids["slow"] = slow.process_id
                    await asyncio.sleep(60)

            task = asyncio.create_task(hangs())
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await client.flush()
    assert client.stats.dropped == 0 and client.stats.refused == 0
    assert client.stats.sent == client.stats.emitted

    root_events = await events_of(observer, ids["root"])
    assert [t for t, _, _ in root_events] == [
        "process_started",
        "level_started",
        "process_completed",
    ]
    assert root_events[0][1] == {"kind": "pipeline", "name": "generate", "run": 7}
    assert root_events[0][2] == ""
    for i in range(3):
        stage_events = await events_of(observer, ids[f"stage-{i}"])
        assert stage_events[0][2] == ids["root"], "a stage is a child of the root"
        assert stage_events[-1][0] == ("process_failed" if i == 2 else "process_completed")
        tool = await events_of(observer, ids[f"tool-{i}"])
        assert [t for t, _, p in tool] == ["process_started", "tool_called", "process_completed"]
        assert {p for _, _, p in tool} == {ids[f"stage-{i}"]}
    failed = (await events_of(observer, ids["stage-2"]))[-1][1]
    assert failed["error"] == "ValueError: boom"
    slow = await events_of(observer, ids["slow"])
    assert [t for t, _, _ in slow] == ["process_started", "process_cancelled"]


async def test_an_unreachable_observer_keeps_the_newest_events_and_counts_the_dropped(
    nats_server: Server,
) -> None:
    port = free_port()
    client = Client(
        f"127.0.0.1:{port}",
        batch_size=10,
        buffer_size=50,
        flush_interval_s=0.01,
        call_timeout_s=0.5,
    )
    async with client:
        p = client.process("offline", kind="job")
        async with p:
            for i in range(80):
                p.emit("tick", {"i": i})
            await asyncio.sleep(0.3)  # the flush keeps failing meanwhile
            assert client.stats.retries >= 1
        # started + 80 ticks + completed = 82 emitted into a buffer of 50 (a batch in
        # flight counts, so this does not depend on when the completion came)
        assert client.stats.dropped == 82 - 50
        server = await build(observer_settings(nats_server, grpc_port=port))
        try:
            await asyncio.wait_for(client.flush(), 30)
            stored = await server.store.read_aggregate(p.process_id)
        finally:
            await server.stop(1.0)
    assert client.stats.sent == 50
    ticks = [int(r.event.data["i"]) for r in stored if r.event_type == "tick"]  # type: ignore[union-attr]
    # The oldest were dropped and the newest kept, in order: ticks 31-79 less one, the
    # oldest queued when the completion came (31, or 40 when ticks 31-39 were in flight).
    assert len(ticks) == 48 and ticks == sorted(ticks)
    assert set(range(41, 80)) <= set(ticks) and min(ticks) >= 31
    assert stored[0].event_type == "process_started"
    assert stored[-1].event_type == "process_completed"
    assert [r.version for r in stored] == list(range(1, 51))


async def test_an_event_the_observer_refuses_is_dropped_alone(observer: Observer) -> None:
    client = Client(f"127.0.0.1:{observer.port}", flush_interval_s=0.01)
    async with client:
        async with client.process("mixed") as p:
            p.emit("small", {"x": 1})
            p.emit("huge", {"blob": "x" * 100_000})  # above the observer's 64 KiB limit
            p.emit("small", {"x": 2})
        await client.flush()
    assert client.stats.refused == 1
    types = [t for t, _, _ in await events_of(observer, p.process_id)]
    assert types == ["process_started", "small", "small", "process_completed"]


def test_emit_refuses_a_malformed_type_at_the_call() -> None:
    client = Client("127.0.0.1:1")
    p = client.process("x")
    with pytest.raises(ValueError, match="snake_case"):
        p.emit("NotSnake")
