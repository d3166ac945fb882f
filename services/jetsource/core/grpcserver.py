"""What every gRPC service of jetsource starts the same way: a grpc.aio server with
health (SERVING once started) and reflection, and a stop signal from SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection


async def start_grpc(
    add_servicer: Callable[[grpc.aio.Server], None],
    service_name: str,
    target: str,
    max_concurrent_rpcs: int,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Started server, its bound port (``target`` may ask for port 0) and its health."""
    server = grpc.aio.server(maximum_concurrent_rpcs=max_concurrent_rpcs)
    add_servicer(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [service_name, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    port = server.add_insecure_port(target)
    await server.start()
    for name in ("", service_name):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
