"""Hung, not gone: a server stopped with SIGSTOP keeps its TCP connections open and
answers nothing. Health must say so within a bound (the projector's and the
snapshotter's /healthz 503, the query service NOT_SERVING) and come back on its own
after SIGCONT, with the connection still working. The chaos rows ``pause-*``
(tests/chaos/pauses.py) show the same on the whole stack under load."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from jetsource.core.settings import JetsourceSettings, NatsSettings
from jetsource.devstack.servers import NatsServer, free_port
from jetsource.projection.bootstrap import open_projection
from jetsource.projection.host import ProjectorService
from jetsource.query.server import build, follow_stores
from jetsource.query.settings import QuerySettings
from tests.infra import Server, _embedded
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.integration

NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING: int = health_pb2.HealthCheckResponse.SERVING


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, f"not within {timeout}s"
        await asyncio.sleep(0.2)
    return time.monotonic() - started


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[Server]:
    server = _embedded(NatsServer(tmp_path / "nats", port=free_port(), monitor_port=free_port()))
    yield server
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGCONT)  # a stopped server cannot exit
    server.stop()


async def test_health_follows_a_hung_nats_server(
    settings: JetsourceSettings, unique: str, private_nats: Server
) -> None:
    proc = private_nats.proc
    assert proc is not None
    base = settings.model_copy(update={"nats": NatsSettings(url=private_nats.url)})
    ps = projector_settings(base, unique, models=["context"])
    p = await open_projection(ps)
    service = ProjectorService(p)
    await service.sync()
    query = await build(
        QuerySettings(
            **{
                k: getattr(ps, k)
                for k in ("nats", "valkey", "graph", "eventstore", "snapshots", "projector")
            }
        )
    )
    watcher = asyncio.create_task(follow_stores(query, 0.2))

    async def query_status() -> int:
        answer = await query.grpc.health.Check(health_pb2.HealthCheckRequest(service=""), None)
        return int(answer.status)

    async def query_is(status: int) -> bool:
        return await query_status() == status

    try:
        await service.probe()
        assert service.healthy() and not service.unreachable
        await eventually(lambda: query_is(SERVING))

        os.kill(proc.pid, signal.SIGSTOP)
        try:
            # The client still says connected: only a round trip tells.
            assert p.nc.is_connected
            started = time.monotonic()
            await service.probe()  # probes wait 2 s for an answer
            assert "nats" in service.unreachable, service.unreachable
            assert not service.healthy()
            assert time.monotonic() - started < 5
            # A second probe waits for the same PING (none piles up), still down.
            await service.probe()
            assert "nats" in service.unreachable
            await eventually(lambda: query_is(NOT_SERVING), timeout=10)
        finally:
            os.kill(proc.pid, signal.SIGCONT)

        async def projector_healthy() -> bool:
            await service.probe()
            return service.healthy()

        assert await eventually(projector_healthy, timeout=10) < 10
        await eventually(lambda: query_is(SERVING), timeout=10)
        # The connection reads again (a flush that timed out would have killed the
        # client's read loop when its PONG came: connected, and deaf).
        info = await asyncio.wait_for(p.store.stream_info(), 5)
        assert info["config"]["name"] == ps.eventstore.stream
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await query.stop(0)
        await p.close()
