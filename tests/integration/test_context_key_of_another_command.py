"""An idempotency key names one command. Sent again with the same key, the same command
is answered with its original result (duplicate, nothing appended); another command
with that key (another RPC, or the same RPC about another decision, subtask or
dependency) was answered the same way: OK, ``duplicate: true`` and the other command's
versions, while nothing of it was done (an UpdateSubtask told it had updated the
subtask; one that was malformed besides answered OK instead of INVALID_ARGUMENT). It is
refused INVALID_ARGUMENT naming ``options.idempotency_key``, nothing appended, by the
publisher that appended the key and by a new one that reads it from the stream.
Against a real publisher (gRPC) and nats-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from jetsource._gen.context.v1 import commands_pb2 as pb
from jetsource._gen.context.v1 import commands_pb2_grpc as pb_grpc
from jetsource.client import error_details
from jetsource.core.settings import EventStoreSettings, NatsSettings
from jetsource.publisher.server import Publisher, build
from jetsource.publisher.settings import PublisherOptions, PublisherSettings
from tests.eventstore_fixtures import isolated_settings
from tests.infra import Server

pytestmark = pytest.mark.integration
STORY = "story"


async def _publisher(nats_url: str, store: EventStoreSettings) -> Publisher:
    return await build(
        PublisherSettings(
            nats=NatsSettings(url=nats_url),
            eventstore=store,
            publisher=PublisherOptions(grpc_port=0, metrics_port=0),
        )
    )


@pytest.fixture
async def store(nats_server: Server) -> AsyncIterator[EventStoreSettings]:
    settings = isolated_settings(uuid.uuid4().hex[:10])
    publisher = await _publisher(nats_server.url, settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{publisher.port}") as channel:
            stub = pb_grpc.ContextCommandServiceStub(channel)
            seeds: list[tuple[Any, Any]] = [
                (stub.CreateContext, pb.CreateContextRequest(context_id=STORY, title="s")),
                (
                    stub.AddDecision,
                    pb.AddDecisionRequest(context_id=STORY, decision_id="d1", title="t"),
                ),
                (
                    stub.AddDecision,
                    pb.AddDecisionRequest(context_id=STORY, decision_id="d2", title="t"),
                ),
                (
                    stub.AddSubtask,
                    pb.AddSubtaskRequest(context_id=STORY, subtask_id="s1", title="t"),
                ),
                (
                    stub.ReviseDecision,
                    pb.ReviseDecisionRequest(
                        context_id=STORY,
                        decision_id="d1",
                        title="t2",
                        options=pb.CommandOptions(idempotency_key="K"),
                    ),
                ),
            ]
            for i, (rpc, request) in enumerate(seeds):
                if not request.options.idempotency_key:
                    request.options.idempotency_key = f"seed-{i}"
                await rpc(request, timeout=10)
    finally:
        await publisher.stop(0)
    yield settings


def others(key: str) -> dict[str, Any]:
    """Commands other than a ReviseDecision of d1, each sent with ``key``."""
    options = pb.CommandOptions(idempotency_key=key)
    return {
        "UpdateSubtask": pb.UpdateSubtaskRequest(
            context_id=STORY, subtask_id="s1", progress=50, options=options
        ),
        "UpdateSubtask, malformed": pb.UpdateSubtaskRequest(
            context_id=STORY, subtask_id="s1", options=options
        ),
        "AddSubtask": pb.AddSubtaskRequest(
            context_id=STORY, subtask_id="s2", title="t", options=options
        ),
        "ReviseDecision of another decision": pb.ReviseDecisionRequest(
            context_id=STORY, decision_id="d2", title="t3", options=options
        ),
        "CloseContext": pb.CloseContextRequest(context_id=STORY, options=options),
    }


def revise_d1(key: str, title: str) -> pb.ReviseDecisionRequest:
    return pb.ReviseDecisionRequest(
        context_id=STORY,
        decision_id="d1",
        title=title,
        options=pb.CommandOptions(idempotency_key=key),
    )


def _rpc(stub: pb_grpc.ContextCommandServiceStub, request: Any) -> Any:
    return getattr(stub, type(request).__name__.removesuffix("Request"))


async def test_a_key_of_another_command_is_refused_naming_it_and_appends_nothing(
    nats_server: Server, store: EventStoreSettings
) -> None:
    # K1 appended by the publisher asked (known from its own append), then K read from
    # the stream by a publisher that never saw it appended.
    for key, title, version in (("K1", "t9", 6), ("K", "t2", 5)):
        publisher = await _publisher(nats_server.url, store)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{publisher.port}") as channel:
                stub = pb_grpc.ContextCommandServiceStub(channel)
                if key == "K1":
                    first = await stub.ReviseDecision(revise_d1(key, title), timeout=10)
                    assert not first.result.duplicate and first.result.version == version
                before = await publisher.store.last_version(STORY)
                for label, request in others(key).items():
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await _rpc(stub, request)(request, timeout=10)
                    code, details = err.value.code(), err.value.details() or ""
                    assert code == grpc.StatusCode.INVALID_ARGUMENT, (key, label, code, details)
                    assert list(error_details(err.value).fields) == ["options.idempotency_key"], (
                        key,
                        label,
                        details,
                    )
                    assert "DecisionRevised of 'd1'" in details, (label, details)
                # The same command again is still answered with its original result.
                again = await stub.ReviseDecision(revise_d1(key, title), timeout=10)
                assert again.result.duplicate and again.result.version == version
                assert await publisher.store.last_version(STORY) == before
        finally:
            await publisher.stop(0)
