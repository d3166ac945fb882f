"""The ingress's connection cap (jetsource.ingest.transport.guarded_protocol), driven
with fake transports: over the cap, the oldest connection not being answered is closed
(one that finished answering is idle again, in its place by age), and when every one is
answering the new one is answered 503 and closed. Finding that oldest one looked at
every connection for each one over the cap (O(n) each); it is taken from a heap now:
the connections looked at are counted, not timed."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from jetsource.ingest.transport import BUSY, guarded_protocol


class Transport:
    def __init__(self) -> None:
        self.closing = False
        self.written = b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def write(self, data: bytes) -> None:
        self.written += data

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Server:
    def __init__(self, cap: int) -> None:
        self.protocol = guarded_protocol(60.0, max_connections=cap)
        self.state = ServerState()
        self.config = Config(app=lambda: None, log_config=None)  # leaves logging alone
        self.config.load()
        self.open: list[Any] = []

    def connect(self) -> Any:
        p = self.protocol(self.config, self.state, {})
        p.connection_made(Transport())  # type: ignore[arg-type]
        self.open.append(p)
        return p

    def settle(self) -> None:
        """The loop's next turn: closed connections are lost."""
        for p in [p for p in self.open if p.transport.closing]:
            self.open.remove(p)
            p.connection_lost(None)


def answering(p: Any) -> None:
    p.cycle = SimpleNamespace(response_complete=False, message_event=asyncio.Event())


def answered(p: Any) -> None:
    p.cycle.response_complete = True
    p.on_response_complete()


async def test_over_the_cap_the_oldest_idle_one_is_closed_and_when_none_is_503() -> None:
    server = Server(3)
    a, b, c = server.connect(), server.connect(), server.connect()
    answering(a)
    d = server.connect()  # a is answered: b, the oldest idle one, goes
    assert b.transport.closing and not (a.transport.closing or c.transport.closing)
    server.settle()
    answered(a)  # idle again, and older than c
    e = server.connect()
    assert a.transport.closing and not c.transport.closing
    server.settle()
    for p in (c, d, e):
        answering(p)
    f = server.connect()
    assert f.transport.written == BUSY and f.transport.closing
    assert not any(p.transport.closing for p in (c, d, e))
    server.settle()
    answered(d)
    g = server.connect()
    assert d.transport.closing and not g.transport.closing
    for p in server.open:
        p.connection_lost(None)


@pytest.mark.parametrize("answered_first", [False, True])
async def test_a_burst_over_the_cap_looks_at_each_connection_a_few_times(
    answered_first: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap, burst = 200, 400
    server = Server(cap)
    looked = 0
    answering_of = server.protocol._answering  # type: ignore[attr-defined]

    def counted(self: Any) -> bool:
        nonlocal looked
        looked += 1
        return bool(answering_of(self))

    monkeypatch.setattr(server.protocol, "_answering", counted)
    first = [server.connect() for _ in range(cap)]
    for p in first[: cap // 2] if answered_first else []:
        answering(p)
    for _ in range(burst):
        server.connect()
        server.settle()
    assert len(server.state.connections) == cap
    assert looked <= 3 * (cap + burst)  # before: about cap per connection over it
    for p in server.open:
        p.connection_lost(None)
    await asyncio.sleep(0)
