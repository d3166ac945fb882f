"""The observer as its own process (`python -m jetsource.observer.server`, what the
console script runs), through its public surfaces only: gRPC health and reflection,
ObserverService, /metrics and /healthz, bearer tokens, SIGTERM."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from jetsource._gen.process.v1 import observer_pb2 as pb
from jetsource._gen.process.v1 import observer_pb2_grpc as pb_grpc
from jetsource.devstack.servers import free_port
from jetsource.devstack.services import GrpcService
from jetsource.sdk import Observer as Client
from tests.infra import Server
from tests.integration.process_write.helpers import event

pytestmark = pytest.mark.e2e
TOKEN = "e2e-token"


@pytest.fixture(scope="module")
def service(nats_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcService]:
    home: Path = tmp_path_factory.mktemp("observer")
    port, metrics = free_port(), free_port()
    secrets = home / "secrets"
    secrets.mkdir()
    (secrets / "jetsource_grpc__auth_tokens").write_text(f'["{TOKEN}"]')
    env = {
        **os.environ,
        "JETSOURCE_NATS__URL": nats_server.url,
        "JETSOURCE_OBSERVER__GRPC_PORT": str(port),
        "JETSOURCE_OBSERVER__METRICS_PORT": str(metrics),
        "JETSOURCE_OBSERVER__MAX_PAYLOAD_BYTES": "1000",
        "JETSOURCE_SECRETS_DIR": str(secrets),
        "JETSOURCE_LOG_JSON": "true",
    }
    svc = GrpcService("observer", "jetsource.observer.server", home, "127.0.0.1", port, env=env)
    svc.metrics_port = metrics  # type: ignore[attr-defined]
    proc = svc.start()
    svc.proc = proc  # type: ignore[attr-defined]
    svc.wait_ready(proc, 60)
    yield svc
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


AUTH = (("authorization", f"Bearer {TOKEN}"),)


async def test_health_reflection_and_the_write_only_surface(service: GrpcService) -> None:
    async with grpc.aio.insecure_channel(service.address()) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="jetsource.process.v1.ObserverService")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> list[str]:
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for response in stub.ServerReflectionInfo(iter([request]), metadata=AUTH):
                return [s.name for s in response.list_services_response.service]
            return []

        names = await ask()
        assert "jetsource.process.v1.ObserverService" in names
        assert not any("Query" in n for n in names), "the observer serves no read API"


async def test_record_needs_the_token_and_refuses_bad_input_naming_the_field(
    service: GrpcService,
) -> None:
    async with grpc.aio.insecure_channel(service.address()) as channel:
        stub = pb_grpc.ObserverServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Record(pb.RecordRequest(event=event("e2e-p")))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = await stub.Record(
            pb.RecordRequest(event=event("e2e-p", event_id="e2e-1")), metadata=AUTH
        )
        again = await stub.Record(
            pb.RecordRequest(event=event("e2e-p", event_id="e2e-1")), metadata=AUTH
        )
        assert (again.position.global_seq, again.position.duplicate) == (
            ok.position.global_seq,
            True,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Record(
                pb.RecordRequest(event=event("e2e-p", data={"x": "y" * 2000})), metadata=AUTH
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "event.data" in (info.value.details() or "")


async def test_the_sdk_records_a_tree_and_metrics_count_it(service: GrpcService) -> None:
    client = Client(service.address(), token=TOKEN, flush_interval_s=0.01)
    async with client:
        async with (
            client.process("e2e", kind="pipeline"),
            client.process("child", kind="tool") as child,
        ):
            child.emit("tool_called", {"n": 1})
        await client.flush()
    assert client.stats.sent == client.stats.emitted == 5
    assert child.parent is not None and child.parent.name == "e2e", "parent taken at entry"
    # A refusal of its own (the test may run alone, or on a worker of its own).
    async with grpc.aio.insecure_channel(service.address()) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await pb_grpc.ObserverServiceStub(channel).Record(
                pb.RecordRequest(event=event("e2e-p", event_type="Bad")), metadata=AUTH
            )
    base = f"http://127.0.0.1:{service.metrics_port}"  # type: ignore[attr-defined]
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{base}/metrics", timeout=5)).text
        healthz = await http.get(f"{base}/healthz", timeout=5)
    recorded = [
        line
        for line in metrics.splitlines()
        if line.startswith('jetsource_observer_events_total{outcome="recorded"}')
    ]
    assert recorded and float(recorded[0].split()[-1]) >= 5
    assert 'jetsource_observer_events_total{outcome="refused"}' in metrics
    assert healthz.status_code == 200


def test_sigterm_stops_it_cleanly(service: GrpcService) -> None:
    proc = service.proc  # type: ignore[attr-defined]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
