"""A PING probe whose caller is cancelled at the moment the client cancels its PINGs
(a reconnect, a close) ends cancelled. It returned False instead, swallowing the
caller's cancellation: the query service's store watcher then looped on after its
cancel, and whoever awaited its end (the service's stop) waited for ever."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jetsource.core.natsping import PingProbe


class Client:
    """What PingProbe uses of a nats-py client."""

    def __init__(self) -> None:
        self.is_connected = True
        self.stats: dict[str, int] = {"reconnects": 0}
        self.pings: list[asyncio.Future[Any]] = []
        self._pending: list[bytes] = []
        self._pending_data_size = 0
        self._flusher_task: Any = None
        self._transport: Any = None

    async def _send_ping(self, future: asyncio.Future[Any]) -> None:
        self.pings.append(future)


async def test_a_caller_cancelled_with_the_ping_is_cancelled() -> None:
    nc = Client()
    probe = PingProbe(nc)  # type: ignore[arg-type]
    asking = asyncio.create_task(probe.answers(10))
    await asyncio.sleep(0.01)
    nc.pings[0].cancel()  # the client cancels its PINGs ...
    asking.cancel()  # ... as the caller is cancelled
    with pytest.raises(asyncio.CancelledError):
        await asking


async def test_a_ping_the_client_cancelled_alone_is_no_answer() -> None:
    nc = Client()
    probe = PingProbe(nc)  # type: ignore[arg-type]
    asking = asyncio.create_task(probe.answers(10))
    await asyncio.sleep(0.01)
    nc.pings[0].cancel()
    assert await asking is False


async def test_an_answered_ping_is_true() -> None:
    nc = Client()
    probe = PingProbe(nc)  # type: ignore[arg-type]
    asking = asyncio.create_task(probe.answers(10))
    await asyncio.sleep(0.01)
    nc.pings[0].set_result(True)
    assert await asking is True


@pytest.mark.parametrize("steps", range(6))
async def test_a_caller_cancelled_as_the_pong_lands_is_cancelled(steps: int) -> None:
    """The PONG and the caller's cancel in the same few loop iterations: the call
    ends cancelled unless it had already returned. With ``wait_for`` (Python 3.11) it
    returned True and dropped the cancel; the store watcher looped on, and
    test_health_follows_a_hung_nats_server hung 300 s in CI twice."""
    nc = Client()
    probe = PingProbe(nc)  # type: ignore[arg-type]
    asking = asyncio.create_task(probe.answers(10))
    await asyncio.sleep(0.01)
    nc.pings[0].set_result(True)
    for _ in range(steps):
        await asyncio.sleep(0)
    if asking.done():
        assert asking.result() is True
        return
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def writelines(self, commands: list[bytes]) -> None:
        self.written.extend(commands)


async def test_in_the_dead_socket_window_the_pending_commands_stay_pending() -> None:
    """The flusher stopped (the socket died), the client still says connected: the
    probe wrote the pending commands to the transport with no drain (lost with the
    socket, and round the inline writes' lock). They stay pending for the reconnect;
    the probe says no answer and sends no PING."""
    nc = Client()
    nc._pending = [b"PUB a 1\r\n1\r\n", b"PUB b 1\r\n2\r\n"]
    nc._pending_data_size = sum(len(c) for c in nc._pending)
    flusher = asyncio.get_running_loop().create_future()
    flusher.set_result(None)  # the flusher task, done
    nc._flusher_task = flusher
    nc._transport = transport = Transport()
    assert await PingProbe(nc).answers(0.1) is False  # type: ignore[arg-type]
    assert transport.written == []
    assert nc._pending == [b"PUB a 1\r\n1\r\n", b"PUB b 1\r\n2\r\n"]
    assert nc.pings == []
