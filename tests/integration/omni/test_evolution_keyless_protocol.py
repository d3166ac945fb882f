"""Evolution API sends every protocol message Baileys receives as ``messages.edited``,
the protocol message alone: those of a device's own housekeeping (an app state key
share, a history sync notification, a peer data operation's response, a
disappearing-messages setting) carry no key. Through the ingress on real NATS and
Valkey: such a body is 200 ``unrecognised`` and archived as such, storing no event and
claiming no handle (it was 422 naming ``data.key``, refused after every retry); beside
an edit in one body, the edit is stored; a revoke or an edit without a key is still
422 naming it."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest

from jetsource._gen.omni.v1.raw_pb2 import VERDICT_UNRECOGNISED
from jetsource.ingest.server import Ingest
from tests.fixtures.omni import HERE
from tests.integration.omni.harness import archived, headers_for, route
from tests.kvkeys import kv_keys

pytestmark = pytest.mark.integration

EDIT = json.loads((HERE / "whatsapp/evolution/edit.json").read_text())
# Protocol messages as Baileys receives them from the account's own devices: no key.
KEYLESS: list[dict[str, Any]] = [
    {"type": "APP_STATE_SYNC_KEY_SHARE", "appStateSyncKeyShare": {"keys": [{"keyData": {}}]}},
    {"type": "HISTORY_SYNC_NOTIFICATION", "historySyncNotification": {"syncType": "RECENT"}},
    {"type": 17, "peerDataOperationRequestResponseMessage": {"stanzaId": "3EB0A1"}},
    {"type": "EPHEMERAL_SETTING", "ephemeralExpiration": 86400},
]


def with_data(data: Any) -> bytes:
    body = copy.deepcopy(EDIT)
    body["data"] = data
    return json.dumps(body).encode()


async def post(http: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await http.post(route("acme-evo"), content=body, headers=headers_for("acme-evo", body))


async def stored(ingest: Ingest) -> int:
    return int((await ingest.store.stream_info())["state"]["messages"])


async def test_a_keyless_protocol_message_is_unrecognised_not_refused(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    for data in KEYLESS:
        body = with_data(data)
        r = await post(http, body)
        assert r.status_code == 200, (data, r.text)
        answer = r.json()
        assert answer["status"] == "unrecognised", answer
        assert "no key" in answer["reason"], answer
        record = await ingest.raw.get(answer["raw_id"])
        assert record is not None and record.verdict == VERDICT_UNRECOGNISED
        assert record.body == archived(body)
    assert await stored(ingest) == 0
    assert await kv_keys(ingest.nc, (await ingest.identities.kv())._name) == []

    # One body of a keyless one and an edit: the edit is stored.
    r = await post(http, with_data([KEYLESS[0], EDIT["data"]]))
    assert r.status_code == 200, r.text
    assert [e["event_type"] for e in r.json()["events"]] == ["edit"]
    after_edit = await stored(ingest)
    assert after_edit > 0  # the edit, and the identities of its sender and recipient

    # A revoke or an edit must name its target: still refused, naming the key.
    for data in (
        {"type": "REVOKE"},
        {"type": "MESSAGE_EDIT", "editedMessage": {"conversation": "x"}},
    ):
        r = await post(http, with_data(data))
        assert r.status_code == 422, (data, r.text)
        assert r.json()["error"]["field"] == "data.key"
    assert await stored(ingest) == after_edit
