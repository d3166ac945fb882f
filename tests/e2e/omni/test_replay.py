"""End to end: every fixture through the HTTP ingress of a running jetsource-ingest
process, twice, in random order, 16 at a time, with requests of bad signature mixed
in; the omni read models projected by the engine's projector. Then: each provider
event stored once, each identity created once, the recent-events and identity-timeline
reads equal to what the fixtures say, the raw archive complete (rejected ones too)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jetsource._gen.omni.v1.events_pb2 import EventType, NormalizedEvent
from jetsource._gen.omni.v1.raw_pb2 import (
    VERDICT_ACCEPTED,
    VERDICT_REJECTED,
    VERDICT_UNRECOGNISED,
    RawPayload,
    Verdict,
)
from jetsource.domains.omni.descriptor import omni_domain
from jetsource.domains.omni.events import EVENT_RECEIVED, IDENTITY_CREATED, is_identity
from jetsource.eventstore import jsapi
from jetsource.ingest.settings import IngestSettings
from tests.fixtures.omni import FIXTURES, HERE
from tests.infra import Server
from tests.integration.omni.harness import (
    IngressProcess,
    caught_up,
    headers_for,
    omni_settings,
    projector,
    route,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def isettings(nats_server: Server, valkey_server: Server, unique: str) -> IngestSettings:
    return omni_settings(nats_server.url, valkey_server.url, unique)


@pytest.fixture
def ingress(isettings: IngestSettings, tmp_path: Path) -> Any:
    process = IngressProcess(isettings, tmp_path / "ingest")
    process.start()
    yield process
    process.stop()


async def stored(isettings: IngestSettings, nc_url: str) -> tuple[list[Any], list[RawPayload]]:
    """Every record of the OMNI events stream and of the raw archive."""
    from jetsource.eventstore.bootstrap import connect
    from jetsource.eventstore.jetstream import JetStreamEventStore

    nc = await connect(isettings)
    try:
        domain = omni_domain(isettings.omni)
        store = JetStreamEventStore(nc, domain.registry, domain.eventstore(isettings))
        records = [r async for r in store.read_all()]
        await store.close()
        replies = jsapi.Replies(nc)
        await replies.start()
        raws = []
        async for m in jsapi.direct_get_batch(
            replies, isettings.omni.raw_stream, f"{isettings.omni.raw_subject_prefix}.>", 1, 5.0
        ):
            p = RawPayload()
            p.ParseFromString(m.data)
            raws.append(p)
        await replies.stop()
        return records, raws
    finally:
        await nc.drain()


@pytest.fixture
async def http(ingress: IngressProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ingress.url, timeout=30) as client:
        yield client


async def test_replay_every_fixture_twice_concurrently(
    isettings: IngestSettings, ingress: IngressProcess, http: httpx.AsyncClient, nats_server: Server
) -> None:
    rng = random.Random(17)
    requests: list[tuple[Any, bytes, dict[str, str]]] = []
    for f in FIXTURES:
        body = (HERE / f.path).read_bytes()
        for _ in range(2):
            requests.append((f, body, headers_for(f.instance, body)))
    # A few forged requests (a signature from someone without the secret).
    forged = [f for f in FIXTURES if f.outcome == "normalized"][:5]
    for f in forged:
        body = (HERE / f.path).read_bytes()
        headers = headers_for(f.instance, body)
        headers[f.header] = "sha256=" + "ab" * 32 if f.header != "apikey" else "forged"
        requests.append((None, body, {**headers, "x-route": route(f.instance)}))
    rng.shuffle(requests)
    gate = asyncio.Semaphore(16)
    answers: list[tuple[Any, httpx.Response]] = []

    async def send(f: Any, body: bytes, headers: dict[str, str]) -> None:
        path = headers.pop("x-route", None) or route(f.instance)
        async with gate:
            answers.append((f, await http.post(path, content=body, headers=headers)))

    async with projector(isettings) as p:
        await asyncio.gather(*(send(*r) for r in requests))

        # Every answer as the fixture's outcome says.
        want_status = {"normalized": 200, "unrecognised": 200, "malformed": 422}
        for f, response in answers:
            expected = 401 if f is None else want_status[f.outcome]
            assert response.status_code == expected, (f and f.path, response.text)

        records, raws = await stored(isettings, nats_server.url)

        # Each provider event stored once, and exactly the expected ones.
        received = [r for r in records if r.event_type == EVENT_RECEIVED]
        keys = Counter(
            (r.event.provider, r.event.instance_name, r.event.provider_event_id) for r in received
        )
        assert max(keys.values()) == 1, [k for k, n in keys.items() if n > 1]
        expected_events = {
            (f.provider, f.instance, pe_id, etype)
            for f in FIXTURES
            if f.outcome == "normalized"
            for pe_id, etype in f.events
        }
        got_events = {
            (
                r.event.provider,
                r.event.instance_name,
                r.event.provider_event_id,
                EventType.Name(r.event.event_type),
            )
            for r in received
        }
        assert got_events == expected_events

        # Each identity created once: one per distinct handle, each with one IdentityCreated.
        created = Counter(r.aggregate_id for r in records if r.event_type == IDENTITY_CREATED)
        assert created and max(created.values()) == 1
        handles = {
            (r.event.provider, h)
            for r in received
            for h in (r.event.sender_handle, r.event.recipient_handle)
            if h
        }
        assert len(created) == len(handles)
        for r in received:
            e: NormalizedEvent = r.event
            assert bool(e.sender_identity_id) == bool(e.sender_handle)
            assert bool(e.recipient_identity_id) == bool(e.recipient_handle)
            assert all(is_identity(i) for i in (e.sender_identity_id, e.recipient_identity_id) if i)

        # Raw archive complete: every request, rejected ones with their reason.
        assert len(raws) == len(requests)
        verdicts = Counter(Verdict.Name(r.verdict) for r in raws)
        n = Counter(f.outcome for f in FIXTURES)
        assert verdicts == {
            Verdict.Name(VERDICT_ACCEPTED): 2 * n["normalized"],
            Verdict.Name(VERDICT_UNRECOGNISED): 2 * n["unrecognised"],
            Verdict.Name(VERDICT_REJECTED): 2 * n["malformed"] + len(forged),
        }
        assert all(r.reason for r in raws if r.verdict != VERDICT_ACCEPTED)
        raw_ids = {r.id for r in raws}
        assert all(r.event.raw_ref in raw_ids for r in received)

        # Reads: recent events and every identity's timeline as the stream says.
        await caught_up(p)
        page = (await http.get("/api/v1/events", params={"page_size": 1000})).json()
        assert {
            (
                e["event"]["provider"],
                e["event"]["instance_name"],
                e["event"]["provider_event_id"],
                e["event"]["event_type"],
            )
            for e in page["events"]
        } == expected_events
        assert len(page["events"]) == len(expected_events)
        for identity in created:
            mine = [
                r.aggregate_id
                for r in sorted(received, key=lambda r: -r.stream_seq)
                if identity in (r.event.sender_identity_id, r.event.recipient_identity_id)
            ]
            timeline = (
                await http.get(
                    f"/api/v1/identities/{identity}/timeline", params={"page_size": 1000}
                )
            ).json()
            assert [e["event"]["id"] for e in timeline["events"]] == mine, identity
            assert len(timeline["identity"]["handles"]) == 1
