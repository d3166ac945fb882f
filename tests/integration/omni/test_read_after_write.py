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

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest

from jetsource._gen.omni.v1 import query_pb2 as oq
from jetsource._gen.omni.v1 import query_pb2_grpc
from jetsource.domains.omni.descriptor import omni_domain
from jetsource.ingest.server import Ingest
from jetsource.ingest.settings import IngestSettings
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.domain import DomainRegistry
from jetsource.projection.host import ProjectorService
from tests.integration.omni.harness import caught_up, projector
from tests.integration.omni.test_processing_lifecycle import ACCEPTED, received, step
from tests.integration.omni.test_processing_lifecycle import c as c_
from tests.integration.omni.test_processing_lifecycle import f as f_
from tests.integration.omni.test_processing_lifecycle import p as p_

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


class Pausable:
    """The omni read models projected in this process, paused and run again at will:
    paused, the models keep what they applied (the harness's projector drops them when
    it stops, and an event read then was folded from the stream whatever the check)."""

    def __init__(self, projection: Projection) -> None:
        self.projection = projection
        self._running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def run(self) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(ProjectorService(self.projection).run(stop))
        self._running.append((stop, task))
        await caught_up(self.projection)

    async def pause(self) -> None:
        while self._running:
            stop, task = self._running.pop()
            stop.set()
            await task


@contextlib.asynccontextmanager
async def pausable_projector(settings: IngestSettings) -> AsyncIterator[Pausable]:
    domain = omni_domain(settings.omni)
    p = await open_projection(settings, domains=DomainRegistry([domain]))
    paused = Pausable(p)
    try:
        yield paused
    finally:
        await paused.pause()
        for name in p.model_names():
            await p.model(name, 1).drop()
        await p.close()


async def test_a_status_step_reads_back_at_once_though_the_model_holds_an_older_copy(
    ingest: Ingest, http: httpx.AsyncClient, isettings: IngestSettings
) -> None:
    """The model has the event (received) and is stopped: every step recorded after is
    read back at once, over REST and gRPC (the model's copy was answered, stale, while
    it existed), and the model, caught up, shows the same."""
    async with pausable_projector(isettings) as p:
        ids = [await received(ingest) for _ in range(len(ACCEPTED))]
        await p.run()
        await p.pause()
        shown: dict[str, Any] = {}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.grpc.port}") as channel:
            stub = query_pb2_grpc.OmniQueryServiceStub(channel)
            for event_id, (steps, want, _) in zip(ids, ACCEPTED, strict=True):
                for body in steps:
                    assert (await step(http, event_id, body)).status_code == 200
                    r = await http.get(f"/api/v1/events/{event_id}")
                    status = r.json()["event"]["status"]
                    assert (status["state"], status["attempts"]) == (
                        body["state"],
                        body["attempt"],
                    ), (steps, body, status)
                    got = await stub.GetEvent(oq.GetEventRequest(event_id=event_id))
                    assert (got.event.status.state, got.event.status.attempts) == (
                        body["state"],
                        body["attempt"],
                    ), (steps, body, got.event.status)
                status = r.json()["event"]["status"]
                assert (status["state"], status["attempts"], status.get("retry_count", 0)) == want
                shown[event_id] = r.json()
        await p.run()
        for event_id, answer in shown.items():
            assert (await http.get(f"/api/v1/events/{event_id}")).json() == answer, event_id


async def test_concurrent_steps_and_reads_never_read_a_step_back_stale(
    ingest: Ingest, http: httpx.AsyncClient, isettings: IngestSettings
) -> None:
    """The probe's race, with the projector running: 16 workers at once, each recording
    processing, failed (retry), processing, completed on its event and reading each
    step back at once."""
    async with pausable_projector(isettings) as p:
        ids = [await received(ingest) for _ in range(16)]
        await p.run()
        steps = [p_(1), f_(1, True), p_(2), c_(2)]

        async def worker(event_id: str) -> list[tuple[str, str]]:
            stale = []
            for body in steps:
                assert (await step(http, event_id, body)).status_code == 200
                status = (await http.get(f"/api/v1/events/{event_id}")).json()["event"]["status"]
                if (status["state"], status["attempts"]) != (body["state"], body["attempt"]):
                    stale.append((body["state"], status["state"]))
            return stale

        stale = [s for found in await asyncio.gather(*(worker(i) for i in ids)) for s in found]
        assert not stale, f"{len(stale)} of {16 * len(steps)} reads were stale: {stale[:5]}"


async def test_an_event_read_answers_the_models_copy_when_the_stream_cannot_say(
    ingest: Ingest,
    http: httpx.AsyncClient,
    isettings: IngestSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stream's version is read only to be fresher: with NATS not answering, an
    event the model has is answered from the model (as before the check), one it has
    not is 503 naming nothing stale."""
    from jetsource.core.errors import EventStoreUnavailableError

    async with pausable_projector(isettings) as p:
        known = await received(ingest)
        await p.run()
        await p.pause()
        unknown = await received(ingest)

        async def away(aggregate_id: str) -> int:
            raise EventStoreUnavailableError("NATS did not answer")

        monkeypatch.setattr(ingest.reads, "_last_version", away)
        r = await http.get(f"/api/v1/events/{known}")
        assert r.status_code == 200 and r.json()["event"]["event"]["id"] == known, r.text
        r = await http.get(f"/api/v1/events/{unknown}")
        assert r.status_code == 503, r.text
