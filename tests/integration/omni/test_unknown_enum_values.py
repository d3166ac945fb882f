"""A value of an enum-like field this ingest does not know (providers add them without
notice: WhatsApp's receipt statuses ``warning``, Baileys' numbers past PLAYED, Discord's
presences) was answered 422 naming the field; the provider retries a non-2xx answer and
at last disables the webhook, and the rest of the body (the messages beside the receipt)
was lost with it. Through the ingress on real NATS and Valkey: such a body is 200, archived
as accepted, its events stored, the value kept in ``metadata.extra`` beside the enum's
UNSPECIFIED; a value no provider sends as one (empty, a 100-character one, of another
type) is still 422 naming the field."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest

from jetsource._gen.omni.v1 import events_pb2 as pb
from jetsource._gen.omni.v1.raw_pb2 import VERDICT_ACCEPTED
from jetsource.ingest.server import Ingest
from tests.fixtures.omni import HERE
from tests.integration.omni.harness import headers_for, route

pytestmark = pytest.mark.integration


def fixture(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((HERE / name).read_text())
    return copy.deepcopy(body)


async def post(http: httpx.AsyncClient, instance: str, body: dict[str, Any]) -> httpx.Response:
    raw = json.dumps(body).encode()
    return await http.post(route(instance), content=raw, headers=headers_for(instance, raw))


async def stored_events(ingest: Ingest, answer: dict[str, Any]) -> list[pb.NormalizedEvent]:
    record = await ingest.raw.get(answer["raw_id"])
    assert record is not None and record.verdict == VERDICT_ACCEPTED, record
    out = []
    for e in answer["events"]:
        history = await ingest.store.read_aggregate(e["id"])
        assert isinstance(history[0].event, pb.NormalizedEvent), history
        out.append(history[0].event)
    return out


async def test_a_cloud_receipt_of_an_unknown_status_is_stored_with_the_message_beside_it(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    body = fixture("whatsapp/cloud/status_read.json")
    value = body["entry"][0]["changes"][0]["value"]
    value["statuses"][0]["status"] = "warning"
    value["messages"] = fixture("whatsapp/cloud/text.json")["entry"][0]["changes"][0]["value"][
        "messages"
    ]
    r = await post(http, "acme-cloud", body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert sorted(e["event_type"] for e in answer["events"]) == ["message", "status"], answer
    (receipt,) = [
        e
        for e in await stored_events(ingest, answer)
        if e.HasField("metadata") and e.event_type == pb.EVENT_TYPE_STATUS
    ]
    assert receipt.metadata.receipt.status == pb.RECEIPT_STATUS_UNSPECIFIED
    assert receipt.metadata.extra["status"] == "warning"
    assert receipt.provider_event_id.endswith(":warning")


@pytest.mark.parametrize(("status", "kept"), [("SOMETHING_NEW", "SOMETHING_NEW"), (9, "9")])
async def test_an_evolution_receipt_of_an_unknown_status_is_stored(
    ingest: Ingest, http: httpx.AsyncClient, status: Any, kept: str
) -> None:
    body = fixture("whatsapp/evolution/status_read.json")
    body["data"]["status"] = status
    r = await post(http, "acme-evo", body)
    assert r.status_code == 200, r.text
    (receipt,) = await stored_events(ingest, r.json())
    assert receipt.event_type == pb.EVENT_TYPE_STATUS
    assert receipt.metadata.receipt.status == pb.RECEIPT_STATUS_UNSPECIFIED
    assert receipt.metadata.extra["status"] == kept


async def test_a_presence_of_an_unknown_status_is_stored(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    evo = fixture("whatsapp/evolution/presence_composing.json")
    for p in evo["data"]["presences"].values():
        p["lastKnownPresence"] = "away"
    discord = fixture("discord/presence.json")
    discord["d"]["status"] = "streaming"
    for instance, body, kept in (("acme-evo", evo, "away"), ("acme-bot", discord, "streaming")):
        r = await post(http, instance, body)
        assert r.status_code == 200, r.text
        for ev in await stored_events(ingest, r.json()):
            assert ev.event_type == pb.EVENT_TYPE_PRESENCE
            assert ev.metadata.presence.status == pb.PRESENCE_STATUS_UNSPECIFIED
            assert ev.metadata.extra["presence_status"] == kept


@pytest.mark.parametrize(
    ("status", "problem"),
    [
        ("", "must not be empty"),
        ("w" * 100, "(100 characters): a message status is at most 64 characters"),
        ("new\nline", "it is one line of text"),
        (True, "must be a string or an integer"),
        ({"s": 1}, "must be a string or an integer"),
    ],
)
async def test_a_status_no_provider_sends_is_still_refused_naming_it(
    ingest: Ingest, http: httpx.AsyncClient, status: Any, problem: str
) -> None:
    body = fixture("whatsapp/evolution/status_read.json")
    body["data"]["status"] = status
    r = await post(http, "acme-evo", body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "data.status" and problem in error["message"], error
    assert (await ingest.store.stream_info())["state"]["messages"] == 0
