"""The process query service's health tells the truth: NOT_SERVING while Valkey (every
read model) does not answer, reads UNAVAILABLE meanwhile (never INTERNAL), SERVING and
answering again on its own. Valkey is a private server the test stops and starts again
on the same port and data directory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from jetsource._gen.process.v1 import query_pb2 as q
from jetsource._gen.process.v1 import query_pb2_grpc as q_grpc
from jetsource.core.settings import JetsourceSettings, ValkeySettings
from jetsource.devstack.servers import ValkeyServer, free_port
from jetsource.processquery.server import build, follow_valkey
from tests.infra import _embedded
from tests.projector_fixtures import process_query_settings, projector_settings

pytestmark = pytest.mark.integration

# grpc_health ships no types: its status values, typed here once.
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout
        await asyncio.sleep(0.2)


async def test_health_and_reads_follow_valkey_down_and_back(
    settings: JetsourceSettings, unique: str, tmp_path: Path
) -> None:
    embedded = ValkeyServer(tmp_path / "valkey", port=free_port())
    valkey = _embedded(embedded)
    try:
        base = settings.model_copy(update={"valkey": ValkeySettings(url=valkey.url)})
        query = await build(process_query_settings(projector_settings(base, unique)))
        watcher = asyncio.create_task(follow_valkey(query, 0.2))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{query.port}")
        reads = q_grpc.ProcessQueryServiceStub(channel)

        async def status() -> int:
            answer = await query.grpc.health.Check(health_pb2.HealthCheckRequest(service=""), None)
            return int(answer.status)

        async def get() -> grpc.StatusCode:
            try:
                await reads.GetProcess(q.GetProcessRequest(process_id="nobody"), timeout=5)
            except grpc.aio.AioRpcError as exc:
                code: grpc.StatusCode = exc.code()
                return code
            return grpc.StatusCode.OK

        try:
            assert await status() == SERVING
            assert await get() == grpc.StatusCode.NOT_FOUND

            valkey.stop()

            async def not_serving() -> bool:
                return await status() == NOT_SERVING

            await eventually(not_serving)
            assert await get() == grpc.StatusCode.UNAVAILABLE

            valkey = _embedded(embedded)  # the same port and data directory

            async def serving_again() -> bool:
                return await status() == SERVING

            await eventually(serving_again)
            assert await get() == grpc.StatusCode.NOT_FOUND
        finally:
            watcher.cancel()
            await channel.close()
            await query.stop(0)
    finally:
        valkey.stop()
