"""The projector's pull consumer asks for idle heartbeats and takes its pull requests
for lost (a reconnect, a server restart) when two heartbeats have not come, instead of
waiting out their whole expiry before it asks again (issue 23, freshness)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from jetsource.eventstore import jsapi


@dataclass
class FakeMsg:
    subject: str
    data: bytes = b""
    reply: str = ""
    headers: dict[str, str] | None = None


@dataclass
class FakeNats:
    """What PullConsumer uses of a client: an inbox, a subscription, publish."""

    requests: list[dict[str, Any]] = field(default_factory=list)

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def subscribe(self, subject: str, cb: Any) -> object:
        return object()

    async def publish(self, subject: str, data: bytes, reply: str = "") -> None:
        if subject.startswith("$JS.API.CONSUMER.MSG.NEXT."):
            self.requests.append(json.loads(data))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    # jsapi reads the clock as time.monotonic(): the time module's own attribute.
    monkeypatch.setattr(time, "monotonic", clock)
    return clock


def heartbeat() -> FakeMsg:
    return FakeMsg("_INBOX.test", headers={"Status": "100", "Description": "Idle Heartbeat"})


async def test_requests_ask_for_heartbeats_within_the_servers_bound(clock: Clock) -> None:
    nc = FakeNats()
    pull = jsapi.PullConsumer(nc, "S", "d", batch=100, expires_s=5.0)  # type: ignore[arg-type]
    assert await pull.next_batch(100, 0) == []
    assert await pull.next_batch(100, 0) == []
    # Two requests outstanding, each with a heartbeat the server accepts (at most half
    # the expiry) and no more than a second apart.
    assert len(nc.requests) == 2
    for body in nc.requests:
        assert body["batch"] == 100
        assert body["expires"] == 5_000_000_000
        assert body["idle_heartbeat"] == 1_000_000_000
    short = jsapi.PullConsumer(nc, "S", "d", batch=10, expires_s=0.5)  # type: ignore[arg-type]
    await short.next_batch(10, 0)
    assert nc.requests[-1]["idle_heartbeat"] * 2 <= nc.requests[-1]["expires"]


async def test_silent_requests_are_asked_again_after_two_heartbeats(clock: Clock) -> None:
    nc = FakeNats()
    pull = jsapi.PullConsumer(nc, "S", "d", batch=100, expires_s=5.0)  # type: ignore[arg-type]
    await pull.next_batch(100, 0)
    await pull.next_batch(100, 0)
    assert len(nc.requests) == 2
    # Heartbeats keep coming: the requests are alive, nothing is asked again.
    for _ in range(4):
        clock.now += 1.0
        await pull._on_message(heartbeat())  # type: ignore[arg-type]
        await pull.next_batch(100, 0)
    assert len(nc.requests) == 2
    # Then silence (the connection went): two heartbeats missed, well before the
    # 5 s expiry, the requests are taken for lost and asked again.
    clock.now += 2.0
    await pull.next_batch(100, 0)
    assert len(nc.requests) == 2
    clock.now += 0.5
    await pull.next_batch(100, 0)
    assert len(nc.requests) == 3  # asked again: nothing is owed any more
    await pull.next_batch(100, 0)
    assert len(nc.requests) == 4  # and the second one, as at the start


async def test_messages_count_as_signs_of_life(clock: Clock) -> None:
    nc = FakeNats()
    pull = jsapi.PullConsumer(nc, "S", "d", batch=1000, expires_s=5.0)  # type: ignore[arg-type]
    await pull.next_batch(1000, 0)
    await pull.next_batch(1000, 0)
    reply = "$JS.ACK.S.d.1.{seq}.{seq}.1700000000000000000.0"
    for seq in range(1, 40):
        clock.now += 0.1  # messages flow (no heartbeats while they do)
        await pull._on_message(FakeMsg("x.y", b"", reply.format(seq=seq)))  # type: ignore[arg-type]
        await pull.next_batch(1000, 0)
    assert len(nc.requests) == 2
