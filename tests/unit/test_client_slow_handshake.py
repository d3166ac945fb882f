"""A gRPC server whose handshake is slow (here 0.3 s: TLS far away, a busy server) is
reached: the CLI waits for it up to ``JETSOURCE_CLIENT__CONNECT_TIMEOUT_S`` (README
"Where the CLI connects"). The retrying channels set ``grpc.min_reconnect_backoff_ms``
to 100, which grpc takes as each connection attempt's timeout: such a server was "not
reachable" after 0.1 s (exit 3), `ctx show` and every ctx/process command with it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from jetsource.cli.ctx import Target, _connect
from jetsource.client import open_channel
from jetsource.core.settings import GrpcClientSettings
from jetsource.devstack.servers import free_port

DELAY_S = 0.3


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    try:
        first = True
        while data := await reader.read(65536):
            if first and delay:
                await asyncio.sleep(delay)  # the server's first bytes (its SETTINGS) late
                first = False
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def _slow_server() -> AsyncIterator[str]:
    """A gRPC health server behind a proxy that holds its answer back DELAY_S."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(_pipe(reader, up_writer, 0), _pipe(up_reader, writer, DELAY_S))

    front = free_port()
    proxy = await asyncio.start_server(handle, "127.0.0.1", front)
    try:
        yield f"127.0.0.1:{front}"
    finally:
        proxy.close()
        await server.stop(0)


async def test_a_slow_handshake_is_waited_for_not_unreachable() -> None:
    async with _slow_server() as address:
        client = GrpcClientSettings(connect_timeout_s=3)
        target = Target("query service", address, "JETSOURCE_CLIENT__QUERY", "--query", client, 3)
        for retry in (True, False):
            channel, _ = open_channel(address, retry=retry)
            try:
                await _connect(channel, target)  # the CLI's wait: READY, or Unreachable
                stub = health_pb2_grpc.HealthStub(channel)
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=3)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            finally:
                await channel.close()
