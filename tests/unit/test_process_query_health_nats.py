"""The process query service's gRPC health (the chart's readiness) follows NATS too:
its reads need the control bucket (which version each read model serves) and answer
UNAVAILABLE without it, yet the health stayed SERVING through a NATS outage while
/healthz said 503 and every other service said NOT_SERVING."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from jetsource.processquery.server import follow_valkey

SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


class FakeHealth:
    def __init__(self) -> None:
        self.status: dict[str, int] = {}

    async def set(self, name: str, status: int) -> None:
        self.status[name] = status


class FakeRedis:
    def __init__(self) -> None:
        self.up = True

    async def ping(self) -> bool:
        if not self.up:
            raise ConnectionError("Connection refused")
        return True


class FakeQuery:
    def __init__(self) -> None:
        self.redis = FakeRedis()
        self.nc: Any = type("Nc", (), {"is_connected": True})()
        self.grpc: Any = type("G", (), {"health": FakeHealth()})()
        self.valkey_down = False


async def until(check: Any, tries: int = 200) -> None:
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within 2 s")


async def test_not_serving_while_nats_is_away_and_serving_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    query: Any = FakeQuery()
    caplog.set_level(logging.INFO, logger="jetsource.process_query")
    task = asyncio.create_task(follow_valkey(query, 0.02))
    try:
        await asyncio.sleep(0.1)
        assert query.grpc.health.status.get("", SERVING) == SERVING

        query.nc.is_connected = False
        await until(lambda: query.grpc.health.status.get("") == NOT_SERVING)
        assert query.grpc.health.status["jetsource.process.v1.ProcessQueryService"] == NOT_SERVING
        assert any("nats is not connected" in r.getMessage() for r in caplog.records)
        assert not query.valkey_down  # /healthz reads NATS itself

        query.nc.is_connected = True
        await until(lambda: query.grpc.health.status.get("") == SERVING)

        query.redis.up = False  # Valkey still as before
        await until(lambda: query.grpc.health.status.get("") == NOT_SERVING)
        assert query.valkey_down
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
