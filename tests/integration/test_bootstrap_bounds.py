"""bootstrap.require_jetstream asks nats-py's own ``nc.request``: its wait is bounded by
its timeout even when the client's pending buffer is full and the server hung (nats-py
waits for room there with no end of its own, and swallows a cancellation)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import nats
import pytest

from jetsource.core.natsping import round_trip
from jetsource.core.settings import JetsourceSettings, NatsSettings
from jetsource.devstack.servers import NatsServer, free_port, stop_pid
from jetsource.eventstore.bootstrap import require_jetstream
from tests.integration.test_jsapi_lean_requests import _fill_the_socket, _stop_now

pytestmark = pytest.mark.integration


async def test_require_jetstream_ends_on_time_with_a_hung_server_and_a_full_buffer(
    tmp_path: Path, unique: str
) -> None:
    """It decides nothing without an answer in time, and returns: it waited until the
    server was continued (SIGSTOP; the test's own 3 s bound ended it)."""
    server = NatsServer(tmp_path, port=free_port(), monitor_port=free_port())
    proc = server.start()
    try:
        await asyncio.to_thread(server.wait_ready, proc, 30)
        nc = await nats.connect(server.address(), pending_size=32 * 1024)
        settings = JetsourceSettings(nats=NatsSettings(url=server.address()))
        _stop_now(proc.pid)
        try:
            await _fill_the_socket(nc, unique)
            started = time.monotonic()
            async with asyncio.timeout(3):  # the bug: no end before SIGCONT
                await require_jetstream(nc, settings, timeout_s=0.5)
            assert 0.45 < time.monotonic() - started < 1.0
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert await round_trip(nc, 10)
        await require_jetstream(nc, settings, timeout_s=5)  # JetStream on: nothing raised
        await nc.close()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        stop_pid(proc.pid)
        proc.wait(10)
