"""The ingress application on real NATS and Valkey (in process, through its ASGI
interface): dedupe beyond the duplicate window and under concurrency, bad input
answered clearly and archived with nothing half-written, the verification handshake,
processing status, and the same reads over REST and gRPC."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import httpx
import pytest

from jetsource._gen.omni.v1 import query_pb2 as pb
from jetsource._gen.omni.v1 import query_pb2_grpc
from jetsource._gen.omni.v1.raw_pb2 import VERDICT_ACCEPTED, VERDICT_REJECTED, VERDICT_UNRECOGNISED
from jetsource.ingest.server import Ingest, build
from jetsource.projection.bootstrap import Projection
from tests.fixtures.omni import FIXTURES, HERE
from tests.integration.omni.harness import (
    VERIFY_TOKEN,
    archived,
    caught_up,
    headers_for,
    route,
)
from tests.kvkeys import kv_keys

pytestmark = pytest.mark.integration

TEXT = "whatsapp/cloud/text.json"


def fixture(path: str) -> Any:
    return next(f for f in FIXTURES if f.path == path)


def body_of(path: str) -> bytes:
    return (HERE / path).read_bytes()


async def post(
    http: httpx.AsyncClient, instance: str, body: bytes, **headers: str
) -> httpx.Response:
    h = headers_for(instance, body)
    h.update(headers)
    return await http.post(route(instance), content=body, headers=h)


async def stream_messages(ingest: Ingest) -> int:
    return int((await ingest.store.stream_info())["state"]["messages"])


async def raw_count(ingest: Ingest) -> int:
    return int((await ingest.raw.info())["state"]["messages"])


async def test_a_webhook_is_stored_once_however_often_and_whenever_it_comes(
    nats_server: Any, valkey_server: Any, unique: str
) -> None:
    from tests.integration.omni.harness import omni_settings

    s = omni_settings(nats_server.url, valkey_server.url, unique)
    # A 1 s duplicate window: the redelivery below comes after it has passed, as one an
    # hour later would.
    s = s.model_copy(
        update={"eventstore": s.eventstore.model_copy(update={"duplicate_window_s": 1.0})}
    )
    ingest = await build(s)
    try:
        transport = httpx.ASGITransport(app=ingest.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as http:
            f = fixture(TEXT)
            body = body_of(TEXT)
            first = await post(http, f.instance, body)
            assert first.status_code == 200, first.text
            answer = first.json()
            assert answer["status"] == "accepted"
            assert [e["stored"] for e in answer["events"]] == [True]
            stored = await stream_messages(ingest)

            await asyncio.sleep(1.5)  # past the stream's duplicate window
            again = await post(http, f.instance, body)
            assert again.status_code == 200
            assert [e["stored"] for e in again.json()["events"]] == [False]

            burst = await asyncio.gather(*(post(http, f.instance, body) for _ in range(20)))
            assert {r.status_code for r in burst} == {200}
            assert sum(e["stored"] for r in burst for e in r.json()["events"]) == 0
            assert await stream_messages(ingest) == stored  # nothing more stored

            # A new event delivered 20 times at once: stored exactly once.
            other = "discord/text.json"
            g = fixture(other)
            body2 = body_of(other)
            burst = await asyncio.gather(*(post(http, g.instance, body2) for _ in range(20)))
            assert {r.status_code for r in burst} == {200}
            assert sum(e["stored"] for r in burst for e in r.json()["events"]) == 1
            event_id = burst[0].json()["events"][0]["id"]
            history = await ingest.store.read_aggregate(event_id)
            assert [r.event_type for r in history] == ["EventReceived"]
            # Every delivery was archived as received (22 + 20 bodies).
            assert await raw_count(ingest) == 42
    finally:
        await ingest.stop(0)


@pytest.mark.parametrize(
    ("case", "status", "code", "field"),
    [
        ("wrong_signature", 401, "bad_signature", "x-hub-signature-256"),
        ("missing_signature", 401, "bad_signature", "x-hub-signature-256"),
        ("wrong_apikey", 401, "bad_signature", "apikey"),
        ("unparseable", 400, "unparseable", "body"),
        ("not_utf8", 400, "unparseable", "body"),
        ("json_list", 400, "not_an_object", "body"),
        ("too_large", 413, "body_too_large", "body"),
        ("unknown_instance", 404, "unknown_instance", "instance"),
        ("missing_field", 422, "malformed", "entry[0].changes[0].value.messages[0].from"),
    ],
)
async def test_bad_input_is_refused_clearly_archived_and_writes_nothing_else(
    ingest: Ingest, http: httpx.AsyncClient, case: str, status: int, code: str, field: str
) -> None:
    instance, body, path = "acme-cloud", body_of(TEXT), route("acme-cloud")
    extra: dict[str, str] = {}
    headers = headers_for(instance, body)
    if case == "wrong_signature":
        headers["x-hub-signature-256"] = "sha256=" + "0" * 64
    elif case == "missing_signature":
        del headers["x-hub-signature-256"]
    elif case == "wrong_apikey":
        instance, path = "acme-evo", route("acme-evo")
        body = body_of("whatsapp/evolution/text.json")
        headers = headers_for(instance, body)
        headers["apikey"] = "not-the-key"
    elif case == "unparseable":
        body = b'{"object": "whatsapp_business_account", "entry": ['
    elif case == "not_utf8":
        body = b'{"object": "\xff\xfe"}'
    elif case == "json_list":
        body = b"[1, 2, 3]"
    elif case == "too_large":
        body = b'{"pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    elif case == "unknown_instance":
        path = "/webhooks/whatsapp/nobody"
    elif case == "missing_field":
        body = body_of("malformed/whatsapp_cloud_message_without_from.json")
    if case not in ("wrong_signature", "missing_signature", "wrong_apikey"):
        headers = headers_for(instance, body)
    events_before = await stream_messages(ingest)
    raw_before = await raw_count(ingest)
    bucket = (await ingest.identities.kv())._name

    response = await http.post(path, content=body, headers={**headers, **extra})

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["field"] == field
    assert error["message"]
    # Archived with the reason; nothing else written (no event, no identity, no handle).
    record = await ingest.raw.get(error["raw_id"])
    assert record is not None
    assert record.verdict == VERDICT_REJECTED
    assert record.http_status == status
    assert record.reason.startswith(code)
    assert record.field == field
    if case == "too_large":
        assert record.body_truncated and len(record.body) == 64 * 1024
        assert record.body_size > 10 * 1024 * 1024
    else:
        assert record.body == archived(body)
    if case == "wrong_apikey":
        assert record.headers["apikey"] == "[redacted]"
    assert await raw_count(ingest) == raw_before + 1
    assert await stream_messages(ingest) == events_before
    assert await kv_keys(ingest.nc, bucket) == []  # no handle was claimed in the bucket


async def test_unrecognised_kinds_are_200_and_archived_as_unrecognised(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    before = await stream_messages(ingest)
    for f in FIXTURES:
        if f.outcome != "unrecognised":
            continue
        response = await post(http, f.instance, body_of(f.path))
        assert response.status_code == 200, (f.path, response.text)
        answer = response.json()
        assert answer["status"] == "unrecognised" and answer["reason"]
        record = await ingest.raw.get(answer["raw_id"])
        assert record is not None and record.verdict == VERDICT_UNRECOGNISED
        assert record.body == archived(body_of(f.path))
    assert await stream_messages(ingest) == before


async def test_every_malformed_fixture_is_422_naming_its_field(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    for f in FIXTURES:
        if f.outcome != "malformed":
            continue
        response = await post(http, f.instance, body_of(f.path))
        assert response.status_code == 422, (f.path, response.text)
        assert response.json()["error"]["field"] == f.malformed_field


async def test_verification_handshake(http: httpx.AsyncClient) -> None:
    ok = await http.get(
        route("acme-cloud"),
        params={
            "hub.mode": "subscribe",
            "hub.verify_token": VERIFY_TOKEN,
            "hub.challenge": "1158201444",
        },
    )
    assert (ok.status_code, ok.text) == (200, "1158201444")
    wrong = await http.get(
        route("acme-cloud"),
        params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1"},
    )
    assert wrong.status_code == 403
    unknown = await http.get("/webhooks/whatsapp/nobody", params={"hub.mode": "subscribe"})
    assert unknown.status_code == 404


async def test_reads_over_rest_and_grpc_agree_and_status_is_event_sourced(
    ingest: Ingest, http: httpx.AsyncClient, projection: Projection
) -> None:
    accepted = []
    for path in (
        TEXT,
        "whatsapp/cloud/status_read.json",
        "discord/text.json",
        "discord/reaction_add.json",
    ):
        f = fixture(path)
        r = await post(http, f.instance, body_of(path))
        assert r.status_code == 200, r.text
        accepted += r.json()["events"]
    event_id = accepted[0]["id"]

    # Processing status: received -> processing -> failed (retry) -> processing -> completed.
    steps = [
        {"state": "processing", "worker": "w1", "attempt": 1},
        {"state": "failed", "worker": "w1", "attempt": 1, "reason": "timeout", "will_retry": True},
        {"state": "processing", "worker": "w2", "attempt": 2},
    ]
    for step in steps:
        r = await http.post(f"/api/v1/events/{event_id}/status", json=step)
        assert r.status_code == 200, r.text
    bad = await http.post(
        f"/api/v1/events/{event_id}/status", json={"state": "done", "worker": "w"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "state"
    missing = await http.post(
        "/api/v1/events/00000000-0000-5000-8000-000000000000/status",
        json={"state": "processing", "worker": "w"},
    )
    assert missing.status_code == 404
    await caught_up(projection)

    recent = (await http.get("/api/v1/events")).json()
    assert {e["event"]["id"] for e in recent["events"]} == {e["id"] for e in accepted}
    seqs = [int(e["stream_seq"]) for e in recent["events"]]
    assert seqs == sorted(seqs, reverse=True)
    mine = next(e for e in recent["events"] if e["event"]["id"] == event_id)
    assert mine["status"]["state"] == "processing"
    assert mine["status"]["attempts"] == 2 and mine["status"]["retry_count"] == 1
    assert mine["status"]["last_error"] == "timeout"

    filtered = (
        await http.get("/api/v1/events", params={"provider": "discord", "type": "reaction"})
    ).json()
    assert [e["event"]["provider_event_id"] for e in filtered["events"]] == [
        e[0] for e in fixture("discord/reaction_add.json").events
    ]
    page1 = (await http.get("/api/v1/events", params={"page_size": 2})).json()
    page2 = (
        await http.get(
            "/api/v1/events", params={"page_size": 2, "page_token": page1["next_page_token"]}
        )
    ).json()
    assert [e["event"]["id"] for e in page1["events"] + page2["events"]] == [
        e["event"]["id"] for e in recent["events"]
    ]
    bad_filter = await http.get("/api/v1/events", params={"direction": "sideways"})
    assert bad_filter.status_code == 400 and bad_filter.json()["error"]["field"] == "direction"

    one = (await http.get(f"/api/v1/events/{event_id}", params={"include_raw": "true"})).json()
    assert one["raw"]["verdict"] == "VERDICT_ACCEPTED"
    assert json.loads(one["raw"]["body_text"]) == json.loads(body_of(TEXT))
    sender = one["event"]["event"]["sender_identity_id"]
    timeline = (await http.get(f"/api/v1/identities/{sender}/timeline")).json()
    assert event_id in {e["event"]["id"] for e in timeline["events"]}
    assert (
        timeline["identity"]["handles"][0]["external_id"] == one["event"]["event"]["sender_handle"]
    )

    # The same over gRPC.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.grpc.port}") as channel:
        stub = query_pb2_grpc.OmniQueryServiceStub(channel)
        listed = await stub.ListRecentEvents(pb.ListRecentEventsRequest(), timeout=5)
        assert [e.event.id for e in listed.events] == [e["event"]["id"] for e in recent["events"]]
        got = await stub.GetEvent(
            pb.GetEventRequest(event_id=event_id, include_raw=True), timeout=5
        )
        assert got.raw.verdict == VERDICT_ACCEPTED and got.raw.body == body_of(TEXT)
        tl = await stub.GetIdentityTimeline(
            pb.GetIdentityTimelineRequest(identity_id=sender), timeout=5
        )
        assert [e.event.id for e in tl.events] == [e["event"]["id"] for e in timeline["events"]]
        with pytest.raises(grpc.aio.AioRpcError) as missing_event:
            await stub.GetEvent(pb.GetEventRequest(event_id="nope"), timeout=5)
        assert missing_event.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as bad_id:
            await stub.GetEvent(pb.GetEventRequest(event_id="a.b"), timeout=5)
        assert bad_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as bad_page:
            await stub.ListRecentEvents(pb.ListRecentEventsRequest(page_size=100_000), timeout=5)
        assert bad_page.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_api_tokens_guard_the_reads_not_the_webhooks(ingest: Ingest) -> None:
    from jetsource.ingest.app import create_app

    app = create_app(ingest.intake, ingest.reads, ingest.store, ["reader-token"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ingest"
    ) as http:
        refused = await http.get("/api/v1/identities")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthenticated"
        wrong = await http.get("/api/v1/identities", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await http.get("/api/v1/identities", headers={"authorization": "Bearer reader-token"})
        assert ok.status_code == 200
        f = fixture(TEXT)
        hook = await post(http, f.instance, body_of(TEXT))  # signed by the provider instead
        assert hook.status_code == 200
        assert (await http.get("/openapi.json")).json()["info"]["title"] == "jetsource-ingest"


async def test_filtered_recent_events_page_through_exactly_the_matching_ones(
    ingest: Ingest, projection: Projection
) -> None:
    from jetsource._gen.omni.v1.events_pb2 import (
        DIRECTION_INBOUND,
        DIRECTION_OUTBOUND,
        EVENT_TYPE_MESSAGE,
        EVENT_TYPE_STATUS,
        NormalizedEvent,
    )
    from jetsource.core.envelope import NO_STREAM, NewEvent
    from jetsource.domains.omni.reads import Filters

    ids = []
    for i in range(150):
        e = NormalizedEvent(
            id=f"ev-{i:04d}",
            provider="whatsapp" if i % 2 else "discord",
            provider_event_id=f"p{i}",
            instance_name=f"inst{i % 3}",
            event_type=EVENT_TYPE_STATUS if i % 5 == 0 else EVENT_TYPE_MESSAGE,
            direction=DIRECTION_OUTBOUND if i % 7 == 0 else DIRECTION_INBOUND,
        )
        await ingest.store.append(e.id, [NewEvent(e)], NO_STREAM)
        ids.append(e)
    await caught_up(projection)
    cases = [
        Filters(instance="inst1", event_type="status"),
        Filters(provider="whatsapp", direction="outbound"),
        Filters(instance="inst2", provider="discord", event_type="message", direction="inbound"),
        Filters(instance="inst0"),
    ]
    for filters in cases:
        want = [e.id for e in reversed(ids) if filters.match(e)]
        got: list[str] = []
        token = ""
        for _ in range(100):
            page, token = await ingest.reads.recent(filters, None, 7, token)
            got += [v.event.id for v in page]
            if not token:
                break
        assert got == want, filters
