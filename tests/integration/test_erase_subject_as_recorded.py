"""`jetsource erase SUBJECT` erases what the context write path recorded: an actor that
shows nothing ("\\u3164", a Hangul filler) is one a context command takes (its one-line
rule) and seals as created_by and the envelope's actor, under that subject's key; the
erasure's blank rule (1875b42) refused it, so that person could never be erased.
Against a real publisher (gRPC), nats-server, Valkey and the graph store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from jetsource._gen.context.v1 import commands_pb2 as pb
from jetsource._gen.context.v1 import commands_pb2_grpc as pb_grpc
from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.settings import JetsourceSettings, NatsSettings
from jetsource.projection import erasure
from jetsource.projection.bootstrap import Projection
from jetsource.publisher.server import build
from jetsource.publisher.settings import PublisherOptions, PublisherSettings
from tests.projector_fixtures import context_projection

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with context_projection(settings, unique, versions=(1,)) as p:
        yield p


@pytest.mark.parametrize("actor", ["\u3164", " "])
async def test_an_actor_showing_nothing_that_a_command_recorded_is_erased(
    projection: Projection, actor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = projection
    monkeypatch.setattr(erasure, "GRACE_S", 0.05)
    publisher = await build(
        PublisherSettings(
            nats=NatsSettings(url=p.settings.nats_url()),
            eventstore=p.settings.eventstore,
            publisher=PublisherOptions(grpc_port=0, metrics_port=0),
        )
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{publisher.port}") as channel:
            request = pb.CreateContextRequest(context_id="s1", title="t")
            request.options.idempotency_key = "k1"
            request.options.actor = actor
            await pb_grpc.ContextCommandServiceStub(channel).CreateContext(request, timeout=10)
    finally:
        await publisher.stop(0)
    [recorded] = await p.store.read_aggregate("s1")
    assert isinstance(recorded.event, ev.ContextCreated)
    assert recorded.event.created_by == actor  # recorded as it is, sealed under its key

    report = await erasure.erase_subject(p, actor)

    assert report.key_destroyed and not report.failed, report
    assert report.aggregates == {"context": ["s1"]}
    [after] = await p.store.read_aggregate("s1")
    assert isinstance(after.event, ev.ContextCreated)
    assert after.event.created_by != actor
