"""Health that tells the truth (#18): a service that cannot reach a store it needs is
not healthy (the projector's /healthz 503, the query service NOT_SERVING), and is
healthy again on its own once the store answers. Valkey here is a private server the
test stops and starts again on the same port and data directory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from jetsource.core.settings import JetsourceSettings, ValkeySettings
from jetsource.devstack.servers import ValkeyServer, free_port
from jetsource.projection.bootstrap import open_projection
from jetsource.projection.host import ProjectorService
from jetsource.query.server import build, follow_stores
from jetsource.query.settings import QueryOptions, QuerySettings
from tests.infra import _embedded
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.integration

# grpc_health ships no types: its status values, typed here once.
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout
        await asyncio.sleep(0.2)


async def test_health_follows_valkey_down_and_back(
    settings: JetsourceSettings, unique: str, tmp_path: Path
) -> None:
    embedded = ValkeyServer(tmp_path / "valkey", port=free_port())
    valkey = _embedded(embedded)
    try:
        base = settings.model_copy(update={"valkey": ValkeySettings(url=valkey.url)})
        ps = projector_settings(base, unique, models=["context", "timeline"])
        p = await open_projection(ps)
        service = ProjectorService(p)
        await service.sync()
        query = await build(
            QuerySettings(
                **{
                    k: getattr(ps, k)
                    for k in ("nats", "valkey", "graph", "eventstore", "snapshots", "projector")
                },
                query=QueryOptions(grpc_port=0, metrics_port=0),  # not make up's 50052
            )
        )
        watcher = asyncio.create_task(follow_stores(query, 0.2))

        async def query_status() -> int:
            from grpc_health.v1 import health_pb2 as h

            answer = await query.grpc.health.Check(h.HealthCheckRequest(service=""), None)
            return int(answer.status)

        try:
            await service.probe()
            assert service.healthy() and not service.unreachable

            valkey.stop()
            await service.probe()
            assert set(service.unreachable) == {"valkey"} and not service.healthy()

            async def not_serving() -> bool:
                return await query_status() == NOT_SERVING

            await eventually(not_serving)

            valkey = _embedded(embedded)  # the same port and data directory

            async def serving_again() -> bool:
                await service.probe()
                return service.healthy() and (await query_status() == SERVING)

            await eventually(serving_again)
        finally:
            watcher.cancel()
            for worker, _ in service.workers.values():
                worker.stop()
            await asyncio.gather(*(t for _, t in service.workers.values()), return_exceptions=True)
            await query.stop(0)
            await p.close()
    finally:
        valkey.stop()
