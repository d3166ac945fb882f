"""A gRPC endpoint's stop is bounded: a server whose stop never returns (grpc aio can
wait for good on a call its core dropped) is left behind with a warning."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from grpc_health.v1 import health

from jetsource.core import grpcserver
from jetsource.core.grpcserver import GrpcEndpoint


class Stuck:
    def __init__(self) -> None:
        self.asked: list[float | None] = []

    async def stop(self, grace: float | None) -> None:
        self.asked.append(grace)
        await asyncio.Event().wait()  # never


async def test_a_server_that_never_stops_is_left_behind_within_the_bound(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(grpcserver, "STOP_MARGIN_S", 0.2)
    server: Any = Stuck()
    endpoint = GrpcEndpoint(server, 0, health.aio.HealthServicer())
    started = time.monotonic()
    await endpoint.stop(0.3)
    assert 0.4 <= time.monotonic() - started < 2
    assert server.asked == [0.3]
    assert "did not stop" in caplog.text
