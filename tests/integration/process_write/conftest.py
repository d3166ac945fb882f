"""An observer in this process on the session's NATS server, and a typed stub."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from jetsource._gen.process.v1 import observer_pb2_grpc as pb_grpc
from jetsource.core.settings import NatsSettings
from jetsource.observer.server import Observer, build
from jetsource.observer.settings import ObserverOptions, ObserverSettings
from tests.infra import Server


def observer_settings(nats_server: Server, **options: object) -> ObserverSettings:
    return ObserverSettings(
        nats=NatsSettings(url=nats_server.url),
        observer=ObserverOptions(**{"grpc_port": 0, "metrics_port": 0, **options}),  # type: ignore[arg-type]
    )


@pytest.fixture
async def observer(nats_server: Server) -> AsyncIterator[Observer]:
    o = await build(observer_settings(nats_server, max_payload_bytes=64 * 1024))
    yield o
    await o.stop(1.0)


@pytest.fixture
async def stub(observer: Observer) -> AsyncIterator[pb_grpc.ObserverServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{observer.port}") as channel:
        yield pb_grpc.ObserverServiceStub(channel)
