"""A webhook whose handles bucket or raw archive refuses the write (at its limits with
discard new) or is gone (its stream deleted) is answered 503 ``unavailable`` naming
the stream, with Retry-After: not a 500 "internal error". Sent again once the stream
takes writes, it is stored once."""

from __future__ import annotations

import json
from typing import Any

import httpx
import nats
import pytest
from nats.js.api import DiscardPolicy

from jetsource.ingest.server import Ingest
from jetsource.ingest.settings import IngestSettings
from tests.fixtures.omni import HERE
from tests.infra import Server
from tests.integration.omni.harness import headers_for, route

pytestmark = pytest.mark.integration


def _body(tag: str, sender: str = "16505551234") -> bytes:
    """The fixture's text message with its own id, from ``sender`` (a handle not seen
    before is looked up in the handles bucket and written there)."""
    text = (HERE / "whatsapp/cloud/text.json").read_text().replace("16505551234", sender)
    body: Any = json.loads(text)
    value = body["entry"][0]["changes"][0]["value"]
    value["messages"][0]["id"] = f"wamid.{tag}"
    return json.dumps(body).encode()


async def _post(http: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await http.post(
        route("acme-cloud"), content=body, headers=headers_for("acme-cloud", body)
    )


def _streams(s: IngestSettings) -> dict[str, str]:
    return {"handles": f"KV_{s.omni.identity_bucket}", "raw": s.omni.raw_stream}


@pytest.mark.parametrize("what", ["handles", "raw"])
async def test_a_full_bucket_or_archive_answers_503_naming_it_and_nothing_doubles(
    nats_server: Server, isettings: IngestSettings, http: httpx.AsyncClient, what: str, unique: str
) -> None:
    stream = _streams(isettings)[what]
    assert (await _post(http, _body(f"{unique}-0"))).status_code == 200
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    try:
        info = await js.stream_info(stream)
        cfg = info.config
        cfg.max_msgs, cfg.discard = info.state.messages, DiscardPolicy.NEW
        await js.update_stream(cfg)
        body = _body(f"{unique}-1", "16505559876")
        refused = await _post(http, body)
        assert refused.status_code == 503, refused.text
        assert refused.headers.get("retry-after") == "1"
        error = refused.json()["error"]
        assert error["code"] == "unavailable"
        assert stream in error["message"] and "10077" in error["message"], error

        cfg.max_msgs = -1
        await js.update_stream(cfg)
        first, again = await _post(http, body), await _post(http, body)
        assert first.status_code == again.status_code == 200, (first.text, again.text)
        assert [e["stored"] for e in first.json()["events"]] == [True]
        assert [e["stored"] for e in again.json()["events"]] == [False]
    finally:
        await nc.close()


async def test_a_deleted_handles_bucket_answers_503_naming_it(
    nats_server: Server,
    isettings: IngestSettings,
    ingest: Ingest,
    http: httpx.AsyncClient,
    unique: str,
) -> None:
    assert (await _post(http, _body(f"{unique}-0"))).status_code == 200
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().delete_key_value(isettings.omni.identity_bucket)
    finally:
        await nc.close()
    # A handle never seen (the cache does not know it): the bucket is asked.
    body = _body(f"{unique}-1", "16505559876")
    refused = await _post(http, body)
    assert refused.status_code == 503, refused.text
    message = refused.json()["error"]["message"]
    assert f"handles bucket {isettings.omni.identity_bucket} is gone" in message, message
