"""What providers and clients send at the edges of their own formats, through the
ingress on real NATS and Valkey: Meta's verification handshake with a parameter
missing or sent twice, a signature header sent twice, `since` with a UTC offset or at
the exact time an event was stored, and the raw archive's retention set on an archive
created without one."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest

from jetsource.core.clock import format_rfc3339_ns
from jetsource.domains.omni.settings import OmniOptions
from jetsource.domains.omni.signatures import sign
from jetsource.ingest.server import Ingest, build
from jetsource.projection.bootstrap import Projection
from tests.fixtures.omni import HERE
from tests.integration.omni.harness import SECRETS, VERIFY_TOKEN, caught_up, omni_settings, route

pytestmark = pytest.mark.integration

CLOUD = route("acme-cloud")
OK = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}


async def test_the_handshake_names_a_parameter_missing_repeated_or_wrong(
    http: httpx.AsyncClient,
) -> None:
    ok = await http.get(CLOUD, params=OK)
    assert (ok.status_code, ok.text) == (200, "1158201444")
    mode, token, challenge = (
        ("hub.mode", "subscribe"),
        ("hub.verify_token", VERIFY_TOKEN),
        ("hub.challenge", "7"),
    )
    # (query, status, field): a parameter sent twice is refused whichever value comes
    # last (the last one decided: a wrong token before the right one passed).
    cases: list[tuple[list[tuple[str, str]], int, str]] = [
        ([mode, ("hub.verify_token", "wrong"), token, challenge], 400, "hub.verify_token"),
        ([mode, token, ("hub.verify_token", "wrong"), challenge], 400, "hub.verify_token"),
        ([mode, ("hub.mode", "unsubscribe"), token, challenge], 400, "hub.mode"),
        ([mode, token, challenge, ("hub.challenge", "8")], 400, "hub.challenge"),
        # No challenge: an empty 200 was answered, which verifies nothing.
        ([mode, token], 400, "hub.challenge"),
        ([mode, token, ("hub.challenge", "")], 400, "hub.challenge"),
        ([token, challenge], 403, "hub.mode"),
        ([("hub.mode", "unsubscribe"), token, challenge], 403, "hub.mode"),
        ([mode, challenge], 403, "hub.verify_token"),
        ([mode, ("hub.verify_token", "wrong"), challenge], 403, "hub.verify_token"),
    ]
    for params, status, field in cases:
        r = await http.get(CLOUD, params=urlencode(params))
        assert r.status_code == status, (params, r.status_code, r.text)
        error = r.json()["error"]
        assert error["field"] == field, (params, error)
        assert field in error["message"], (params, error)
    # A token of bytes that are no UTF-8 (a surrogate's ED B2 80), as a client may send.
    odd = await http.get(f"{CLOUD}?hub.mode=subscribe&hub.verify_token=%ED%B2%80&hub.challenge=7")
    assert odd.status_code == 403 and odd.json()["error"]["field"] == "hub.verify_token"
    # An Evolution instance has no handshake: said so, naming the instance.
    evo = await http.get(route("acme-evo"), params=OK)
    assert evo.status_code == 403
    assert evo.json()["error"]["field"] == "instance"
    assert "evolution" in evo.json()["error"]["message"]


async def test_a_signature_header_sent_twice_is_refused_and_archived_whole(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    body = (HERE / "whatsapp/cloud/text.json").read_bytes()
    good, bad = sign(SECRETS["acme-cloud"], body), "sha256=" + "0" * 64
    for pair in ((bad, good), (good, bad), (good, good)):
        headers = [("content-type", "application/json")]
        headers += [("x-hub-signature-256", value) for value in pair]
        r = await http.post(CLOUD, content=body, headers=headers)
        assert r.status_code == 401, (pair, r.text)
        error = r.json()["error"]
        assert error["field"] == "x-hub-signature-256"
        assert "more than once" in error["message"]
        record = await ingest.raw.get(error["raw_id"])
        assert record is not None
        # Both values kept in the archive (a dict of the pairs kept the last one).
        assert record.headers["x-hub-signature-256"] == ", ".join(pair)
    # Credentials a proxy passed on are not archived in the clear.
    r = await http.post(
        CLOUD,
        content=body,
        headers={"proxy-authorization": "Basic dXNlcjpwYXNz", "x-hub-signature-256": bad},
    )
    record = await ingest.raw.get(r.json()["error"]["raw_id"])
    assert record is not None and record.headers["proxy-authorization"] == "[redacted]"
    # Nothing was stored by any of them.
    assert int((await ingest.store.stream_info())["state"]["messages"]) == 0
    forwarded = (HERE / "discord/text.json").read_bytes()
    sig = sign(SECRETS["acme-bot"], forwarded)
    r = await http.post(
        route("acme-bot"),
        content=forwarded,
        headers=[("x-jetsource-signature", sig), ("x-jetsource-signature", sig)],
    )
    assert r.status_code == 401 and r.json()["error"]["field"] == "x-jetsource-signature"


async def test_since_takes_an_offset_and_includes_an_event_stored_at_that_instant(
    ingest: Ingest, http: httpx.AsyncClient, projection: Projection
) -> None:
    body = (HERE / "whatsapp/cloud/text.json").read_bytes()
    r = await http.post(
        CLOUD, content=body, headers={"x-hub-signature-256": sign(SECRETS["acme-cloud"], body)}
    )
    assert r.status_code == 200, r.text
    event_id = r.json()["events"][0]["id"]
    await caught_up(projection)
    stored = [e async for e in ingest.store.read_all()]
    at = next(e.recorded_at_ns for e in stored if e.aggregate_id == event_id)

    async def listed(since: str) -> list[str]:
        answer = await http.get("/api/v1/events", params={"since": since})
        assert answer.status_code == 200, (since, answer.text)
        return [e["event"]["id"] for e in answer.json()["events"]]

    exact = format_rfc3339_ns(at)  # ...Z with nanoseconds
    assert await listed(exact) == [event_id]  # "at or after": it was left out
    assert await listed(format_rfc3339_ns(at + 1)) == []
    # The same instants with offsets (400 before: only Z was taken), 't'/'z' too.
    date, clock = exact[:-1].split("T")
    hours = int(clock[:2])
    plus_one = f"{date}T{(hours + 1) % 24:02d}{clock[2:]}+01:00"
    if hours < 23:
        assert await listed(plus_one) == [event_id]
    assert await listed(f"{date}t{clock}z") == [event_id]
    assert await listed(f"{date}T{clock}-00:00") == [event_id]
    for bad in (
        "2026-12-06T10:00:00",
        "2026-13-01T00:00:00Z",
        "2026-12-06T10:00:00+25:00",
        "\uff12026-12-06T10:00:00Z",
        "yesterday",
        "2026-12-06T10:00:00.1234567891Z",  # past ns: refused, as by the CLI (was cut)
        "10000-01-01T00:00:00Z",
    ):
        answer = await http.get("/api/v1/events", params={"since": bad})
        assert answer.status_code == 400, (bad, answer.text)
        assert answer.json()["error"]["field"] == "since"


async def test_raw_retention_can_be_set_on_an_archive_made_without_one(
    nats_server: Any, valkey_server: Any, unique: str
) -> None:
    """An archive created keeping everything (the default) later given an age: the
    ingress stopped at start with a traceback (JetStream refuses to take back the
    purge denial it had been created with), and one under 120 s did at any time
    (JetStream takes no duplicate window longer than the age). Now it starts, with the
    age, and back; an age JetStream cannot take (under 0.1 s) is refused by the
    settings, naming raw_max_age_s."""
    with pytest.raises(ValueError, match="raw_max_age_s"):
        OmniOptions(raw_max_age_s=0.05)
    for age in (0.0, 3600.0, 0.0, 60.0, 0.1, 0.0):
        s = omni_settings(nats_server.url, valkey_server.url, unique)
        s.omni.raw_max_age_s = age
        service = await build(s)
        try:
            config = (await service.raw.info())["config"]
            assert config["max_age"] == int(age * 1e9)
            assert config["deny_purge"] and config["deny_delete"]
        finally:
            await service.stop(0)


async def test_a_conversation_or_handle_holding_a_slash_is_read_over_rest(
    ingest: Ingest, http: httpx.AsyncClient, projection: Projection
) -> None:
    """A Cloud API group id is base64 and may hold "/" and "+": its conversation was
    404 "no route" over REST (the router decodes %2F before it matches); so was a
    handle holding one."""
    group, sender = "Y2FwaV9/Z3JvdXA+MTU1NTA3ODM4ODE6MTIw==", "user/with+slash"
    body = json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "102290129340398",
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": "15550783881",
                                    "phone_number_id": "106540352242922",
                                },
                                "messages": [
                                    {
                                        "from": sender,
                                        "group_id": group,
                                        "id": "wamid.SLASHGROUP01",
                                        "timestamp": "1796048400",
                                        "type": "text",
                                        "text": {"body": "hello group"},
                                    }
                                ],
                            },
                        }
                    ],
                }
            ],
        }
    ).encode()
    r = await http.post(
        CLOUD, content=body, headers={"x-hub-signature-256": sign(SECRETS["acme-cloud"], body)}
    )
    assert r.status_code == 200, r.text
    event_id = r.json()["events"][0]["id"]
    await caught_up(projection)
    conv = await http.get(f"/api/v1/conversations/whatsapp/acme-cloud/{quote(group, safe='')}")
    assert conv.status_code == 200, conv.text
    assert [e["event"]["id"] for e in conv.json()["events"]] == [event_id]
    found = await http.get(f"/api/v1/handles/whatsapp/{quote(sender, safe='')}")
    assert found.status_code == 200, found.text
    handles = found.json()["identity"]["handles"]
    assert [h["external_id"] for h in handles] == [sender]
    # An empty conversation id is refused naming it, not a route that is not there.
    empty = await http.get("/api/v1/conversations/whatsapp/acme-cloud/")
    assert empty.status_code == 400 and empty.json()["error"]["field"] == "conversation_id"


def _cloud_body(value: dict[str, Any]) -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        **value,
    }
    change = {"field": "messages", "value": value}
    entry = {"id": "102290129340398", "changes": [change]}
    return json.dumps({"object": "whatsapp_business_account", "entry": [entry]}).encode()


async def test_a_body_the_raw_archive_cannot_hold_is_413_and_archived_cut(
    nats_server: Any, valkey_server: Any, unique: str
) -> None:
    """max_body_bytes over what the raw archive takes (its max_msg_size, NATS's
    max_payload): such a body was a 500 (JetStream refused the record) or a 503 the
    provider retried for ever, and was not archived. Now 413 naming body, archived cut
    to keep_rejected_bytes, nothing else written; so is a batch whose record is too
    large only with its event ids."""
    s = omni_settings(
        nats_server.url,
        valkey_server.url,
        unique,
        max_body_bytes=1_000_000,
        keep_rejected_bytes=1000,
    )
    s.omni.raw_max_msg_size = 200_000
    service = await build(s)
    try:
        limit = 200_000 - 1024  # the stream's max_msg_size less room for the headers
        transport = httpx.ASGITransport(app=service.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://i") as http:

            async def send(body: bytes, signed: bool = True) -> httpx.Response:
                secret = SECRETS["acme-cloud"] if signed else "not-the-secret"
                return await http.post(
                    CLOUD, content=body, headers={"x-hub-signature-256": sign(secret, body)}
                )

            text = {"type": "text", "timestamp": "1796048400", "from": "16505550001"}
            big = _cloud_body(
                {"messages": [{**text, "id": "wamid.BIG", "text": {"body": "x" * 300_000}}]}
            )
            statuses = [
                {
                    "id": f"wamid.S{i:06d}",
                    "status": "delivered",
                    "timestamp": "1796048400",
                    "recipient_id": f"1650{i:07d}",
                }
                for i in range(1700)
            ]
            batch = _cloud_body({"statuses": statuses})
            assert len(batch) < limit  # too large only with its 1,700 event ids
            unknown = _cloud_body({"something_new": "y" * 300_000})
            for body, signed, status in (
                (big, True, 413),
                (big, False, 401),
                (batch, True, 413),
                (unknown, True, 413),
            ):
                r = await send(body, signed)
                assert r.status_code == status, (status, r.text[:300])
                error = r.json()["error"]
                assert error["field"] in ("body", "x-hub-signature-256")
                record = await service.raw.get(error["raw_id"])
                assert record is not None and record.http_status == status
                assert record.body == body[:1000] and record.body_truncated
                assert not record.event_ids
            assert int((await service.store.stream_info())["state"]["messages"]) == 0
            small = _cloud_body(
                {"messages": [{**text, "id": "wamid.SMALL", "text": {"body": "hi"}}]}
            )
            assert (await send(small)).status_code == 200
    finally:
        await service.stop(0)
