"""A ``messages.edited`` item (or an upserted protocolMessage) with no ``type`` was read
as REVOKE (proto's 0), so an edit some Evolution forks send as ``{key, message:
{conversation}, oldMessage}`` was stored as a delete for everyone. Through the ingress
on real NATS and Valkey: such an item is decided by what it holds, an edited message's
body (``editedMessage``, or a fork's ``message``) an edit; with nothing to go on, 422
naming ``type``, nothing stored. A revoke that says so (REVOKE, 0) is still a delete."""

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
KEY = {"remoteJid": "5511999999999@s.whatsapp.net", "fromMe": False, "id": "ABC"}


def with_data(body: dict[str, Any], data: Any) -> bytes:
    out = copy.deepcopy(body)
    out["data"] = data
    return json.dumps(out).encode()


async def post(http: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await http.post(route("acme-evo"), content=body, headers=headers_for("acme-evo", body))


async def stored(ingest: Ingest) -> int:
    return int((await ingest.store.stream_info())["state"]["messages"])


async def test_an_edit_without_a_type_is_an_edit_not_a_delete(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    fork = {
        "key": KEY,
        "message": {"conversation": "new text"},
        "oldMessage": {"conversation": "old"},
        "messageTimestamp": 1796050080,
    }
    r = await post(http, with_data(EDIT, fork))
    assert r.status_code == 200, r.text
    [event] = r.json()["events"]
    assert event["event_type"] == "edit", r.text
    read = await http.get(f"/api/v1/events/{event['id']}")
    assert read.status_code == 200, read.text
    stored_event = read.json()["event"]["event"]
    assert stored_event["content_text"] == "new text"
    assert stored_event["metadata"] == {
        "edit": {
            "target_message_id": "ABC",
            "new_text": "new text",
            "edited_at": "2026-11-30T14:48:00Z",
        }
    }
    # The protocol message's own shape, its type left out: an edit as well.
    proto = {k: v for k, v in EDIT["data"].items() if k != "type"}
    r = await post(http, with_data(EDIT, proto))
    assert r.status_code == 200, r.text
    assert [e["event_type"] for e in r.json()["events"]] == ["edit"]


async def test_a_protocol_message_with_nothing_to_go_on_is_422_naming_type(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    before = await stored(ingest)
    r = await post(http, with_data(EDIT, {"key": KEY}))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "data.type"
    upsert = copy.deepcopy(TEXT)
    upsert["data"]["message"] = {"protocolMessage": {"key": KEY}}
    upsert["data"]["messageType"] = "protocolMessage"
    r = await post(http, json.dumps(upsert).encode())
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "data.message.protocolMessage.type"
    assert await stored(ingest) == before
    # A revoke that says it is one is still a delete for everyone.
    for kind in ("REVOKE", 0):
        r = await post(http, with_data(EDIT, {"key": KEY, "type": kind}))
        assert r.status_code == 200, r.text
        assert [e["event_type"] for e in r.json()["events"]] == ["delete"]
