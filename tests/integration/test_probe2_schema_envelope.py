"""Envelope fields a writer never stores, published raw: an idempotency uuid that is
not 16 bytes, a sealed box whose key reference is empty or absurdly long. Each is a
corrupt event like any other (CorruptEventError / DATA_LOSS naming the sequence, one
dead letter per model), never a ValueError or a KV error escaping as INTERNAL, and
other stories flow on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.context.v1 import query_pb2 as qpb
from jetsource._gen.context.v1 import query_pb2_grpc as qgrpc
from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope, SealedFields
from jetsource.core.errors import CorruptEventError
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context import model as m
from jetsource.domains.context.commands import CommandHandler, CommandOptions
from jetsource.domains.context.history import StateLoader
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import OutMessage
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.runtime import Worker
from jetsource.query.server import build as build_query
from jetsource.query.settings import QueryOptions, QuerySettings
from tests.projector_fixtures import projector_settings, seed

pytestmark = pytest.mark.integration

MODELS = ("context", "timeline", "graph")


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(projector_settings(settings, unique, max_deliver=3))
    yield p
    for name in MODELS:
        await p.model(name, 1).drop()
    await p.close()


async def raw_publish(p: Projection, subject: str, data: bytes) -> int:
    ack = await jsapi.publish(p.store._replies, OutMessage(subject, data, {}), 5.0)
    return int(ack.seq)


def created(**fields: object) -> bytes:
    payload = ev.ContextCreated(title="t").SerializeToString()
    return EventEnvelope(
        aggregate_version=1,
        schema_version=1,
        payload=payload,
        **fields,  # type: ignore[arg-type]
    ).SerializeToString()


async def test_odd_envelope_fields_are_corrupt_events(
    projection: Projection, settings: JetsourceSettings, unique: str
) -> None:
    p = projection
    prefix = p.store.settings.subject_prefix
    poison = {
        "uuid3": await raw_publish(
            p, f"{prefix}.uuid3.ContextCreated", created(idempotency_uuid=b"abc")
        ),
        "uuid17": await raw_publish(
            p, f"{prefix}.uuid17.ContextCreated", created(idempotency_uuid=b"u" * 17)
        ),
    }
    # A sealed box whose key reference names no key reads as erased, like any box
    # whose key is gone: no poison.
    erased = {
        "emptyref": await raw_publish(
            p,
            f"{prefix}.emptyref.ContextCreated",
            created(sealed=[SealedFields(key_ref=b"", box=b"x" * 40, fields=[3])]),
        ),
        "longref": await raw_publish(
            p,
            f"{prefix}.longref.ContextCreated",
            created(sealed=[SealedFields(key_ref=b"r" * 3000, box=b"x" * 40, fields=[3])]),
        ),
    }
    await seed(p.store, ["after"], 3)
    for story in erased:
        (record,) = await p.store.read_aggregate(story)
        assert isinstance(record.event, ev.ContextCreated), story
        assert record.event.created_by == "<erased>", story
    handler = CommandHandler(p.store, loader=StateLoader(p.store, p.snapshots))
    for story, seq in poison.items():
        with pytest.raises(CorruptEventError) as caught:
            await p.store.read_aggregate(story)
        assert caught.value.stream_seq == seq, story
        with pytest.raises(CorruptEventError):
            await handler.execute(
                story, m.AddDecision("d9", "t", "", "", "", []), CommandOptions(f"k-{story}")
            )
    assert len(await p.store.read_aggregate("after")) == 3
    for name in MODELS:
        worker = Worker(p.nc, p.store, p.model(name, 1), p.dead_letters, p.settings.projector)
        await asyncio.wait_for(worker.run(until_caught_up=True), 60)
        letters = await p.dead_letters.list(worker.spec)
        assert sorted(d.original_seq for d in letters) == sorted(poison.values()), name

    # The query service names each sequence: DATA_LOSS, never INTERNAL/UNKNOWN.
    base = projector_settings(settings, unique)
    shared = {name: getattr(base, name) for name in JetsourceSettings.model_fields}
    query = await build_query(
        QuerySettings(
            **shared,
            projector=base.projector,
            query=QueryOptions(grpc_port=0, metrics_port=0, dead_letter_ttl_s=0),
        )
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{query.port}") as channel:
            stub = qgrpc.ContextQueryServiceStub(channel)
            for story, seq in poison.items():
                calls: list[Any] = [
                    stub.GetContext(qpb.GetContextRequest(context_id=story)),
                    stub.GetContextAtVersion(
                        qpb.GetContextAtVersionRequest(context_id=story, version=1)
                    ),
                    stub.ListEvents(qpb.ListEventsRequest(context_id=story)),
                ]
                for call in calls:
                    with pytest.raises(grpc.aio.AioRpcError) as failed:
                        await call
                    assert failed.value.code() == grpc.StatusCode.DATA_LOSS, failed.value
                    assert str(seq) in (failed.value.details() or ""), failed.value
                    assert "idempotency_uuid" in (failed.value.details() or ""), failed.value
            after = await stub.GetContext(qpb.GetContextRequest(context_id="after"))
            assert after.context.version == 3
    finally:
        await query.stop(0)
