"""An answer past the gRPC message limit (``grpc.max_message_bytes``) on any service:
grpc's core refused it after the handler, and the caller got RESOURCE_EXHAUSTED
"Sent message larger than max" naming neither the call nor the setting (a code clients
retry, and asking again cannot help); a server configured above 4 MiB answered
jetsource's own clients RESOURCE_EXHAUSTED "Received message larger than max", the
clients' default receive limit. Now every service's guard measures the encoded answer
against the configured limit: FAILED_PRECONDITION, reason ANSWER_TOO_LARGE, naming the
method, the size, the limit and its setting; the clients take any size the server sends.

A real grpc server (start_grpc) in front of a small echo service."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.wrappers_pb2 import BytesValue, Int64Value
from grpc_status import rpc_status  # type: ignore[import-untyped]

from jetsource.client import open_channel
from jetsource.core.grpcserver import GrpcEndpoint, refused_counter, start_grpc
from jetsource.core.settings import GrpcServerSettings

SERVICE = "test.Echo"


async def _say(request: Int64Value, context: grpc.aio.ServicerContext) -> BytesValue:
    return BytesValue(value=b"x" * request.value)


SENT_AFTER: list[bytes] = []


async def _say_many(
    request: Int64Value, context: grpc.aio.ServicerContext
) -> AsyncIterator[BytesValue]:
    yield BytesValue(value=b"small")
    yield BytesValue(value=b"x" * request.value)
    SENT_AFTER.append(b"after")
    yield BytesValue(value=b"after")


async def _not_found(request: Int64Value, context: grpc.aio.ServicerContext) -> BytesValue | None:
    """A status set with context.set_code: grpc answers it and discards the answer (None,
    or one of any size)."""
    context.set_code(grpc.StatusCode.NOT_FOUND)
    context.set_details("no such thing")
    return BytesValue(value=b"x" * request.value) if request.value else None


async def _many_not_found(
    request: Int64Value, context: grpc.aio.ServicerContext
) -> AsyncIterator[BytesValue | None]:
    """A stream whose handler sets a status, then yields what does not encode (None) or
    is past the limit: the stream ends there with that status."""
    yield BytesValue(value=b"first")
    context.set_code(grpc.StatusCode.NOT_FOUND)
    context.set_details("gone")
    yield BytesValue(value=b"x" * request.value) if request.value else None
    yield BytesValue(value=b"after")


async def _gather_not_found(
    requests: AsyncIterator[Int64Value], context: grpc.aio.ServicerContext
) -> None:
    async for _ in requests:
        pass
    context.set_code(grpc.StatusCode.NOT_FOUND)
    context.set_details("no such thing")


def _add(server: grpc.aio.Server) -> None:
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Say": grpc.unary_unary_rpc_method_handler(
                        _say, Int64Value.FromString, BytesValue.SerializeToString
                    ),
                    "SayMany": grpc.unary_stream_rpc_method_handler(
                        _say_many, Int64Value.FromString, BytesValue.SerializeToString
                    ),
                    "NotFound": grpc.unary_unary_rpc_method_handler(
                        _not_found, Int64Value.FromString, BytesValue.SerializeToString
                    ),
                    "ManyNotFound": grpc.unary_stream_rpc_method_handler(
                        _many_not_found, Int64Value.FromString, BytesValue.SerializeToString
                    ),
                    "GatherNotFound": grpc.stream_unary_rpc_method_handler(
                        _gather_not_found, Int64Value.FromString, BytesValue.SerializeToString
                    ),
                },
            ),
        )
    )


async def _served(limit: int) -> GrpcEndpoint:
    return await start_grpc(
        _add, SERVICE, "127.0.0.1:0", 8, GrpcServerSettings(max_message_bytes=limit)
    )


@pytest.fixture
async def small() -> AsyncIterator[GrpcEndpoint]:
    endpoint = await _served(4096)
    yield endpoint
    await endpoint.stop(0)


def _stubs(channel: grpc.aio.Channel) -> tuple[grpc.aio.UnaryUnaryMultiCallable, ...]:
    say = channel.unary_unary(
        f"/{SERVICE}/Say", Int64Value.SerializeToString, BytesValue.FromString
    )
    many = channel.unary_stream(
        f"/{SERVICE}/SayMany", Int64Value.SerializeToString, BytesValue.FromString
    )
    return say, many


def _assert_too_large(error: grpc.aio.AioRpcError, method: str, limit: int) -> None:
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
    details = error.details() or ""
    assert method in details and f"{limit:,}-byte" in details, details
    assert "JETSOURCE_GRPC__MAX_MESSAGE_BYTES" in details, details
    status = rpc_status.from_call(error)
    assert status is not None, error
    infos = [d for d in status.details if d.type_url.endswith("ErrorInfo")]
    assert infos, status
    from google.rpc import error_details_pb2  # type: ignore[import-untyped]

    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert info.reason == "ANSWER_TOO_LARGE", info
    assert info.metadata["max_message_bytes"] == str(limit), info
    assert int(info.metadata["answer_bytes"]) > limit, info
    assert info.metadata["method"] == f"/{SERVICE}/{method}", info


async def test_a_unary_answer_past_the_limit_names_the_call_size_and_setting(
    small: GrpcEndpoint,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{small.port}") as channel:
        say, _ = _stubs(channel)
        assert len((await say(Int64Value(value=4000), timeout=5)).value) == 4000
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await say(Int64Value(value=5000), timeout=5)
        _assert_too_large(caught.value, "Say", 4096)
        # the server goes on answering
        assert len((await say(Int64Value(value=10), timeout=5)).value) == 10


async def test_a_streamed_answer_past_the_limit_ends_the_stream_naming_it(
    small: GrpcEndpoint,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{small.port}") as channel:
        _, many = _stubs(channel)
        got = [m.value async for m in many(Int64Value(value=100), timeout=5)]
        assert got == [b"small", b"x" * 100, b"after"]
        seen: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for m in many(Int64Value(value=5000), timeout=5):
                seen.append(m.value)
        assert seen == [b"small"]
        _assert_too_large(caught.value, "SayMany", 4096)
        # nothing after the refused message is made or sent (the stream ended there;
        # the first call, under the limit, went on to its last message)
        assert SENT_AFTER == [b"after"]


@pytest.mark.parametrize("size", [0, 10, 5000])
async def test_a_status_set_by_the_handler_is_answered_as_set(
    small: GrpcEndpoint, size: int
) -> None:
    """None, a small answer, or one past the limit: grpc discards the answer of a call
    whose handler set a status, and answers that status (not INTERNAL for None, not
    ANSWER_TOO_LARGE for an answer nobody would have sent)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{small.port}") as channel:
        call = channel.unary_unary(
            f"/{SERVICE}/NotFound", Int64Value.SerializeToString, BytesValue.FromString
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(Int64Value(value=size), timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value
        assert caught.value.details() == "no such thing"


@pytest.mark.parametrize("size", [0, 5000])
async def test_a_status_set_in_a_stream_ends_it_without_an_empty_message(
    small: GrpcEndpoint, size: int
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{small.port}") as channel:
        call = channel.unary_stream(
            f"/{SERVICE}/ManyNotFound", Int64Value.SerializeToString, BytesValue.FromString
        )
        got: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for m in call(Int64Value(value=size), timeout=5):
                got.append(m.value)
        assert got == [b"first"]
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value
        assert caught.value.details() == "gone"


async def test_a_status_set_by_a_client_stream_handler_is_answered_as_set(
    small: GrpcEndpoint,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{small.port}") as channel:
        call = channel.stream_unary(
            f"/{SERVICE}/GatherNotFound", Int64Value.SerializeToString, BytesValue.FromString
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(iter([Int64Value(value=1)]), timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value
        assert caught.value.details() == "no such thing"


async def test_an_answer_too_large_is_counted_and_logged(
    small: GrpcEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """The refusal leaves a trace for the operator: jetsource_grpc_refused_total with
    reason answer_too_large, and a warning naming the method and the size."""
    counter = refused_counter().labels(SERVICE, "answer_too_large")
    before = counter._value.get()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{small.port}") as channel:
        say, _ = _stubs(channel)
        with (
            caplog.at_level(logging.WARNING, logger="jetsource.grpc"),
            pytest.raises(grpc.aio.AioRpcError),
        ):
            await say(Int64Value(value=5000), timeout=5)
    assert counter._value.get() == before + 1
    lines = [r.getMessage() for r in caplog.records if "/test.Echo/Say" in r.getMessage()]
    assert lines and "5,00" in lines[0] and "4,096-byte" in lines[0], lines


async def test_jetsource_clients_take_what_a_server_above_4_mib_sends() -> None:
    endpoint = await _served(8 * 1024 * 1024)
    try:
        channel, _ = open_channel(f"127.0.0.1:{endpoint.port}")
        async with channel:
            say, _ = _stubs(channel)
            answer = await say(Int64Value(value=5 * 1024 * 1024), timeout=10)
            assert len(answer.value) == 5 * 1024 * 1024
    finally:
        await endpoint.stop(0)
