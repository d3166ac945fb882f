"""Hostile input to the ingress's HTTP API beyond the webhook sweep of test_ingress.py:
bad query parameters, cursors, ids and bodies on the /api/v1 reads, the GET handshake
and the status update. Whatever comes: a 4xx whose body names the offending field,
never a 500, never a traceback, and nothing written."""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest

from jetsource._gen.omni.v1.events_pb2 import EVENT_TYPE_MESSAGE, NormalizedEvent
from jetsource._gen.omni.v1.lifecycle_pb2 import ProcessingFailed
from jetsource.core.envelope import NO_STREAM, NewEvent
from jetsource.ingest.server import Ingest
from tests.integration.omni.harness import VERIFY_TOKEN, headers_for, route

pytestmark = pytest.mark.integration


@pytest.fixture
async def api(ingest: Ingest) -> AsyncIterator[httpx.AsyncClient]:
    """The app as a client sees it: an exception the app does not handle is the 500
    the server would answer, not an exception in the test."""
    transport = httpx.ASGITransport(app=ingest.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        yield client


HUGE = "9" * 40
# (method, path, query or body, acceptable statuses, a word the answer must hold)
CASES: dict[str, tuple[str, str, dict[str, str] | bytes | None, set[int], str]] = {
    "events: page_size negative": (
        "GET",
        "/api/v1/events",
        {"page_size": "-1"},
        {400},
        "page_size",
    ),
    "events: page_size huge": (
        "GET",
        "/api/v1/events",
        {"page_size": HUGE},
        {400, 422},
        "page_size",
    ),
    "events: page_size not a number": (
        "GET",
        "/api/v1/events",
        {"page_size": "ten"},
        {400, 422},
        "page_size",
    ),
    "events: page_token letters": (
        "GET",
        "/api/v1/events",
        {"page_token": "abc"},
        {400},
        "page_token",
    ),
    "events: page_token superscript digit": (
        "GET",
        "/api/v1/events",
        {"page_token": "\u00b2"},
        {400},
        "page_token",
    ),
    "events: page_token arabic digits": (
        "GET",
        "/api/v1/events",
        {"page_token": "\u0663\u0664"},
        {400},
        "page_token",
    ),
    "events: page_token huge": (
        "GET",
        "/api/v1/events",
        {"page_token": HUGE * 10},
        {400},
        "page_token",
    ),
    "events: page_token negative": (
        "GET",
        "/api/v1/events",
        {"page_token": "-5"},
        {400},
        "page_token",
    ),
    "events: unknown provider": ("GET", "/api/v1/events", {"provider": "sms"}, {400}, "provider"),
    "identities: unknown provider": (
        "GET",
        "/api/v1/identities",
        {"provider": "sms"},
        {400},
        "provider",
    ),
    "events: bad type": ("GET", "/api/v1/events", {"type": "bogus"}, {400}, "type"),
    "events: an instance name with a colon": (
        "GET",
        "/api/v1/events",
        {"instance": "a:b"},
        {400},
        '"field":"instance"',
    ),
    "events: an instance name too long": (
        "GET",
        "/api/v1/events",
        {"instance": "a" * 5000},
        {400},
        '"field":"instance"',
    ),
    "events: bad direction": ("GET", "/api/v1/events", {"direction": "up"}, {400}, "direction"),
    "events: bad since": ("GET", "/api/v1/events", {"since": "yesterday"}, {400}, "since"),
    "events: since year 10000": (
        "GET",
        "/api/v1/events",
        {"since": "10000-01-01T00:00:00Z"},
        {400},
        "since",
    ),
    "events: since year 0001": (
        "GET",
        "/api/v1/events",
        {"since": "0001-01-01T00:00:00Z"},
        {200, 400},
        "",
    ),
    "event: bad id": ("GET", "/api/v1/events/a.b", None, {400}, "event_id"),
    "event: unknown id": ("GET", "/api/v1/events/nope", None, {404}, "event_id"),
    "event: long id": ("GET", "/api/v1/events/" + "e" * 5000, None, {400}, "event_id"),
    "event: include_raw not a bool": (
        "GET",
        "/api/v1/events/nope",
        {"include_raw": "maybe"},
        {400, 422},
        "include_raw",
    ),
    "raw: bad id": ("GET", "/api/v1/raw/a%20b", None, {400}, "raw_id"),
    "raw: unknown id": ("GET", "/api/v1/raw/nope", None, {404}, "raw_id"),
    "conversation: unknown provider": (
        "GET",
        "/api/v1/conversations/x/y/z",
        None,
        {400},
        "provider",
    ),
    "conversation: an instance name with a colon": (
        "GET",
        "/api/v1/conversations/whatsapp/acme:cloud/c1",
        None,
        {400},
        "instance",
    ),
    "conversation: page_token letters": (
        "GET",
        "/api/v1/conversations/whatsapp/acme-cloud/c1",
        {"page_token": "zz"},
        {400},
        "page_token",
    ),
    "conversation: page_token superscript digit": (
        "GET",
        "/api/v1/conversations/whatsapp/acme-cloud/c1",
        {"page_token": "\u00b9\u00b2"},
        {400},
        "page_token",
    ),
    "conversation: page_size too big": (
        "GET",
        "/api/v1/conversations/whatsapp/acme-cloud/c1",
        {"page_size": "100000"},
        {400},
        "page_size",
    ),
    "identities: page_size negative": (
        "GET",
        "/api/v1/identities",
        {"page_size": "-3"},
        {400},
        "page_size",
    ),
    "identities: page_token garbage": (
        "GET",
        "/api/v1/identities",
        {"page_token": "\u00b2"},
        {400},
        "page_token",
    ),
    "identities: page_token letters": (
        "GET",
        "/api/v1/identities",
        {"page_token": "x"},
        {400},
        "page_token",
    ),
    "identity: bad id": ("GET", "/api/v1/identities/a.b", None, {400}, "identity_id"),
    "identity: malformed id": ("GET", "/api/v1/identities/nobody", None, {400}, "identity_id"),
    "timeline: malformed id": (
        "GET",
        "/api/v1/identities/nobody/timeline",
        None,
        {400},
        "identity_id",
    ),
    "timeline: page_token superscript": (
        "GET",
        "/api/v1/identities/nobody/timeline",
        {"page_token": "\u00b2"},
        {400, 404},
        "",
    ),
    "handle: unknown provider": (
        "GET",
        "/api/v1/handles/carrier-pigeon/123",
        None,
        {400},
        "provider",
    ),
    "handle: unknown handle": ("GET", "/api/v1/handles/whatsapp/123", None, {404}, ""),
    "status: not JSON": ("POST", "/api/v1/events/nope/status", b"{not json", {400, 422}, ""),
    "status: JSON list": ("POST", "/api/v1/events/nope/status", b"[1]", {400, 422}, ""),
    "status: not JSON names the body": (
        "POST",
        "/api/v1/events/nope/status",
        b"{not json",
        {422},
        '"field":"body"',
    ),
    "status: not UTF-8 names the body": (
        "POST",
        "/api/v1/events/nope/status",
        b'{"state": "processing", "worker": "\xff"}',
        {400},
        '"field":"body"',
    ),
    "status: worker a lone surrogate": (
        "POST",
        "/api/v1/events/nope/status",
        b'{"state": "processing", "worker": "\\ud800"}',
        {400},
        '"field":"worker"',
    ),
    "status: reason a lone surrogate": (
        "POST",
        "/api/v1/events/nope/status",
        b'{"state": "failed", "worker": "w", "reason": "x\\udfffy"}',
        {400},
        '"field":"reason"',
    ),
    "status: missing worker": (
        "POST",
        "/api/v1/events/nope/status",
        b'{"state": "processing"}',
        {400, 422},
        "worker",
    ),
    "status: bad state": (
        "POST",
        "/api/v1/events/nope/status",
        b'{"state": "dancing", "worker": "w"}',
        {400, 404},
        "",
    ),
    "status: unknown event": (
        "POST",
        "/api/v1/events/nope/status",
        b'{"state": "processing", "worker": "w"}',
        {404},
        "event_id",
    ),
    "status: bad event id": (
        "POST",
        "/api/v1/events/a.b/status",
        b'{"state": "processing", "worker": "w"}',
        {400},
        "event_id",
    ),
    "status: attempt huge": (
        "POST",
        "/api/v1/events/nope/status",
        b'{"state": "processing", "worker": "w", "attempt": ' + HUGE.encode() + b"}",
        {400, 404, 422},
        "",
    ),
    "status: attempt negative": (
        "POST",
        "/api/v1/events/nope/status",
        b'{"state": "processing", "worker": "w", "attempt": -1}',
        {400, 404, 422},
        "",
    ),
    "status: worker with control characters": (
        "POST",
        "/api/v1/events/nope/status",
        b'{"state": "processing", "worker": "w\\u0000x"}',
        {400},
        '"field":"worker"',
    ),
    "handshake: unknown instance": (
        "GET",
        "/webhooks/whatsapp/nobody",
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "c"},
        {404},
        "instance",
    ),
    "handshake: wrong token": (
        "GET",
        "/webhooks/whatsapp/acme-cloud",
        {"hub.mode": "subscribe", "hub.verify_token": "no", "hub.challenge": "c"},
        {403},
        "verify_token",
    ),
    "handshake: no parameters": ("GET", "/webhooks/whatsapp/acme-cloud", {}, {403}, "hub.mode"),
    "handshake: on the discord route": ("GET", "/webhooks/discord/acme-bot", {}, {404, 405}, ""),
    "webhook: unknown provider": ("POST", "/webhooks/telegram/acme-cloud", b"{}", {404}, ""),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_bad_api_input_is_a_4xx_naming_the_field(api: httpx.AsyncClient, case: str) -> None:
    method, path, given, statuses, word = CASES[case]
    if isinstance(given, bytes):
        response = await api.request(
            method, path, content=given, headers={"content-type": "application/json"}
        )
    else:
        response = await api.request(method, path, params=given)
    assert response.status_code in statuses, (case, response.status_code, response.text)
    assert "Traceback" not in response.text
    if response.status_code >= 400 and response.status_code != 405:
        assert response.headers["content-type"].startswith("application/json"), response.text
        assert word in response.text, (case, response.text)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v1/nothing", 404),
        ("GET", "/nowhere", 404),
        ("POST", "/webhooks/telegram/acme-cloud", 404),
        ("PUT", "/webhooks/whatsapp/acme-cloud", 405),
        ("DELETE", "/webhooks/whatsapp/acme-cloud", 405),
        ("PATCH", "/webhooks/discord/acme-bot", 405),
        ("PUT", "/api/v1/events/nope/status", 405),
    ],
)
async def test_the_frameworks_own_refusals_have_the_documented_shape(
    api: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    """No route, or a method the route has not: {"error": {"code", "message", "field"}}
    as every other refusal (FastAPI answered {"detail": ...}); 405 keeps its Allow."""
    response = await api.request(method, path)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == ("not_found" if status == 404 else "method_not_allowed"), error
    assert error["field"] == ("path" if status == 404 else "method"), error
    assert method in error["message"], error
    if status == 405:
        assert response.headers["allow"], response.headers
        head = await api.request("HEAD", path)
        assert head.status_code == 405 and head.headers["allow"]


async def test_a_content_length_that_is_not_a_number_is_not_a_500(
    api: httpx.AsyncClient,
) -> None:
    body = b'{"object": "whatsapp_business_account", "entry": []}'
    headers = headers_for("acme-cloud", body)
    # b"\xb2" is read (as latin-1, as HTTP headers are) as a superscript two, a digit
    # to str.isdigit() that int() refuses.
    for announced in (b"-1", b"1e9", b" 5", b"\xb2", b"1\xb2"):
        sent = [(k.encode(), v.encode()) for k, v in headers.items() if k != "content-length"]
        response = await api.post(
            route("acme-cloud"), content=body, headers=[*sent, (b"content-length", announced)]
        )
        assert response.status_code < 500, (announced, response.status_code, response.text)


WEBHOOK_BODIES = {
    "nested past the parser's recursion": (b"[" * 100_000 + b"]" * 100_000, 400, "body"),
    "object nested past the recursion": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, 400, "body"),
    "empty": (b"", 400, "body"),
    "null": (b"null", 400, "body"),
    "a string": (b'"hello"', 400, "body"),
    "NaN": (b"NaN", 400, "body"),
    "Infinity inside an object": (
        b'{"object": "whatsapp_business_account", "x": Infinity}',
        400,
        "body",
    ),
}


@pytest.mark.parametrize("case", sorted(WEBHOOK_BODIES))
@pytest.mark.parametrize("instance", ["acme-cloud", "acme-evo", "acme-bot"])
async def test_signed_webhook_bodies_that_are_no_object_are_400_naming_body(
    api: httpx.AsyncClient, case: str, instance: str
) -> None:
    body, status, field = WEBHOOK_BODIES[case]
    headers = {**headers_for(instance, body), "content-type": "text/plain"}
    response = await api.post(route(instance), content=body, headers=headers)
    assert response.status_code == status, (case, response.status_code, response.text[:300])
    assert response.json()["error"]["field"] == field


async def test_an_unexpected_failure_is_a_json_500_without_a_traceback(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from jetsource.domains.omni.reads import OmniReads

    async def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(OmniReads, "recent", boom)
    response = await api.get("/api/v1/events")
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal", "message": "internal error; it was logged"}
    }
    assert "secret internals" not in response.text
    assert "secret internals" in caplog.text, "logged with its traceback"


async def test_the_grpc_reads_refuse_the_same_input_naming_the_field(ingest: Ingest) -> None:
    """OmniQueryService shares the REST reads' checks; its own Timestamp is checked too."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from jetsource._gen.omni.v1 import query_pb2 as oq
    from jetsource._gen.omni.v1 import query_pb2_grpc

    cases: list[tuple[str, Any, Any, grpc.StatusCode, str]] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.grpc.port}") as channel:
        s = query_pb2_grpc.OmniQueryServiceStub(channel)
        bad = grpc.StatusCode.INVALID_ARGUMENT
        for token in ("\u00b2", "abc", "9" * 40, "0", "-1"):
            cases += [
                (
                    f"recent {token!r}",
                    s.ListRecentEvents,
                    oq.ListRecentEventsRequest(page_token=token),
                    bad,
                    "page_token",
                ),
                (
                    f"identities {token!r}",
                    s.ListIdentities,
                    oq.ListIdentitiesRequest(page_token=token),
                    bad,
                    "page_token",
                ),
                (
                    f"conversation {token!r}",
                    s.GetConversation,
                    oq.GetConversationRequest(
                        provider="whatsapp", instance="i", conversation_id="c", page_token=token
                    ),
                    bad,
                    "page_token",
                ),
            ]
        for name, since in {
            "nanos 1e9": Timestamp(seconds=1, nanos=1_000_000_000),
            "nanos -1": Timestamp(seconds=1, nanos=-1),
            "year 10000": Timestamp(seconds=253_402_300_800),
            "seconds -2^63": Timestamp(seconds=-(2**63)),
        }.items():
            cases.append(
                (
                    f"since {name}",
                    s.ListRecentEvents,
                    oq.ListRecentEventsRequest(since=since),
                    bad,
                    "since",
                )
            )
        cases += [
            (
                "recent page_size",
                s.ListRecentEvents,
                oq.ListRecentEventsRequest(page_size=2**32 - 1),
                bad,
                "page_size",
            ),
            (
                "recent provider",
                s.ListRecentEvents,
                oq.ListRecentEventsRequest(provider="sms"),
                bad,
                "provider",
            ),
            (
                "recent instance with a colon",
                s.ListRecentEvents,
                oq.ListRecentEventsRequest(instance="a:b"),
                bad,
                "instance",
            ),
            (
                "recent instance of a million characters",
                s.ListRecentEvents,
                oq.ListRecentEventsRequest(instance="a" * 1_000_000),
                bad,
                "instance",
            ),
            ("event id", s.GetEvent, oq.GetEventRequest(event_id="a.b"), bad, "event_id"),
            (
                "event unknown",
                s.GetEvent,
                oq.GetEventRequest(event_id="nope"),
                grpc.StatusCode.NOT_FOUND,
                "nope",
            ),
            (
                "identity id",
                s.GetIdentity,
                oq.GetIdentityRequest(identity_id="a b"),
                bad,
                "identity_id",
            ),
            (
                "find provider",
                s.FindIdentity,
                oq.FindIdentityRequest(provider="sms", external_id="1"),
                bad,
                "provider",
            ),
            ("find empty", s.FindIdentity, oq.FindIdentityRequest(), bad, "provider"),
            ("conversation empty", s.GetConversation, oq.GetConversationRequest(), bad, "provider"),
        ]
        wrong = []
        for name, call, request, code, word in cases:
            try:
                await call(request, timeout=10)
                wrong.append((name, "answered", ""))
            except grpc.aio.AioRpcError as exc:
                if exc.code() != code or word not in (exc.details() or ""):
                    wrong.append((name, exc.code(), exc.details()))
    assert not wrong, "\n".join(map(str, wrong))


LONG = "9" * 100_000
# The longest URL httpx builds is 65,536 characters.
LONG_PATH = "9" * 60_000


async def test_an_over_long_id_is_refused_naming_it_on_every_read(
    ingest: Ingest, api: httpx.AsyncClient
) -> None:
    """A 100,000-character id (60,000 in a URL), on every omni read that takes one, REST
    and gRPC: 400 /
    INVALID_ARGUMENT naming the field (a conversation id of any length was looked up
    and answered as an empty list)."""
    from jetsource._gen.omni.v1 import query_pb2 as oq
    from jetsource._gen.omni.v1 import query_pb2_grpc

    rest = {
        f"/api/v1/conversations/discord/acme-bot/{LONG_PATH}": "conversation_id",
        f"/api/v1/conversations/discord/{LONG_PATH}/c1": "instance",
        f"/api/v1/events/{LONG_PATH}": "event_id",
        f"/api/v1/identities/idn-{LONG_PATH}": "identity_id",
        f"/api/v1/identities/idn-{LONG_PATH}/timeline": "identity_id",
        f"/api/v1/handles/discord/{LONG_PATH}": "external_id",
        f"/api/v1/raw/{LONG_PATH}": "raw_id",
        f"/api/v1/events?instance={LONG_PATH}": "instance",
    }
    wrong: list[Any] = []
    for path, field in rest.items():
        response = await api.get(path)
        got = response.json().get("error", {}) if response.status_code == 400 else {}
        if got.get("field") != field:
            wrong.append((path[:60], response.status_code, response.text[:200]))
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{ingest.grpc.port}",
        options=[("grpc.max_send_message_length", 4 * 1024 * 1024)],
    ) as channel:
        s = query_pb2_grpc.OmniQueryServiceStub(channel)
        calls = [
            (
                s.GetConversation,
                oq.GetConversationRequest(
                    provider="discord", instance="acme-bot", conversation_id=LONG
                ),
                "conversation_id",
            ),
            (s.GetEvent, oq.GetEventRequest(event_id=LONG), "event_id"),
            (s.GetIdentity, oq.GetIdentityRequest(identity_id=f"idn-{LONG}"), "identity_id"),
            (
                s.GetIdentityTimeline,
                oq.GetIdentityTimelineRequest(identity_id=f"idn-{LONG}"),
                "identity_id",
            ),
            (
                s.FindIdentity,
                oq.FindIdentityRequest(provider="discord", external_id=LONG),
                "external_id",
            ),
            (s.ListRecentEvents, oq.ListRecentEventsRequest(instance=LONG), "instance"),
        ]
        for call, request, field in calls:
            try:
                await call(request, timeout=10)
                wrong.append((field, "answered"))
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.INVALID_ARGUMENT or field not in (
                    exc.details() or ""
                ):
                    wrong.append((field, exc.code(), (exc.details() or "")[:200]))
    assert not wrong, "\n".join(map(str, wrong))


async def test_a_webhook_with_an_over_long_conversation_id_is_422_naming_it(
    ingest: Ingest, api: httpx.AsyncClient
) -> None:
    """The reads refuse a conversation id over 256 characters, so the ingress stores
    none: a webhook naming one is 422 naming the field, and writes no event."""
    import json

    from tests.fixtures.omni import HERE

    body = json.loads((HERE / "discord/text.json").read_text())
    body["d"]["channel_id"] = "7" * 257
    raw = json.dumps(body).encode()
    before = int((await ingest.store.stream_info())["state"]["messages"])
    response = await api.post(route("acme-bot"), content=raw, headers=headers_for("acme-bot", raw))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "d.channel_id"
    assert int((await ingest.store.stream_info())["state"]["messages"]) == before
    body["d"]["channel_id"] = "7" * 256  # at the bound: stored, and readable
    raw = json.dumps(body).encode()
    response = await api.post(route("acme-bot"), content=raw, headers=headers_for("acme-bot", raw))
    assert response.status_code == 200, response.text
    read = await api.get(f"/api/v1/conversations/discord/acme-bot/{'7' * 256}")
    assert read.status_code == 200, read.text


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/plain; charset=utf-8", "multipart/form-data"],
)
async def test_a_status_update_not_sent_as_json_is_415_naming_the_content_type(
    api: httpx.AsyncClient, content_type: str
) -> None:
    """`curl -d '{"state": "processing", ...}'` sends a form type: FastAPI does not read
    the body as JSON, and the answer was 422 "body: Input should be a valid dictionary"
    for a body that was one."""
    body = b'{"state": "processing", "worker": "w1", "attempt": 1}'
    response = await api.post(
        "/api/v1/events/nope/status", content=body, headers={"content-type": content_type}
    )
    assert response.status_code == 415, response.text
    error = response.json()["error"]
    assert error["code"] == "unsupported_media_type" and error["field"] == "content-type"
    assert "application/json" in error["message"] and content_type in error["message"]
    response = await api.post("/api/v1/events/nope/status", content=body)  # no type
    assert response.status_code == 415, response.text
    assert "it came with none" in response.json()["error"]["message"]
    # Sent as JSON, the same body is read.
    for media in ("application/json", "application/json; charset=utf-8"):
        response = await api.post(
            "/api/v1/events/nope/status", content=body, headers={"content-type": media}
        )
        assert response.status_code == 404, response.text  # no event 'nope': it was read


HOSTILE_WORKERS = [
    "w\x00x",
    "w\x1b[31mred",
    "w\nx",
    "w\r\nX-Evil: 1",
    "\tw",
    "w\x7f",
    "w\x85",
    "w\x9b1m",
    "w\u2028x",
    "w\u2029x",
]


async def test_a_status_worker_with_a_control_character_is_400_naming_it_and_writes_nothing(
    ingest: Ingest, api: httpx.AsyncClient
) -> None:
    """A worker is one line (recorded as the step's worker and its event's source,
    shown and logged): a control character or a line separator in it was recorded and
    echoed as it came. Refused as the other one-line inputs are, on a real event."""
    event_id = str(uuid.uuid4())
    event = NormalizedEvent(
        id=event_id, provider="whatsapp", event_type=EVENT_TYPE_MESSAGE, instance_name="acme"
    )
    await ingest.store.append(event_id, [NewEvent(event, source="test")], NO_STREAM)
    wrong: list[tuple[object, ...]] = []
    for worker in HOSTILE_WORKERS:
        response = await api.post(
            f"/api/v1/events/{event_id}/status", json={"state": "processing", "worker": worker}
        )
        error = response.json().get("error", {})
        if response.status_code != 400 or error.get("field") != "worker":
            wrong.append((worker, response.status_code, response.text[:200]))
        elif refused_as(worker) not in error["message"]:
            wrong.append((worker, error["message"]))
    assert not wrong, wrong
    assert len(await ingest.store.read_aggregate(event_id)) == 1  # EventReceived alone
    # One line of any script is taken.
    response = await api.post(
        f"/api/v1/events/{event_id}/status",
        json={"state": "processing", "worker": "wörker-1 日本 \u00a0"},
    )
    assert response.status_code == 200, response.text


def refused_as(value: str) -> str:
    """What a refusal of one line calls the first character it refuses: U+2028/U+2029
    are no control characters (the message said so until 2026-12-07)."""
    for ch in value:
        if ch in "\u2028\u2029":
            return "a line separator" if ch == "\u2028" else "a paragraph separator"
        if unicodedata.category(ch) == "Cc":
            return "a control character"
    raise AssertionError(f"{value!r} is one line")


# A worker's failure text as tools write it, and as it is stored.
MACHINE_REASONS = {
    "r\x00x": "r\\x00x",
    "r\x1b[31mred\x1b[0m": "r\\x1b[31mred\\x1b[0m",
    "r\rX": "r\nX",
    "10%\r50%\r100%\r\n": "10%\n50%\n100%\n",
    "a\r\r\nb": "a\nb",
    "r\x07": "r\\x07",
    "r\x7f": "r\\x7f",
    "r\x85": "r\\x85",
    "r\x9b1m": "r\\x9b1m",
    # Cut at the 2,000 characters a step keeps after escaping, never inside an escape:
    # a plain cut stored "...tt\\x" of the ESC's "\\x1b".
    "t" * 1998 + "\x1b[31m": "t" * 1998,
    "t" * 1995 + "\x1b[31m": "t" * 1995 + "\\x1b[",
}
# Text of many lines: an error's message, a traceback.
FINE_REASONS = {
    "Traceback (most recent call last):\n  File x\nKeyError: 'a'": (
        "Traceback (most recent call last):\n  File x\nKeyError: 'a'"
    ),
    "a\r\nb\tc": "a\nb\tc",
    "a\u2028b": "a\u2028b",
}


async def test_a_status_reason_with_a_control_character_is_stored_escaped(
    ingest: Ingest, api: httpx.AsyncClient
) -> None:
    """A status ``reason`` (the failure's reason, the completion's outcome) is a
    worker's text, as its tools wrote it. Refused 400 for a control character (a CR CR
    LF, a progress bar's lone CR, a colour code's ESC), the failure was never recorded
    and each retry failed the same way. It is stored now (core.printable.as_lines): its
    line breaks (CR LF, CR CR LF, a lone CR) as LF, tabs and U+2028/U+2029 kept, and any
    other control character (ESC, NUL, DEL, C1) as its visible escape (``\\x1b``), so
    nothing raw reaches the terminal showing the event's last_error."""
    event_id = str(uuid.uuid4())
    event = NormalizedEvent(
        id=event_id, provider="whatsapp", event_type=EVENT_TYPE_MESSAGE, instance_name="acme"
    )
    await ingest.store.append(event_id, [NewEvent(event, source="test")], NO_STREAM)
    path = f"/api/v1/events/{event_id}/status"
    wrong: list[tuple[object, ...]] = []
    for attempt, (reason, stored) in enumerate(
        [*MACHINE_REASONS.items(), *FINE_REASONS.items()], start=1
    ):
        step = {"state": "processing", "worker": "w", "attempt": attempt}
        assert (await api.post(path, json=step)).status_code == 200
        step = {"state": "failed", "worker": "w", "attempt": attempt, "reason": reason}
        response = await api.post(path, json=step | {"will_retry": True})
        if response.status_code != 200:
            wrong.append((reason, response.status_code, response.text[:200]))
            continue
        last = (await ingest.store.read_aggregate(event_id))[-1].event
        assert isinstance(last, ProcessingFailed), last
        if last.reason != stored:
            wrong.append((reason, last.reason, stored))
    assert not wrong, wrong


async def test_a_webhook_handle_or_channel_id_with_a_control_character_is_422_naming_it(
    ingest: Ingest, api: httpx.AsyncClient
) -> None:
    """A handle (it keys the identity it resolves to) and a conversation, channel,
    thread or guild id (the key of the conversation's reads) are one line: a signed
    webhook carrying an ESC, a CR LF or U+2028 in one was stored and linked as it came.
    Each is 422 naming its field now, as an over-long one is, and nothing is written;
    the message text keeps its line breaks (free text, the provider's)."""
    import json

    from tests.fixtures.omni import HERE

    before = int((await ingest.store.stream_info())["state"]["messages"])
    wrong: list[tuple[object, ...]] = []
    for field, value in (
        ("channel_id", "77\x1b[31m7"),
        ("channel_id", "77\u20287"),
        ("author", "55\r\n5"),
    ):
        body = json.loads((HERE / "discord/text.json").read_text())
        if field == "author":
            body["d"]["author"]["id"] = value
            path = "d.author.id"
        else:
            body["d"][field] = value
            path = f"d.{field}"
        raw = json.dumps(body).encode()
        response = await api.post(
            route("acme-bot"), content=raw, headers=headers_for("acme-bot", raw)
        )
        error = response.json().get("error", {})
        if response.status_code != 422 or error.get("field") != path:
            wrong.append((field, value, response.status_code, response.text[:300]))
        elif refused_as(value) not in error.get("message", ""):
            wrong.append((field, value, error))
    assert not wrong, wrong
    assert int((await ingest.store.stream_info())["state"]["messages"]) == before
    body = json.loads((HERE / "discord/text.json").read_text())
    body["d"]["content"] = "line 1\nline 2"
    raw = json.dumps(body).encode()
    response = await api.post(route("acme-bot"), content=raw, headers=headers_for("acme-bot", raw))
    assert response.status_code == 200, response.text
