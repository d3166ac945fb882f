"""What every gRPC service of jetsource starts the same way: a grpc.aio server with
health (SERVING once started) and reflection, TLS (optionally mutual), bearer tokens,
a per-client bound on calls in flight, and a stop signal from SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from jetsource.core.settings import GrpcServerSettings

HEALTH_PREFIX = f"/{health.SERVICE_NAME}/"


@dataclass
class GrpcEndpoint:
    """A started server, its bound port (the target may ask for port 0), its health,
    and the plain-text health-only server when one was asked for."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    health_server: grpc.aio.Server | None = None
    health_port: int = 0

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(0)


class Guard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Bearer-token check and a bound on each client's calls in flight.

    The health service is neither authenticated nor counted (probes call it). A client
    is identified by its token when tokens are required, else by its connection."""

    def __init__(self, tokens: list[str], max_inflight: int) -> None:
        self._tokens = [t.encode() for t in tokens]
        self._max = max_inflight
        self.inflight: Counter[str] = Counter()

    def _client(self, context: grpc.aio.ServicerContext) -> str | None:
        """The caller's identity, or None when its token is missing or wrong."""
        if not self._tokens:
            return str(context.peer())
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                given = token.strip().encode()
                if scheme.lower() == "bearer" and any(
                    hmac.compare_digest(given, t) for t in self._tokens
                ):
                    return hashlib.sha256(given).hexdigest()[:16]
        return None

    async def _enter(self, context: grpc.aio.ServicerContext) -> str:
        client = self._client(context)
        if client is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid bearer token: send metadata 'authorization: Bearer <token>'",
            )
            raise AssertionError("abort returned")  # pragma: no cover
        if self.inflight[client] >= self._max:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this client already has {self._max} calls in flight "
                "(max_inflight_per_client); retry when some finish",
            )
        self.inflight[client] += 1
        return client

    def _leave(self, client: str) -> None:
        self.inflight[client] -= 1
        if self.inflight[client] <= 0:
            del self.inflight[client]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = str(getattr(details, "method", ""))
        if handler is None or method.startswith(HEALTH_PREFIX):
            return handler
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                client = await self._enter(context)
                try:
                    return await inner(request, context)
                finally:
                    self._leave(client)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def streaming(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                client = await self._enter(context)
                try:
                    async for item in stream(request, context):
                        yield item
                finally:
                    self._leave(client)

            return grpc.unary_stream_rpc_method_handler(
                streaming, handler.request_deserializer, handler.response_serializer
            )
        return handler  # no client- or bidi-streaming RPCs in jetsource


def _read(path: Any) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def server_credentials(settings: GrpcServerSettings) -> grpc.ServerCredentials | None:
    tls = settings.tls
    if not tls.active:
        return None
    if tls.key_file is None:
        raise ValueError("grpc.tls.key_file is required with grpc.tls.cert_file")
    return grpc.ssl_server_credentials(
        [(_read(tls.key_file), _read(tls.cert_file))],
        root_certificates=_read(tls.client_ca_file) if tls.client_ca_file else None,
        require_client_auth=tls.client_ca_file is not None,
    )


async def start_grpc(
    add_servicer: Callable[[grpc.aio.Server], None],
    service_name: str,
    target: str,
    max_concurrent_rpcs: int,
    security: GrpcServerSettings | None = None,
) -> GrpcEndpoint:
    s = security or GrpcServerSettings()
    tokens = [t.get_secret_value() for t in s.auth_tokens if t.get_secret_value()]
    size = [
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", s.max_message_bytes),
    ]
    server = grpc.aio.server(
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        interceptors=[Guard(tokens, s.max_inflight_per_client)],
        options=size,
    )
    add_servicer(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [service_name, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    credentials = server_credentials(s)
    if credentials is None:
        port = server.add_insecure_port(target)
    else:
        port = server.add_secure_port(target, credentials)
    health_server = None
    health_port = 0
    if s.health_port:
        health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        host = target.rsplit(":", 1)[0]
        health_port = health_server.add_insecure_port(f"{host}:{s.health_port}")
        await health_server.start()
    await server.start()
    for name in ("", service_name):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return GrpcEndpoint(server, port, health_servicer, health_server, health_port)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
