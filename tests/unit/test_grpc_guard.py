"""The guard of every gRPC service (jetsource.core.grpcserver) wraps each method's handler
once, when the services are added, instead of running as a grpc.aio interceptor on
every call; the services' handlers reach the server as generic handlers only. Driven
here through an in-process server (start_grpc) in front of the publisher's command
service on the in-memory event store: the same answers as before (tokens, the bound on
calls in flight, malformed bodies, health and reflection without a token)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import SecretStr

from jetsource._gen.context.v1 import commands_pb2 as pb
from jetsource._gen.context.v1 import commands_pb2_grpc as pb_grpc
from jetsource.core.envelope import AppendResult
from jetsource.core.grpcserver import (
    GrpcEndpoint,
    Guard,
    GuardedRegistry,
    _GuardedHandler,
    start_grpc,
)
from jetsource.core.settings import GrpcServerSettings
from jetsource.domains.context.command_service import SERVICE, ContextCommandService
from jetsource.domains.context.commands import CommandHandler
from jetsource.domains.context.events import registry
from jetsource.eventstore.memory import InMemoryEventStore

TOKEN = "s3cret-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


class Details(grpc.HandlerCallDetails):  # type: ignore[misc]
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def _servicer_handler() -> grpc.GenericRpcHandler:
    added: list[grpc.GenericRpcHandler] = []

    class Collect:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            added.extend(handlers)

        def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
            pass

    handler = CommandHandler(InMemoryEventStore(registry))
    pb_grpc.add_ContextCommandServiceServicer_to_server(ContextCommandService(handler), Collect())
    (generic,) = added
    return generic


def test_each_method_is_wrapped_once_and_health_not_at_all() -> None:
    guarded = _GuardedHandler(_servicer_handler(), Guard([], 4))
    method = f"/{SERVICE}/AddDecision"
    first = guarded.service(Details(method))
    assert first is not None and first.unary_unary is not None
    assert first.request_deserializer is None  # the guard parses the body itself
    assert guarded.service(Details(method)) is first  # not rebuilt per call
    assert guarded.service(Details(f"/{SERVICE}/CloseContext")) is not first
    assert guarded.service(Details(f"/{SERVICE}/NoSuchMethod")) is None

    health = grpc.unary_unary_rpc_method_handler(lambda r, c: r)
    kept = Guard([], 4).wrap("/grpc.health.v1.Health/Check", health)
    assert kept is health


def test_the_registry_adds_generic_handlers_only() -> None:
    calls: list[str] = []

    class Server:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            calls.append("generic")
            assert all(isinstance(h, _GuardedHandler) for h in handlers)

        def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
            calls.append("registered")

    registry_ = GuardedRegistry(Server(), Guard([], 4))
    handler = CommandHandler(InMemoryEventStore(registry))
    pb_grpc.add_ContextCommandServiceServicer_to_server(
        ContextCommandService(handler),
        registry_,
    )
    assert calls == ["generic"]


class Gate(CommandHandler):
    """Holds every command until released (to fill a client's calls in flight)."""

    def __init__(self) -> None:
        super().__init__(InMemoryEventStore(registry))
        self.release = asyncio.Event()
        self.waiting = 0

    async def execute(self, context_id: str, command: Any, options: Any) -> AppendResult:
        self.waiting += 1
        await self.release.wait()
        return await super().execute(context_id, command, options)


@pytest.fixture
async def served() -> AsyncIterator[tuple[GrpcEndpoint, Gate]]:
    gate = Gate()
    gate.release.set()
    endpoint = await start_grpc(
        lambda server: pb_grpc.add_ContextCommandServiceServicer_to_server(
            ContextCommandService(gate), server
        ),
        SERVICE,
        "127.0.0.1:0",
        16,
        GrpcServerSettings(auth_tokens=[SecretStr(TOKEN)], max_inflight_per_client=2),
    )
    try:
        yield endpoint, gate
    finally:
        await endpoint.stop(0)


def _create(key: str, context_id: str = "ctx-guard") -> pb.CreateContextRequest:
    return pb.CreateContextRequest(
        context_id=context_id, title="t", options=pb.CommandOptions(idempotency_key=key)
    )


async def test_the_guarded_server_answers_as_before(served: tuple[GrpcEndpoint, Gate]) -> None:
    endpoint, _ = served
    async with grpc.aio.insecure_channel(f"127.0.0.1:{endpoint.port}") as channel:
        stub = pb_grpc.ContextCommandServiceStub(channel)
        done = await stub.CreateContext(_create("k1"), metadata=AUTH)
        assert done.result.version == 1 and not done.result.duplicate
        again = await stub.CreateContext(_create("k1"), metadata=AUTH)
        assert again.result.duplicate and again.result.event_ids == done.result.event_ids

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateContext(_create("k2"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "bearer token" in (refused.value.details() or "")

        raw = channel.unary_unary(f"/{SERVICE}/CreateContext")
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await raw(b"\xff\xff\xff", metadata=AUTH)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.AddDecision(
                pb.AddDecisionRequest(context_id="ctx-guard", decision_id="d", title="x"),
                metadata=AUTH,
            )
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "idempotency_key" in (invalid.value.details() or "")

        # Health and reflection need no token.
        check = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE)
        )
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        names: list[str] = []
        async for response in reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        ):
            names += [s.name for s in response.list_services_response.service]
        assert SERVICE in names and "grpc.health.v1.Health" in names


async def test_a_client_past_its_bound_is_refused_and_counted_out(
    served: tuple[GrpcEndpoint, Gate],
) -> None:
    endpoint, gate = served
    gate.release.clear()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{endpoint.port}") as channel:
        stub = pb_grpc.ContextCommandServiceStub(channel)
        held = [
            asyncio.ensure_future(stub.CreateContext(_create(f"h{i}", f"ctx-h{i}"), metadata=AUTH))
            for i in range(2)
        ]
        for _ in range(200):
            if gate.waiting == 2:
                break
            await asyncio.sleep(0.01)
        assert gate.waiting == 2
        with pytest.raises(grpc.aio.AioRpcError) as busy:
            await stub.CreateContext(_create("h3"), metadata=AUTH)
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.release.set()
        results = await asyncio.gather(*held)
        assert [r.result.version for r in results] == [1, 1]
        # Every call left: the client may call again.
        after = await stub.CreateContext(_create("h4", "ctx-h4"), metadata=AUTH)
        assert after.result.version == 1


class Peer:
    """A servicer context as the guard reads it: its peer and metadata."""

    def __init__(self, peer: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._peer = peer
        self._metadata = metadata

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def test_calls_in_flight_are_counted_per_client_and_forgotten_at_zero() -> None:
    guard = Guard([], 2)
    a, b = Peer("ipv4:127.0.0.1:1"), Peer("ipv4:127.0.0.1:2")
    ctx = cast(grpc.aio.ServicerContext, a)
    assert guard._admit(ctx) == "ipv4:127.0.0.1:1"
    assert guard._admit(ctx) == "ipv4:127.0.0.1:1"
    assert guard._admit(ctx) is None  # past its bound: refused, not counted
    assert guard._admit(cast(grpc.aio.ServicerContext, b)) == "ipv4:127.0.0.1:2"
    assert guard.inflight == {"ipv4:127.0.0.1:1": 2, "ipv4:127.0.0.1:2": 1}
    guard._leave("ipv4:127.0.0.1:1")
    assert guard._admit(ctx) == "ipv4:127.0.0.1:1"  # room again
    for client in ("ipv4:127.0.0.1:1", "ipv4:127.0.0.1:2"):
        guard._leave(client)
    assert guard.inflight == {"ipv4:127.0.0.1:1": 1}
    guard._leave("ipv4:127.0.0.1:1")
    assert guard.inflight == {}  # a client with nothing in flight leaves no entry


def test_tokens_identify_clients_and_a_wrong_token_is_not_counted() -> None:
    guard = Guard([TOKEN], 1)
    good = cast(grpc.aio.ServicerContext, Peer("p", AUTH))
    bad = cast(grpc.aio.ServicerContext, Peer("p", (("authorization", "Bearer nope"),)))
    assert guard._admit(bad) is None
    assert guard.inflight == {}
    client = guard._admit(good)
    assert client is not None and client != TOKEN
    assert guard._admit(good) is None
    guard._leave(client)
    assert guard.inflight == {}


HEALTH = "/grpc.health.v1.Health"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
NOT_PROTOBUF = (b"\xff\xff\xff", b"\x0a\x02\xc3\x28")  # corrupt; a string that is not UTF-8


async def _refused_body(channel: grpc.aio.Channel, method: str, body: bytes) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if method == REFLECTION:
            async for _ in channel.stream_stream(method)(iter([body]), timeout=5):
                pass
        elif method.endswith("/Watch"):
            async for _ in channel.unary_stream(method)(body, timeout=5):
                pass
        else:
            await channel.unary_unary(method)(body, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, info.value.details())
    assert "request body" in (info.value.details() or "")


async def test_health_and_reflection_refuse_a_body_that_is_no_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Health and reflection were served with grpc.aio's own parsing: a body that is not
    protobuf was UNKNOWN ("Unexpected <class DecodeError>") with a traceback in the
    server's log, on the service port and on the separate health port."""
    from jetsource.devstack.servers import free_port

    endpoint = await start_grpc(
        lambda server: pb_grpc.add_ContextCommandServiceServicer_to_server(
            ContextCommandService(Gate()), server
        ),
        SERVICE,
        "127.0.0.1:0",
        16,
        GrpcServerSettings(health_port=free_port()),
    )
    try:
        for port in (endpoint.port, endpoint.health_port):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                methods = [f"{HEALTH}/Check", f"{HEALTH}/Watch"]
                if port == endpoint.port:
                    methods.append(REFLECTION)
                for method in methods:
                    for body in NOT_PROTOBUF:
                        await _refused_body(channel, method, body)
                # Good requests are answered as before, Watch's stream included.
                health_stub = health_pb2_grpc.HealthStub(channel)
                request = health_pb2.HealthCheckRequest(service=SERVICE)
                check = await health_stub.Check(request)
                assert check.status == health_pb2.HealthCheckResponse.SERVING
                async for watched in health_stub.Watch(request, timeout=5):
                    assert watched.status == health_pb2.HealthCheckResponse.SERVING
                    break
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    finally:
        await endpoint.stop(0)


async def test_open_health_watches_and_reflection_streams_cannot_crowd_out_the_service() -> None:
    """Health's Watch and reflection's streams need no token and stay open as long as
    their client likes; they were counted nowhere, so a client without a token filled
    the server's max_concurrent_rpcs with them and every client with a token was then
    refused ("Concurrent RPC limit exceeded"). Now they take at most a quarter of it
    (and at most max_inflight_per_client per client): past that RESOURCE_EXHAUSTED."""
    gate = Gate()
    gate.release.set()
    endpoint = await start_grpc(
        lambda server: pb_grpc.add_ContextCommandServiceServicer_to_server(
            ContextCommandService(gate), server
        ),
        SERVICE,
        "127.0.0.1:0",
        8,
        GrpcServerSettings(auth_tokens=[SecretStr(TOKEN)], max_inflight_per_client=64),
    )
    address = f"127.0.0.1:{endpoint.port}"
    try:
        async with grpc.aio.insecure_channel(address) as intruder:
            health_stub = health_pb2_grpc.HealthStub(intruder)
            reflect = reflection_pb2_grpc.ServerReflectionStub(intruder)
            watches = [
                health_stub.Watch(health_pb2.HealthCheckRequest(service=f"s{i}"), timeout=10)
                for i in range(8)
            ]
            answers = await asyncio.gather(*(w.read() for w in watches), return_exceptions=True)
            held = [a for a in answers if not isinstance(a, BaseException)]
            refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
            assert len(held) == 2 and len(refused) == 6, answers  # a quarter of 8
            assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert "max_concurrent_rpcs" in (refused[0].details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as busy:
                async for _ in reflect.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
                ):
                    pass
            assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

            # A client with a token is served meanwhile, and health's Check stays open.
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.ContextCommandServiceStub(channel)
                done = await stub.CreateContext(_create("w1"), metadata=AUTH, timeout=5)
                assert done.result.version == 1
                check = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=SERVICE), timeout=5
                )
                assert check.status == health_pb2.HealthCheckResponse.SERVING
            for w in watches:
                w.cancel()
            # Watches that ended are counted out (the server side ends just after the
            # client's): reflection answers again.
            names: list[str] = []
            for _ in range(200):
                try:
                    async for response in reflect.ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                        timeout=10,
                    ):
                        names += [s.name for s in response.list_services_response.service]
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    await asyncio.sleep(0.01)
            assert SERVICE in names
    finally:
        await endpoint.stop(0)


def _refusals(reason: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "jetsource_grpc_refused_total", {"service": SERVICE, "reason": reason}
    )
    return value or 0.0


async def test_refused_calls_are_counted_and_logged_without_the_token(
    served: tuple[GrpcEndpoint, Gate], caplog: pytest.LogCaptureFixture
) -> None:
    """A call refused for its token, or past its client's bound, was answered before any
    service counter started and logged nowhere: a client with a wrong token, or a
    flood of them, showed in no metric and no line. Counted now by service and reason,
    and logged once per reason every REFUSAL_LOG_EVERY_S naming the caller's address
    and what was wrong, never the token (the lines between are counted in the next)."""
    endpoint, gate = served
    caplog.set_level("WARNING", logger="jetsource.grpc")
    before = {r: _refusals(r) for r in ("unauthenticated", "client_busy")}
    wrong = "wrong-token-7f3a"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{endpoint.port}") as channel:
        stub = pb_grpc.ContextCommandServiceStub(channel)
        for i, metadata in enumerate(
            [(), (("authorization", f"Bearer {wrong}"),), (("authorization", f"Basic {wrong}"),)]
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CreateContext(_create(f"r{i}"), metadata=metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # What to set, for the CLI's and TUI's users (they send no metadata by hand).
            assert "JETSOURCE_CLIENT__TOKEN" in (refused.value.details() or "")
        gate.release.clear()
        held = [
            asyncio.ensure_future(stub.CreateContext(_create(f"b{i}", f"ctx-b{i}"), metadata=AUTH))
            for i in range(2)
        ]
        for _ in range(500):
            if gate.waiting == 2:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as busy:
            await stub.CreateContext(_create("b3"), metadata=AUTH)
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.release.set()
        await asyncio.gather(*held)
    assert _refusals("unauthenticated") - before["unauthenticated"] == 3
    assert _refusals("client_busy") - before["client_busy"] == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "jetsource.grpc"]
    assert len(lines) == 2, lines  # one per reason: the next two token refusals not logged
    assert f"{SERVICE} refused /{SERVICE}/CreateContext from ipv4:127.0.0.1:" in lines[0]
    assert "no authorization metadata" in lines[0]
    assert "max_inflight_per_client" in lines[1]
    assert not any(wrong in line or TOKEN in line for line in caplog.messages)


@pytest.mark.parametrize(
    ("metadata", "why"),
    [
        ((), "no authorization metadata"),
        ((("authorization", "tok-bare-91c"),), "not of the form 'Bearer <token>'"),
        ((("authorization", "Basic tok-bare-91c"),), "not of the form 'Bearer <token>'"),
        ((("authorization", "Bearer tok-bare-91c"),), "matches none"),
    ],
)
def test_what_a_refusal_logs_never_holds_what_was_sent(
    metadata: tuple[tuple[str, str], ...], why: str
) -> None:
    from jetsource.core.grpcserver import _token_problem

    said = _token_problem(cast(grpc.aio.ServicerContext, Peer("p", metadata)))
    assert why in said and "tok-bare-91c" not in said
