"""The SDK's buffer bound with a batch in flight, made deterministic with a stub that
holds the send until the test lets it fail (the real observer is in
tests/integration/process_write/test_sdk.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from jetsource.sdk import Observer as Client
from jetsource.sdk import observe


class Unavailable(grpc.aio.AioRpcError):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details="down",
        )


class HeldStub:
    """RecordBatch waits for ``release``, then fails UNAVAILABLE."""

    def __init__(self, _channel: Any) -> None:
        self.release = asyncio.Event()
        self.calls = asyncio.Event()
        STUBS.append(self)

    async def RecordBatch(self, request: Any, **_: Any) -> Any:
        self.calls.set()
        await self.release.wait()
        raise Unavailable()


STUBS: list[HeldStub] = []


@pytest.mark.parametrize("in_flight", [False, True])
async def test_a_batch_in_flight_counts_against_the_buffer(
    monkeypatch: pytest.MonkeyPatch, in_flight: bool
) -> None:
    STUBS.clear()
    monkeypatch.setattr(observe, "pb_grpc", type("Stubs", (), {"ObserverServiceStub": HeldStub}))
    client = Client("127.0.0.1:1", batch_size=10, buffer_size=50, flush_interval_s=0.01)
    await client.start()
    p = client.process("offline", kind="job")
    await p.__aenter__()
    for i in range(80):
        p.emit("tick", {"i": i})
    assert client.stats.dropped == 31  # started + 80 ticks into 50
    if in_flight:
        await asyncio.wait_for(STUBS[0].calls.wait(), 5)  # 10 events now in flight
    await p.__aexit__(None, None, None)  # process_completed
    assert client.stats.dropped == 32, "the same bound with or without a send pending"
    STUBS[0].release.set()
    await asyncio.sleep(0.05)  # the send fails and its batch goes back to the front
    held = [*client._inflight, *client._buffer]
    assert len(held) == 50
    assert held[0].event_type == "process_started"
    assert held[-1].event_type == "process_completed"
    client.close_timeout_s = 0.1
    await client.close()
    assert client.stats.dropped == 82


async def test_a_process_interrupted_ending_is_kept_when_the_buffer_is_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The buffer drops the oldest event that is not a lifecycle event: the ledger's
    fourth ending, ``process_interrupted``, went first like any tick, so the process
    stayed running in the registry."""
    STUBS.clear()
    monkeypatch.setattr(observe, "pb_grpc", type("Stubs", (), {"ObserverServiceStub": HeldStub}))
    client = Client("127.0.0.1:1", batch_size=5, buffer_size=5, flush_interval_s=0.01)
    await client.start()
    p = client.process("offline", kind="job")
    await p.__aenter__()
    p.emit("process_interrupted", {"why": "by hand"})
    for i in range(10):
        p.emit("tick", {"i": i})
    held = [e.event_type for e in (*client._inflight, *client._buffer)]
    assert held[:2] == ["process_started", "process_interrupted"], held
    STUBS[0].release.set()
    client.close_timeout_s = 0.1
    await client.close()
