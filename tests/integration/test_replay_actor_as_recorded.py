"""`projector replay --actor` selects what the context write path recorded: an actor
that shows nothing ("\\u3164", a Hangul filler; "\\u200b") is one a context command
takes (its one-line rule) and records in the events' envelope metadata, and the
replay's shared blank rule refused it, so those events could never be replayed.
Against a real publisher (gRPC), nats-server, Valkey and the graph store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from jetsource._gen.context.v1 import commands_pb2 as pb
from jetsource._gen.context.v1 import commands_pb2_grpc as pb_grpc
from jetsource.core.settings import JetsourceSettings, NatsSettings
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from jetsource.projection.runtime import Worker
from jetsource.publisher.server import build
from jetsource.publisher.settings import PublisherOptions, PublisherSettings
from tests.projector_fixtures import projection_of

pytestmark = pytest.mark.integration

NOTHING_SHOWN = ("\u3164", "\u200b")


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with projection_of(settings, unique) as p:
        yield p


async def test_replay_selects_the_actor_the_write_path_recorded(projection: Projection) -> None:
    p = projection
    publisher = await build(
        PublisherSettings(
            nats=NatsSettings(url=p.settings.nats_url()),
            eventstore=p.settings.eventstore,
            publisher=PublisherOptions(grpc_port=0, metrics_port=0),
        )
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{publisher.port}") as channel:
            stub = pb_grpc.ContextCommandServiceStub(channel)
            for i, actor in enumerate((*NOTHING_SHOWN, "ana")):
                request = pb.CreateContextRequest(context_id=f"s{i}", title="t")
                request.options.idempotency_key = f"k{i}"
                request.options.actor = actor
                await stub.CreateContext(request, timeout=10)  # taken: recorded as it is
    finally:
        await publisher.stop(0)
    await p.control.ensure("context", 1)
    worker = Worker(
        p.nc, p.store_for("context"), p.model("context", 1), p.dead_letters, p.settings.projector
    )
    await worker.run(until_caught_up=True)

    for i, actor in enumerate(NOTHING_SHOWN):
        report = await admin.replay(p, "context", actor=actor)
        assert (report.events, report.aggregates, report.failed) == (1, 1, {}), (actor, report)
        assert report.selectors == {"actor": actor}
        recorded = [e async for e in p.store.read_all()]
        assert recorded[i].envelope.metadata.get("actor") == actor  # exactly, not stripped
    # Matched exactly: a space around it, or the other invisible one, is another actor.
    assert (await admin.replay(p, "context", actor="\u3164 ")).events == 0
