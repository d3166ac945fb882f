"""A messages.edited item with no ``type`` that is a whole message around a protocol
message (``{key: {id: R1}, message: {protocolMessage: {key: {id: T1}, type: REVOKE}}}``,
as messages.upsert carries it) was taken for a fork's edit ``{key, message}``: an EDIT of
R1 whose body was the protocol message (CONTENT_TYPE_OTHER), and T1 not deleted. Now it
is read as messages.upsert reads it, by the protocol message it holds: the revoke of T1
is a delete, the same event either way (real NATS and Valkey through the ingress)."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest

from jetsource.ingest.server import Ingest
from tests.fixtures.omni import HERE
from tests.integration.omni.harness import headers_for, route

pytestmark = pytest.mark.integration

EDIT = json.loads((HERE / "whatsapp/evolution/edit.json").read_text())
TEXT = json.loads((HERE / "whatsapp/evolution/text.json").read_text())
JID = "5511999999999@s.whatsapp.net"
KEY = {"remoteJid": JID, "fromMe": False, "id": "R1"}


def wrapper(proto: dict[str, Any]) -> dict[str, Any]:
    return {"key": KEY, "message": {"protocolMessage": proto}, "messageTimestamp": 1796050080}


async def post(http: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    raw = json.dumps(body).encode()
    return await http.post(route("acme-evo"), content=raw, headers=headers_for("acme-evo", raw))


def edited(data: Any) -> dict[str, Any]:
    out: dict[str, Any] = copy.deepcopy(EDIT)
    out["data"] = data
    return out


async def test_a_whole_message_around_a_revoke_is_a_delete_of_its_target(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    revoke = {"key": {"id": "T1", "remoteJid": JID}, "type": "REVOKE"}
    r = await post(http, edited(wrapper(revoke)))
    assert r.status_code == 200, r.text
    [event] = r.json()["events"]
    assert event["event_type"] == "delete", r.text
    read = await http.get(f"/api/v1/events/{event['id']}")
    assert read.status_code == 200, read.text
    deletion = read.json()["event"]["event"]["metadata"]["deletion"]
    assert deletion["target_message_id"] == "T1"
    # The same message through messages.upsert is the same event.
    upsert = copy.deepcopy(TEXT)
    upsert["data"] = {**upsert["data"], **wrapper(revoke), "messageType": "protocolMessage"}
    r = await post(http, upsert)
    assert r.status_code == 200, r.text
    assert [e["id"] for e in r.json()["events"]] == [event["id"]]


async def test_a_whole_message_around_an_edit_is_the_edit_it_holds(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    edit = {
        "key": {"id": "T2", "remoteJid": JID},
        "type": "MESSAGE_EDIT",
        "editedMessage": {"conversation": "fixed"},
    }
    r = await post(http, edited(wrapper(edit)))
    assert r.status_code == 200, r.text
    [event] = r.json()["events"]
    assert event["event_type"] == "edit", r.text
    stored = (await http.get(f"/api/v1/events/{event['id']}")).json()["event"]["event"]
    assert stored["metadata"]["edit"]["target_message_id"] == "T2"
    assert stored["content_text"] == "fixed"
    # One that says nothing of itself is refused naming the protocol message's type.
    r = await post(http, edited(wrapper({"key": {"id": "T3", "remoteJid": JID}})))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "data.message.protocolMessage.type"
