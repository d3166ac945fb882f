"""Read after write: what the ingress accepted a moment ago is never NOT_FOUND while the
read models catch up (a few milliseconds as a rule; here they are not running at all).

- An event is answered from the stream, folded through the model's own commands: the
  same view the model shows once it has applied it (compared whole, after each step of
  the processing lifecycle).
- An identity (its handles and merges come from other identities' events too) is
  FAILED_PRECONDITION / 409 "not in the read model yet", naming ``identity_id``, and so
  is a handle the handles bucket gives an identity (naming ``external_id``); what the
  stream or the bucket does not have is NOT_FOUND / 404, as before.

Against real NATS and Valkey; the projector is started only to compare."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import httpx
import pytest

from jetsource._gen.omni.v1 import query_pb2 as oq
from jetsource._gen.omni.v1 import query_pb2_grpc
from jetsource.ingest.server import Ingest
from jetsource.ingest.settings import IngestSettings
from tests.integration.omni.harness import caught_up, projector
from tests.integration.omni.test_processing_lifecycle import ACCEPTED, received, step

pytestmark = pytest.mark.integration


async def test_an_accepted_event_is_read_before_the_model_has_it_as_the_model_shows_it(
    ingest: Ingest, http: httpx.AsyncClient, isettings: IngestSettings
) -> None:
    before: dict[str, Any] = {}
    for steps, want, _ in ACCEPTED:
        event_id = await received(ingest)
        shown = (await http.get(f"/api/v1/events/{event_id}")).json()
        assert shown["event"]["status"]["state"] == "received", shown
        for body in steps:
            assert (await step(http, event_id, body)).status_code == 200
            r = await http.get(f"/api/v1/events/{event_id}")
            assert r.status_code == 200, r.text
            assert r.json()["event"]["status"]["state"] == body["state"], (steps, r.text)
        r = await http.get(f"/api/v1/events/{event_id}")
        status = r.json()["event"]["status"]
        assert (status["state"], status["attempts"], status.get("retry_count", 0)) == want
        before[event_id] = r.json()
    missing = str(uuid.uuid4())
    r = await http.get(f"/api/v1/events/{missing}")
    assert (r.status_code, r.json()["error"]["field"]) == (404, "event_id"), r.text

    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.grpc.port}") as channel:
        stub = query_pb2_grpc.OmniQueryServiceStub(channel)
        first = next(iter(before))
        got = await stub.GetEvent(oq.GetEventRequest(event_id=first))
        assert got.event.event.id == first
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetEvent(oq.GetEventRequest(event_id=missing))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    # The model, once it has applied them, shows the very same answers.
    async with projector(isettings) as p:
        await caught_up(p)
        for event_id, answer in before.items():
            assert (await http.get(f"/api/v1/events/{event_id}")).json() == answer, event_id


async def test_an_identity_not_applied_yet_is_failed_precondition_not_not_found(
    ingest: Ingest, http: httpx.AsyncClient, isettings: IngestSettings
) -> None:
    identity_id = await ingest.identities.create("Sheena", actor="test")
    unknown = "idn-" + "0" * 26
    for path in (f"/api/v1/identities/{identity_id}", f"/api/v1/identities/{identity_id}/timeline"):
        r = await http.get(path)
        assert r.status_code == 409, (path, r.text)
        error = r.json()["error"]
        assert (error["code"], error["field"]) == ("failed_precondition", "identity_id"), r.text
        assert "not in the read model yet" in error["message"], r.text
        r = await http.get(path.replace(identity_id, unknown))
        assert (r.status_code, r.json()["error"]["field"]) == (404, "identity_id"), r.text

    # A handle the bucket gives it (links are settled there before they answer).
    await ingest.identities.link(identity_id, "whatsapp", "4915100000001", actor="test")
    r = await http.get("/api/v1/handles/whatsapp/4915100000001")
    assert r.status_code == 409, r.text
    assert r.json()["error"]["field"] == "external_id", r.text
    r = await http.get("/api/v1/handles/whatsapp/4915100000002")
    assert (r.status_code, r.json()["error"]["field"]) == (404, "external_id"), r.text

    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.grpc.port}") as channel:
        stub = query_pb2_grpc.OmniQueryServiceStub(channel)
        found = oq.FindIdentityRequest(provider="whatsapp", external_id="4915100000001")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.FindIdentity(found)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value
        for wanted, code in (
            (identity_id, grpc.StatusCode.FAILED_PRECONDITION),
            (unknown, grpc.StatusCode.NOT_FOUND),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetIdentity(oq.GetIdentityRequest(identity_id=wanted))
            assert caught.value.code() == code, (wanted, caught.value)

    async with projector(isettings) as p:
        await caught_up(p)
        r = await http.get(f"/api/v1/identities/{identity_id}")
        assert r.status_code == 200, r.text
        assert r.json()["identity"]["display_name"] == "Sheena", r.text
        r = await http.get("/api/v1/handles/whatsapp/4915100000001")
        assert r.status_code == 200 and r.json()["identity"]["identity_id"] == identity_id
