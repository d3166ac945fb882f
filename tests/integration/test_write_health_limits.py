"""The write-health probe (publisher, observer) names an event stream that refuses new
messages at its limits: ``max_msgs`` with discard new was not looked at, so health came
back SERVING within a second while every append was refused "maximum messages
exceeded"; a stream that discards old messages at a limit takes every write and is
not reported."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import DiscardPolicy, StreamConfig

from jetsource.core.writehealth import WriteHealth
from jetsource.devstack.servers import NatsServer, free_port, stop_pid
from tests.infra import Server

pytestmark = pytest.mark.integration


class _Gauge:
    def set(self, value: float) -> None:
        pass


@pytest.mark.parametrize(
    ("limit", "discard", "problem"),
    [
        ({"max_msgs": 2}, DiscardPolicy.NEW, "is at its max_msgs (2) (discard new)"),
        ({"max_msgs": 2}, DiscardPolicy.OLD, ""),
        ({"max_bytes": 200}, DiscardPolicy.OLD, ""),
    ],
)
async def test_a_stream_at_a_limit_it_refuses_at_is_named(
    nats_server: Server, unique: str, limit: dict[str, Any], discard: DiscardPolicy, problem: str
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream = f"WH_{unique}"
    try:
        await js.add_stream(
            StreamConfig(name=stream, subjects=[f"wh{unique}.>"], discard=discard, **limit)
        )
        health = WriteHealth(nc, stream, "test", _Gauge(), who="test")
        assert await health.probe() == ""
        for _ in range(3):
            try:
                await js.publish(f"wh{unique}.a", b"x" * 90, stream=stream)
            except nats.js.errors.APIError:
                break  # refused: full
        said = await health.probe()
        assert said == (f"stream {stream} {problem}" if problem else ""), said
        if problem:  # the way back: the limit raised
            info = await js.stream_info(stream)
            info.config.max_msgs = info.config.max_bytes = -1
            await js.update_stream(info.config)
            assert await health.probe() == ""
    finally:
        await js.delete_stream(stream)
        await nc.close()


async def test_the_probe_ends_on_time_with_a_hung_server_and_a_full_buffer(
    tmp_path: Path, unique: str
) -> None:
    """The probe asked nats-py's own JetStream calls, whose wait for room in a full
    pending buffer has no end: with the server hung (SIGSTOP) the probe never ended, so
    health stayed SERVING until the server came back. Each call is bounded now, and a
    hung server is said as one that does not answer."""
    from tests.integration.test_jsapi_lean_requests import _fill_the_socket, _stop_now

    server = NatsServer(tmp_path, port=free_port(), monitor_port=free_port())
    proc = server.start()
    try:
        await asyncio.to_thread(server.wait_ready, proc, 30)
        nc = await nats.connect(server.address(), pending_size=32 * 1024)
        health = WriteHealth(
            nc, f"WH_{unique}", "test", _Gauge(), who="test", request_timeout_s=0.5
        )
        _stop_now(proc.pid)
        try:
            await _fill_the_socket(nc, unique)
            started = time.monotonic()
            async with asyncio.timeout(3):  # the bug: no end before SIGCONT
                said = await health.probe()
            assert 0.45 < time.monotonic() - started < 1.0
            assert "did not answer the probe" in said, said
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        await nc.close()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        stop_pid(proc.pid)
        proc.wait(10)
