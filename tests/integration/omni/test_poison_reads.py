"""omni events published raw that the ingress never writes, and what the read model
and the reads (REST and gRPC) make of them: each one the model cannot take is
dead-lettered once naming what is wrong, never shown as if it were applied, and no
read answers 500 "internal" / INTERNAL because of it."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.message import Message

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource._gen.omni.v1 import query_pb2, query_pb2_grpc
from jetsource._gen.omni.v1.events_pb2 import NormalizedEvent
from jetsource._gen.omni.v1.lifecycle_pb2 import ExternalIdLinked, IdentityCreated
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import OutMessage
from jetsource.ingest.server import Ingest
from jetsource.projection.bootstrap import Projection
from tests.integration.omni.harness import caught_up

pytestmark = pytest.mark.integration


async def publish(
    p: Projection,
    aggregate_id: str,
    message: Message,
    event_type: str = "EventReceived",
    **env: Any,
) -> int:
    """A raw publish, as a client with publish rights on the stream makes it."""
    store = p.domain_store("omni")
    envelope = EventEnvelope(
        event_type=env.pop("envelope_type", event_type),
        aggregate_id=aggregate_id,
        aggregate_version=1,
        schema_version=1,
        payload=message.SerializeToString(),
    )
    subject = f"{store.settings.subject_prefix}.{aggregate_id}.{event_type}"
    ack = await jsapi.publish(
        store._replies, OutMessage(subject, envelope.SerializeToString(), {}), 5.0
    )
    return int(ack.seq)


def event(event_id: str, **fields: Any) -> NormalizedEvent:
    base: dict[str, Any] = {
        "id": event_id,
        "provider": "whatsapp",
        "instance_name": "main",
        "event_type": 1,
        "direction": 1,
        "conversation_id": "c1",
        "content_text": "hi",
    }
    return NormalizedEvent(**{**base, **fields})


async def letters(p: Projection) -> dict[int, str]:
    return {d.original_seq: d.reason for d in await p.dead_letters.list()}


async def test_a_time_no_timestamp_holds_is_poison_and_the_event_lists_answer(
    projection: Projection, http: httpx.AsyncClient
) -> None:
    p = projection
    far = event("evt-far")
    far.provider_timestamp.seconds = 10**15
    far_seq = await publish(p, "evt-far", far)
    edited = event("evt-edit")
    edited.metadata.edit.edited_at.nanos = -5
    edit_seq = await publish(p, "evt-edit", edited)
    await publish(p, "evt-fine", event("evt-fine"))
    await caught_up(p, 30)

    assert await letters(p) == {
        far_seq: "undecodable: EventReceived v1: its provider_timestamp is no time (seconds "
        "1000000000000000, nanos 0; years 1 to 9999, nanos 0 to 999999999)",
        edit_seq: "undecodable: EventReceived v1: its metadata.edit.edited_at is no time "
        "(seconds 0, nanos -5; years 1 to 9999, nanos 0 to 999999999)",
    }
    # Every list answers: each was a 500 while one such event was in it.
    for query in ("", "?provider=whatsapp", "?type=message", "?instance=main"):
        got = await http.get(f"/api/v1/events{query}")
        assert got.status_code == 200, (query, got.text)
        assert [e["event"]["id"] for e in got.json()["events"]] == ["evt-fine"], query
    got = await http.get("/api/v1/conversations/whatsapp/main/c1")
    assert got.status_code == 200, got.text
    assert (await http.get("/api/v1/events/evt-far")).status_code == 404


async def test_an_event_type_or_direction_this_code_does_not_name_is_applied_and_read(
    projection: Projection, ingest: Ingest, http: httpx.AsyncClient
) -> None:
    """Protobuf keeps enum values it does not know (a newer writer's): the model
    dead-lettered such an event as "handler error: ValueError('Enum EventType has no
    name defined for value 999')" and every read of it was 500 / INTERNAL."""
    p = projection
    await publish(p, "evt-newtype", event("evt-newtype", event_type=999))
    await publish(p, "evt-newdir", event("evt-newdir", direction=77))
    await caught_up(p, 30)
    assert await letters(p) == {}

    got = await http.get("/api/v1/events/evt-newtype")
    assert got.status_code == 200, got.text
    assert got.json()["event"]["event"]["event_type"] == 999
    got = await http.get("/api/v1/events/evt-newdir")
    assert got.status_code == 200, got.text
    assert got.json()["event"]["event"]["direction"] == 77
    listed = await http.get("/api/v1/events?type=message")
    assert [e["event"]["id"] for e in listed.json()["events"]] == ["evt-newdir"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.grpc.port}") as channel:
        stub = query_pb2_grpc.OmniQueryServiceStub(channel)
        for event_id in ("evt-newtype", "evt-newdir"):
            view = await stub.GetEvent(query_pb2.GetEventRequest(event_id=event_id))
            assert view.event.event.id == event_id


async def test_an_event_naming_another_aggregate_is_refused_and_never_shown(
    projection: Projection, http: httpx.AsyncClient
) -> None:
    """A normalized event whose id is not its aggregate's (or another message parsed
    as one) was applied: GET /events/evt-other showed event 'evt-elsewhere', which no
    read by that id found; an identity likewise."""
    p = projection
    other = await publish(p, "evt-other", event("evt-elsewhere"))
    foreign = await publish(
        p, "evt-foreign", IdentityCreated(identity_id="idn-x", display_name="y")
    )
    renamed = await publish(
        p, "idn-one", IdentityCreated(identity_id="idn-two", display_name="z"), "IdentityCreated"
    )
    never = await publish(
        p,
        "idn-never",
        ExternalIdLinked(identity_id="idn-never", provider="discord", external_id="9"),
        "ExternalIdLinked",
    )
    await publish(p, "evt-fine", event("evt-fine"))
    await caught_up(p, 30)

    assert await letters(p) == {
        never: "ExternalIdLinked of identity 'idn-never', which was never created (no "
        "IdentityCreated before it)",
        other: "EventReceived of aggregate 'evt-other' names 'evt-elsewhere' as its id "
        "(an event names its own)",
        foreign: "EventReceived of aggregate 'evt-foreign' names 'idn-x' as its id "
        "(an event names its own)",
        renamed: "IdentityCreated of aggregate 'idn-one' names 'idn-two' as its identity_id "
        "(an event names its own)",
    }
    for event_id in ("evt-other", "evt-foreign"):
        got = await http.get(f"/api/v1/events/{event_id}")  # read after write included
        assert got.status_code == 404, got.text
    # Answered "not in the read model yet; try again shortly" (409) for good before.
    for identity_id in ("idn-one", "idn-never"):
        got = await http.get(f"/api/v1/identities/{identity_id}")
        assert got.status_code == 404, got.text
    listed = await http.get("/api/v1/events")
    assert [e["event"]["id"] for e in listed.json()["events"]] == ["evt-fine"]


async def test_a_read_of_an_event_whose_message_no_reader_takes_names_it(
    projection: Projection, ingest: Ingest, http: httpx.AsyncClient
) -> None:
    """REST answered 500 "internal error; it was logged" where gRPC answers DATA_LOSS."""
    p = projection
    seq = await publish(p, "evt-bad", event("evt-bad"), envelope_type="ProcessingStarted")
    await caught_up(p, 30)
    assert list(await letters(p)) == [seq]

    got = await http.get("/api/v1/events/evt-bad")
    assert got.status_code == 500, got.text
    error = got.json()["error"]
    assert error["code"] == "data_loss"
    assert f"stream sequence {seq}" in error["message"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.grpc.port}") as channel:
        stub = query_pb2_grpc.OmniQueryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetEvent(query_pb2.GetEventRequest(event_id="evt-bad"))
        assert caught.value.code() == grpc.StatusCode.DATA_LOSS


async def test_a_raw_archive_record_no_reader_takes_is_named_on_every_read(
    projection: Projection, ingest: Ingest, http: httpx.AsyncClient
) -> None:
    """Bytes published raw into the raw archive that do not parse, or a record whose
    received_at no Timestamp holds: GET /raw/<id> (and an event's read with its raw
    payload) was 500 "internal error", GetEvent(include_raw) INTERNAL."""
    from jetsource._gen.omni.v1.raw_pb2 import RawPayload

    raw = ingest.reads.raw
    assert raw is not None
    await raw.start()
    far = RawPayload(id="raw-far", provider="whatsapp")
    far.received_at.seconds = 10**15
    records = {"raw-garbage": b"\xff\xff\xff\x00garbage", "raw-far": far.SerializeToString()}
    seqs = {}
    for raw_id, data in records.items():
        message = OutMessage(raw.subject(raw_id), data, {})
        seqs[raw_id] = int((await jsapi.publish(raw._replies, message, 5.0)).seq)
        await publish(projection, f"evt-{raw_id}", event(f"evt-{raw_id}", raw_ref=raw_id))
    await caught_up(projection, 30)

    why = {"raw-garbage": "it does not parse", "raw-far": "its received_at is no time"}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.grpc.port}") as channel:
        stub = query_pb2_grpc.OmniQueryServiceStub(channel)
        for raw_id, seq in seqs.items():
            named = f"raw payload {raw_id!r} (stream sequence {seq} of the raw archive)"
            for path in (f"/api/v1/raw/{raw_id}", f"/api/v1/events/evt-{raw_id}?include_raw=true"):
                got = await http.get(path)
                assert got.status_code == 500, got.text
                assert got.json()["error"]["code"] == "data_loss", path
                assert named in got.json()["error"]["message"], path
                assert why[raw_id] in got.json()["error"]["message"], path
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetEvent(
                    query_pb2.GetEventRequest(event_id=f"evt-{raw_id}", include_raw=True)
                )
            assert caught.value.code() == grpc.StatusCode.DATA_LOSS
            assert named in (caught.value.details() or "")
            # Without its raw payload the event reads as ever.
            assert (await http.get(f"/api/v1/events/evt-{raw_id}")).status_code == 200
