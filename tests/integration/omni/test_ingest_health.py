"""The ingress's /healthz and /readyz on real servers: each dependency reported, and
a Valkey outage (the reads' store) told apart from a NATS one. With Valkey down the
webhooks are still stored and /healthz (the Helm chart's probes) stays 200, so the pod
neither leaves its Service nor restarts; /readyz and the body say that Valkey is down
and the reads answer 503 ``unavailable`` (not 500); OmniQueryService's gRPC health
is NOT_SERVING meanwhile, as the other query services' are (its "liveness" SERVING);
Valkey back, healthy again.

The Valkey here is this test's own (stopped and started again), never the session's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jetsource.core.aio import stop_task
from jetsource.core.grpcserver import LIVENESS
from jetsource.domains.omni.query_service import SERVICE_NAME
from jetsource.ingest.app import Health, create_app
from jetsource.ingest.server import Ingest, build, follow_reads
from tests.fixtures.omni import HERE
from tests.infra import Server, start_valkey, track
from tests.integration.omni.harness import headers_for, omni_settings, route

pytestmark = pytest.mark.integration

TEXT = "whatsapp/cloud/text.json"
ALL_UP = {"ok": True, "nats": True, "valkey": True, "webhooks": True, "reads": True}


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[Server]:
    server = start_valkey(tmp_path)
    if server.embedded is None:
        server.stop()
        pytest.skip("stopping and starting Valkey needs the embedded server")
    yield server
    server.stop()


@pytest.fixture
async def ingest(nats_server: Server, own_valkey: Server, unique: str) -> AsyncIterator[Ingest]:
    service = await build(omni_settings(nats_server.url, own_valkey.url, unique))
    yield service
    await service.stop(0)


async def health(http: httpx.AsyncClient) -> tuple[tuple[int, Any], tuple[int, Any]]:
    healthz = await http.get("/healthz")
    readyz = await http.get("/readyz")
    return (healthz.status_code, healthz.json()), (readyz.status_code, readyz.json())


async def until_healthy(http: httpx.AsyncClient, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        answers = await health(http)
        if answers == ((200, ALL_UP), (200, ALL_UP)):
            return
        assert time.monotonic() < deadline, f"not healthy again: {answers}"
        await asyncio.sleep(0.2)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def grpc_health(ingest: Ingest) -> dict[str, int]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.grpc.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {
            name: (await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)).status
            for name in ("", SERVICE_NAME, LIVENESS)
        }


async def until_grpc(ingest: Ingest, reads: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    want = {"": reads, SERVICE_NAME: reads, LIVENESS: SERVING}
    while (got := await grpc_health(ingest)) != want:
        assert time.monotonic() < deadline, f"gRPC health {got}, not {want}"
        await asyncio.sleep(0.1)


async def test_valkey_down_is_reported_webhooks_still_stored_and_healthy_again(
    ingest: Ingest, own_valkey: Server
) -> None:
    transport = httpx.ASGITransport(app=ingest.app)
    follow = asyncio.create_task(follow_reads(ingest, 0.1))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as http:
            await valkey_down_and_back(ingest, own_valkey, http)
    finally:
        await stop_task(follow)


async def valkey_down_and_back(ingest: Ingest, own_valkey: Server, http: httpx.AsyncClient) -> None:
    assert await health(http) == ((200, ALL_UP), (200, ALL_UP))
    await until_grpc(ingest, SERVING)

    own_valkey.stop()
    healthz, readyz = await health(http)
    degraded = {"nats": True, "valkey": False, "webhooks": True, "reads": False}
    # /healthz (the chart's probes): webhooks can still be stored, so 200.
    assert healthz == (200, {"ok": True, **degraded})
    # /readyz: a dependency is down.
    assert readyz == (503, {"ok": False, **degraded})

    body = (HERE / TEXT).read_bytes()
    hook = await http.post(
        route("acme-cloud"), content=body, headers=headers_for("acme-cloud", body)
    )
    assert hook.status_code == 200, hook.text
    [event] = hook.json()["events"]
    assert event["stored"] is True
    history = await ingest.store.read_aggregate(event["id"])
    assert [r.event_type for r in history] == ["EventReceived"]

    # A read needs Valkey: 503 unavailable naming it, not an internal error.
    read = await http.get("/api/v1/identities")
    assert read.status_code == 503, read.text
    assert read.json()["error"]["code"] == "unavailable"
    assert "valkey" in read.json()["error"]["message"]
    await until_grpc(ingest, NOT_SERVING)

    assert own_valkey.embedded is not None
    own_valkey.proc = own_valkey.embedded.start()
    track(own_valkey)
    own_valkey.embedded.wait_ready(own_valkey.proc, 60)
    await until_healthy(http)
    assert (await http.get("/api/v1/identities")).status_code == 200
    await until_grpc(ingest, SERVING)


async def test_nats_down_is_503_on_both_naming_nats(ingest: Ingest) -> None:
    """NATS is what the webhooks need: /healthz says 503 too (readiness: out of
    service); /livez, the chart's liveness probe, stays 200. The connection is reported as it
    is, here a stand-in for one that is down."""
    app = create_app(ingest.intake, ingest.reads, ingest.store, health=Health(nats=lambda: False))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ingest"
    ) as http:
        down = {"ok": False, "nats": False, "valkey": True, "webhooks": False, "reads": False}
        assert await health(http) == ((503, down), (503, down))
        # The chart's liveness probe: a restart would not bring NATS back.
        live = await http.get("/livez")
        assert (live.status_code, live.json()) == (200, {"ok": True})
