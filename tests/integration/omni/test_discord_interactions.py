"""Discord's HTTP interactions (an ``interactions`` instance: the application's
Interactions Endpoint URL) through a real HTTP server (uvicorn) on the session's NATS
and Valkey, signed with a generated Ed25519 key as Discord signs them: PING answered
PONG, bad signatures 401 naming the header, each interaction type stored once however
often it comes, the sender's identity resolved as for gateway messages, every body
archived with its verdict."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from jetsource._gen.omni.v1.raw_pb2 import VERDICT_ACCEPTED, VERDICT_REJECTED
from jetsource.domains.omni import signatures
from jetsource.domains.omni.settings import InstanceConfig
from jetsource.ingest.server import Ingest, build
from jetsource.projection.bootstrap import Projection
from tests.fixtures.omni import HERE as GATEWAY_FIXTURES
from tests.fixtures.omni_interactions import MALFORMED, NORMALIZED, UNKNOWN, body, raw
from tests.integration.omni.harness import (
    INSTANCES,
    archived,
    caught_up,
    headers_for,
    omni_settings,
    projector,
    route,
)
from tests.kvkeys import kv_keys

pytestmark = pytest.mark.integration

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
APP, DEFERRED = "acme-app", "acme-app-deferred"
STORED = [n for n, answer in NORMALIZED.items() if answer == 4]


def signed(
    payload: bytes, stamp: int | None = None, key: Ed25519PrivateKey = KEY
) -> dict[str, str]:
    ts = str(int(time.time()) if stamp is None else stamp)
    return {
        "content-type": "application/json",
        "x-signature-ed25519": key.sign(ts.encode() + payload).hex(),
        "x-signature-timestamp": ts,
    }


@pytest.fixture
async def served(
    nats_server: Any, valkey_server: Any, unique: str
) -> AsyncIterator[tuple[Ingest, httpx.AsyncClient, Projection]]:
    instances = {
        **INSTANCES,
        APP: InstanceConfig(provider="discord", format="interactions", public_key=PUBLIC),
        DEFERRED: InstanceConfig(
            provider="discord",
            format="interactions",
            public_key=PUBLIC,
            interaction_response="deferred",
        ),
    }
    settings = omni_settings(nats_server.url, valkey_server.url, unique, instances=instances)
    ingest = await build(settings)
    try:
        await ingest.start_http("127.0.0.1", 0)
        async with (
            projector(settings) as projection,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ingest.http_port}") as http,
        ):
            yield ingest, http, projection
    finally:
        await ingest.stop(0)


async def events_in(ingest: Ingest) -> int:
    return int((await ingest.store.stream_info())["state"]["messages"])


async def test_a_ping_is_answered_pong_and_archived(
    served: tuple[Ingest, httpx.AsyncClient, Projection],
) -> None:
    ingest, http, _ = served
    before = await events_in(ingest)
    payload = raw("ping.json")
    r = await http.post(f"/webhooks/discord/{APP}", content=payload, headers=signed(payload))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"type": 1}
    record = await ingest.raw.get(r.headers["x-jetsource-raw-id"])
    assert record is not None and record.verdict == VERDICT_ACCEPTED
    assert record.http_status == 200 and record.body == archived(payload) and not record.event_ids
    assert record.headers["x-signature-ed25519"]  # archived as received
    assert await events_in(ingest) == before


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("no_signature", "x-signature-ed25519"),
        ("no_timestamp", "x-signature-timestamp"),
        ("not_hex", "x-signature-ed25519"),
        ("other_key", "x-signature-ed25519"),
        ("body_changed", "x-signature-ed25519"),
        ("timestamp_changed", "x-signature-ed25519"),
        ("stale_timestamp", "x-signature-timestamp"),
        ("timestamp_not_a_number", "x-signature-timestamp"),
        ("forwarder_signature", "x-signature-ed25519"),
        ("not_ascii", "x-signature-ed25519"),
        ("timestamp_not_ascii", "x-signature-timestamp"),
        ("sent_twice", "x-signature-ed25519"),
    ],
)
async def test_a_bad_signature_is_401_naming_the_header_and_writes_nothing_else(
    served: tuple[Ingest, httpx.AsyncClient, Projection], case: str, field: str
) -> None:
    """Discord sends requests with bad signatures before it accepts the URL and from
    time to time after: each must be refused with 401."""
    ingest, http, _ = served
    payload = raw("slash_command.json")
    headers = signed(payload)
    sent = payload
    if case == "no_signature":
        del headers["x-signature-ed25519"]
    elif case == "no_timestamp":
        del headers["x-signature-timestamp"]
    elif case == "not_hex":
        headers["x-signature-ed25519"] = "not hex at all"
    elif case == "other_key":
        headers = signed(payload, key=Ed25519PrivateKey.generate())
    elif case == "body_changed":
        sent = payload.replace(b"Billing question", b"Billing questions")
    elif case == "timestamp_changed":
        headers["x-signature-timestamp"] = str(int(headers["x-signature-timestamp"]) - 1)
    elif case == "stale_timestamp":
        headers = signed(payload, int(time.time()) - 3600)
    elif case == "timestamp_not_a_number":
        headers["x-signature-timestamp"] = "2026-12-06T10:00:00Z"
    elif case == "forwarder_signature":
        headers = headers_for("acme-bot", payload)
    sending: Any = headers
    if case == "not_ascii":
        sending = {**headers, "x-signature-ed25519": b"\xe9" * 128}
    elif case == "timestamp_not_ascii":
        sending = {**headers, "x-signature-timestamp": b"17\xb2"}
    elif case == "sent_twice":  # the right signature and another: which one is meant?
        sending = [*headers.items(), ("x-signature-ed25519", "ab" * 64)]
    before = await events_in(ingest)
    bucket = (await ingest.identities.kv())._name

    r = await http.post(f"/webhooks/discord/{APP}", content=sent, headers=sending)

    assert r.status_code == 401, r.text
    error = r.json()["error"]
    assert error["code"] == "bad_signature" and error["field"] == field, error
    record = await ingest.raw.get(error["raw_id"])
    assert record is not None and record.verdict == VERDICT_REJECTED
    assert record.http_status == 401 and record.field == field and record.body == archived(sent)
    assert await events_in(ingest) == before
    assert await kv_keys(ingest.nc, bucket) == []


async def test_each_interaction_is_stored_once_however_often_it_comes(
    served: tuple[Ingest, httpx.AsyncClient, Projection],
) -> None:
    ingest, http, projection = served
    # A gateway message of the same person, forwarded by the bot: the interaction's sender
    # is resolved to the same identity.
    gateway = (GATEWAY_FIXTURES / "discord/text.json").read_bytes()
    g = await http.post(
        route("acme-bot"), content=gateway, headers=headers_for("acme-bot", gateway)
    )
    assert g.status_code == 200, g.text
    before = await events_in(ingest)
    ids = {}
    for name in STORED:
        payload = raw(name)
        first = await http.post(
            f"/webhooks/discord/{APP}", content=payload, headers=signed(payload)
        )
        assert first.status_code == 200, (name, first.text)
        assert first.headers["content-type"] == "application/json"
        assert first.json() == {"type": 4, "data": {"content": "Received.", "flags": 64}}
        assert first.headers["x-jetsource-stored"] == "true", name
        event_id = first.headers["x-jetsource-event-id"]
        record = await ingest.raw.get(first.headers["x-jetsource-raw-id"])
        assert record is not None and record.verdict == VERDICT_ACCEPTED
        assert list(record.event_ids) == [event_id]
        # Redelivered (signed again, a second later, and 8 times at once): stored once.
        again = await asyncio.gather(
            *(
                http.post(
                    f"/webhooks/discord/{APP}",
                    content=payload,
                    headers=signed(payload, int(time.time()) + 1),
                )
                for _ in range(8)
            )
        )
        assert {r.status_code for r in again} == {200}
        assert {r.headers["x-jetsource-stored"] for r in again} == {"false"}
        assert {r.headers["x-jetsource-event-id"] for r in again} == {event_id}
        ids[name] = event_id
    for event_id in ids.values():  # each stored once
        history = await ingest.store.read_aggregate(event_id)
        assert [r.event_type for r in history] == ["EventReceived"]
    # The interactions' events, and the first contacts of the DM's user and of the
    # application (the DMs' recipient): two events each.
    grown = len(STORED) + 2 * 2
    assert await events_in(ingest) == before + grown

    # Autocomplete: no choices, nothing stored.
    payload = raw("autocomplete.json")
    r = await http.post(f"/webhooks/discord/{APP}", content=payload, headers=signed(payload))
    assert r.status_code == 200 and r.json() == {"type": 8, "data": {"choices": []}}
    assert await events_in(ingest) == before + grown

    await caught_up(projection)
    person = (await http.get("/api/v1/handles/discord/80351110224678912")).json()["identity"]
    for name, event_id in ids.items():
        view = (await http.get(f"/api/v1/events/{event_id}")).json()["event"]["event"]
        assert view["provider_format"] == "discord_interactions"
        assert view["provider_event_id"] == body(name)["id"]
        assert view["sender_identity_id"], name
        if view["sender_handle"] == "80351110224678912":
            assert view["sender_identity_id"] == person["identity_id"], name
    timeline = (await http.get(f"/api/v1/identities/{person['identity_id']}/timeline")).json()
    got = {e["event"]["id"] for e in timeline["events"]}
    assert {ids["slash_command.json"], ids["button.json"], ids["modal_submit.json"]} <= got
    conversation = (
        await http.get(f"/api/v1/conversations/discord/{APP}/1313570000000000100")
    ).json()
    assert ids["slash_command.json"] in {e["event"]["id"] for e in conversation["events"]}


async def test_the_deferred_response_when_configured(
    served: tuple[Ingest, httpx.AsyncClient, Projection],
) -> None:
    _, http, _ = served
    for name, answer in (
        ("slash_command.json", {"type": 5, "data": {"flags": 64}}),
        ("modal_submit.json", {"type": 5, "data": {"flags": 64}}),
        ("button.json", {"type": 6, "data": {"flags": 64}}),
        ("ping.json", {"type": 1}),
    ):
        payload = raw(name)
        r = await http.post(
            f"/webhooks/discord/{DEFERRED}", content=payload, headers=signed(payload)
        )
        assert r.status_code == 200 and r.json() == answer, (name, r.text)


@pytest.mark.parametrize(
    ("name", "status", "code", "field"),
    [
        *((n, 422, "malformed", f) for n, f in MALFORMED.items()),
        *((n, 400, "unknown_type", "type") for n in UNKNOWN),
    ],
)
async def test_an_unknown_or_malformed_interaction_is_refused_naming_the_field(
    served: tuple[Ingest, httpx.AsyncClient, Projection],
    name: str,
    status: int,
    code: str,
    field: str,
) -> None:
    ingest, http, _ = served
    before = await events_in(ingest)
    payload = raw(name)
    r = await http.post(f"/webhooks/discord/{APP}", content=payload, headers=signed(payload))
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["field"] == field, error
    record = await ingest.raw.get(error["raw_id"])
    assert record is not None and record.verdict == VERDICT_REJECTED
    assert record.http_status == status and record.field == field
    assert await events_in(ingest) == before


async def test_a_custom_id_the_bot_chose_is_stored_as_sent(
    served: tuple[Ingest, httpx.AsyncClient, Projection],
) -> None:
    """A component's custom_id is the bot's, any text: one holding a newline was 422
    (7b1998e), every click of the button failed. Stored as sent, shown escaped."""
    import json

    from jetsource._gen.omni.v1.events_pb2 import NormalizedEvent

    ingest, http, _ = served
    sent = "ticket:close\n77\u2028x"
    document = body("button.json")
    document["data"]["custom_id"] = sent
    payload = json.dumps(document).encode()
    r = await http.post(f"/webhooks/discord/{APP}", content=payload, headers=signed(payload))
    assert r.status_code == 200, r.text
    (stored,) = await ingest.store.read_aggregate(r.headers["x-jetsource-event-id"])
    assert isinstance(stored.event, NormalizedEvent)
    assert stored.event.metadata.extra["custom_id"] == sent


async def test_the_archived_interaction_is_tied_to_the_signed_body_by_its_digest(
    served: tuple[Ingest, httpx.AsyncClient, Projection],
) -> None:
    """The interaction's token is redacted before archiving, so its Ed25519 signature
    no longer verifies the archived body (raw.proto said signatures "can be checked
    again"); body_sha256 is the digest of the body as signed."""
    ingest, http, _ = served
    payload = raw(STORED[0])
    headers = signed(payload)
    r = await http.post(f"/webhooks/discord/{APP}", content=payload, headers=headers)
    assert r.status_code == 200, r.text
    record = await ingest.raw.get(r.headers["x-jetsource-raw-id"])
    assert record is not None and list(record.body_redacted) == ["token"]
    assert record.body != payload
    assert record.body_sha256 == hashlib.sha256(payload).digest()
    config = InstanceConfig(provider="discord", format="interactions", public_key=PUBLIC)
    stamp = int(headers["x-signature-timestamp"])
    assert signatures.problem(config, dict(record.headers), payload, stamp) is None
    assert signatures.problem(config, dict(record.headers), record.body, stamp) is not None
