"""The observer's health follows whether it can write, both ways, on its own (the
publisher's WriteHealth, shared): NATS going away makes it NOT_SERVING with no append
arriving, and NATS coming back makes it SERVING again with no append arriving (a
NOT_SERVING replica is out of its Kubernetes Service: no append would ever come). A
call that fails for want of the store is counted (outcome ``unavailable``) and timed.

The NATS server here is a private one, stopped and started again on the same port and
data directory."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from jetsource._gen.process.v1 import observer_pb2 as pb
from jetsource._gen.process.v1 import observer_pb2_grpc as pb_grpc
from jetsource.core.grpcserver import LIVENESS
from jetsource.core.settings import EventStoreSettings, NatsSettings
from jetsource.core.writehealth import CONNECTION_CHECK_S, PROBE_RETRY_S
from jetsource.devstack.servers import NatsServer, free_port
from jetsource.observer.server import SERVICE_NAME, Observer, build
from jetsource.observer.settings import ObserverOptions, ObserverSettings
from tests.infra import Server, _embedded
from tests.integration.process_write.helpers import event

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# Measured on a loaded 2-core machine: NOT_SERVING about 0.5 s after NATS stops (the
# connection is looked at every CONNECTION_CHECK_S while writable, then a probe), and
# SERVING about 2 s after NATS is back (nats-py's 2 s reconnect wait, then the next
# probe: every PROBE_RETRY_S while not writable). The bounds leave room for load.
DOWN_WITHIN_S = CONNECTION_CHECK_S + 4.5
UP_WITHIN_S = 2.0 + PROBE_RETRY_S + 7.0


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[tuple[NatsServer, list[Server]]]:
    embedded = NatsServer(tmp_path / "nats", port=free_port(), monitor_port=free_port())
    running = [_embedded(embedded)]
    yield embedded, running
    for server in running:
        server.stop()


async def _status(port: int, service: str = SERVICE_NAME) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return int(reply.status)


async def _until(port: int, wanted: int, within: float) -> float:
    """Seconds until the observer's gRPC health says ``wanted`` (fails past ``within``)."""
    started = time.monotonic()
    seen = None
    while time.monotonic() - started < within:
        seen = await _status(port)
        if seen == wanted:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"health stayed {seen}, wanted {wanted} within {within}s")


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_health_follows_nats_down_and_back_without_any_append(
    private_nats: tuple[NatsServer, list[Server]],
) -> None:
    embedded, running = private_nats
    settings = ObserverSettings(
        nats=NatsSettings(url=running[0].url),
        eventstore=EventStoreSettings(request_timeout_s=1.0, retry_attempts=2),
        observer=ObserverOptions(grpc_port=0, metrics_port=0),
    )
    observer: Observer = await build(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{observer.port}") as channel:
            stub = pb_grpc.ObserverServiceStub(channel)
            await stub.Record(pb.RecordRequest(event=event("health-p", event_id="e-1")))
            assert await _status(observer.port) == SERVING

            # NATS goes away: NOT_SERVING with no append arriving.
            running.pop().stop()
            down = await _until(observer.port, NOT_SERVING, DOWN_WITHIN_S)
            assert not observer.health.writable
            assert "NATS" in observer.health.reason, observer.health.reason

            # A call while the store is away fails UNAVAILABLE, counted and timed.
            unavailable = {"outcome": "unavailable"}
            failed_before = _sample("jetsource_observer_events_total", unavailable)
            timed_before = _sample("jetsource_observer_call_seconds_count", {"method": "Record"})
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Record(pb.RecordRequest(event=event("health-p", event_id="e-2")))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            assert _sample("jetsource_observer_events_total", unavailable) == failed_before + 1
            timed = _sample("jetsource_observer_call_seconds_count", {"method": "Record"})
            assert timed == timed_before + 1
            assert await _status(observer.port) == NOT_SERVING
            # What the liveness probe asks stays SERVING: the replica is not restarted.
            assert await _status(observer.port, LIVENESS) == SERVING

            # NATS is back (same port and data): SERVING again, no append arriving.
            running.append(_embedded(embedded))
            up = await _until(observer.port, SERVING, UP_WITHIN_S)
            assert observer.health.writable
            print(f"observer health: NOT_SERVING after {down:.1f}s, SERVING after {up:.1f}s")

            # And it records again: the failed event, sent again with its id, once.
            again = await stub.Record(pb.RecordRequest(event=event("health-p", event_id="e-2")))
            assert not again.position.duplicate
    finally:
        with contextlib.suppress(Exception):
            await observer.stop(0)


async def test_calls_whose_conflict_retries_run_out_are_counted_conflict(
    nats_server: Server,
) -> None:
    """Two observers append to one process at once with no conflict retries (neither
    the observer's nor the store's): the calls that lose the race fail ABORTED, and
    their events are counted ``conflict`` and their calls timed."""
    settings = ObserverSettings(
        nats=NatsSettings(url=nats_server.url),
        eventstore=EventStoreSettings(any_conflict_retries=0),
        observer=ObserverOptions(grpc_port=0, metrics_port=0, conflict_retries=0),
    )
    observers = [await build(settings), await build(settings)]
    process = f"conflict-{time.time_ns()}"
    conflict = {"outcome": "conflict"}
    counted_before = _sample("jetsource_observer_events_total", conflict)
    timed_before = _sample("jetsource_observer_call_seconds_count", {"method": "Record"})
    try:
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{o.port}") for o in observers]
        stubs = [pb_grpc.ObserverServiceStub(c) for c in channels]
        results: list[object] = []
        for round_ in range(5):  # a race: go on until some call has lost it
            calls = [
                stubs[n % 2].Record(
                    pb.RecordRequest(event=event(process, event_id=f"e-{round_}-{n}"))
                )
                for n in range(60)
            ]
            results += await asyncio.gather(*calls, return_exceptions=True)
            if any(isinstance(r, grpc.aio.AioRpcError) for r in results):
                break
        failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert failed, "no call lost the race: no conflict to count"
        assert {f.code() for f in failed} == {grpc.StatusCode.ABORTED}, failed[0].details()
        assert not [r for r in results if isinstance(r, BaseException) and r not in failed]
        counted = _sample("jetsource_observer_events_total", conflict)
        assert counted == counted_before + len(failed)
        timed = _sample("jetsource_observer_call_seconds_count", {"method": "Record"})
        assert timed == timed_before + len(results)
        for channel in channels:
            await channel.close()
    finally:
        for o in observers:
            with contextlib.suppress(Exception):
                await o.stop(0)
